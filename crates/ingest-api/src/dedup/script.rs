//! The claim script's side of the wire: what one call of `claim.lua` carries for one shard
//! (the keys and arguments of each event, in the layout the script walks), how its answers
//! read, and the name of a shard's part of a request for its receipt. Kept apart from the
//! connections so that the Redis ceiling benchmark sends exactly what the API sends.

use sift_core::{InvalidRecord, KeySpace, QueueRecord};

use super::{millis, DedupSettings, Outcome, WindowMode};

/// How long a tenant's hourly dedup counters are kept after their last write (8 days: a week
/// of dashboards).
const STATS_TTL_MS: u64 = 8 * 24 * 3600 * 1000;
/// The lifetime the claim script gives an hour's counters when it creates them: an hour
/// longer, since that hour's later writes do not renew it (a call per request saved).
const STATS_TTL_AT_CREATION_MS: u64 = STATS_TTL_MS + 3600 * 1000;

/// A valid event on its way to the queue.
#[derive(Clone)]
pub struct Claim<'a> {
    pub record: &'a QueueRecord<'a>,
    pub event_id_hash: Option<&'a str>,
    /// A plain event without an `event_id` whose client sent its `timestamp`: its identity
    /// (intent and timestamp) is claimed for the event-id window besides its intent's claim,
    /// so a resend after the semantic window is still collapsed (`duplicate_event`).
    pub by_time: bool,
}

/// The claim script's text (`claim.lua`).
pub const CLAIM_LUA: &str = include_str!("../lua/claim.lua");

/// What one claim-script call carries for one shard (see `claim.lua` for its layout).
pub struct ClaimCall<'c, 'r> {
    pub tenant: &'c str,
    /// The tenant's events per second, counted in the script (None: not counted here).
    pub rate_limit: Option<u32>,
    pub claims: &'c [Claim<'r>],
    pub invalid: &'c [InvalidRecord],
    /// The key of this part's receipt, when the request spans several shards.
    pub receipt: Option<&'c str>,
    pub now_ms: i64,
}

/// The `EVALSHA` of the claim script (`script_hash`, its SHA-1) for `call` on the shard named
/// by `keys`: exactly what the API sends, also used by the Redis ceiling benchmark.
pub fn claim_command(
    script_hash: &str,
    keys: &KeySpace,
    settings: &DedupSettings,
    call: &ClaimCall<'_, '_>,
) -> redis::Cmd {
    let s = settings;
    let (tenant, claims, invalid) = (call.tenant, call.claims, call.invalid);
    // KEYS: 5 fixed, per event the ones it uses, the receipt; ARGV: 11 fixed, 2 per event (3
    // for a stream chunk), the invalid records, 2 lifetimes.
    let streams = claims
        .iter()
        .filter(|c| c.record.stream_id.is_some())
        .count();
    let with_eid = claims.iter().filter(|c| c.event_id_hash.is_some()).count();
    let by_time = claims.iter().filter(|c| time_claimed(c)).count();
    let n_keys = 5 + claims.len() + with_eid + by_time + streams + 1;
    let n_args = 11 + 2 * claims.len() + streams + invalid.len() + 2;
    let mut cmd = redis::Cmd::with_capacity(3 + n_keys + n_args, 64 + 384 * claims.len());
    cmd.arg("EVALSHA").arg(script_hash).arg(n_keys);
    let queue = keys.queue();
    cmd.arg(&queue)
        .arg(keys.invalid())
        .arg(keys.open_streams())
        .arg(keys.dedup_stats(tenant, &sift_core::keys::hour_bucket(call.now_ms)))
        .arg(keys.rate(tenant, call.now_ms.div_euclid(1000)));
    // Each key written into one reused buffer (no String per key).
    let mut key = Vec::with_capacity(160);
    for claim in claims {
        let r = claim.record;
        keys.write_dedup(&mut key, &r.tenant_id, &r.semantic_hash);
        cmd.arg(&key[..]);
        if let Some(eid) = claim.event_id_hash {
            keys.write_event_id(&mut key, &r.tenant_id, eid);
            cmd.arg(&key[..]);
        } else if time_claimed(claim) {
            keys.write_event_time(&mut key, &r.tenant_id, &r.semantic_hash, r.timestamp_ms);
            cmd.arg(&key[..]);
        }
        if r.stream_id.is_some() {
            keys.write_stream_pending(&mut key, &r.tenant_id, &r.semantic_hash);
            cmd.arg(&key[..]);
        }
    }
    cmd.arg(call.receipt.unwrap_or(&queue));
    cmd.arg(call.now_ms)
        .arg(millis(s.window))
        .arg(millis(s.event_id_window))
        .arg(u8::from(s.mode == WindowMode::Sliding))
        .arg(s.high_water)
        .arg(s.invalid_max)
        .arg(millis(s.stream_timeout))
        .arg(claims.len())
        .arg(invalid.len())
        .arg(call.rate_limit.unwrap_or(0))
        .arg(millis(s.event_time_window));
    for claim in claims {
        let r = claim.record;
        cmd.arg(kind_flags(
            r.stream_id.is_some(),
            r.is_final,
            claim.event_id_hash.is_some(),
            time_claimed(claim),
        ));
        if r.stream_id.is_some() {
            cmd.arg(r.chunk_index.map_or(-1, i64::from));
        }
        cmd.arg(r.encode());
    }
    for record in invalid {
        cmd.arg(record.encode());
    }
    let receipt_ttl = if call.receipt.is_some() {
        millis(s.receipt_window).max(1)
    } else {
        0
    };
    cmd.arg(receipt_ttl).arg(STATS_TTL_AT_CREATION_MS);
    cmd
}

/// Whether `claim` sends its identity claim: only a plain event without an event_id has one.
fn time_claimed(claim: &Claim<'_>) -> bool {
    claim.by_time && claim.event_id_hash.is_none() && claim.record.stream_id.is_none()
}

/// An event's kind for the claim script: `p` plain, `s` stream chunk, `f` final stream chunk,
/// followed by `e` when it carries an event_id, or (plain events only) `t` when it is claimed
/// by its timestamp.
fn kind_flags(stream: bool, is_final: bool, has_event_id: bool, by_time: bool) -> &'static str {
    match (stream, is_final, has_event_id) {
        (false, _, false) if by_time => "pt",
        (false, _, false) => "p",
        (false, _, true) => "pe",
        (true, false, false) => "s",
        (true, false, true) => "se",
        (true, true, false) => "f",
        (true, true, true) => "fe",
    }
}

/// Names one shard's part of a request by what makes its events the same events on a retry:
/// their intents, event ids, stream chunks and timestamps (the client's, when it sent them;
/// the server's otherwise, which no retry repeats, so such a part gets no second chance).
/// Invalid records count too (by their text and error), so that a retry does not list them
/// twice.
pub(super) fn part_hash(claims: &[Claim<'_>], invalid: &[InvalidRecord]) -> String {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    for claim in claims {
        let r = claim.record;
        hasher.update(r.semantic_hash.as_bytes());
        hasher.update(b"|");
        hasher.update(claim.event_id_hash.unwrap_or("").as_bytes());
        hasher.update(b"|");
        hasher.update(r.chunk_index.map_or(-1, i64::from).to_be_bytes());
        hasher.update([u8::from(r.is_final)]);
        hasher.update(r.timestamp_ms.to_be_bytes());
    }
    for record in invalid {
        hasher.update(b"invalid|");
        hasher.update(record.field.as_bytes());
        hasher.update(b"|");
        hasher.update(record.raw.len().to_be_bytes());
        hasher.update(record.raw.as_bytes());
    }
    sift_core::keys::to_hex(&hasher.finalize())
}

pub(super) fn decode_status(value: &redis::Value) -> Option<Outcome> {
    match value {
        redis::Value::Int(1) => Some(Outcome::Accepted),
        redis::Value::Int(2) => Some(Outcome::CollapsedIntent),
        redis::Value::Int(3) => Some(Outcome::CollapsedEventId),
        redis::Value::Int(4) => Some(Outcome::CollapsedStreamChunk),
        redis::Value::Int(5) => Some(Outcome::CollapsedEvent),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use sift_core::{KeySpace, Limits};

    use super::{claim_command, kind_flags, ClaimCall, DedupSettings, WindowMode};
    use crate::body::Item;
    use crate::prepare::{claims, prepare};

    fn settings() -> DedupSettings {
        DedupSettings {
            window: std::time::Duration::from_millis(5000),
            event_id_window: std::time::Duration::from_millis(60_000),
            event_time_window: std::time::Duration::from_millis(60_000),
            receipt_window: std::time::Duration::from_millis(300_000),
            mode: WindowMode::Fixed,
            stream_timeout: std::time::Duration::from_millis(60_000),
            high_water: 0,
            invalid_max: 10,
            timeout: std::time::Duration::from_millis(1000),
        }
    }

    #[test]
    fn kinds_are_spelled_as_the_script_reads_them() {
        assert_eq!(kind_flags(false, false, false, false), "p");
        assert_eq!(kind_flags(false, false, false, true), "pt");
        assert_eq!(kind_flags(false, true, true, false), "pe");
        assert_eq!(kind_flags(true, false, false, false), "s");
        assert_eq!(kind_flags(true, false, true, false), "se");
        assert_eq!(kind_flags(true, true, false, false), "f");
        assert_eq!(kind_flags(true, true, true, false), "fe");
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
            "sha",
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
        let pending =
            |i: usize| keys.stream_pending("acme", &ready[i].record.semantic_hash.to_hex());
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
}
