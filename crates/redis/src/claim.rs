//! The claim: dedup layer 1 in one atomic call of `claim.lua` per shard, which claims each
//! event's intent (and its `event_id`, or its client timestamp), enqueues the accepted ones
//! and counts them. The API claims every request this way, and `dlq replay` claims a
//! revalidated invalid event the same way, so a replay can never write an event the API
//! would have collapsed. This module lays out one call's keys and arguments (the layout
//! `claim.lua` walks), sends it (with WAIT when replicas are required), and reads its
//! answers. The Redis ceiling benchmark sends exactly what it builds.

use std::sync::LazyLock;
use std::time::Duration;

use redis::aio::ConnectionLike;
use sift_core::{InvalidRecord, KeySpace, QueueRecord};

use crate::call::RedisError;
use crate::scripts;
use crate::shards::Shard;

/// How the semantic window behaves on a duplicate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowMode {
    /// The window starts at the first event and does not move.
    Fixed,
    /// Each duplicate extends the window: a steady retry storm stays collapsed.
    Sliding,
}

/// The windows and bounds of a claim (from [`crate::ClaimArgs`]).
#[derive(Debug, Clone)]
pub struct ClaimSettings {
    pub window: Duration,
    pub event_id_window: Duration,
    /// How long an event without an event_id is known by its intent and client timestamp.
    pub event_time_window: Duration,
    /// How long a shard keeps its answer to its part of a multi-shard request.
    pub receipt_window: Duration,
    pub mode: WindowMode,
    pub stream_timeout: Duration,
    /// Queue length from which requests are refused (0: no limit).
    pub high_water: u64,
    pub invalid_max: u64,
}

/// What happened to one valid event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Accepted,
    CollapsedIntent,
    CollapsedEventId,
    CollapsedStreamChunk,
    /// The same intent with the same client timestamp, within the event-id window.
    CollapsedEvent,
}

impl Outcome {
    /// The `reason` of a collapsed answer.
    pub fn reason(self) -> Option<&'static str> {
        match self {
            Self::Accepted => None,
            Self::CollapsedIntent => Some("duplicate_intent"),
            Self::CollapsedEventId => Some("duplicate_event_id"),
            Self::CollapsedStreamChunk => Some("stream_chunk"),
            Self::CollapsedEvent => Some("duplicate_event"),
        }
    }
}

/// What the claim script answered for one call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// One outcome per claim, in order.
    Outcomes(Vec<Outcome>),
    /// The queue is at its high-water mark: nothing was written.
    QueueFull,
    /// The tenant is over its rate: nothing was written.
    RateLimited,
}

/// The claim script's text (`lua/claim.lua`).
pub const CLAIM_LUA: &str = include_str!("lua/claim.lua");

static CLAIM: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(CLAIM_LUA));

/// The claim script's SHA-1, as EVALSHA names it.
pub fn claim_hash() -> &'static str {
    CLAIM.get_hash()
}

/// Sends `cmd` (from [`claim_command`]) to `shard` on `conn` and reads the answer for
/// `claims` events. A Redis without the script (restarted, a promoted replica) answers
/// NOSCRIPT without running anything, so sending it again as EVAL with the text is safe (and
/// caches it on that node). With `--redis-wait-replicas`, WAIT follows in the same round trip.
/// Not met is an error once the claims were taken: they are on the master, maybe not on the
/// replica that would replace it, so the client must retry (its retry is collapsed if they
/// survive a failover). A refusal (queue full, over the rate) wrote nothing and is answered
/// as such.
pub async fn send<C: ConnectionLike>(
    shard: &Shard,
    conn: &mut C,
    cmd: &redis::Cmd,
    claims: usize,
) -> Result<Answer, RedisError> {
    if shard.wait_replicas() == 0 {
        let value: redis::Value = match cmd.query_async(conn).await {
            Err(e) if scripts::is_noscript(&e) => as_eval(cmd).query_async(conn).await?,
            answer => answer?,
        };
        return read_answer(value, claims);
    }
    let with_wait = |cmd: redis::Cmd| {
        let mut pipe = redis::pipe();
        pipe.add_command(cmd)
            .cmd("WAIT")
            .arg(shard.wait_replicas())
            .arg(shard.wait_ms());
        pipe
    };
    let (value, acked): (redis::Value, i64) = match with_wait(cmd.clone()).query_async(conn).await {
        Err(e) if scripts::is_noscript(&e) => with_wait(as_eval(cmd)).query_async(conn).await?,
        answer => answer?,
    };
    let answer = read_answer(value, claims)?;
    if matches!(answer, Answer::Outcomes(_)) {
        shard.replicas_met(acked)?;
    }
    Ok(answer)
}

/// The claim's EVALSHA as EVAL with the script's text.
fn as_eval(cmd: &redis::Cmd) -> redis::Cmd {
    let mut eval = redis::cmd("EVAL");
    eval.arg(CLAIM_LUA);
    for arg in cmd.args_iter().skip(2) {
        if let redis::Arg::Simple(bytes) = arg {
            eval.arg(bytes);
        }
    }
    eval
}

/// The script's answer for `claims` events.
fn read_answer(value: redis::Value, claims: usize) -> Result<Answer, RedisError> {
    let unexpected = |what: String| {
        RedisError::Redis(redis::RedisError::from((
            redis::ErrorKind::Parse,
            "the claim script answered",
            what,
        )))
    };
    match value {
        redis::Value::Int(-1) => Ok(Answer::QueueFull),
        redis::Value::Int(-2) => Ok(Answer::RateLimited),
        redis::Value::Array(items) if items.len() == claims => items
            .iter()
            .map(decode_status)
            .collect::<Option<Vec<_>>>()
            .map(Answer::Outcomes)
            .ok_or_else(|| unexpected("an unknown status".into())),
        other => Err(unexpected(format!("{other:?}"))),
    }
}

/// What an event claims besides its intent: the hash of its `event_id`, and whether it is
/// claimed by its client timestamp (a plain event without an event_id whose client sent one).
pub fn identity(event: &sift_core::Event) -> (Option<String>, bool) {
    let by_time = event.timestamp_given && event.event_id.is_none() && event.stream.is_none();
    (
        event.event_id.as_deref().map(sift_core::hash::sha256_hex),
        by_time,
    )
}

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

/// The `EVALSHA` of the claim script for `call` on the shard named by `keys`: exactly what
/// the API sends.
pub fn claim_command(
    keys: &KeySpace,
    settings: &ClaimSettings,
    call: &ClaimCall<'_, '_>,
) -> redis::Cmd {
    claim_command_for(claim_hash(), keys, settings, call)
}

/// As [`claim_command`], naming the script by `script_hash`: the Redis ceiling benchmark
/// compares another script of the same layout this way.
pub fn claim_command_for(
    script_hash: &str,
    keys: &KeySpace,
    settings: &ClaimSettings,
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
pub fn part_hash(claims: &[Claim<'_>], invalid: &[InvalidRecord]) -> String {
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

fn decode_status(value: &redis::Value) -> Option<Outcome> {
    match value {
        redis::Value::Int(1) => Some(Outcome::Accepted),
        redis::Value::Int(2) => Some(Outcome::CollapsedIntent),
        redis::Value::Int(3) => Some(Outcome::CollapsedEventId),
        redis::Value::Int(4) => Some(Outcome::CollapsedStreamChunk),
        redis::Value::Int(5) => Some(Outcome::CollapsedEvent),
        _ => None,
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::kind_flags;

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
}
