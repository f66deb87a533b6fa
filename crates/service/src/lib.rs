//! sift-service: what every sift binary sets up the same way, kept in one place.
//!
//! - [`logging`]: tracing to stderr, text for people or JSON for collectors.
//! - [`pools`]: Redis and PostgreSQL pools with bounded waits, the ClickHouse client, and the
//!   readiness probes.
//! - [`limits`]: the validation limits as flags, the same for the API and for replays.

pub mod limits;
pub mod logging;
pub mod pools;
