//! Tests of the whole generator: it plays against a simulated server that answers as sift's
//! dedup should, and checks the proportions, that every expected answer is the one given, the
//! event budget and the re-sending of failed stream chunks.
//!
//! They drive [`Workload`] through its public face (`build`, `answered`), so they span
//! `schedule.rs` and `stream.rs` and live in a file of their own.

use super::*;
use std::collections::{HashMap, HashSet};

use sift_core::normalize::normalize;

fn config(duplicates: f64, batch_size: usize) -> WorkloadConfig {
    WorkloadConfig {
        run_id: "test1".into(),
        tenants: 2,
        sessions: 5,
        models: 3,
        duplicates,
        kinds: DupKinds {
            retry: 1.0,
            variant: 1.0,
            stream: 1.0,
        },
        stream_chunks: 4,
        variant_max_age: Duration::from_secs(1),
        batch_size,
        format: Format::Array,
        seed: 7,
    }
}

/// Plays a server that answers exactly as sift's dedup should, and checks that the
/// workload keeps its proportions and that every expected answer is what it gets.
fn simulate(cfg: WorkloadConfig, requests: usize) -> (Workload, [u64; 5]) {
    let mut workload = Workload::new(cfg);
    let mut by_kind = [0u64; 5];
    let mut seen_intents: HashSet<String> = HashSet::new();
    let mut seen_ids: HashSet<String> = HashSet::new();
    let mut streams: HashMap<String, ()> = HashMap::new();
    let mut in_flight: VecDeque<Request> = VecDeque::new();
    let start = Instant::now();
    for i in 0..requests {
        let now = start + Duration::from_millis(i as u64);
        if let Some(request) = workload.build(now, 1_796_158_800_000 + i as i64, false) {
            in_flight.push_back(request);
        }
        // Four requests in flight: the oldest is answered.
        while in_flight.len() > 4 || (i + 1 == requests && !in_flight.is_empty()) {
            let request = in_flight.pop_front().unwrap();
            let events: Vec<serde_json::Value> = serde_json::from_slice(&request.body).unwrap();
            let mut outcomes = Vec::new();
            for (event, tag) in events.iter().zip(&request.meta.tags) {
                let key = format!(
                    "{}|{}|{}",
                    request.tenant,
                    event["session_id"],
                    normalize(event["prompt_text"].as_str().unwrap())
                );
                let outcome = if let Some(stream) = event["stream_id"].as_str() {
                    if streams.insert(stream.to_owned(), ()).is_none() {
                        Outcome::Accepted
                    } else {
                        Outcome::StreamChunk
                    }
                } else if event["event_id"]
                    .as_str()
                    .is_some_and(|id| !seen_ids.insert(id.to_owned()))
                {
                    Outcome::DuplicateEventId
                } else if !seen_intents.insert(key) {
                    Outcome::DuplicateIntent
                } else {
                    Outcome::Accepted
                };
                assert_eq!(outcome, tag.kind().expected(), "{event}");
                by_kind[tag.kind().index()] += 1;
                outcomes.push(outcome);
            }
            workload.answered(request.tenant, request.meta, Some(&outcomes), now);
        }
    }
    (workload, by_kind)
}

#[test]
fn proportions_and_expected_answers_in_batches() {
    let (workload, by_kind) = simulate(config(0.6, 50), 400);
    let total: u64 = by_kind.iter().sum();
    let dups = by_kind[1] + by_kind[2] + by_kind[4];
    let fraction = dups as f64 / total as f64;
    assert!((fraction - 0.6).abs() < 0.02, "{fraction} {by_kind:?}");
    for kind in [Kind::Retry, Kind::Variant, Kind::StreamChunk] {
        let share = by_kind[kind.index()] as f64 / dups as f64;
        assert!(
            (share - 1.0 / 3.0).abs() < 0.05,
            "{kind:?} {share} {by_kind:?}"
        );
    }
    assert_eq!(workload.unique_intents(), by_kind[0] + by_kind[3]);
}

#[test]
fn single_events_too() {
    let (_, by_kind) = simulate(config(0.5, 1), 5000);
    let dups = (by_kind[1] + by_kind[2] + by_kind[4]) as f64;
    for kind in [Kind::Retry, Kind::Variant, Kind::StreamChunk] {
        let share = by_kind[kind.index()] as f64 / dups;
        assert!(
            (share - 1.0 / 3.0).abs() < 0.05,
            "{kind:?} {share} {by_kind:?}"
        );
    }
}

#[test]
fn an_event_budget_is_met_exactly_and_streams_end() {
    let mut cfg = config(0.8, 7);
    cfg.kinds = DupKinds {
        retry: 0.0,
        variant: 0.0,
        stream: 1.0,
    };
    let mut workload = Workload::new(cfg);
    workload.set_budget(Some(1000));
    let now = Instant::now();
    let mut sent = 0;
    while !workload.exhausted() {
        let request = workload
            .build(now, 1_796_158_800_000, false)
            .expect("something to send");
        sent += request.meta.events();
        let outcomes = vec![Outcome::Accepted; request.meta.events()];
        workload.answered(request.tenant, request.meta, Some(&outcomes), now);
    }
    assert_eq!(sent, 1000);
    assert_eq!(workload.open_streams(), 0);
}

#[test]
fn a_failed_request_sends_its_stream_chunks_again() {
    let mut cfg = config(0.9, 3);
    cfg.kinds = DupKinds {
        retry: 0.0,
        variant: 0.0,
        stream: 1.0,
    };
    let mut workload = Workload::new(cfg);
    let now = Instant::now();
    let first = workload.build(now, 1_796_158_800_000, false).unwrap();
    assert!(matches!(first.meta.tags[0], Tag::StreamStart));
    workload.answered(first.tenant, first.meta, None, now);
    // Nothing was answered: the tenant's stream starts again at chunk 0.
    let again = workload.build(now, 1_796_158_800_000, true).unwrap();
    assert!(matches!(again.meta.tags[0], Tag::StreamStart));
    assert_eq!(workload.unique_intents(), 0);
    // Answered now, then failing for good: given up, and counted (the server has it).
    let outcomes = vec![Outcome::Accepted; again.meta.events()];
    workload.answered(again.tenant, again.meta, Some(&outcomes), now);
    // One failure was counted above already.
    for _ in 0..STREAM_MAX_RESENDS {
        let request = workload.build(now, 1_796_158_800_000, true).unwrap();
        assert!(matches!(request.meta.tags[0], Tag::StreamChunk));
        workload.answered(request.tenant, request.meta, None, now);
    }
    assert!(workload.build(now, 1_796_158_800_000, true).is_none());
    assert_eq!(workload.open_streams(), 0);
    assert_eq!(workload.abandoned_streams(), 1);
    assert_eq!(workload.unique_intents(), 1);
}
