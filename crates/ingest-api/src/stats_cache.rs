//! A cache of the hourly figures per tenant and hour, in front of ClickHouse.
//!
//! A dashboard asks for the same hours again and again while only the newest of them change.
//! Each cached hour carries the rollup version that the batcher moves whenever it writes
//! events of that hour (`KeySpace::rollup_version`, moved in the same Redis step that
//! acknowledges the chunk, after the rows are in ClickHouse). A request reads the versions of
//! its hours in one MGET and asks ClickHouse only for the hours whose version moved or that are
//! not cached: a late event is in the next answer, and an unchanged range is answered without
//! ClickHouse. Entries also expire after `--stats-cache-secs`, which bounds how long a write
//! that bypassed the batcher (a bulk import straight into ClickHouse) can go unseen. With
//! several Redis shards an hour's version is its counter on every shard (compared whole, not
//! summed: a sum could come back to an old value as one counter expires and another grows).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use clickhouse::Client;
use sift_service::outage::Outage;

use crate::analytics::{self, HourlyStats, Models};
use crate::error::ApiError;
use crate::metrics::STATS_CACHE_HOURS;
use sift_redis::Shards;

const HOUR: u32 = 3600;
/// Longer ranges are read straight from ClickHouse (one MGET per request stays small).
const MAX_CACHED_HOURS: usize = 31 * 24;
/// Up to this many hours are fetched merged from their states in one query; a longer span goes
/// through the finalized rollups (two queries, but no t-digest merge for settled hours).
const MERGE_DIRECTLY_UP_TO: usize = 6;

struct CachedHour {
    version: Vec<u64>,
    /// Every model's figures for the hour, ordered by model.
    rows: Vec<HourlyStats>,
}

pub struct StatsCache {
    entries: Option<moka::sync::Cache<(String, u32), Arc<CachedHour>>>,
    shards: Shards,
    /// Redis, as the rollup versions meet it.
    versions_outage: Outage,
}

impl StatsCache {
    /// A `ttl` of zero turns the cache off: every request goes to ClickHouse.
    pub fn new(shards: Shards, ttl: Duration, capacity: u64) -> Self {
        let entries = (!ttl.is_zero()).then(|| {
            moka::sync::Cache::builder()
                .max_capacity(capacity)
                .time_to_live(ttl)
                .build()
        });
        Self {
            entries,
            shards,
            versions_outage: Outage::new(
                "Redis",
                "hourly reads",
                "answered from ClickHouse without the stats cache",
            ),
        }
    }

    /// The hourly figures of `tenant` for hours starting in `[from, to)`, as
    /// [`analytics::hourly`] answers them.
    pub async fn hourly(
        &self,
        client: &Client,
        tenant: &str,
        from: u32,
        to: u32,
        models: Models<'_>,
    ) -> Result<Vec<HourlyStats>, ApiError> {
        let hours: Vec<u32> = (from.div_ceil(HOUR) * HOUR..to)
            .step_by(HOUR as usize)
            .collect();
        let Some(entries) = &self.entries else {
            return analytics::hourly(client, tenant, from, to, models).await;
        };
        if hours.is_empty() || hours.len() > MAX_CACHED_HOURS {
            return analytics::hourly(client, tenant, from, to, models).await;
        }
        let versions = match self.versions(tenant, &hours).await {
            Ok(versions) => {
                self.versions_outage.succeeded();
                versions
            }
            Err(error) => {
                // The cache cannot tell what changed: answer from ClickHouse, still right.
                self.versions_outage
                    .failed(&format!("cannot read rollup versions: {error}"));
                metrics::counter!(STATS_CACHE_HOURS, "result" => "bypass")
                    .increment(hours.len() as u64);
                return analytics::hourly(client, tenant, from, to, models).await;
            }
        };
        let mut found: Vec<Option<Arc<CachedHour>>> = hours
            .iter()
            .zip(&versions)
            .map(|(hour, version)| {
                entries
                    .get(&(tenant.to_owned(), *hour))
                    .filter(|cached| cached.version == *version)
            })
            .collect();
        let missing: Vec<usize> = (0..hours.len()).filter(|i| found[*i].is_none()).collect();
        metrics::counter!(STATS_CACHE_HOURS, "result" => "hit")
            .increment((hours.len() - missing.len()) as u64);
        metrics::counter!(STATS_CACHE_HOURS, "result" => "miss").increment(missing.len() as u64);
        if let (Some(&first), Some(&last)) = (missing.first(), missing.last()) {
            // One query over the span of the missing hours; the cached hours inside it are
            // refreshed on the way.
            let (span_from, span_to) = (hours[first], hours[last] + HOUR);
            let fetched = if last - first < MERGE_DIRECTLY_UP_TO {
                analytics::hourly_merged(client, tenant, span_from, span_to).await?
            } else {
                analytics::hourly(client, tenant, span_from, span_to, Models::default()).await?
            };
            let mut by_hour: HashMap<u32, Vec<HourlyStats>> = HashMap::new();
            for row in fetched {
                by_hour.entry(row.hour_start).or_default().push(row);
            }
            for i in first..=last {
                // Stored under the version read before the query: if the batcher wrote in
                // between, the version has moved already and the next request fetches again.
                let entry = Arc::new(CachedHour {
                    version: versions[i].clone(),
                    rows: by_hour.remove(&hours[i]).unwrap_or_default(),
                });
                entries.insert((tenant.to_owned(), hours[i]), entry.clone());
                found[i] = Some(entry);
            }
        }
        Ok(found
            .iter()
            .flatten()
            .flat_map(|cached| cached.rows.iter())
            .filter(|row| models.admit(row))
            .cloned()
            .collect())
    }

    /// The rollup version of each hour: its counter on each shard (0 where the batcher has not
    /// written lately).
    async fn versions(&self, tenant: &str, hours: &[u32]) -> Result<Vec<Vec<u64>>, String> {
        let mut versions = vec![Vec::with_capacity(self.shards.len()); hours.len()];
        for shard in &self.shards {
            let keys: Vec<String> = hours
                .iter()
                .map(|hour| shard.keys.rollup_version(tenant, i64::from(*hour)))
                .collect();
            // One shard's keys share its hash tag: one MGET, one node of a cluster.
            let counters = shard
                .call("rollup_versions", |mut conn| async move {
                    redis::cmd("MGET")
                        .arg(&keys)
                        .query_async::<Vec<Option<u64>>>(&mut conn)
                        .await
                })
                .await
                .map_err(|e| e.to_string())?;
            for (version, counter) in versions.iter_mut().zip(counters) {
                version.push(counter.unwrap_or_default());
            }
        }
        Ok(versions)
    }
}
