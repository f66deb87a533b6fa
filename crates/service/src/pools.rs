//! Connection pools (Redis's are in sift-redis). Every wait is bounded, so a dependency that
//! is down turns into an error the caller can answer (503) or retry, never into a request
//! that hangs. The `ping_*` functions are the readiness probes both binaries answer
//! `/readyz` with.

use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("PostgreSQL configuration: {0}")]
    PostgresUrl(#[from] tokio_postgres::Error),
    #[error("PostgreSQL configuration: {0}")]
    PostgresPool(#[source] deadpool_postgres::BuildError),
}

/// A PostgreSQL pool of up to `size` connections; waits, connects and checks within `timeout`.
/// Connections are verified on reuse, so one cut while PostgreSQL restarted is not handed out.
pub fn postgres(
    url: &str,
    size: usize,
    timeout: Duration,
) -> Result<deadpool_postgres::Pool, PoolError> {
    let config: tokio_postgres::Config = url.parse()?;
    let manager = deadpool_postgres::Manager::from_config(
        config,
        tokio_postgres::NoTls,
        deadpool_postgres::ManagerConfig {
            recycling_method: deadpool_postgres::RecyclingMethod::Verified,
        },
    );
    deadpool_postgres::Pool::builder(manager)
        .max_size(size)
        .wait_timeout(Some(timeout))
        .create_timeout(Some(timeout))
        .recycle_timeout(Some(timeout))
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .build()
        .map_err(PoolError::PostgresPool)
}

/// A ClickHouse client for `url` as `user` (with `password` when not empty).
pub fn clickhouse(url: &str, user: &str, password: &str) -> clickhouse::Client {
    let client = clickhouse::Client::default().with_url(url).with_user(user);
    if password.is_empty() {
        client
    } else {
        client.with_password(password)
    }
}

/// A dependency that did not answer a readiness probe, and why (shown in `/readyz`).
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct Unreachable(Box<dyn std::error::Error + Send + Sync>);

impl Unreachable {
    fn from(error: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self(Box::new(error))
    }
}

/// `SELECT 1` on a pooled connection, for readiness probes.
pub async fn ping_postgres(pool: &deadpool_postgres::Pool) -> Result<(), Unreachable> {
    let client = pool.get().await.map_err(Unreachable::from)?;
    client
        .simple_query("SELECT 1")
        .await
        .map(|_| ())
        .map_err(Unreachable::from)
}

/// `SELECT 1` on ClickHouse, for readiness probes.
pub async fn ping_clickhouse(client: &clickhouse::Client) -> Result<(), Unreachable> {
    client
        .query("SELECT 1")
        .execute()
        .await
        .map_err(Unreachable::from)
}
