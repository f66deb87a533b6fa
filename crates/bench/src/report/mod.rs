//! The report of a run: one serializable struct (the `--json` file; its fields are the
//! stable schema documented in `main.rs`) and its text rendering for stdout.
//!
//! This file holds the schema itself, [`Report`] and the structs of its sections: what the
//! JSON file is, field by field, kept apart so that a change to the schema shows as a change
//! here. `compute.rs` fills a report from the run's [`Parts`] (rates, quantiles, the mode's
//! wording); `text.rs` renders it for people (and formats numbers, see [`thousands`]).

mod compute;
mod text;

use std::collections::BTreeMap;

use serde::Serialize;

use crate::check::Check;
use crate::config::DupKinds;

pub use self::compute::Parts;
pub use self::text::thousands;

/// Version of the JSON layout; bumped when a field changes meaning or goes away.
pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Serialize)]
pub struct Report {
    pub schema_version: u32,
    pub tool: Tool,
    pub host: Host,
    pub started_at: String,
    pub run_id: String,
    pub interrupted: bool,
    pub config: Config,
    pub counts: Counts,
    pub dedup_ratio: Option<f64>,
    pub rates: Rates,
    pub latency_ms: Latency,
    pub e2e: Option<E2e>,
    pub checks: Vec<Check>,
    pub passed: bool,
    pub exit_code: u8,
}

#[derive(Debug, Serialize)]
pub struct Tool {
    pub name: &'static str,
    pub version: &'static str,
}

#[derive(Debug, Serialize)]
pub struct Host {
    pub cores: usize,
}

#[derive(Debug, Serialize)]
pub struct Config {
    pub url: String,
    pub mode: &'static str,
    pub concurrency: u32,
    pub target_events_per_s: Option<f64>,
    pub batch_size: u32,
    pub format: &'static str,
    pub gzip: bool,
    pub tenants: usize,
    pub sessions_per_tenant: u32,
    pub models: u32,
    pub duplicates: f64,
    pub dup_kinds: DupKinds,
    pub stream_chunks: u32,
    pub variant_max_age_s: f64,
    pub duration_s: Option<f64>,
    pub events: Option<u64>,
    pub warmup_s: f64,
    pub timeout_s: f64,
    pub threads: usize,
    pub seed: u64,
    pub max_error_rate: f64,
    pub clickhouse: Option<ClickHouseConfig>,
}

#[derive(Debug, Serialize)]
pub struct ClickHouseConfig {
    pub url: String,
    pub database: String,
    pub lag_timeout_s: f64,
    pub settle_s: f64,
}

#[derive(Debug, Serialize)]
pub struct Counts {
    pub requests: u64,
    pub events: u64,
    pub warmup_requests: u64,
    pub warmup_events: u64,
    pub measured_requests: u64,
    pub measured_events: u64,
    pub accepted: u64,
    pub collapsed: Collapsed,
    pub rejected: u64,
    pub first_rejection: Option<String>,
    pub unique_intents: u64,
    /// Streams given up unfinished after failed requests.
    pub abandoned_streams: u64,
    pub failed_requests: u64,
    pub errors: BTreeMap<String, u64>,
    pub first_errors: BTreeMap<String, String>,
    pub unknown_outcome_requests: u64,
    pub unknown_outcome_events: u64,
    pub sent_by_kind: BTreeMap<&'static str, u64>,
    pub answers_by_kind: BTreeMap<&'static str, BTreeMap<&'static str, u64>>,
    pub unexpected_answers: u64,
}

#[derive(Debug, Serialize)]
pub struct Collapsed {
    pub total: u64,
    pub duplicate_intent: u64,
    pub duplicate_event_id: u64,
    pub stream_chunk: u64,
    pub other: u64,
}

#[derive(Debug, Serialize)]
pub struct Rates {
    pub elapsed_s: f64,
    pub events_per_s: f64,
    pub requests_per_s: f64,
    pub target_events_per_s: Option<f64>,
    /// Achieved over target (open loop).
    pub achieved_ratio: Option<f64>,
    pub late_sends_server: u64,
    pub late_sends_tool: u64,
    pub max_send_delay_ms: f64,
    /// Open loop: achieved at least 95 % of the target.
    pub kept_up: Option<bool>,
}

#[derive(Debug, Serialize)]
pub struct Latency {
    /// `send` (closed loop) or `intended_send` (open loop: coordinated omission corrected).
    pub measured_from: &'static str,
    pub count: u64,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

#[derive(Debug, Serialize)]
pub struct E2e {
    pub rows: u64,
    pub distinct_rows: u64,
    pub expected_rows: u64,
    pub unique_intents: u64,
    pub reached: bool,
    pub waited_s: f64,
    pub drain_ms: Option<f64>,
    pub lag_ms: Lag,
    pub error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Lag {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
    pub min: f64,
    pub mean: f64,
}
