//! A pipeline for the batcher's tests: an ingest API and a database (PostgreSQL and
//! ClickHouse) that batchers come and go around, with the counts those tests assert on.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::processes::{Batcher, Ingest};
use crate::services::{clickhouse_query, delete_prefix, redis_connection, redis_url, Database};

/// An ingest API and a database (PostgreSQL and ClickHouse) for one test; batchers come and go.
pub struct Pipeline {
    pub ingest: Ingest,
    pub db: Database,
    pub key: String,
    pub redis: String,
    pub http: reqwest::Client,
}

impl Pipeline {
    pub async fn new() -> Result<Self> {
        let db = Database::create_with_clickhouse().await?;
        let key = db.tenant_with_key("acme").await?;
        let redis = redis_url();
        let ingest = Ingest::start(&db, &redis, &["--dedup-window-ms", "60000"]).await?;
        Ok(Self {
            ingest,
            db,
            key,
            redis,
            http: reqwest::Client::new(),
        })
    }

    pub async fn batcher(&self, worker: &str, args: &[&str]) -> Result<Batcher> {
        Batcher::start(&self.db, &self.redis, &self.ingest.key_prefix, worker, args).await
    }

    /// Sends events in batches of 250; returns the number accepted.
    pub async fn send(&self, events: &[Value]) -> Result<usize> {
        let mut accepted = 0;
        for batch in events.chunks(250) {
            let response = self
                .http
                .post(self.ingest.url("/v1/ai/events/batch"))
                .bearer_auth(&self.key)
                .json(&batch)
                .send()
                .await?;
            if response.status() != StatusCode::ACCEPTED {
                bail!(
                    "batch answered {}: {}",
                    response.status(),
                    response.text().await?
                );
            }
            let body: Value = response.json().await?;
            accepted += body["accepted"].as_u64().unwrap_or(0) as usize;
        }
        Ok(accepted)
    }

    pub fn table(&self) -> String {
        format!("{}.ai_events", self.db.name)
    }

    pub async fn rows(&self) -> Result<u64> {
        Ok(
            clickhouse_query(&format!("SELECT count() FROM {}", self.table()))
                .await?
                .parse()?,
        )
    }

    /// Distinct events among the rows: equal to the row count when nothing is doubled.
    pub async fn distinct(&self) -> Result<u64> {
        let sql = format!(
            "SELECT uniqExact(tenant_id, semantic_hash, event_time) FROM {}",
            self.table()
        );
        Ok(clickhouse_query(&sql).await?.parse()?)
    }

    pub async fn redis_len(&self, suffix: &str) -> Result<u64> {
        let mut conn = redis_connection(&self.redis).await?;
        Ok(redis::cmd("LLEN")
            .arg(format!("{}:{suffix}", self.ingest.key_prefix))
            .query_async(&mut conn)
            .await?)
    }

    /// The records of the list `suffix`, oldest first (a frame of a batch's records counts as
    /// its records).
    pub async fn records_in(&self, suffix: &str) -> Result<Vec<Vec<u8>>> {
        let mut conn = redis_connection(&self.redis).await?;
        let mut elements: Vec<Vec<u8>> = redis::cmd("LRANGE")
            .arg(format!("{}:{suffix}", self.ingest.key_prefix))
            .arg(0)
            .arg(-1)
            .query_async(&mut conn)
            .await?;
        elements.reverse();
        let mut records = Vec::new();
        for element in &elements {
            records.extend(
                sift_core::records_of(element)?
                    .into_iter()
                    .map(<[u8]>::to_vec),
            );
        }
        Ok(records)
    }

    /// Waits until `expected` rows are in ClickHouse and the queue is empty, then a little
    /// longer, and returns the count (so a late duplicate would still be seen).
    pub async fn settle(&self, expected: u64, within: Duration) -> Result<u64> {
        let started = Instant::now();
        while started.elapsed() < within {
            if self.rows().await? >= expected && self.redis_len("queue").await? == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        self.rows().await
    }

    pub async fn cleanup(&self) -> Result<()> {
        delete_prefix(&self.redis, &self.ingest.key_prefix).await
    }
}

/// An event of session number `session` (latency and tokens vary with it).
pub fn event_in(session: usize, prompt: &str) -> Value {
    json!({
        "session_id": format!("session-{session:06}"), "prompt_text": prompt,
        "model_version": "v1.2.3", "latency_ms": 20 + session % 300, "token_count": session % 1000,
    })
}

/// `n` distinct intents.
pub fn unique_events(tag: &str, n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| event_in(i / 10, &format!("{tag} question number {i}")))
        .collect()
}
