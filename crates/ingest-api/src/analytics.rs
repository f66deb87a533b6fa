//! The read side: hourly statistics from the rollups, session metrics from `ai_sessions`, and
//! the dedup counters from Redis. Every query is parameterized (ClickHouse query parameters),
//! and every one is scoped to the tenant of the API key.

use std::collections::HashMap;

use clickhouse::{Client, Row};
use serde::{Deserialize, Serialize};

use crate::error::ApiError;

/// One hour of one model, as answered by `GET /v1/ai/stats/hourly`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct HourlyStats {
    /// Start of the hour, RFC 3339, UTC.
    pub hour: String,
    /// The same, in epoch seconds (for grouping, not in the answer).
    #[serde(skip)]
    pub hour_start: u32,
    /// The application's version ('' for events that named only their provider's model).
    pub model_version: String,
    /// The provider's model name ('' for events that did not name it).
    pub model: String,
    pub events: u64,
    pub successes: u64,
    pub success_rate: f64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub total_tokens: u64,
    pub avg_latency_ms: f64,
    pub p50_latency_ms: f64,
    pub p95_latency_ms: f64,
    pub p99_latency_ms: f64,
    pub unique_sessions: u64,
    pub fallbacks: u64,
    pub fallback_rate: f64,
}

/// Phase 1, one query: the sums of the live rollup (cheap columns), beside the finalized
/// figures of the same hour and model when there are some.
#[derive(Debug, Row, Deserialize)]
struct HourlyRow {
    hour: u32,
    model_version: String,
    model: String,
    /// Named apart from the column it sums: named `events`, the alias would be what
    /// `sumIf(events, src = 1)` refers to (an aggregate inside an aggregate).
    live_events: u64,
    successes: u64,
    input_tokens: u64,
    output_tokens: u64,
    total_tokens: u64,
    latency_sum_ms: f64,
    latency_count: u64,
    fallbacks: u64,
    final_events: u64,
    final_quantiles: Vec<f64>,
    final_sessions: u64,
}

const HOURLY: &str = "
SELECT hour, model_version, model,
       sumIf(events, src = 0) AS live_events, sum(successes) AS successes,
       sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens,
       sum(total_tokens) AS total_tokens, sum(latency_sum_ms) AS latency_sum_ms,
       sum(latency_count) AS latency_count, sum(fallbacks) AS fallbacks,
       sumIf(events, src = 1) AS final_events, anyIf(quantiles, src = 1) AS final_quantiles,
       sumIf(sessions, src = 1) AS final_sessions
FROM
(
    SELECT 0 AS src, toUInt32(hour) AS hour, toString(model_version) AS model_version,
           toString(model) AS model, events,
           successes, input_tokens, output_tokens, total_tokens, latency_sum_ms, latency_count,
           fallbacks, CAST([], 'Array(Float64)') AS quantiles, toUInt64(0) AS sessions
    FROM ai_events_hourly
    WHERE tenant_id = {tenant:String}
      AND hour >= toDateTime({from:UInt32}, 'UTC') AND hour < toDateTime({to:UInt32}, 'UTC')
      AND ({version:String} = '' OR model_version = {version:String})
      AND ({name:String} = '' OR model = {name:String})
    UNION ALL
    SELECT 1, toUInt32(hour), toString(model_version), toString(model), events, 0, 0, 0, 0, 0, 0, 0,
           [p50_latency_ms, p95_latency_ms, p99_latency_ms], sessions
    FROM ai_events_hourly_final FINAL
    WHERE tenant_id = {tenant:String}
      AND hour >= toDateTime({from:UInt32}, 'UTC') AND hour < toDateTime({to:UInt32}, 'UTC')
      AND ({version:String} = '' OR model_version = {version:String})
      AND ({name:String} = '' OR model = {name:String})
)
GROUP BY hour, model_version, model
HAVING live_events > 0
ORDER BY hour, model_version, model";

/// Phase 2: percentiles and sessions merged from the states, for the groups without an
/// up-to-date finalized row.
#[derive(Debug, Row, Deserialize)]
struct StateRow {
    hour: u32,
    model_version: String,
    model: String,
    quantiles: Vec<f64>,
    sessions: u64,
}

const FROM_STATES: &str = "
SELECT toUInt32(hour) AS hour, toString(model_version) AS model_version, toString(model) AS model,
       arrayMap(q -> toFloat64(q), quantilesTDigestMerge(0.5, 0.95, 0.99)(latency_tdigest)) AS quantiles,
       uniqMerge(sessions) AS sessions
FROM ai_events_hourly
WHERE tenant_id = {tenant:String}
  AND hour >= toDateTime({from:UInt32}, 'UTC') AND hour < toDateTime({to:UInt32}, 'UTC')
  AND ({version:String} = '' OR model_version = {version:String})
  AND ({name:String} = '' OR model = {name:String})
  AND ({all:Bool} OR has({keys:Array(Tuple(UInt32, String, String))},
                         (toUInt32(hour), toString(model_version), toString(model))))
GROUP BY hour, model_version, model";

/// An hour's group in the rollups: its start, `model_version` and `model`.
type Group = (u32, String, String);

/// Which models an hourly question is about (None: every one).
#[derive(Debug, Clone, Copy, Default)]
pub struct Models<'a> {
    /// The application's `model_version`.
    pub version: Option<&'a str>,
    /// The provider's `model` name.
    pub name: Option<&'a str>,
}

impl Models<'_> {
    /// Whether `row` is one of these models.
    pub fn admit(&self, row: &HourlyStats) -> bool {
        self.version.is_none_or(|v| row.model_version == v)
            && self.name.is_none_or(|n| row.model == n)
    }
}

/// The hourly figures of `tenant` for hours starting in `[from, to)` (epoch seconds).
///
/// Finalized rows (see `ai_events_hourly_final`) are used only where their event count equals
/// the live rollup's; every other group is merged from its states here, so a late event is in
/// the answer at once, and the answer is the same whether the flusher has run or not.
pub async fn hourly(
    client: &Client,
    tenant: &str,
    from: u32,
    to: u32,
    models: Models<'_>,
) -> Result<Vec<HourlyStats>, ApiError> {
    let query = |sql: &str| {
        client
            .query(sql)
            .param("tenant", tenant)
            .param("from", from)
            .param("to", to)
            .param("version", models.version.unwrap_or(""))
            .param("name", models.name.unwrap_or(""))
    };
    // Copies of a finalized row share its hour, hence its monthly partition.
    let rows: Vec<HourlyRow> = query(HOURLY)
        .with_setting("do_not_merge_across_partitions_select_final", "1")
        .fetch_all()
        .await
        .map_err(ApiError::from)?;
    // A finalized row counts only while no event has come for its hour since.
    let stale: Vec<Group> = rows
        .iter()
        .filter(|r| r.final_events != r.live_events)
        .map(|r| (r.hour, r.model_version.clone(), r.model.clone()))
        .collect();
    let mut merged: HashMap<Group, (Vec<f64>, u64)> = HashMap::new();
    if !stale.is_empty() {
        let all = stale.len() == rows.len();
        let keys: &[Group] = if all { &[] } else { &stale };
        let states: Vec<StateRow> = query(FROM_STATES)
            .param("all", all)
            .param("keys", keys)
            .fetch_all()
            .await
            .map_err(ApiError::from)?;
        merged.extend(states.into_iter().map(|s| {
            (
                (s.hour, s.model_version, s.model),
                (s.quantiles, s.sessions),
            )
        }));
    }
    Ok(rows
        .into_iter()
        .map(|row| {
            let (quantiles, sessions) = if row.final_events == row.live_events {
                (row.final_quantiles.clone(), row.final_sessions)
            } else {
                merged
                    .remove(&(row.hour, row.model_version.clone(), row.model.clone()))
                    .unwrap_or_default()
            };
            HourlyStats::new(row, &quantiles, sessions)
        })
        .collect())
}

/// Sums and merged states in one query: the cheaper way for a few hours, where merging their
/// states costs less than a second round trip to ClickHouse. It answers in the shape of
/// [`HOURLY`], with the merged figures where the finalized ones would be.
const MERGED: &str = "
SELECT toUInt32(hour) AS hour, toString(model_version) AS model_version,
       toString(model) AS model, sum(events) AS live_events, sum(successes) AS successes,
       sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens,
       sum(total_tokens) AS total_tokens, sum(latency_sum_ms) AS latency_sum_ms,
       sum(latency_count) AS latency_count, sum(fallbacks) AS fallbacks,
       live_events AS final_events,
       arrayMap(q -> toFloat64(q), quantilesTDigestMerge(0.5, 0.95, 0.99)(latency_tdigest)) AS final_quantiles,
       uniqMerge(sessions) AS final_sessions
FROM ai_events_hourly
WHERE tenant_id = {tenant:String}
  AND hour >= toDateTime({from:UInt32}, 'UTC') AND hour < toDateTime({to:UInt32}, 'UTC')
GROUP BY hour, model_version, model
HAVING live_events > 0
ORDER BY hour, model_version, model";

/// The same figures as [`hourly`] for every model, merged from the states in one query.
pub async fn hourly_merged(
    client: &Client,
    tenant: &str,
    from: u32,
    to: u32,
) -> Result<Vec<HourlyStats>, ApiError> {
    let rows: Vec<HourlyRow> = client
        .query(MERGED)
        .param("tenant", tenant)
        .param("from", from)
        .param("to", to)
        .fetch_all()
        .await
        .map_err(ApiError::from)?;
    Ok(rows
        .into_iter()
        .map(|row| {
            let (quantiles, sessions) = (row.final_quantiles.clone(), row.final_sessions);
            HourlyStats::new(row, &quantiles, sessions)
        })
        .collect())
}

impl HourlyStats {
    fn new(r: HourlyRow, quantiles: &[f64], sessions: u64) -> Self {
        let ratio = |part: u64, whole: u64| {
            if whole == 0 {
                0.0
            } else {
                part as f64 / whole as f64
            }
        };
        let q = |i: usize| quantiles.get(i).copied().unwrap_or(0.0);
        Self {
            hour: rfc3339(i64::from(r.hour)),
            hour_start: r.hour,
            success_rate: ratio(r.successes, r.live_events),
            fallback_rate: ratio(r.fallbacks, r.live_events),
            avg_latency_ms: if r.latency_count == 0 {
                0.0
            } else {
                r.latency_sum_ms / r.latency_count as f64
            },
            p50_latency_ms: q(0),
            p95_latency_ms: q(1),
            p99_latency_ms: q(2),
            model_version: r.model_version,
            model: r.model,
            events: r.live_events,
            successes: r.successes,
            input_tokens: r.input_tokens,
            output_tokens: r.output_tokens,
            total_tokens: r.total_tokens,
            unique_sessions: sessions,
            fallbacks: r.fallbacks,
        }
    }
}

/// One session's metrics, as answered by `GET /v1/ai/sessions/{session_id}`.
#[derive(Debug, Clone, Row, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SessionStats {
    pub session_id: String,
    pub turns: u32,
    pub successes: u32,
    pub failures: u32,
    pub fallbacks: u32,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub total_tokens: u64,
    pub models: Vec<String>,
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    pub duration_ms: i64,
    pub computed_at_ms: i64,
}

const SESSION: &str = "
SELECT session_id, turns, successes, failures, fallbacks, input_tokens, output_tokens, total_tokens,
       models, toUnixTimestamp64Milli(first_seen) AS first_seen_ms, toUnixTimestamp64Milli(last_seen) AS last_seen_ms,
       duration_ms, toUnixTimestamp64Milli(computed_at) AS computed_at_ms
FROM ai_sessions FINAL
WHERE tenant_id = {tenant:String} AND session_id = {session:String}";

pub async fn session(
    client: &Client,
    tenant: &str,
    session_id: &str,
) -> Result<Option<SessionStats>, ApiError> {
    client
        .query(SESSION)
        .param("tenant", tenant)
        .param("session", session_id)
        .fetch_optional()
        .await
        .map_err(ApiError::from)
}

/// Epoch seconds as RFC 3339 (UTC).
pub fn rfc3339(secs: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}
