//! sift-ingest: the HTTP ingest API.
//!
//! A request is authenticated ([`auth`]), read within limits ([`body`]), validated and hashed
//! (`sift-core`), then deduplicated and enqueued in one atomic Redis script ([`dedup`]). [`otlp`]
//! decodes OpenTelemetry trace exports and maps their GenAI spans to the same events.
//! [`analytics`] answers the read API from ClickHouse, behind [`stats_cache`]. [`api`] holds the routes, [`error`] the one error type and its HTTP mapping, [`metrics`] the
//! Prometheus names, [`outages`] the quiet logging of dependencies that are down, [`tasks`] the once-a-second background work, [`server`] the start-up.

pub mod analytics;
pub mod api;
pub mod auth;
pub mod body;
pub mod config;
pub mod dedup;
pub mod error;
pub mod json;
pub mod metrics;
pub mod openapi;
pub mod otlp;
pub mod outages;
pub mod prepare;
pub mod server;
pub mod state;
pub mod stats_cache;
pub mod tasks;
