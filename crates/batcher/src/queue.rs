//! The Redis side of the batcher on one shard: the reliable claim (LMOVE from the tail of
//! `ai:queue` into this worker's processing list, so the queue is FIFO and nothing is lost if
//! the worker dies), the acknowledgement, heartbeats, and the takeover of dead workers'
//! processing lists. The scripts themselves are sift-redis's (`queue_claim.lua`, ...); with
//! `--redis-wait-replicas`, a claim and an acknowledgement count only once replicated, so a
//! failover neither hands a claimed chunk's records out again nor revives an acknowledged one.

use std::time::Duration;

use sift_core::KeySpace;
use sift_redis::scripts::{self, Ack, TakeOver, WorkerLists};
use sift_redis::{Conn, Shard};

pub use sift_redis::scripts::Claimed;
pub use sift_redis::RedisError as QueueError;

pub struct Queue {
    shard: Shard,
    worker: String,
    /// On a Redis Cluster, this lane's own connection for its blocking claims (made once:
    /// a cluster connection reaches every master).
    blocking: tokio::sync::Mutex<Option<Conn>>,
}

impl Queue {
    pub fn new(shard: Shard, worker: String) -> Self {
        Self {
            shard,
            worker,
            blocking: tokio::sync::Mutex::new(None),
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

    /// Moves up to `rows` records and `bytes` bytes (at least one element if `at_least_one`)
    /// into this worker's processing list; returns whether a budget stopped the claim (the
    /// chunk is full), the records taken, and the elements, oldest first.
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
        self.shard
            .call_replicated("queue_claim", |mut conn| async move {
                let claimed =
                    scripts::queue_claim(&mut conn, &lists, rows, bytes, at_least_one).await?;
                Ok((claimed, conn))
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
        let mut cached = self.blocking.lock().await;
        let work = async {
            let mut conn = match cached.as_ref().and_then(Conn::share) {
                Some(conn) => conn,
                None if self.shard.is_cluster() => {
                    let conn = self.shard.blocking_conn().await?;
                    *cached = conn.share();
                    conn
                }
                None => self.shard.blocking_conn().await?,
            };
            let (moved,): (Option<Vec<u8>>,) = pipe.query_async(&mut conn).await?;
            if moved.is_some() {
                self.shard.wait_for_replicas(&mut conn).await?;
            }
            Ok::<_, QueueError>(moved)
        };
        let answer = sift_redis::call::bounded("queue_claim_blocking", limit, work).await;
        if answer.as_ref().is_err_and(|e| !e.is_answer()) {
            // A broken or stuck connection is made anew next time.
            *cached = None;
        }
        answer
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
        self.shard
            .call_replicated("queue_ack", |mut conn| async move {
                let acked = scripts::queue_ack(&mut conn, &ack).await?;
                Ok((acked, conn))
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
                .shard
                .call_replicated("take_over", |mut conn| async move {
                    let taken = scripts::take_over(&mut conn, &take).await?;
                    Ok((taken, conn))
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
