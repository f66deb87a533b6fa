//! What forming a chunk costs the batcher's CPU: 50,000 queue records, in frames of 100 as
//! the batch API queues them (tenants interleaved, an hour of timestamps), decoded, named,
//! encoded into RowBinary and put in the table's order (`Chunk::new`). Median and best of 25
//! rounds, per row (the machine is shared: the best is the cost, the median what it was).
//!
//! `cargo bench -p sift-batcher --bench chunk`

use std::time::Instant;

use sift_batcher::chunk::Chunk;

// The events the report's drain queues.
#[path = "../../../tests/benches/report/mix.rs"]
mod mix;

fn elements(rows: usize, now_ms: i64) -> Vec<Vec<u8>> {
    let limits = sift_core::Limits::default();
    let records: Vec<Vec<u8>> = (0..rows)
        .map(|i| {
            let event = sift_core::validate::validate(&mix::event(i, now_ms), &limits, now_ms)
                .expect("valid");
            sift_core::QueueRecord::new(&format!("tenant-{}", i % 5), &event, now_ms).encode()
        })
        .collect();
    records
        .chunks(100)
        .map(|frame| sift_core::frame(&frame.iter().map(Vec::as_slice).collect::<Vec<_>>()))
        .collect()
}

fn median_and_best(mut samples: Vec<f64>) -> (f64, f64) {
    samples.sort_by(f64::total_cmp);
    (samples[samples.len() / 2], samples[0])
}

fn main() {
    let rows = 50_000;
    let input = elements(rows, 1_790_000_000_000);
    let mut form = Vec::new();
    for _ in 0..25 {
        let copy = input.clone();
        let started = Instant::now();
        let chunk = Chunk::new(copy);
        form.push(started.elapsed().as_secs_f64());
        assert_eq!(chunk.row_count(), rows);
        std::hint::black_box(chunk);
    }
    let per_row = |s: f64| s * 1e9 / rows as f64;
    let (median, best) = median_and_best(form);
    println!(
        "a chunk of {rows} rows: Chunk::new {:.0} ns a row (median), {:.0} (best)",
        per_row(median),
        per_row(best)
    );
}
