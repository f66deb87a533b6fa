//! The Redis side of the batcher on one shard: the reliable claim (LMOVE from the tail of
//! `ai:queue` into this worker's processing list, so the queue is FIFO and nothing is lost if
//! the worker dies), the acknowledgement, heartbeats, and the takeover of dead workers'
//! processing lists. The scripts themselves are sift-redis's (`queue_claim.lua`, ...). A
//! lane's claims and acknowledgements go over the lane's own connection, which they may hold
//! (BLMOVE; WAIT, with `--redis-wait-replicas`: a claim counts once replicated, so a failover
//! does not hand its records out again in another chunk) without holding up the heartbeats
//! and the flusher's lock behind them.

use std::time::Duration;

use sift_core::KeySpace;
use sift_redis::scripts::{self, Ack, TakeOver, WorkerLists};
use sift_redis::{Conn, Shard};

pub use sift_redis::scripts::Claimed;
pub use sift_redis::RedisError as QueueError;

pub struct Queue {
    shard: Shard,
    worker: String,
    /// On a Redis Cluster, this lane's own connection (made once: a cluster connection
    /// reaches every master); on a server, a pooled one is taken for each call.
    lane: tokio::sync::Mutex<Option<Conn>>,
}

impl Queue {
    pub fn new(shard: Shard, worker: String) -> Self {
        Self {
            shard,
            worker,
            lane: tokio::sync::Mutex::new(None),
        }
    }

    pub fn worker(&self) -> &str {
        &self.worker
    }

    pub fn keys(&self) -> &KeySpace {
        &self.shard.keys
    }

    pub fn shard(&self) -> &Shard {
        &self.shard
    }

    fn processing(&self) -> String {
        self.shard.keys.processing(&self.worker)
    }

    /// Runs `f` on this lane's connection within `limit`, counted under `call`. A connection
    /// that failed other than by Redis's answer (or timed out) is made anew next time.
    async fn on_lane<T>(
        &self,
        call: &'static str,
        limit: Duration,
        f: impl AsyncFnOnce(&mut Conn) -> Result<T, QueueError>,
    ) -> Result<T, QueueError> {
        let mut cached = self.lane.lock().await;
        let work = async {
            let mut conn = match cached.take() {
                Some(conn) => conn,
                None => self.shard.blocking_conn().await?,
            };
            let answer = f(&mut conn).await;
            let healthy = answer.as_ref().map_or_else(QueueError::is_answer, |_| true);
            if healthy && conn.share().is_some() {
                *cached = Some(conn);
            }
            answer
        };
        sift_redis::call::bounded(call, limit, work).await
    }

    /// Moves up to `rows` records and `bytes` bytes (at least one element if `at_least_one`)
    /// into this worker's processing list; returns whether a budget stopped the claim (the
    /// chunk is full), the records taken, and the elements, oldest first. With
    /// `--redis-wait-replicas`, an error when the claim is not replicated (its records stay in
    /// the list: the next turn reads them back).
    pub async fn claim(
        &self,
        rows: usize,
        bytes: usize,
        at_least_one: bool,
    ) -> Result<Claimed, QueueError> {
        let keys = &self.shard.keys;
        let (queue, processing, workers) = (keys.queue(), self.processing(), keys.workers());
        let lists = WorkerLists {
            queue: &queue,
            processing: &processing,
            workers: &workers,
            worker: &self.worker,
        };
        self.on_lane("queue_claim", self.shard.timeout(), async |conn| {
            let claimed = scripts::queue_claim(conn, &lists, rows, bytes, at_least_one).await?;
            self.shard.wait_for_replicas(conn).await?;
            Ok(claimed)
        })
        .await
    }

    /// Waits up to `timeout` for one record and moves it; returns it if one came.
    pub async fn claim_blocking(&self, timeout: Duration) -> Result<Option<Vec<u8>>, QueueError> {
        let keys = &self.shard.keys;
        let mut pipe = redis::pipe();
        pipe.cmd("SADD")
            .arg(keys.workers())
            .arg(&self.worker)
            .ignore()
            .cmd("BLMOVE")
            .arg(keys.queue())
            .arg(self.processing())
            .arg("RIGHT")
            .arg("LEFT")
            .arg(timeout.as_secs_f64().max(0.01));
        let limit = timeout + self.shard.timeout();
        self.on_lane("queue_claim_blocking", limit, async |conn| {
            let (moved,): (Option<Vec<u8>>,) = pipe.query_async(conn).await?;
            if moved.is_some() {
                self.shard.wait_for_replicas(conn).await?;
            }
            Ok(moved)
        })
        .await
    }

    /// The records of this worker's processing list, oldest first.
    pub async fn in_hand(&self) -> Result<Vec<Vec<u8>>, QueueError> {
        let processing = self.processing();
        let mut records: Vec<Vec<u8>> = self
            .shard
            .call("processing_list", |mut conn| async move {
                redis::cmd("LRANGE")
                    .arg(processing)
                    .arg(0)
                    .arg(-1)
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        records.reverse();
        Ok(records)
    }

    /// Acknowledges the chunk in hand (`len` records, `oldest` and `newest` of them), dead-
    /// lettering `dead` and moving the rollup versions of `touched` (tenant, hour start) in the
    /// same step; false when the chunk was no longer in this worker's list (another worker
    /// took it over and acknowledges it).
    pub async fn ack(
        &self,
        len: usize,
        oldest: &[u8],
        newest: &[u8],
        dead: &[Vec<u8>],
        touched: &[(String, i64)],
    ) -> Result<bool, QueueError> {
        let keys = &self.shard.keys;
        let (processing, dead_letters) = (self.processing(), keys.dlq());
        let versions: Vec<String> = touched
            .iter()
            .map(|(tenant, hour)| keys.rollup_version(tenant, *hour))
            .collect();
        let ack = Ack {
            processing: &processing,
            dead_letters: &dead_letters,
            versions: &versions,
            len,
            oldest,
            newest,
            versions_ttl_ms: sift_core::keys::ROLLUP_VERSION_TTL_MS,
            dead,
        };
        self.on_lane("queue_ack", self.shard.timeout(), async |conn| {
            let acked = scripts::queue_ack(conn, &ack).await?;
            // An acknowledgement not replicated yet stands: were it lost in a failover, the
            // chunk would come back and be written again under its token, which ClickHouse
            // drops; retrying the acknowledgement would find nothing to do.
            if let Err(error) = self.shard.wait_for_replicas(conn).await {
                tracing::warn!(%error, "the acknowledgement is not on the replicas yet");
            }
            Ok(acked)
        })
        .await
    }

    /// Announces this worker alive for `ttl`.
    pub async fn heartbeat(&self, ttl: Duration) -> Result<(), QueueError> {
        let keys = &self.shard.keys;
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg(keys.heartbeat(&self.worker))
            .arg(1)
            .arg("PX")
            .arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX))
            .ignore()
            .cmd("SADD")
            .arg(keys.workers())
            .arg(&self.worker)
            .ignore();
        self.shard
            .call("heartbeat", |mut conn| async move {
                pipe.query_async::<()>(&mut conn).await
            })
            .await
    }

    /// On a clean exit: drop the heartbeat so that any chunk left behind is taken over at once.
    pub async fn leave(&self) -> Result<(), QueueError> {
        let heartbeat = self.shard.keys.heartbeat(&self.worker);
        self.shard
            .call("leave", |mut conn| async move {
                redis::cmd("DEL")
                    .arg(heartbeat)
                    .query_async::<()>(&mut conn)
                    .await
            })
            .await
    }

    /// Takes over the processing list of one dead worker, if any; returns its id.
    pub async fn take_over_dead(&self) -> Result<Option<String>, QueueError> {
        let keys = &self.shard.keys;
        let workers_key = keys.workers();
        let workers: Vec<String> = self
            .shard
            .call("workers", |mut conn| async move {
                redis::cmd("SMEMBERS")
                    .arg(workers_key)
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        let (ours, workers_key) = (self.processing(), keys.workers());
        for dead in workers.into_iter().filter(|w| *w != self.worker) {
            let (heartbeat, dead_list) = (keys.heartbeat(&dead), keys.processing(&dead));
            let take = TakeOver {
                heartbeat: &heartbeat,
                dead_list: &dead_list,
                our_list: &ours,
                workers: &workers_key,
                dead: &dead,
            };
            let taken = self
                .on_lane("take_over", self.shard.timeout(), async |conn| {
                    let taken = scripts::take_over(conn, &take).await?;
                    self.shard.wait_for_replicas(conn).await?;
                    Ok(taken)
                })
                .await?;
            if taken {
                return Ok(Some(dead));
            }
        }
        Ok(None)
    }

    /// Queue length, dead-letter length, and the number of processing lists holding records
    /// (chunks in hand, or left by dead workers until taken over).
    pub async fn depths(&self) -> Result<(u64, u64, u64), QueueError> {
        let keys = &self.shard.keys;
        let (queue, dlq, workers_key) = (keys.queue(), keys.dlq(), keys.workers());
        self.shard
            .call("queue_depths", |mut conn| async move {
                let (queue, dlq, workers): (u64, u64, Vec<String>) = redis::pipe()
                    .cmd("LLEN")
                    .arg(queue)
                    .cmd("LLEN")
                    .arg(dlq)
                    .cmd("SMEMBERS")
                    .arg(&workers_key)
                    .query_async(&mut conn)
                    .await?;
                let lists: Vec<String> = workers.iter().map(|w| keys.processing(w)).collect();
                let held = scripts::held_lists(&mut conn, &workers_key, &lists).await?;
                Ok((queue, dlq, held))
            })
            .await
    }
}
