//! Dedup layer 1: claims intents in Redis and enqueues the accepted ones, one atomic Lua script
//! per request (claim and enqueue can never part: SPEC's fix of the seed's EXISTS-then-SETEX).

use std::time::Duration;

use deadpool_redis::Pool;
use redis::Script;
use sift_core::{InvalidRecord, KeySpace, QueueRecord};

use crate::error::ApiError;

/// How long a tenant's hourly dedup counters are kept (8 days: a week of dashboards).
const STATS_TTL_MS: u64 = 8 * 24 * 3600 * 1000;

/// How the semantic window behaves on a duplicate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WindowMode {
    /// The window starts at the first event and does not move (the seed's behaviour).
    Fixed,
    /// Each duplicate extends the window: a steady retry storm stays collapsed.
    Sliding,
}

#[derive(Debug, Clone)]
pub struct DedupSettings {
    pub window: Duration,
    pub event_id_window: Duration,
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
    pub fn is_accepted(self) -> bool {
        self == Self::Accepted
    }

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
pub struct Claim<'a> {
    pub record: &'a QueueRecord,
    pub event_id_hash: Option<String>,
}

pub struct Deduplicator {
    pool: Pool,
    keys: KeySpace,
    settings: DedupSettings,
    claim: Script,
    sweep: Script,
}

impl Deduplicator {
    pub fn new(pool: Pool, keys: KeySpace, settings: DedupSettings) -> Self {
        Self {
            pool,
            keys,
            settings,
            claim: Script::new(include_str!("lua/claim.lua")),
            sweep: Script::new(include_str!("lua/sweep_streams.lua")),
        }
    }

    pub fn keys(&self) -> &KeySpace {
        &self.keys
    }

    /// Claims and enqueues `claims` and records `invalid`, all or nothing; one outcome per claim.
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
        let s = &self.settings;
        let mut invocation = self.claim.prepare_invoke();
        invocation
            .key(self.keys.queue())
            .key(self.keys.invalid())
            .key(self.keys.open_streams())
            .key(
                self.keys
                    .dedup_stats(tenant, &sift_core::keys::hour_bucket(now_ms)),
            )
            .key(self.keys.rate(tenant, now_ms.div_euclid(1000)));
        invocation
            .arg(now_ms)
            .arg(millis(s.window))
            .arg(millis(s.event_id_window))
            .arg(u8::from(s.mode == WindowMode::Sliding))
            .arg(s.high_water)
            .arg(s.invalid_max)
            .arg(millis(s.stream_timeout))
            .arg(claims.len())
            .arg(invalid.len())
            .arg(rate_limit.unwrap_or(0));
        for claim in claims {
            let r = claim.record;
            let semantic = self.keys.dedup(&r.tenant_id, &r.semantic_hash);
            let event_id = match &claim.event_id_hash {
                Some(hash) => self.keys.event_id(&r.tenant_id, hash),
                None => semantic.clone(),
            };
            let pending = match r.stream_id {
                Some(_) => self.keys.stream_pending(&r.tenant_id, &r.semantic_hash),
                None => semantic.clone(),
            };
            invocation.key(semantic).key(event_id).key(pending);
            let kind = match (&r.stream_id, r.is_final) {
                (None, _) => "p",
                (Some(_), false) => "s",
                (Some(_), true) => "f",
            };
            invocation
                .arg(kind)
                .arg(u8::from(claim.event_id_hash.is_some()))
                .arg(r.chunk_index.map_or(-1, i64::from))
                .arg(r.encode());
        }
        for record in invalid {
            invocation.arg(record.encode());
        }
        invocation.arg(STATS_TTL_MS);

        let result: redis::Value = self
            .with_connection(|mut conn| async move { invocation.invoke_async(&mut conn).await })
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

    /// Enqueues streams past their timeout; returns how many.
    pub async fn sweep_streams(&self, now_ms: i64, max: usize) -> Result<u64, ApiError> {
        let mut invocation = self.sweep.prepare_invoke();
        invocation
            .key(self.keys.open_streams())
            .key(self.keys.queue())
            .arg(now_ms)
            .arg(max)
            .arg(millis(self.settings.event_id_window));
        self.with_connection(|mut conn| async move { invocation.invoke_async(&mut conn).await })
            .await
    }

    /// `(hour, received, accepted)` for each hour (epoch seconds) of `tenant`.
    pub async fn dedup_counters(
        &self,
        tenant: &str,
        hours: &[i64],
    ) -> Result<Vec<(i64, u64, u64)>, ApiError> {
        let mut pipe = redis::pipe();
        for hour in hours {
            let key = self
                .keys
                .dedup_stats(tenant, &sift_core::keys::hour_bucket(hour * 1000));
            pipe.cmd("HMGET").arg(key).arg("received").arg("accepted");
        }
        let answers: Vec<(Option<u64>, Option<u64>)> = self
            .with_connection(|mut conn| async move { pipe.query_async(&mut conn).await })
            .await?;
        Ok(hours
            .iter()
            .zip(answers)
            .map(|(h, (r, a))| (*h, r.unwrap_or(0), a.unwrap_or(0)))
            .collect())
    }

    /// Used memory over maxmemory, from `INFO memory` (0 when Redis has no maxmemory).
    pub async fn memory_ratio(&self) -> Result<f64, ApiError> {
        let info: String = self
            .with_connection(|mut conn| async move {
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

    /// The queue's length (for the high-water gauge and readiness).
    pub async fn queue_depth(&self) -> Result<u64, ApiError> {
        let queue = self.keys.queue();
        self.with_connection(|mut conn| async move {
            redis::cmd("LLEN").arg(queue).query_async(&mut conn).await
        })
        .await
    }

    /// Runs `f` on a pooled connection within the Redis timeout; every failure is a 503.
    async fn with_connection<T, F, Fut>(&self, f: F) -> Result<T, ApiError>
    where
        F: FnOnce(deadpool_redis::Connection) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let work = async {
            let conn = self
                .pool
                .get()
                .await
                .map_err(|e| ApiError::RedisUnavailable(e.to_string()))?;
            f(conn)
                .await
                .map_err(|e| ApiError::RedisUnavailable(e.to_string()))
        };
        tokio::time::timeout(self.settings.timeout, work)
            .await
            .map_err(|_| ApiError::RedisUnavailable("timed out".into()))?
    }
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
