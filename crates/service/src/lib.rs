//! sift-service: what every sift binary sets up the same way, kept in one place.
//!
//! - [`health`]: the `/healthz`, `/readyz` and `/metrics` answers.
//! - [`logging`]: tracing to stderr, text for people or JSON for collectors.
//! - [`pools`]: PostgreSQL pools with bounded waits, the ClickHouse client, and the readiness
//!   probes (Redis has its own layer, sift-redis).
//! - [`limits`]: the validation limits as flags, the same for the API and for replays.
//! - [`outage`]: a dependency's failures logged as state changes and periodic counts, not one
//!   line per request.
//! - [`erasures`]: erasure requests in PostgreSQL, recorded by the API and carried out (and
//!   their tombstones checked) by the batchers.
//! - [`clickhouse_text`]: exception codes and TTL days in ClickHouse's answers.

pub mod clickhouse_text;
pub mod erasures;
pub mod health;
pub mod limits;
pub mod logging;
pub mod outage;
pub mod pools;
