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
//!
//! [`script`] builds each call of the claim script and reads its answers.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use deadpool_redis::Pool;
use futures_util::future::join_all;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Script};
use sift_core::{InvalidRecord, KeySpace};

use crate::error::{ApiError, Cause};

mod script;

pub use script::{claim_command, Claim, ClaimCall, CLAIM_LUA};
use script::{decode_status, part_hash};

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
    /// How long an event without an event_id is known by its intent and client timestamp.
    pub event_time_window: Duration,
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
            sweep: Script::new(include_str!("../lua/sweep_streams.lua")),
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
                    // The background task's outage tells when Redis goes and comes back.
                    tracing::debug!(shard = s, %error, "stream sweep failed on this shard");
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

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
