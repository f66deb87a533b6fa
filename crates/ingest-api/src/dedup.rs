//! Dedup layer 1: claims intents in Redis and enqueues the accepted ones, one atomic Lua script
//! per request, so claim and enqueue can never part (a check with EXISTS followed by a SETEX
//! would let two copies arriving together both pass, and a crash between them lose the event).
//!
//! With several Redis shards, each event goes to the shard of its semantic hash (every copy of
//! an intent meets there), one script per shard that the request touches, run side by side.
//! A tenant's rate is then counted on its home shard first. If one shard fails after another
//! took its events, the request is answered 503; so, when a request spans several shards, each
//! keeps a receipt of its part (named by the part's intents, event ids, client timestamps and
//! invalid events) for `--batch-receipt-window-ms`, so the client's retry of the same events
//! gets the same answer from it, however long after the semantic window it comes, and the
//! failed shard's events are taken then.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use deadpool_redis::Pool;
use futures_util::future::join_all;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Script};
use sift_core::{InvalidRecord, KeySpace, QueueRecord};

use crate::error::{ApiError, Cause};

/// How long a tenant's hourly dedup counters are kept after their last write (8 days: a week
/// of dashboards).
const STATS_TTL_MS: u64 = 8 * 24 * 3600 * 1000;
/// The lifetime the claim script gives an hour's counters when it creates them: an hour
/// longer, since that hour's later writes do not renew it (a call per request saved).
const STATS_TTL_AT_CREATION_MS: u64 = STATS_TTL_MS + 3600 * 1000;

/// How the semantic window behaves on a duplicate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowMode {
    /// The window starts at the first event and does not move.
    Fixed,
    /// Each duplicate extends the window: a steady retry storm stays collapsed.
    Sliding,
}

#[derive(Debug, Clone)]
pub struct DedupSettings {
    pub window: Duration,
    pub event_id_window: Duration,
    /// How long a shard keeps its answer to its part of a multi-shard request.
    pub receipt_window: Duration,
    pub mode: WindowMode,
    pub stream_timeout: Duration,
    /// Queue length from which requests are answered 429 (0: no limit).
    pub high_water: u64,
    pub invalid_max: u64,
    pub timeout: Duration,
}

/// What happened to one valid event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Accepted,
    CollapsedIntent,
    CollapsedEventId,
    CollapsedStreamChunk,
}

impl Outcome {
    /// The `reason` of a collapsed answer.
    pub fn reason(self) -> Option<&'static str> {
        match self {
            Self::Accepted => None,
            Self::CollapsedIntent => Some("duplicate_intent"),
            Self::CollapsedEventId => Some("duplicate_event_id"),
            Self::CollapsedStreamChunk => Some("stream_chunk"),
        }
    }
}

/// A valid event on its way to the queue.
#[derive(Clone)]
pub struct Claim<'a> {
    pub record: &'a QueueRecord<'a>,
    pub event_id_hash: Option<&'a str>,
}

/// The claim script's text (`claim.lua`).
pub const CLAIM_LUA: &str = include_str!("lua/claim.lua");

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
    // KEYS: 5 fixed, per event the ones it uses, the receipt; ARGV: 10 fixed, 2 per event (3
    // for a stream chunk), the invalid records, 2 lifetimes.
    let streams = claims
        .iter()
        .filter(|c| c.record.stream_id.is_some())
        .count();
    let with_eid = claims.iter().filter(|c| c.event_id_hash.is_some()).count();
    let n_keys = 5 + claims.len() + with_eid + streams + 1;
    let n_args = 10 + 2 * claims.len() + streams + invalid.len() + 2;
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
        .arg(call.rate_limit.unwrap_or(0));
    for claim in claims {
        let r = claim.record;
        cmd.arg(kind_flags(
            r.stream_id.is_some(),
            r.is_final,
            claim.event_id_hash.is_some(),
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

/// An event's kind for the claim script: `p` plain, `s` stream chunk, `f` final stream chunk,
/// followed by `e` when it carries an event_id.
fn kind_flags(stream: bool, is_final: bool, has_event_id: bool) -> &'static str {
    match (stream, is_final, has_event_id) {
        (false, _, false) => "p",
        (false, _, true) => "pe",
        (true, false, false) => "s",
        (true, false, true) => "se",
        (true, true, false) => "f",
        (true, true, true) => "fe",
    }
}

/// One Redis shard: its connections and its key names.
#[derive(Clone)]
pub struct Shard {
    /// For the occasional calls (gauges, sweeps, the read API).
    pub pool: Pool,
    /// For the ingest requests' script calls, over multiplexed connections (see [`MUX`]).
    pub client: redis::Client,
    pub keys: KeySpace,
}

thread_local! {
    /// This thread's multiplexed connection to each shard, by (deduplicator, shard). Each
    /// HTTP worker thread pipelines the script calls of its concurrent requests over one
    /// connection per shard, driven on that same thread: a few sockets instead of one per
    /// request in flight, so Redis and the API read and write many calls per system call, and
    /// no call crosses threads.
    static MUX: RefCell<HashMap<(u64, usize), MultiplexedConnection>> = RefCell::new(HashMap::new());
}

/// Tells deduplicators apart in [`MUX`] (tests run several in one process).
static NEXT_ID: AtomicU64 = AtomicU64::new(0);

pub struct Deduplicator {
    id: u64,
    mux_config: AsyncConnectionConfig,
    shards: Vec<Shard>,
    settings: DedupSettings,
    claim: Script,
    sweep: Script,
    rate: Script,
}

/// Counts a tenant's events of this second on its home shard, refusing them past its limit.
/// KEYS[1]: the counter. ARGV: events, limit. Returns 1 taken, 0 over the limit.
const RATE: &str = r"
local n, limit = tonumber(ARGV[1]), tonumber(ARGV[2])
if tonumber(redis.call('GET', KEYS[1]) or '0') + n > limit then return 0 end
redis.call('INCRBY', KEYS[1], n)
redis.call('PEXPIRE', KEYS[1], 2000)
return 1";

impl Deduplicator {
    pub fn new(shards: Vec<Shard>, settings: DedupSettings) -> Self {
        Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            mux_config: AsyncConnectionConfig::new()
                .set_connection_timeout(Some(settings.timeout))
                .set_response_timeout(Some(settings.timeout)),
            shards,
            settings,
            claim: Script::new(CLAIM_LUA),
            sweep: Script::new(include_str!("lua/sweep_streams.lua")),
            rate: Script::new(RATE),
        }
    }

    /// Claims and enqueues `claims` and records `invalid`; one outcome per claim. With one
    /// shard all or nothing; with several, all or nothing per shard (see the module comment).
    pub async fn submit(
        &self,
        tenant: &str,
        rate_limit: Option<u32>,
        claims: &[Claim<'_>],
        invalid: &[InvalidRecord],
        now_ms: i64,
    ) -> Result<Vec<Outcome>, ApiError> {
        if claims.is_empty() && invalid.is_empty() {
            return Ok(Vec::new());
        }
        if self.shards.len() == 1 {
            return self
                .submit_to(0, tenant, rate_limit, claims, invalid, None, now_ms)
                .await;
        }
        if let Some(limit) = rate_limit.filter(|_| !claims.is_empty()) {
            self.take_rate(tenant, claims.len(), limit, now_ms).await?;
        }
        let k = self.shards.len();
        let mut by_shard: Vec<Vec<usize>> = vec![Vec::new(); k];
        for (i, claim) in claims.iter().enumerate() {
            by_shard[sift_core::keys::shard_of(&claim.record.semantic_hash, k)].push(i);
        }
        let shard_claims: Vec<Vec<Claim<'_>>> = by_shard
            .iter()
            .map(|indices| indices.iter().map(|i| claims[*i].clone()).collect())
            .collect();
        // Invalid records go to shard 0's list: `dlq --invalid` reads them there.
        let parts: Vec<usize> = (0..k)
            .filter(|s| !shard_claims[*s].is_empty() || (*s == 0 && !invalid.is_empty()))
            .collect();
        // A request that touches one shard is all or nothing already: a receipt only costs.
        let with_receipts = parts.len() > 1;
        let calls = parts.into_iter().map(|s| {
            let c = &shard_claims[s];
            let invalid = if s == 0 { invalid } else { &[] };
            let receipt =
                with_receipts.then(|| self.shards[s].keys.receipt(tenant, &part_hash(c, invalid)));
            async move {
                let outcomes = self
                    .submit_to(s, tenant, None, c, invalid, receipt, now_ms)
                    .await?;
                Ok::<_, ApiError>((s, outcomes))
            }
        });
        // Every call runs to its end (none is cancelled when another fails), so each shard's
        // part is either wholly taken or not at all, as the retry expects.
        let answers: Result<Vec<_>, ApiError> = join_all(calls).await.into_iter().collect();
        let mut outcomes = vec![Outcome::Accepted; claims.len()];
        for (s, answered) in answers? {
            for (i, outcome) in by_shard[s].iter().zip(answered) {
                outcomes[*i] = outcome;
            }
        }
        Ok(outcomes)
    }

    /// Counts `events` against the tenant's rate on its home shard.
    async fn take_rate(
        &self,
        tenant: &str,
        events: usize,
        limit: u32,
        now_ms: i64,
    ) -> Result<(), ApiError> {
        let home = sift_core::keys::home_shard(tenant, self.shards.len());
        let mut invocation = self.rate.prepare_invoke();
        invocation
            .key(self.shards[home].keys.rate(tenant, now_ms.div_euclid(1000)))
            .arg(events)
            .arg(limit);
        let taken: i64 = self
            .with_mux(home, |mut conn| async move {
                invocation.invoke_async(&mut conn).await
            })
            .await?;
        if taken == 1 {
            Ok(())
        } else {
            Err(ApiError::RateLimited { limit, events })
        }
    }

    /// The script call for the claims of one shard, answered from `receipt` when that part
    /// was taken before.
    #[allow(clippy::too_many_arguments)]
    async fn submit_to(
        &self,
        shard: usize,
        tenant: &str,
        rate_limit: Option<u32>,
        claims: &[Claim<'_>],
        invalid: &[InvalidRecord],
        receipt: Option<String>,
        now_ms: i64,
    ) -> Result<Vec<Outcome>, ApiError> {
        let cmd = claim_command(
            self.claim.get_hash(),
            &self.shards[shard].keys,
            &self.settings,
            &ClaimCall {
                tenant,
                rate_limit,
                claims,
                invalid,
                receipt: receipt.as_deref(),
                now_ms,
            },
        );
        let result: redis::Value = self
            .with_mux(shard, |mut conn| async move {
                // EVALSHA; a Redis that lost its scripts (restarted, SCRIPT FLUSH) answers
                // NOSCRIPT without running anything, so loading and sending again is safe.
                match cmd.query_async(&mut conn).await {
                    Err(e)
                        if e.kind()
                            == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
                    {
                        self.claim.load_async(&mut conn).await?;
                        cmd.query_async(&mut conn).await
                    }
                    answer => answer,
                }
            })
            .await?;
        match result {
            redis::Value::Int(-1) => Err(ApiError::QueueFull),
            redis::Value::Int(-2) => Err(ApiError::RateLimited {
                limit: rate_limit.unwrap_or(0),
                events: claims.len(),
            }),
            redis::Value::Array(items) if items.len() == claims.len() => items
                .iter()
                .map(decode_status)
                .collect::<Option<Vec<_>>>()
                .ok_or(ApiError::Internal(
                    "the dedup script answered an unknown status".into(),
                )),
            other => Err(ApiError::Internal(format!(
                "the dedup script answered {other:?}"
            ))),
        }
    }

    /// Enqueues streams past their timeout, on every shard; returns how many. A shard that
    /// fails does not keep the others from being swept; the error is returned only when every
    /// shard failed.
    pub async fn sweep_streams(&self, now_ms: i64, max: usize) -> Result<u64, ApiError> {
        let mut swept = 0;
        let (mut failed, mut last_error) = (0, None);
        for (s, shard) in self.shards.iter().enumerate() {
            let mut invocation = self.sweep.prepare_invoke();
            invocation
                .key(shard.keys.open_streams())
                .key(shard.keys.queue())
                .arg(now_ms)
                .arg(max)
                .arg(millis(self.settings.event_id_window));
            match self
                .with_connection(s, |mut conn| async move {
                    invocation.invoke_async::<u64>(&mut conn).await
                })
                .await
            {
                Ok(n) => swept += n,
                Err(error) => {
                    tracing::warn!(shard = s, %error, "stream sweep failed on this shard");
                    failed += 1;
                    last_error = Some(error);
                }
            }
        }
        match last_error {
            Some(error) if failed == self.shards.len() => Err(error),
            _ => Ok(swept),
        }
    }

    /// `(hour, received, accepted)` for each hour (epoch seconds) of `tenant`.
    pub async fn dedup_counters(
        &self,
        tenant: &str,
        hours: &[i64],
    ) -> Result<Vec<(i64, u64, u64)>, ApiError> {
        let mut totals: Vec<(i64, u64, u64)> = hours.iter().map(|h| (*h, 0, 0)).collect();
        for (s, shard) in self.shards.iter().enumerate() {
            let mut pipe = redis::pipe();
            for hour in hours {
                let key = shard
                    .keys
                    .dedup_stats(tenant, &sift_core::keys::hour_bucket(hour * 1000));
                pipe.cmd("HMGET").arg(key).arg("received").arg("accepted");
            }
            let answers: Vec<(Option<u64>, Option<u64>)> = self
                .with_connection(
                    s,
                    |mut conn| async move { pipe.query_async(&mut conn).await },
                )
                .await?;
            for (total, (r, a)) in totals.iter_mut().zip(answers) {
                total.1 += r.unwrap_or(0);
                total.2 += a.unwrap_or(0);
            }
        }
        Ok(totals)
    }

    /// Used memory over maxmemory, from `INFO memory` (0 when Redis has no maxmemory), of the
    /// fullest shard.
    pub async fn memory_ratio(&self) -> Result<f64, ApiError> {
        let mut fullest: f64 = 0.0;
        for s in 0..self.shards.len() {
            fullest = fullest.max(self.shard_memory_ratio(s).await?);
        }
        Ok(fullest)
    }

    async fn shard_memory_ratio(&self, shard: usize) -> Result<f64, ApiError> {
        let info: String = self
            .with_connection(shard, |mut conn| async move {
                redis::cmd("INFO")
                    .arg("memory")
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        let field = |name: &str| {
            info.lines()
                .find_map(|l| {
                    l.strip_prefix(name)?
                        .strip_prefix(':')?
                        .trim()
                        .parse::<f64>()
                        .ok()
                })
                .unwrap_or(0.0)
        };
        let max = field("maxmemory");
        Ok(if max > 0.0 {
            field("used_memory") / max
        } else {
            0.0
        })
    }

    /// The queues' length, all shards together (for the gauge and readiness).
    pub async fn queue_depth(&self) -> Result<u64, ApiError> {
        let mut depth = 0;
        for (s, shard) in self.shards.iter().enumerate() {
            let queue = shard.keys.queue();
            depth += self
                .with_connection(s, |mut conn| async move {
                    redis::cmd("LLEN")
                        .arg(queue)
                        .query_async::<u64>(&mut conn)
                        .await
                })
                .await?;
        }
        Ok(depth)
    }

    /// Runs `f` on this thread's multiplexed connection to `shard` within the Redis timeout;
    /// every failure is a 503. A failure that is not Redis's answer (the connection broke or
    /// timed out) drops the connection, so the next call connects anew.
    async fn with_mux<T, F, Fut>(&self, shard: usize, f: F) -> Result<T, ApiError>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let work = async {
            let conn = self.multiplexed(shard).await?;
            f(conn).await
        };
        match tokio::time::timeout(self.settings.timeout, work).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => {
                if !matches!(error.kind(), redis::ErrorKind::Server(_)) {
                    self.forget(shard);
                }
                Err(ApiError::RedisUnavailable(error.into()))
            }
            Err(_) => {
                self.forget(shard);
                Err(ApiError::RedisUnavailable(Cause::TimedOut(
                    self.settings.timeout,
                )))
            }
        }
    }

    /// This thread's connection to `shard`, connecting when there is none.
    async fn multiplexed(&self, shard: usize) -> redis::RedisResult<MultiplexedConnection> {
        let slot = (self.id, shard);
        if let Some(conn) = MUX.with(|m| m.borrow().get(&slot).cloned()) {
            return Ok(conn);
        }
        let conn = self.shards[shard]
            .client
            .get_multiplexed_async_connection_with_config(&self.mux_config)
            .await?;
        MUX.with(|m| m.borrow_mut().insert(slot, conn.clone()));
        Ok(conn)
    }

    fn forget(&self, shard: usize) {
        MUX.with(|m| m.borrow_mut().remove(&(self.id, shard)));
    }

    /// Runs `f` on a pooled connection of `shard` within the Redis timeout; every failure is
    /// a 503.
    async fn with_connection<T, F, Fut>(&self, shard: usize, f: F) -> Result<T, ApiError>
    where
        F: FnOnce(deadpool_redis::Connection) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let work = async {
            let conn = self.shards[shard]
                .pool
                .get()
                .await
                .map_err(|e| ApiError::RedisUnavailable(e.into()))?;
            f(conn)
                .await
                .map_err(|e| ApiError::RedisUnavailable(e.into()))
        };
        tokio::time::timeout(self.settings.timeout, work)
            .await
            .map_err(|_| ApiError::RedisUnavailable(Cause::TimedOut(self.settings.timeout)))?
    }
}

/// Names one shard's part of a request by what makes its events the same events on a retry:
/// their intents, event ids, stream chunks and timestamps (the client's, when it sent them;
/// the server's otherwise, which no retry repeats, so such a part gets no second chance).
/// Invalid records count too (by their text and error), so that a retry does not list them
/// twice.
fn part_hash(claims: &[Claim<'_>], invalid: &[InvalidRecord]) -> String {
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
        _ => None,
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
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
        assert_eq!(kind_flags(false, false, false), "p");
        assert_eq!(kind_flags(false, true, true), "pe");
        assert_eq!(kind_flags(true, false, false), "s");
        assert_eq!(kind_flags(true, false, true), "se");
        assert_eq!(kind_flags(true, true, false), "f");
        assert_eq!(kind_flags(true, true, true), "fe");
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
        // 10 fixed arguments, then p / pe / s 2 / fe 2 with their records, the invalid one,
        // the receipt's and the counters' lifetimes.
        assert_eq!(text(17 + 7), "4", "events");
        assert_eq!(text(17 + 8), "1", "invalid records");
        let flags: Vec<String> = [27, 29, 31, 34].into_iter().map(text).collect();
        assert_eq!(flags, ["p", "pe", "s", "fe"]);
        assert_eq!((text(32), text(35)), ("2".to_owned(), "2".to_owned()));
        assert_eq!(args[28], ready[0].record.encode());
        assert_eq!(args[37], prepared.invalid[0].encode());
        assert_eq!(text(38), "0", "no receipt");
        assert_eq!(args.len(), 40);
    }
}
