//! The check every hourly figure of the read API must pass: equal to the same figure
//! computed straight from the raw events.

use anyhow::{Context, Result};
use serde_json::Value;

use crate::fixtures::f;
use crate::world::World;

/// Asserts that `rows` (an hourly answer for `tenant`, every hour with events) are the figures
/// computed straight from `ai_events FINAL` (each event once, as the rollups must count it): the same counts, sums and exact unique sessions, and
/// percentiles within the exact quantiles a few ranks to either side (t-digest).
pub async fn assert_hourly_equals_raw(w: &World, tenant: &str, rows: &[Value]) -> Result<()> {
    let direct = w
        .query_json(&format!(
            "SELECT formatDateTime(toStartOfHour(event_time), '%Y-%m-%dT%H:00:00Z') AS hour, model_version, model,
                    count() AS events, countIf(success) AS successes, sum(input_tokens) AS input_tokens,
                    sum(output_tokens) AS output_tokens, sum(token_count) AS total_tokens,
                    avg(latency_ms) AS avg_latency, uniqExact(session_id) AS sessions,
                    countIf(length(fallback_chain) > 1) AS fallbacks,
                    quantilesExact(0.47, 0.53, 0.92, 0.98, 0.97, 1.0)(latency_ms) AS bounds
             FROM {} FINAL WHERE tenant_id = '{tenant}' GROUP BY hour, model_version, model ORDER BY hour, model_version, model",
            w.table("ai_events")
        ))
        .await?;
    assert_eq!(rows.len(), direct.len());
    for (api, exact) in rows.iter().zip(&direct) {
        assert_eq!(api["hour"], exact["hour"]);
        assert_eq!(api["model_version"], exact["model_version"]);
        assert_eq!(api["model"], exact["model"]);
        for (a, e) in [
            ("events", "events"),
            ("successes", "successes"),
            ("input_tokens", "input_tokens"),
            ("output_tokens", "output_tokens"),
            ("total_tokens", "total_tokens"),
            ("unique_sessions", "sessions"),
            ("fallbacks", "fallbacks"),
        ] {
            assert_eq!(
                f(&api[a]),
                f(&exact[e]),
                "{a} of {} {}",
                exact["hour"],
                exact["model_version"]
            );
        }
        assert!((f(&api["avg_latency_ms"]) - f(&exact["avg_latency"])).abs() < 1e-6);
        assert!(
            (f(&api["success_rate"]) - f(&exact["successes"]) / f(&exact["events"])).abs() < 1e-9
        );
        // T-digest percentiles: within the exact quantiles a few ranks to either side.
        let b: Vec<f64> = exact["bounds"]
            .as_array()
            .context("bounds")?
            .iter()
            .map(f)
            .collect();
        for (name, lo, hi) in [
            ("p50_latency_ms", b[0], b[1]),
            ("p95_latency_ms", b[2], b[3]),
            ("p99_latency_ms", b[4], b[5]),
        ] {
            let v = f(&api[name]);
            assert!(
                v >= lo * 0.999 && v <= hi * 1.001,
                "{name} = {v}, exact range [{lo}, {hi}]"
            );
        }
    }
    Ok(())
}
