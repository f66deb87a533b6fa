//! A whole pipeline for several tenants, for the end-to-end tests: an ingest API on Redis
//! (one server, shards, or a Redis Cluster), its batchers and ClickHouse, with the steps the
//! tests share (sending, waiting for rows, the operator commands, replays, poison records).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::fixtures::{dataset, now_secs};
use crate::processes::{Batcher, Ingest};
use crate::services::{delete_prefix, redis_connection, redis_url, Database};

pub struct World {
    pub ingest: Ingest,
    pub db: Database,
    pub keys: HashMap<&'static str, String>,
    /// The Redis URL (or one per shard, comma-separated) and the number of shards.
    pub redis: String,
    pub shards: usize,
    /// The shards are on a Redis Cluster (`redis` names some of its nodes).
    pub cluster: bool,
    pub http: reqwest::Client,
}

/// `sql` on the ClickHouse that `w`'s binaries use.
async fn query(w: &World, sql: &str) -> Result<String> {
    crate::services::clickhouse_query_at(&w.db.clickhouse_url, sql).await
}

impl World {
    pub async fn new(tenants: &[&'static str]) -> Result<Self> {
        Self::sharded(tenants, &redis_url(), 1, &[]).await
    }

    /// A world whose ingest API and batchers use `shards` Redis shards on `redis`, with
    /// `ingest_args` added to the ingest API's flags.
    pub async fn sharded(
        tenants: &[&'static str],
        redis: &str,
        shards: usize,
        ingest_args: &[&str],
    ) -> Result<Self> {
        let db = Database::create_with_clickhouse().await?;
        Self::on(db, tenants, redis, shards, ingest_args).await
    }

    /// A world on the test's own two-shard ClickHouse `cluster` (and the shared Redis): the
    /// binaries run with `--clickhouse-cluster`, and its queries go through the first node.
    pub async fn on_clickhouse_cluster(
        tenants: &[&'static str],
        cluster: &crate::clickhouse_cluster::PrivateClickHouseCluster,
        ingest_args: &[&str],
    ) -> Result<Self> {
        let db = Database::create_on_clickhouse_cluster(cluster).await?;
        Self::on(db, tenants, &redis_url(), 1, ingest_args).await
    }

    async fn on(
        db: Database,
        tenants: &[&'static str],
        redis: &str,
        shards: usize,
        ingest_args: &[&str],
    ) -> Result<Self> {
        let mut keys = HashMap::new();
        for tenant in tenants {
            keys.insert(*tenant, db.tenant_with_key(tenant).await?);
        }
        let shard_flag = ["--redis-shards".to_owned(), shards.to_string()];
        let cluster = ingest_args.contains(&"--redis-cluster");
        let args: Vec<&str> = shard_flag
            .iter()
            .map(String::as_str)
            .chain(ingest_args.iter().copied())
            .collect();
        let ingest = Ingest::start(&db, redis, &args).await?;
        Ok(Self {
            ingest,
            db,
            keys,
            redis: redis.to_owned(),
            shards,
            cluster,
            http: reqwest::Client::new(),
        })
    }

    /// A world on the Redis Cluster whose nodes `urls` names, with `shards` shards.
    pub async fn on_cluster(
        tenants: &[&'static str],
        urls: &str,
        shards: usize,
        ingest_args: &[&str],
    ) -> Result<Self> {
        let mut args = vec!["--redis-cluster"];
        args.extend_from_slice(ingest_args);
        Self::sharded(tenants, urls, shards, &args).await
    }

    /// The environment that points a batcher or operator command at this world's Redis.
    fn redis_env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![("SIFT_REDIS_SHARDS", self.shards.to_string())];
        if self.cluster {
            env.push(("SIFT_REDIS_CLUSTER", "true".into()));
        }
        env
    }

    /// A connection to this world's Redis that reaches every shard: a cluster client on a
    /// cluster (it follows MOVED), a plain connection otherwise (the first URL).
    pub async fn redis_conn(&self) -> Result<sift_redis::Conn> {
        let urls: Vec<&str> = self.redis.split(',').collect();
        if self.cluster {
            let client = redis::cluster::ClusterClient::new(urls)?;
            Ok(sift_redis::Conn::Cluster(
                client.get_async_connection().await?,
            ))
        } else {
            Ok(sift_redis::Conn::Mux(
                crate::redis_connection(urls[0]).await?,
            ))
        }
    }

    pub async fn batcher(&self, worker: &str, args: &[&str]) -> Result<Batcher> {
        Batcher::start_with_env(
            &self.db,
            &self.redis,
            &self.ingest.key_prefix,
            worker,
            args,
            &self.redis_env(),
        )
        .await
    }

    /// An operator command of `sift-batcher` on this world's Redis shards; its stdout.
    pub async fn operator(&self, args: &[&str]) -> Result<String> {
        let shards = self.shards.to_string();
        let mut full = vec![
            "--redis-url",
            &self.redis,
            "--redis-shards",
            &shards,
            "--key-prefix",
            &self.ingest.key_prefix,
        ];
        if self.cluster {
            full.push("--redis-cluster");
        }
        full.extend_from_slice(args);
        self.db.batcher(&full).await
    }

    /// An event of `tenant` refused for its clock (an hour ahead) is listed with the invalid
    /// events (on shard 0); replayed twice with a wider tolerance, it is requeued once. With
    /// several shards the event is one whose intent lives on another shard than that list's.
    pub async fn replay_a_refused_event_twice(&self, tenant: &'static str) -> Result<()> {
        let now = now_secs();
        let early = (0..)
            .map(|i| {
                let mut e = dataset("ahead", 1, 1, 40 + i).remove(0);
                e["timestamp"] = json!(now + 3600);
                e
            })
            .find(|e| {
                let limits = sift_core::Limits {
                    max_future_skew_ms: 7_200_000,
                    ..Default::default()
                };
                sift_core::validate::validate(e, &limits, now as i64 * 1000).is_ok_and(|event| {
                    let hash = sift_core::SemanticHash::of(tenant, &event);
                    self.shards == 1 || sift_core::keys::shard_of(&hash, self.shards) != 0
                })
            })
            .context("an event for another shard than 0")?;
        let refused = self
            .http
            .post(self.ingest.url("/v1/ai/events"))
            .bearer_auth(&self.keys[tenant])
            .json(&early)
            .send()
            .await?;
        ensure!(
            refused.status() == StatusCode::UNPROCESSABLE_ENTITY,
            "answered {}",
            refused.status()
        );
        let replay = [
            "dlq",
            "replay",
            "--invalid",
            "--max-future-skew-secs",
            "7200",
        ];
        let out = self.operator(&replay).await?;
        ensure!(out.contains("requeued 1 entries"), "{out}");
        let again = self.operator(&replay).await?;
        ensure!(again.contains("requeued 0 entries"), "{again}");
        Ok(())
    }

    /// A record that is not a queue record, pushed onto shard `shard`'s queue, is
    /// dead-lettered there, listed as `shard:0` (with several shards), shown and purged.
    pub async fn poison_is_listed_shown_and_purged(&self, shard: usize) -> Result<()> {
        let keys = &self.key_spaces()[shard];
        let mut conn = self.redis_conn().await?;
        redis::cmd("LPUSH")
            .arg(keys.queue())
            .arg("not a queue record")
            .query_async::<()>(&mut conn)
            .await?;
        let started = Instant::now();
        while redis::cmd("LLEN")
            .arg(keys.dlq())
            .query_async::<u64>(&mut conn)
            .await?
            == 0
        {
            ensure!(
                started.elapsed() < Duration::from_secs(20),
                "no dead letter"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let listed = self.operator(&["dlq", "list"]).await?;
        ensure!(listed.starts_with("1 entries"), "{listed}");
        let place = if self.shards > 1 {
            format!("{shard}:0")
        } else {
            "0".to_owned()
        };
        ensure!(
            listed.contains(&format!(" {place} ")) && listed.contains("[poison]"),
            "{listed}"
        );
        let shard_flag = shard.to_string();
        let shown = self
            .operator(&["dlq", "show", "0", "--shard", &shard_flag])
            .await?;
        ensure!(shown.contains("not a queue record"), "{shown}");
        let purged = self.operator(&["dlq", "purge", "--yes"]).await?;
        ensure!(purged.contains("purged 1 entries"), "{purged}");
        let left: u64 = redis::cmd("LLEN")
            .arg(keys.dlq())
            .query_async(&mut conn)
            .await?;
        ensure!(left == 0, "{left} dead letters left");
        Ok(())
    }

    /// The chunk of `records` (as its worker's processing list held them) handed again to
    /// `worker`, as after an insert whose answer was lost: its ledger row (the only one) is
    /// deleted and the records are put back into the worker's processing list, which the
    /// worker reads first when it starts.
    pub async fn resend_chunk(&self, worker: &str, records: &[Vec<u8>]) -> Result<()> {
        let ledger = self.db.connect().await?;
        let deleted = ledger.execute("DELETE FROM chunk_ledger", &[]).await?;
        ensure!(deleted == 1, "{deleted} ledger rows deleted, not 1");
        let mut conn = self.redis_conn().await?;
        redis::cmd("RPUSH")
            .arg(self.key_spaces()[0].processing(worker))
            .arg(records)
            .query_async::<()>(&mut conn)
            .await?;
        Ok(())
    }

    /// Rows in `ai_events` (without FINAL) and the distinct events among them.
    pub async fn rows_and_distinct(&self) -> Result<(u64, u64)> {
        let sql = format!(
            "SELECT count(), uniqExact(tenant_id, semantic_hash, event_time) FROM {}",
            self.table("ai_events")
        );
        let answer = query(self, &sql).await?;
        let (rows, distinct) = answer.split_once('\t').unwrap_or(("0", "0"));
        Ok((rows.parse()?, distinct.parse()?))
    }

    /// The key spaces of this world's shards.
    pub fn key_spaces(&self) -> Vec<sift_core::KeySpace> {
        if self.cluster {
            sift_core::KeySpace::cluster(&self.ingest.key_prefix, self.shards)
        } else {
            sift_core::KeySpace::shards(&self.ingest.key_prefix, self.shards)
        }
    }

    pub async fn send(&self, tenant: &str, events: &[Value]) -> Result<u64> {
        let mut accepted = 0;
        for batch in events.chunks(500) {
            let response = self
                .http
                .post(self.ingest.url("/v1/ai/events/batch"))
                .bearer_auth(&self.keys[tenant])
                .json(&batch)
                .send()
                .await?;
            if response.status() != StatusCode::ACCEPTED {
                bail!("batch answered {}", response.status());
            }
            accepted += response.json::<Value>().await?["accepted"]
                .as_u64()
                .unwrap_or(0);
        }
        Ok(accepted)
    }

    pub async fn get(&self, tenant: &str, path: &str) -> Result<(StatusCode, Value)> {
        let response = self
            .http
            .get(self.ingest.url(path))
            .bearer_auth(&self.keys[tenant])
            .send()
            .await?;
        let status = response.status();
        Ok((status, response.json().await?))
    }

    pub fn table(&self, name: &str) -> String {
        format!("{}.{name}", self.db.name)
    }

    pub async fn wait_for_rows(&self, table: &str, expected: u64) -> Result<()> {
        let started = Instant::now();
        loop {
            let count: u64 = query(self, &format!("SELECT count() FROM {}", self.table(table)))
                .await?
                .parse()?;
            if count >= expected {
                return Ok(());
            }
            if started.elapsed() > Duration::from_secs(60) {
                bail!("{table} has {count} rows, expected {expected}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until `expected` events are in `ai_events` *and* counted in `ai_events_hourly`,
    /// and the batcher has acknowledged every chunk. One INSERT commits the raw part and the
    /// materialized view's part one after the other, so a reader can briefly see the raw row
    /// without its rollup; the acknowledgement moves the rollup versions that tell the read
    /// API's cache which hours changed.
    pub async fn wait_for_events(&self, expected: u64) -> Result<()> {
        self.wait_for_rows("ai_events", expected).await?;
        let sql = format!("SELECT sum(events) FROM {}", self.table("ai_events_hourly"));
        let started = Instant::now();
        loop {
            let counted: u64 = query(self, &sql).await?.parse()?;
            if counted >= expected {
                break;
            }
            if started.elapsed() > Duration::from_secs(60) {
                bail!("ai_events_hourly counts {counted} events, expected {expected}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        loop {
            let (mut queued, mut in_flight) = (0u64, Vec::<String>::new());
            for (url, keys) in self.shard_urls().into_iter().zip(self.key_spaces()) {
                let mut conn = redis_connection(&url).await?;
                queued += redis::cmd("LLEN")
                    .arg(keys.queue())
                    .query_async::<u64>(&mut conn)
                    .await?;
                in_flight.extend(
                    redis::cmd("KEYS")
                        .arg(keys.processing("*"))
                        .query_async::<Vec<String>>(&mut conn)
                        .await?,
                );
            }
            if queued == 0 && in_flight.is_empty() {
                return Ok(());
            }
            if started.elapsed() > Duration::from_secs(60) {
                bail!("{queued} records queued, {in_flight:?} in flight");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn query_json(&self, sql: &str) -> Result<Vec<Value>> {
        let text = query(self, &format!("{sql} FORMAT JSONEachRow")).await?;
        text.lines()
            .map(|l| serde_json::from_str(l).context("JSONEachRow"))
            .collect()
    }

    /// The Redis URL of each shard.
    pub fn shard_urls(&self) -> Vec<String> {
        let urls: Vec<&str> = self.redis.split(',').collect();
        (0..self.shards)
            .map(|s| urls[if urls.len() == 1 { 0 } else { s }].to_owned())
            .collect()
    }

    pub async fn cleanup(&self) -> Result<()> {
        if self.cluster {
            // Each master holds some slots: each deletes its own keys, one by one (keys of
            // several slots in one UNLINK are refused); replicas refuse and are skipped.
            for url in self.redis.split(',') {
                let _ =
                    crate::services::delete_prefix_one_by_one(url, &self.ingest.key_prefix).await;
            }
            return Ok(());
        }
        let mut urls = self.shard_urls();
        urls.dedup();
        for url in urls {
            delete_prefix(&url, &self.ingest.key_prefix).await?;
        }
        Ok(())
    }
}
