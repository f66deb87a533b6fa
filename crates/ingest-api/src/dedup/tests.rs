//! The claim command as the API builds it for a prepared request: each event sends only the
//! keys and arguments it uses, in the layout `claim.lua` walks.

use serde_json::json;
use sift_core::{KeySpace, Limits};
use sift_redis::claim::{claim_command, ClaimCall, ClaimSettings, WindowMode};

use crate::body::Item;
use crate::prepare::{claims, prepare};

fn settings() -> ClaimSettings {
    ClaimSettings {
        window: std::time::Duration::from_millis(5000),
        event_id_window: std::time::Duration::from_millis(60_000),
        event_time_window: std::time::Duration::from_millis(60_000),
        receipt_window: std::time::Duration::from_millis(300_000),
        mode: WindowMode::Fixed,
        stream_timeout: std::time::Duration::from_millis(60_000),
        high_water: 0,
        invalid_max: 10,
    }
}

/// Each event sends only the keys and arguments it uses, in the layout claim.lua walks.
#[test]
fn the_claim_command_sends_each_event_its_keys_and_arguments() {
    let base = json!({"session_id": "session-0001", "prompt_text": "Hi", "model_version": "v1.2.3",
        "latency_ms": 10, "token_count": 3});
    let mut with_id = base.clone();
    with_id["event_id"] = json!("e1");
    let mut chunk = base.clone();
    chunk["stream_id"] = json!("s1");
    chunk["chunk_index"] = json!(2);
    let mut last = chunk.clone();
    last["final"] = json!(true);
    last["event_id"] = json!("e2");
    let mut bad = base.clone();
    bad["latency_ms"] = json!(-1);
    let items = [base, with_id, chunk, last, bad]
        .map(Item::Event)
        .into_iter()
        .collect();
    let now = 1_790_000_000_000;
    let prepared = prepare("acme", items, &Limits::default(), now);
    let ready = prepared.records("acme", now);
    let claims = claims(&ready);
    let keys = KeySpace::new("t");
    let cmd = claim_command(
        &keys,
        &settings(),
        &ClaimCall {
            tenant: "acme",
            rate_limit: None,
            claims: &claims,
            invalid: &prepared.invalid,
            receipt: None,
            now_ms: now,
        },
    );
    let args: Vec<Vec<u8>> = cmd
        .args_iter()
        .map(|a| match a {
            redis::Arg::Simple(bytes) => bytes.to_vec(),
            _ => Vec::new(),
        })
        .collect();
    let text = |i: usize| String::from_utf8_lossy(&args[i]).into_owned();
    let dedup = |i: usize| keys.dedup("acme", &ready[i].record.semantic_hash.to_hex());
    let pending = |i: usize| keys.stream_pending("acme", &ready[i].record.semantic_hash.to_hex());
    let eid = |i: usize| keys.event_id("acme", ready[i].event_id_hash.as_deref().unwrap_or(""));
    // 5 fixed keys, 1 + 2 + 2 + 3 event keys, the receipt (the queue when there is none).
    assert_eq!(text(0), "EVALSHA");
    assert_eq!(text(2), "14");
    let event_keys: Vec<String> = (8..16).map(text).collect();
    assert_eq!(
        event_keys,
        [
            dedup(0),
            dedup(1),
            eid(1),
            dedup(2),
            pending(2),
            dedup(3),
            eid(3),
            pending(3)
        ]
    );
    assert_eq!(text(16), keys.queue());
    // 11 fixed arguments, then p / pe / s 2 / fe 2 with their records, the invalid one,
    // the receipt's and the counters' lifetimes.
    assert_eq!(text(17 + 7), "4", "events");
    assert_eq!(text(17 + 8), "1", "invalid records");
    assert_eq!(text(17 + 10), "60000", "the identity claim's window");
    let flags: Vec<String> = [28, 30, 32, 35].into_iter().map(text).collect();
    assert_eq!(flags, ["p", "pe", "s", "fe"]);
    assert_eq!((text(33), text(36)), ("2".to_owned(), "2".to_owned()));
    assert_eq!(args[29], ready[0].record.encode());
    assert_eq!(args[38], prepared.invalid[0].encode());
    assert_eq!(text(39), "0", "no receipt");
    assert_eq!(args.len(), 41);
}
