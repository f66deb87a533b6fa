//! Dedup layer 1: claims intents in Redis and enqueues the accepted ones, one atomic Lua script
//! per request and shard (`sift_redis::claim`), so claim and enqueue can never part (a check
//! with EXISTS followed by a SETEX would let two copies arriving together both pass, and a
//! crash between them lose the event).
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

use futures_util::future::join_all;
use sift_core::InvalidRecord;
use sift_redis::call::bounded;
use sift_redis::claim::{claim_command, part_hash, Answer};
use sift_redis::{scripts, Conn, Shards};

pub use sift_redis::claim::{Claim, ClaimCall, ClaimSettings, Outcome, WindowMode};

use crate::error::ApiError;

#[cfg(test)]
mod tests;

thread_local! {
    /// This thread's multiplexed connection to each shard, by (deduplicator, shard). Each
    /// HTTP worker thread pipelines the script calls of its concurrent requests over one
    /// connection per shard, driven on that same thread: a few sockets instead of one per
    /// request in flight, so Redis and the API read and write many calls per system call, and
    /// no call crosses threads.
    static MUX: RefCell<HashMap<(u64, usize), Conn>> = RefCell::new(HashMap::new());
}

/// Tells deduplicators apart in [`MUX`] (tests run several in one process).
static NEXT_ID: AtomicU64 = AtomicU64::new(0);

pub struct Deduplicator {
    id: u64,
    shards: Shards,
    settings: ClaimSettings,
}

impl Deduplicator {
    pub fn new(shards: Shards, settings: ClaimSettings) -> Self {
        Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            shards,
            settings,
        }
    }

    pub fn shards(&self) -> &Shards {
        &self.shards
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
        let counter = self.shards[home].keys.rate(tenant, now_ms.div_euclid(1000));
        let taken = self
            .with_mux(home, "rate", |mut conn| async move {
                scripts::rate(&mut conn, &counter, events, limit)
                    .await
                    .map_err(sift_redis::RedisError::from)
            })
            .await?;
        if taken {
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
        let s = &self.shards[shard];
        let cmd = claim_command(
            &s.keys,
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
        let answer = self
            .with_mux(shard, "claim", |mut conn| async move {
                sift_redis::claim::send(s, &mut conn, &cmd, claims.len()).await
            })
            .await?;
        match answer {
            Answer::Outcomes(outcomes) => Ok(outcomes),
            Answer::QueueFull => Err(ApiError::QueueFull),
            Answer::RateLimited => Err(ApiError::RateLimited {
                limit: rate_limit.unwrap_or(0),
                events: claims.len(),
            }),
        }
    }

    /// Enqueues streams past their timeout, on every shard; returns how many. A shard that
    /// fails does not keep the others from being swept; the error is returned only when every
    /// shard failed.
    pub async fn sweep_streams(&self, now_ms: i64, max: usize) -> Result<u64, ApiError> {
        let mut swept = 0;
        let (mut failed, mut last_error) = (0, None);
        let claim_ms = u64::try_from(self.settings.event_id_window.as_millis()).unwrap_or(u64::MAX);
        for shard in &self.shards {
            let (open, queue) = (shard.keys.open_streams(), shard.keys.queue());
            let answer = shard
                .call("sweep_streams", |mut conn| async move {
                    scripts::sweep_streams(&mut conn, &open, &queue, now_ms, max, claim_ms).await
                })
                .await;
            match answer {
                Ok(n) => swept += n,
                Err(error) => {
                    // The background task's outage tells when Redis goes and comes back.
                    tracing::debug!(shard = shard.index, %error, "stream sweep failed on this shard");
                    failed += 1;
                    last_error = Some(error);
                }
            }
        }
        match last_error {
            Some(error) if failed == self.shards.len() => Err(error.into()),
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
        for shard in &self.shards {
            // One HMGET per hour: on a cluster, keys of one shard share a slot, so a pipeline
            // of them goes to one node.
            let mut pipe = redis::pipe();
            for hour in hours {
                let key = shard
                    .keys
                    .dedup_stats(tenant, &sift_core::keys::hour_bucket(hour * 1000));
                pipe.cmd("HMGET").arg(key).arg("received").arg("accepted");
            }
            let answers: Vec<(Option<u64>, Option<u64>)> = shard
                .call("dedup_counters", |mut conn| async move {
                    pipe.query_async(&mut conn).await
                })
                .await?;
            for (total, (r, a)) in totals.iter_mut().zip(answers) {
                total.1 += r.unwrap_or(0);
                total.2 += a.unwrap_or(0);
            }
        }
        Ok(totals)
    }

    /// Used memory over maxmemory, from `INFO memory` (0 when Redis has no maxmemory), of the
    /// fullest shard (on a cluster: of its fullest master).
    pub async fn memory_ratio(&self) -> Result<f64, ApiError> {
        let mut fullest: f64 = 0.0;
        for shard in &self.shards {
            let info = shard.info("memory").await?;
            fullest = fullest.max(memory_ratio(&info));
        }
        Ok(fullest)
    }

    /// The queues' length, all shards together (for the gauge and readiness).
    pub async fn queue_depth(&self) -> Result<u64, ApiError> {
        let mut depth = 0;
        for shard in &self.shards {
            let queue = shard.keys.queue();
            depth += shard
                .call("queue_depth", |mut conn| async move {
                    redis::cmd("LLEN")
                        .arg(queue)
                        .query_async::<u64>(&mut conn)
                        .await
                })
                .await?;
        }
        Ok(depth)
    }

    /// Runs `f` on this thread's multiplexed connection to `shard` within the Redis timeout,
    /// counted under `call`. A failure that is not Redis's answer (the connection broke or
    /// timed out) drops the connection, so the next call connects anew.
    async fn with_mux<T, F, Fut>(
        &self,
        shard: usize,
        call: &'static str,
        f: F,
    ) -> Result<T, ApiError>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: std::future::Future<Output = Result<T, sift_redis::RedisError>>,
    {
        let s = &self.shards[shard];
        let work = async {
            let conn = self.multiplexed(shard).await?;
            f(conn).await
        };
        match bounded(call, s.timeout(), work).await {
            Ok(value) => Ok(value),
            Err(error) => {
                if !error.is_answer() {
                    self.forget(shard);
                }
                Err(error.into())
            }
        }
    }

    /// This thread's connection to `shard`, connecting when there is none.
    async fn multiplexed(&self, shard: usize) -> Result<Conn, sift_redis::RedisError> {
        let slot = self.mux_slot(shard);
        if let Some(conn) = MUX.with(|m| m.borrow().get(&slot).and_then(Conn::share)) {
            return Ok(conn);
        }
        let conn = self.shards[shard].connect().await?;
        if let Some(shared) = conn.share() {
            MUX.with(|m| m.borrow_mut().insert(slot, shared));
        }
        Ok(conn)
    }

    fn forget(&self, shard: usize) {
        MUX.with(|m| m.borrow_mut().remove(&self.mux_slot(shard)));
    }

    /// Where this thread keeps its connection to `shard`: one per shard on servers, one for
    /// every shard on a cluster (a cluster connection reaches every master).
    fn mux_slot(&self, shard: usize) -> (u64, usize) {
        if self.shards.is_cluster() {
            (self.id, 0)
        } else {
            (self.id, shard)
        }
    }
}

/// Used memory over maxmemory in an `INFO memory` answer (0 without a maxmemory).
fn memory_ratio(info: &str) -> f64 {
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
    if max > 0.0 {
        field("used_memory") / max
    } else {
        0.0
    }
}
