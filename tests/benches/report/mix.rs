//! The mix of events the benchmarks queue (tenants, sessions, models, prompts, an hour of
//! timestamps): the drain of the report and the batcher's `chunk` bench (which includes this
//! file) measure the same records.

use serde_json::json;

/// Event number `i` of the mix, as a client sends it (`now_ms`: the time of the run).
pub fn event(i: usize, now_ms: i64) -> serde_json::Value {
    let models = ["v1.0.0", "v1.1.0", "v2.0.0", "v2.1.0", "v3.0.0"];
    json!({
        "session_id": format!("bench-session-{:06}", i / 8),
        "prompt_text": format!("Summarise support ticket {i} for the customer, in three bullet points"),
        "model_version": models[i % models.len()],
        "latency_ms": 40.0 + (i % 900) as f64,
        "input_tokens": (i % 700) as u64, "output_tokens": (i % 1300) as u64,
        "success": !i.is_multiple_of(17),
        "provider": "openai", "operation": "chat",
        "timestamp": (now_ms - (i as i64 * 7919) % 3_600_000) as f64 / 1000.0,
    })
}
