//! What parsing a batch body costs the API's CPU, with the check for repeated keys
//! (`body::parse_batch`'s [`Checked`]) beside serde_json's plain `Value`, in the same run:
//! 200 bodies of 100 events each (the mix the report's drain queues, as JSON arrays and as
//! NDJSON), median and best of 25 rounds, per event (the machine is shared: the best is the
//! cost, the median what it was).
//!
//! `cargo bench -p sift-ingest-api --bench body`

use std::time::Instant;

use serde_json::Value;
use sift_ingest::json::Checked;

// The events the report's drain queues.
#[path = "../../../tests/benches/report/mix.rs"]
mod mix;

const BODIES: usize = 200;
const PER_BODY: usize = 100;

fn median_and_best(mut samples: Vec<f64>) -> (f64, f64) {
    samples.sort_by(f64::total_cmp);
    (samples[samples.len() / 2], samples[0])
}

/// Runs `parse` over every body 25 times; ns per event, median and best.
fn measure(bodies: &[String], parse: impl Fn(&str) -> usize) -> (f64, f64) {
    let rounds: Vec<f64> = (0..25)
        .map(|_| {
            let started = Instant::now();
            let events: usize = bodies.iter().map(|b| parse(b)).sum();
            assert_eq!(events, BODIES * PER_BODY);
            started.elapsed().as_secs_f64() * 1e9 / events as f64
        })
        .collect();
    median_and_best(rounds)
}

fn main() {
    let now_ms = 1_790_000_000_000;
    let events: Vec<Vec<Value>> = (0..BODIES)
        .map(|b| {
            (0..PER_BODY)
                .map(|i| mix::event(b * PER_BODY + i, now_ms))
                .collect()
        })
        .collect();
    let arrays: Vec<String> = events
        .iter()
        .map(|e| Value::Array(e.clone()).to_string())
        .collect();
    let ndjson: Vec<String> = events
        .iter()
        .map(|e| e.iter().map(|v| format!("{v}\n")).collect())
        .collect();

    let plain_array = measure(&arrays, |b| {
        match serde_json::from_str::<Value>(b).expect("JSON") {
            Value::Array(a) => std::hint::black_box(a).len(),
            _ => 0,
        }
    });
    let checked_array = measure(&arrays, |b| {
        let events: Vec<Checked> = serde_json::from_str(b).expect("JSON");
        assert!(events.iter().all(|e| e.duplicate.is_none()));
        std::hint::black_box(events).len()
    });
    let plain_lines = measure(&ndjson, |b| {
        let events: Vec<Value> = b
            .lines()
            .map(|l| serde_json::from_str(l).expect("JSON"))
            .collect();
        std::hint::black_box(events).len()
    });
    let checked_lines = measure(&ndjson, |b| {
        let events: Vec<Checked> = b
            .lines()
            .map(|l| serde_json::from_str(l).expect("JSON"))
            .collect();
        std::hint::black_box(events).len()
    });
    println!("| body | serde_json Value, ns/event (median, best) | checked for repeated keys | ratio of medians |");
    println!("|---|---|---|---|");
    for (name, plain, checked) in [
        ("JSON array of 100", plain_array, checked_array),
        ("NDJSON, 100 lines", plain_lines, checked_lines),
    ] {
        println!(
            "| {name} | {:.0} ({:.0}) | {:.0} ({:.0}) | {:.2} |",
            plain.0,
            plain.1,
            checked.0,
            checked.1,
            checked.0 / plain.0
        );
    }
}
