//! Ready-made worlds for the end-to-end tests: an ingest API with its database and key
//! ([`Fixture`]; a whole pipeline is [`crate::world::World`]), and the data they send.

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::Result;
use reqwest::StatusCode;
use serde_json::{json, Value};
use sift_core::QueueRecord;

use crate::processes::Ingest;
use crate::services::{delete_prefix, redis_connection, redis_url, Database};

/// One test's world: a database with a tenant and key, and an ingest process.
pub struct Fixture {
    // Fields drop in order: the server stops before its database is dropped.
    pub ingest: Ingest,
    pub db: Database,
    pub key: String,
    pub redis: String,
    pub http: reqwest::Client,
}

impl Fixture {
    pub async fn new(args: &[&str]) -> Result<Self> {
        Self::with_redis(&redis_url(), args).await
    }

    pub async fn with_redis(redis: &str, args: &[&str]) -> Result<Self> {
        let db = Database::create().await?;
        let key = db.tenant_with_key("acme").await?;
        let ingest = Ingest::start(&db, redis, args).await?;
        Ok(Self {
            db,
            key,
            ingest,
            redis: redis.to_owned(),
            http: reqwest::Client::new(),
        })
    }

    pub async fn post(
        &self,
        path: &str,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> Result<(StatusCode, Value)> {
        self.post_with_key(Some(&self.key), path, content_type, body)
            .await
    }

    pub async fn post_with_key(
        &self,
        key: Option<&str>,
        path: &str,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> Result<(StatusCode, Value)> {
        let mut request = self
            .http
            .post(self.ingest.url(path))
            .header("content-type", content_type)
            .body(body);
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        let response = request.send().await?;
        let status = response.status();
        let text = response.text().await?;
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok((status, value))
    }

    /// Sends one event and returns the whole response (for tests that read its headers).
    pub async fn event_response(&self, event: &Value) -> Result<reqwest::Response> {
        Ok(self
            .http
            .post(self.ingest.url("/v1/ai/events"))
            .bearer_auth(&self.key)
            .header("content-type", "application/json")
            .body(event.to_string())
            .send()
            .await?)
    }

    pub async fn event(&self, event: &Value) -> Result<(StatusCode, Value)> {
        self.post("/v1/ai/events", "application/json", event.to_string())
            .await
    }

    pub async fn list(&self, suffix: &str) -> Result<Vec<Vec<u8>>> {
        let mut conn = redis_connection(&self.redis).await?;
        let key = format!("{}:{suffix}", self.ingest.key_prefix);
        Ok(redis::cmd("LRANGE")
            .arg(key)
            .arg(0)
            .arg(-1)
            .query_async(&mut conn)
            .await?)
    }

    /// The queued records in arrival order (a batch's accepted events are one element, a
    /// frame of their records).
    pub async fn queue(&self) -> Result<Vec<QueueRecord<'static>>> {
        let mut elements = self.list("queue").await?;
        elements.reverse(); // LPUSH puts the newest first; show them in arrival order.
        let mut records = Vec::new();
        for element in &elements {
            for record in sift_core::records_of(element)? {
                records.push(QueueRecord::decode(record)?.into_owned());
            }
        }
        Ok(records)
    }

    /// The queue once it holds at least `n` records (or after 10 s, as it is then).
    pub async fn queue_of_at_least(&self, n: usize) -> Result<Vec<QueueRecord<'static>>> {
        let started = Instant::now();
        loop {
            let queue = self.queue().await?;
            if queue.len() >= n || started.elapsed() > Duration::from_secs(10) {
                return Ok(queue);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn cleanup(&self) -> Result<()> {
        delete_prefix(&self.redis, &self.ingest.key_prefix).await
    }
}

pub fn event(session: &str, prompt: &str) -> Value {
    json!({
        "session_id": session, "prompt_text": prompt, "model_version": "v1.2.3",
        "latency_ms": 120.5, "token_count": 42,
    })
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(data).expect("gzip in memory");
    encoder.finish().expect("gzip in memory")
}

pub const MODELS: [&str; 3] = ["v1.0.0", "v2.1.0", "v3.0.2"];

/// Deterministic pseudo-random numbers (no seed files, same data on every run).
struct Lcg(u64);

impl Lcg {
    fn step(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn below(&mut self, n: u64) -> u64 {
        self.step() % n
    }
}

/// Events over the last `hours` hours for several models and sessions of one tenant.
pub fn dataset(tag: &str, n: usize, hours: u64, seed: u64) -> Vec<Value> {
    let mut rng = Lcg(seed);
    let now = now_secs();
    (0..n)
        .map(|i| {
            let model = MODELS[rng.below(3) as usize];
            let fallback = if rng.below(10) == 0 {
                json!([model, "v0.9.0"])
            } else {
                json!([model])
            };
            json!({
                "session_id": format!("{tag}-session-{:04}", rng.below(60)),
                "prompt_text": format!("{tag} prompt {i}"),
                "model_version": model,
                "latency_ms": 5.0 + rng.below(200_000) as f64 / 100.0,
                "input_tokens": rng.below(400), "output_tokens": rng.below(800),
                "success": rng.below(10) != 0,
                "fallback_chain": fallback,
                "timestamp": now - rng.below(hours * 3600),
            })
        })
        .collect()
}

/// The same intents again, as clients resend them: each retried verbatim and re-rendered
/// (upper case, punctuation, spaces).
pub fn resent(events: &[Value]) -> Vec<Value> {
    events
        .iter()
        .flat_map(|e| {
            let mut loud = e.clone();
            let prompt = e["prompt_text"].as_str().unwrap_or_default();
            loud["prompt_text"] = json!(format!("  {}!! ", prompt.to_uppercase()));
            [e.clone(), loud]
        })
        .collect()
}

pub fn f(v: &Value) -> f64 {
    v.as_f64()
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        .unwrap_or(f64::NAN)
}

/// Seconds since the epoch, now.
pub fn now_secs() -> u64 {
    sift_core::clock::now_secs().unsigned_abs()
}

/// `GET /v1/ai/stats/hourly` over the last `hours` hours and the next one.
pub fn hourly_path(hours: u64) -> String {
    let now = now_secs();
    format!(
        "/v1/ai/stats/hourly?from={}&to={}",
        now - hours * 3600,
        now + 3600
    )
}
