//! The end-to-end view from ClickHouse: after the load, poll `ai_events` until the run's rows
//! (found by their session prefix `bench-<run>-`, counted without FINAL: a double must show)
//! reach the number of accepted events, then measure the lag of each row (`inserted_at`,
//! stamped by ClickHouse at insert, minus `event_time`, the client timestamp, which the tool
//! sets to the event's intended send time) and count the distinct events.
//!
//! Plain HTTP with the SQL as the body; nothing here depends on the columns' types (the
//! semantic hash may become a FixedString: `uniqExact` takes both).

use std::time::{Duration, Instant};

use reqwest::{Client, Url};

/// How often the row count is polled while waiting.
const POLL_EVERY: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum ClickHouseError {
    #[error("ClickHouse at {url} cannot be reached: {message}")]
    Unreachable { url: String, message: String },
    #[error("ClickHouse answered {status}: {body}")]
    Refused { status: u16, body: String },
    #[error("ClickHouse's answer {0:?} is not what was asked for")]
    Unreadable(String),
}

pub struct ClickHouse {
    client: Client,
    url: Url,
    table: String,
    user: Option<String>,
    password: Option<String>,
}

/// What ClickHouse holds of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct Rows {
    pub rows: u64,
    /// `uniqExact(tenant_id, semantic_hash, event_time)`: equal to `rows` when nothing is doubled.
    pub distinct: u64,
    pub lag_p50_ms: f64,
    pub lag_p99_ms: f64,
    pub lag_max_ms: f64,
    pub lag_min_ms: f64,
    pub lag_mean_ms: f64,
}

/// The wait for a run's rows and what was found.
#[derive(Debug, Clone)]
pub struct EndToEnd {
    pub rows: Rows,
    /// The count reached the accepted events within `--lag-timeout`.
    pub reached: bool,
    /// From the last answer until the poll that saw every accepted event (± the poll period).
    pub drain: Option<Duration>,
    pub waited: Duration,
}

impl ClickHouse {
    pub fn new(
        url: &Url,
        database: &str,
        user: Option<String>,
        password: Option<String>,
    ) -> Result<Self, ClickHouseError> {
        let client = Client::builder()
            .timeout(Duration::from_secs(30))
            .no_proxy()
            .build()
            .map_err(|e| ClickHouseError::Unreachable {
                url: url.to_string(),
                message: e.to_string(),
            })?;
        Ok(Self {
            client,
            url: url.clone(),
            table: format!("`{database}`.ai_events"),
            user,
            password,
        })
    }

    /// Runs one query; the answer's text, trimmed.
    async fn query(&self, sql: &str) -> Result<String, ClickHouseError> {
        let mut request = self.client.post(self.url.clone()).body(sql.to_owned());
        if let Some(user) = &self.user {
            request = request.header("X-ClickHouse-User", user);
        }
        if let Some(password) = &self.password {
            request = request.header("X-ClickHouse-Key", password);
        }
        let unreachable = |e: reqwest::Error| ClickHouseError::Unreachable {
            url: self.url.to_string(),
            message: e.to_string(),
        };
        let response = request.send().await.map_err(unreachable)?;
        let status = response.status();
        let text = response.text().await.map_err(unreachable)?;
        if !status.is_success() {
            return Err(ClickHouseError::Refused {
                status: status.as_u16(),
                body: text.trim().chars().take(500).collect(),
            });
        }
        Ok(text.trim().to_owned())
    }

    /// Checks, before any load, that the table and the columns the checks read are there.
    pub async fn preflight(&self) -> Result<(), ClickHouseError> {
        self.query(&format!(
            "SELECT tenant_id, session_id, semantic_hash, event_time, inserted_at FROM {} WHERE 0",
            self.table
        ))
        .await
        .map(drop)
    }

    /// The rows of run `run_id` whose events are not older than `since_ms` (every event of
    /// the run is stamped at or after its start; the bound lets ClickHouse skip old parts).
    fn filter(run_id: &str, since_ms: i64) -> String {
        format!(
            "session_id LIKE 'bench-{run_id}-%' AND event_time >= fromUnixTimestamp64Milli(toInt64({since_ms}))"
        )
    }

    pub async fn count(&self, run_id: &str, since_ms: i64) -> Result<u64, ClickHouseError> {
        let text = self
            .query(&format!(
                "SELECT count() FROM {} WHERE {}",
                self.table,
                Self::filter(run_id, since_ms)
            ))
            .await?;
        text.parse()
            .map_err(|_| ClickHouseError::Unreadable(text.clone()))
    }

    pub async fn rows(&self, run_id: &str, since_ms: i64) -> Result<Rows, ClickHouseError> {
        let sql = format!(
            "SELECT count(), uniqExact(tenant_id, semantic_hash, event_time), \
                    quantileExact(0.5)(lag), quantileExact(0.99)(lag), max(lag), min(lag), avg(lag) \
             FROM (SELECT tenant_id, semantic_hash, event_time, \
                          toInt64(toUnixTimestamp64Milli(inserted_at)) - toInt64(toUnixTimestamp64Milli(event_time)) AS lag \
                   FROM {} WHERE {}) \
             FORMAT TabSeparated",
            self.table,
            Self::filter(run_id, since_ms)
        );
        let text = self.query(&sql).await?;
        let fields: Vec<&str> = text.split('\t').collect();
        let unreadable = || ClickHouseError::Unreadable(text.clone());
        if fields.len() != 7 {
            return Err(unreadable());
        }
        let int = |i: usize| fields[i].parse::<u64>().map_err(|_| unreadable());
        // avg() of no rows is nan: no lag then.
        let float = |i: usize| {
            fields[i]
                .parse::<f64>()
                .map(|v| if v.is_finite() { v } else { 0.0 })
                .map_err(|_| unreadable())
        };
        Ok(Rows {
            rows: int(0)?,
            distinct: int(1)?,
            lag_p50_ms: float(2)?,
            lag_p99_ms: float(3)?,
            lag_max_ms: float(4)?,
            lag_min_ms: float(5)?,
            lag_mean_ms: float(6)?,
        })
    }

    /// Polls until the run has `target` rows or `timeout` has passed since `last_answer`,
    /// watches `settle` longer, and measures.
    pub async fn wait(
        &self,
        run_id: &str,
        since_ms: i64,
        target: u64,
        last_answer: Instant,
        timeout: Duration,
        settle: Duration,
    ) -> Result<EndToEnd, ClickHouseError> {
        let started = Instant::now();
        let deadline = last_answer + timeout;
        let mut last_error = None;
        let mut reached = false;
        let mut drain = None;
        loop {
            match self.count(run_id, since_ms).await {
                Ok(rows) if rows >= target => {
                    reached = true;
                    drain = Some(last_answer.elapsed());
                    break;
                }
                Ok(_) => last_error = None,
                // Passing trouble (a restart, a busy server) is waited out like missing rows.
                Err(error) => last_error = Some(error),
            }
            if Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
        if let Some(error) = last_error {
            return Err(error);
        }
        if reached {
            tokio::time::sleep(settle).await;
        }
        Ok(EndToEnd {
            rows: self.rows(run_id, since_ms).await?,
            reached,
            drain,
            waited: started.elapsed(),
        })
    }
}
