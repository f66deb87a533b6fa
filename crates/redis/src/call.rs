//! One bounded call: every wait on Redis (a pooled connection, connecting, the answer) ends
//! within the timeout, and every failure is counted under the call's name
//! ([`crate::metrics::FAILURES`]), so that a Redis that hangs turns into an error
//! the caller answers (503) or retries, and an operator sees which calls fail.

use std::future::Future;
use std::time::Duration;

use crate::metrics::FAILURES;

#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    #[error("Redis did not answer within {0:?}")]
    TimedOut(Duration),
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("Redis: {0}")]
    Pool(#[from] deadpool_redis::PoolError),
    /// `--redis-wait-replicas` was not met: the write is on the master, not (yet) on as many
    /// replicas, and may be lost if the master fails now.
    #[error(
        "Redis: the write reached {acked} of the {wanted} replicas required within {timeout:?}"
    )]
    Replicas {
        wanted: u32,
        acked: u32,
        timeout: Duration,
    },
}

impl RedisError {
    /// The short name of the failure, as counted.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::TimedOut(_) => "timeout",
            Self::Redis(e) if matches!(e.kind(), redis::ErrorKind::Server(_)) => "answer",
            Self::Redis(_) => "connection",
            Self::Pool(_) => "pool",
            Self::Replicas { .. } => "replicas",
        }
    }

    /// Whether Redis answered with an error (its connection is fine), rather than the
    /// connection failing or timing out (the connection is then dropped and made anew).
    pub fn is_answer(&self) -> bool {
        matches!(self, Self::Redis(e) if matches!(e.kind(), redis::ErrorKind::Server(_)))
            || matches!(self, Self::Replicas { .. })
    }
}

/// Runs `work` within `timeout`, counting a failure under `call`.
pub async fn bounded<T, E, Fut>(
    call: &'static str,
    timeout: Duration,
    work: Fut,
) -> Result<T, RedisError>
where
    Fut: Future<Output = Result<T, E>>,
    RedisError: From<E>,
{
    let answer = match tokio::time::timeout(timeout, work).await {
        Ok(answer) => answer.map_err(RedisError::from),
        Err(_) => Err(RedisError::TimedOut(timeout)),
    };
    if let Err(error) = &answer {
        metrics::counter!(FAILURES, "call" => call, "kind" => error.kind()).increment(1);
    }
    answer
}
