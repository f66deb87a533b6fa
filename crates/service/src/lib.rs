//! sift-service: what every sift binary sets up the same way, kept in one place.
//!
//! - [`logging`]: tracing to stderr, text for people or JSON for collectors.
//! - [`pools`]: Redis and PostgreSQL pools with bounded waits, and the ClickHouse client.

pub mod logging;
pub mod pools;
