//! Benchmark of the read path: the hourly stats API (answered from its cache and the rollups)
//! against the same question asked of the raw table, over at least 10 million raw events, in
//! one run.
//!
//! `make bench` (or `cargo bench -p sift-e2e --bench hourly` after `cargo build --release
//! --bins`). Environment: SIFT_BENCH_HOURLY_EVENTS (10000000, times SIFT_BENCH_SCALE), SIFT_BENCH_REQUESTS (200 per
//! question). Prints a Markdown report and writes it to `target/bench-report.md`.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use sift_e2e::{clickhouse_query, redis_connection, redis_url, Database, Ingest};

const TENANTS: u64 = 20;
const DAYS: u64 = 30;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// p50 and p99 of `samples`, in milliseconds.
fn percentiles(mut samples: Vec<Duration>) -> (f64, f64) {
    samples.sort();
    let at =
        |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1000.0;
    (at(0.5), at(0.99))
}

async fn time_n<F, Fut>(n: u64, mut f: F) -> Result<Vec<Duration>>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    f().await?; // warm-up
    let mut samples = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let started = Instant::now();
        f().await?;
        samples.push(started.elapsed());
    }
    Ok(samples)
}

#[tokio::main]
async fn main() -> Result<()> {
    // `make bench` shrinks every scenario with SIFT_BENCH_SCALE; this size can also be set alone.
    let scale: f64 = std::env::var("SIFT_BENCH_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|s: &f64| *s > 0.0)
        .unwrap_or(1.0);
    let events = env_u64(
        "SIFT_BENCH_HOURLY_EVENTS",
        ((10_000_000.0 * scale) as u64).max(100_000),
    );
    let requests = env_u64("SIFT_BENCH_REQUESTS", 200);
    let db = Database::create_with_clickhouse().await?;
    let key = db.tenant_with_key("tenant-0").await?;
    let ingest = Ingest::start(&db, &redis_url(), &[]).await?;
    let uncached = Ingest::start(&db, &redis_url(), &["--stats-cache-secs", "0"]).await?;
    let table = format!("{}.ai_events", db.name);

    eprintln!("loading {events} raw events into {table} ...");
    let started = Instant::now();
    clickhouse_query(&format!(
        "INSERT INTO {table}
         SELECT
            if(number % 2 = 0, 'tenant-0', concat('tenant-', toString(1 + intHash32(number + 9) % ({TENANTS} - 1)))) AS tenant_id,
            toDateTime64(now() - (intHash32(number) % {secs}), 3, 'UTC') AS event_time,
            SHA256(toString(number)) AS semantic_hash,
            concat('s-', toString(intHash32(number + 1) % 200000)) AS session_id,
            '' AS user_id,
            SHA256(toString(number % 100000)) AS prompt_hash,
            1 AS normalizer_version,
            concat('v', toString(intHash32(number + 8) % 5), '.0.0') AS model_version,
            '' AS model,
            'openai' AS provider, 'chat' AS operation,
            10 + (intHash32(number + 2) % 200000) / 100.0 AS latency_ms,
            toUInt32(intHash32(number + 3) % 3000) AS token_count,
            toUInt32(intHash32(number + 4) % 1000) AS input_tokens,
            toUInt32(intHash32(number + 5) % 2000) AS output_tokens,
            0 AS cache_read_input_tokens, 0 AS cache_creation_input_tokens, 0 AS reasoning_output_tokens,
            intHash32(number + 6) % 10 != 0 AS success,
            '' AS event_id, NULL AS turn_index, '' AS stream_id, NULL AS chunk_index, false AS is_final,
            if(intHash32(number + 7) % 10 = 0, ['v1.0.0', 'v0.9.0'], []) AS fallback_chain,
            '' AS properties, SHA256('bench') AS chunk_id, now64(3) AS ingested_at, now64(3) AS inserted_at
         FROM numbers({events})
         SETTINGS max_insert_threads = 2",
        secs = DAYS * 86400
    ))
    .await?;
    let load = started.elapsed();
    // Measure a settled server, as in steady state: the rollup merged (cheap: one row per
    // tenant, model and hour), and no background merge of the raw table still running.
    clickhouse_query(&format!(
        "OPTIMIZE TABLE {}.ai_events_hourly FINAL",
        db.name
    ))
    .await?;
    let settle = Instant::now();
    while clickhouse_query(&format!(
        "SELECT count() FROM system.merges WHERE database = '{}'",
        db.name
    ))
    .await?
        != "0"
        && settle.elapsed() < Duration::from_secs(300)
    {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let raw_parts = clickhouse_query(&format!(
        "SELECT count() FROM system.parts WHERE database = '{}' AND table = 'ai_events' AND active",
        db.name
    ))
    .await?;
    let rollup_rows =
        clickhouse_query(&format!("SELECT count() FROM {}.ai_events_hourly", db.name)).await?;
    eprintln!(
        "loaded in {:.1} s; {rollup_rows} rollup rows",
        load.as_secs_f64()
    );

    // The question, for a busy tenant (half of all events) and a small one: every model, hour
    // by hour, over the last 7 days.
    let now = sift_core::clock::now_secs().unsigned_abs();
    let to = (now / 3600 + 1) * 3600;
    let from = to - 7 * 86400;
    let small_key = db.tenant_with_key("tenant-1").await?;
    let mut table_rows = String::new();
    let mut figures = Vec::new();
    let tenants = [("tenant-0", &key), ("tenant-1", &small_key)];
    // First with the rollups as the load left them (states only), then finalized, as the
    // flusher keeps them for recent hours and `backfill rollups` does after a bulk import.
    let mut from_states = Vec::new();
    for (_, key) in tenants {
        from_states.push(
            api_latency(&uncached, key, from, to, requests, None)
                .await?
                .1,
        );
    }
    let started = Instant::now();
    db.batcher(&[
        "backfill",
        "rollups",
        "--from",
        &(to - DAYS * 86400 - 86400).to_string(),
        "--to",
        &to.to_string(),
    ])
    .await?;
    let finalize = started.elapsed();
    for ((tenant, key), states) in tenants.into_iter().zip(from_states) {
        let raw_events: u64 = clickhouse_query(&format!(
            "SELECT count() FROM {table} WHERE tenant_id = '{tenant}' AND event_time >= toDateTime({from}) AND event_time < toDateTime({to})"
        ))
        .await?
        .parse()?;
        let m = measure(&ingest, &uncached, key, tenant, &table, from, to, requests).await?;
        let pair = |(p50, p99): (f64, f64)| serde_json::json!({"p50_ms": p50, "p99_ms": p99});
        figures.push(serde_json::json!({
            "tenant": tenant, "raw_events_in_range": raw_events, "rows": m.rows,
            "cached": pair(m.cached), "live": pair(m.live), "uncached": pair(m.api),
            "uncached_states": pair(states), "raw": pair(m.raw), "raw_final": pair(m.fin),
        }));
        table_rows.push_str(&format!(
            "| {tenant} | {raw_events} | {} | {:.2} / {:.2} | {:.2} / {:.2} | {:.2} / {:.2} | {:.2} / {:.2} | {:.2} / {:.2} | {:.2} / {:.2} | {:.1}x | {:.1}x |\n",
            m.rows, m.cached.0, m.cached.1, m.live.0, m.live.1, m.api.0, m.api.1, states.0, states.1, m.raw.0, m.raw.1, m.fin.0, m.fin.1, m.raw.0 / m.live.0, m.raw.0 / m.cached.0
        ));
    }
    let report = format!(
        "# sift read-path benchmark\n\n\
         {events} raw events, {TENANTS} tenants (tenant-0 has half of them), 5 models, {DAYS} days; \
         loaded in {:.1} s; {rollup_rows} hourly rollup rows; raw table in {raw_parts} parts after background merges settled.\n\n\
         Question: one tenant's hourly events, successes, tokens, average and p50/p95/p99 latency, sessions and fallbacks \
         per model over 7 days, through `GET /v1/ai/stats/hourly`. `cached`: the default API, the question asked again \
         with nothing written meanwhile (every hour from the cache); `live`: the same, but the newest hour's rollup \
         version moved before every request, as while events stream in (that hour fetched from ClickHouse, the rest \
         cached); `uncached`: `--stats-cache-secs 0`, every hour from the finalized rollups (`backfill rollups` over \
         the 30 days took {:.1} s); `uncached, states`: the same before finalizing (every t-digest and session state \
         merged per request). `raw` is the same question on `ai_events` over ClickHouse HTTP; `FINAL` the same on \
         `ai_events FINAL`. {requests} requests each ({} with FINAL), one at a time, after one warm-up; p50 / p99 in ms.\n\n\
         | tenant | raw events in range | rows | cached | live | uncached | uncached, states | raw | FINAL | raw / live (p50) | raw / cached (p50) |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n{table_rows}",
        load.as_secs_f64(),
        finalize.as_secs_f64(),
        requests.min(50),
    );
    let (heal_rows, heal_json) = reconcile_costs(&db, &key_prefix(&ingest)).await?;
    let report = format!(
        "{report}\n\
         ## Rollup reconciliation (the flusher's comparison of recent hours with `ai_events FINAL`)\n\n\
         Reads of one run, from `system.query_log` (every query of the run: the comparison, and the rebuild of \
         the hours that differ). `bulk load`: every hour of the lookback (24 h 40 min) received rows within the \
         window, as right after a bulk import; `replay`: 500 copies of tenant-0's rows of the last day written \
         again (a replay past ClickHouse's dedup window), the only rows of the window; `quiet`: the same hours \
         compared again once healed.\n\n\
         | run | tenant hours compared | hours rebuilt | rows read | MB read | ms |\n|---|---:|---:|---:|---:|---:|\n{heal_rows}"
    );
    println!("{report}");
    let target = sift_e2e::bin("sift-ingest")
        .parent()
        .and_then(|p| p.parent())
        .context("target dir")?
        .to_path_buf();
    std::fs::write(target.join("bench-report.md"), &report)?;
    // For `make bench`'s report (scenario e).
    std::fs::create_dir_all(target.join("bench"))?;
    std::fs::write(
        target.join("bench/hourly.json"),
        serde_json::to_string_pretty(&serde_json::json!({
            "events": events, "tenants": TENANTS, "days": DAYS, "requests": requests,
            "load_s": load.as_secs_f64(), "finalize_s": finalize.as_secs_f64(),
            "questions": figures, "reconcile": heal_json, "markdown": report,
        }))?,
    )?;
    drop(ingest);
    drop(uncached);
    Ok(())
}

/// p50/p99 (ms) of the API and of the raw table, and the number of rows answered.
struct Measured {
    rows: usize,
    cached: (f64, f64),
    live: (f64, f64),
    api: (f64, f64),
    raw: (f64, f64),
    fin: (f64, f64),
}

#[allow(clippy::too_many_arguments)]
async fn measure(
    ingest: &Ingest,
    uncached: &Ingest,
    key: &str,
    tenant: &str,
    table: &str,
    from: u64,
    to: u64,
    requests: u64,
) -> Result<Measured> {
    let (rows, api) = api_latency(uncached, key, from, to, requests, None).await?;
    let (cached_rows, cached) = api_latency(ingest, key, from, to, requests, None).await?;
    anyhow::ensure!(
        cached_rows == rows,
        "the cache answered {cached_rows} rows, not {rows}"
    );
    let newest = format!("{}:rollver:{tenant}:{}", ingest.key_prefix, to - 3600);
    let (_, live) = api_latency(ingest, key, from, to, requests, Some(&newest)).await?;
    let raw_sql = |final_: &str| {
        format!(
            "SELECT toStartOfHour(event_time) AS hour, model_version, count(), countIf(success),
                    sum(input_tokens), sum(output_tokens), sum(token_count), avg(latency_ms),
                    quantilesTDigest(0.5, 0.95, 0.99)(latency_ms), uniq(session_id),
                    countIf(length(fallback_chain) > 1)
             FROM {table} {final_}
             WHERE tenant_id = '{tenant}' AND event_time >= toDateTime({from}) AND event_time < toDateTime({to})
             GROUP BY hour, model_version ORDER BY hour, model_version FORMAT JSON"
        )
    };
    let raw = time_n(requests, || {
        let sql = raw_sql("");
        async move { clickhouse_query(&sql).await.map(|_| ()) }
    })
    .await?;
    let fin = time_n(requests.min(50), || {
        let sql = raw_sql("FINAL");
        async move { clickhouse_query(&sql).await.map(|_| ()) }
    })
    .await?;
    Ok(Measured {
        rows,
        cached,
        live,
        api,
        raw: percentiles(raw),
        fin: percentiles(fin),
    })
}

/// Rows answered and p50/p99 (ms) of `GET /v1/ai/stats/hourly` for the key's tenant. With
/// `bump`, that rollup version is moved before each request (outside the timed part), as the
/// batcher does when it writes events of that hour.
async fn api_latency(
    ingest: &Ingest,
    key: &str,
    from: u64,
    to: u64,
    requests: u64,
    bump: Option<&str>,
) -> Result<(usize, (f64, f64))> {
    let http = reqwest::Client::new();
    let mut redis = redis_connection(&redis_url()).await?;
    let api_url = ingest.url(&format!("/v1/ai/stats/hourly?from={from}&to={to}"));
    let body: serde_json::Value = http
        .get(&api_url)
        .bearer_auth(key)
        .send()
        .await?
        .json()
        .await?;
    let rows = body["rows"].as_array().context("rows")?.len();
    let mut samples = Vec::with_capacity(requests as usize);
    for _ in 0..requests {
        if let Some(version) = bump {
            redis::cmd("INCR")
                .arg(version)
                .query_async::<()>(&mut redis)
                .await?;
        }
        let started = Instant::now();
        let response = http.get(&api_url).bearer_auth(key).send().await?;
        anyhow::ensure!(
            response.status().is_success(),
            "API answered {}",
            response.status()
        );
        response.bytes().await?;
        samples.push(started.elapsed());
    }
    if let Some(version) = bump {
        redis::cmd("DEL")
            .arg(version)
            .query_async::<()>(&mut redis)
            .await?;
    }
    Ok((rows, percentiles(samples)))
}

fn key_prefix(ingest: &Ingest) -> String {
    ingest.key_prefix.clone()
}

/// One reconciliation run's reads: (rows, bytes, ms) summed over its queries in the query log.
async fn run_reads(db: &Database, comment: &str) -> Result<(u64, u64, f64)> {
    // A query's QueryFinish entry is queued as its answer is sent: let it reach the log's
    // buffer before flushing it.
    tokio::time::sleep(Duration::from_secs(1)).await;
    clickhouse_query("SYSTEM FLUSH LOGS").await?;
    let line = clickhouse_query(&format!(
        "SELECT sum(read_rows), sum(read_bytes), sum(query_duration_ms) FROM system.query_log \
         WHERE type = 'QueryFinish' AND log_comment = '{comment}' AND current_database = '{}'",
        db.name
    ))
    .await?;
    let parts: Vec<&str> = line.split_whitespace().collect();
    anyhow::ensure!(parts.len() == 3, "query log: {line}");
    Ok((parts[0].parse()?, parts[1].parse()?, parts[2].parse()?))
}

/// The flusher's reconciliation on the loaded data: after the bulk load, after a replay of
/// 500 copies, and once healed. Markdown rows and their JSON.
async fn reconcile_costs(db: &Database, prefix: &str) -> Result<(String, serde_json::Value)> {
    let client = clickhouse::Client::default()
        .with_url(sift_e2e::clickhouse_url())
        .with_database(&db.name);
    let mut redis = redis_connection(&redis_url()).await?;
    let keys = sift_core::KeySpace::new(prefix);
    let lookback = Duration::from_secs(24 * 3600 + 40 * 60);
    let table = format!("{}.ai_events", db.name);
    let groups = |window: u64| {
        let table = table.clone();
        async move {
            clickhouse_query(&format!(
                "SELECT count() FROM (SELECT DISTINCT tenant_id, toStartOfHour(event_time) FROM {table} \
                 WHERE event_time >= now64(3) - toIntervalSecond({}) AND inserted_at >= now64(3) - toIntervalSecond({window}))",
                lookback.as_secs()
            ))
            .await
        }
    };
    let ctx = Run {
        client: &client,
        db,
        keys: &keys,
        lookback,
    };
    let mut results = Vec::new();
    let everything = 40 * 86_400;
    results.push(
        ctx.once(
            &mut redis,
            "bulk load",
            everything,
            groups(everything).await?,
        )
        .await?,
    );
    clickhouse_query(&format!(
        "INSERT INTO {table} SELECT * REPLACE (now64(3) AS inserted_at) FROM {table} \
         WHERE tenant_id = 'tenant-0' AND event_time >= now64(3) - toIntervalDay(1) \
         ORDER BY semantic_hash LIMIT 500 SETTINGS insert_deduplication_token = 'bench-replay'"
    ))
    .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    results.push(
        ctx.once(&mut redis, "replay", 30, groups(30).await?)
            .await?,
    );
    results.push(ctx.once(&mut redis, "quiet", 30, groups(30).await?).await?);
    let since = "toStartOfHour(now() - toIntervalDay(2))";
    let rollup = clickhouse_query(&format!(
        "SELECT sum(events) FROM {}.ai_events_hourly WHERE tenant_id = 'tenant-0' AND hour >= {since}",
        db.name
    ))
    .await?;
    let raw = clickhouse_query(&format!(
        "SELECT count() FROM {table} FINAL WHERE tenant_id = 'tenant-0' AND event_time >= {since}"
    ))
    .await?;
    anyhow::ensure!(
        rollup.trim() == raw.trim(),
        "the replayed copies were not healed: the rollups count {rollup}, the raw events {raw}"
    );
    let (mut rows, mut json) = (String::new(), Vec::new());
    for (name, compared, rebuilt, read_rows, read_bytes, ms) in results {
        rows.push_str(&format!(
            "| {name} | {compared} | {rebuilt} | {read_rows} | {:.1} | {ms:.0} |\n",
            read_bytes as f64 / 1e6
        ));
        json.push(
            serde_json::json!({"run": name, "compared": compared, "rebuilt": rebuilt,
            "read_rows": read_rows, "read_bytes": read_bytes, "ms": ms}),
        );
    }
    Ok((rows, serde_json::Value::Array(json)))
}

/// What each reconciliation run of the bench shares.
struct Run<'a> {
    client: &'a clickhouse::Client,
    db: &'a Database,
    keys: &'a sift_core::KeySpace,
    lookback: Duration,
}

/// A run's name, tenant hours compared, hours rebuilt, rows and bytes read, milliseconds.
type RunFigures = (&'static str, String, usize, u64, u64, f64);

impl Run<'_> {
    /// One reconciliation of the hours touched in the last `window` seconds, settled at once.
    async fn once(
        &self,
        redis: &mut redis::aio::MultiplexedConnection,
        name: &'static str,
        window: u64,
        compared: String,
    ) -> Result<RunFigures> {
        let comment = format!("bench-reconcile-{name}");
        let client = self
            .client
            .clone()
            .with_setting("log_comment", comment.clone());
        let started = Instant::now();
        let healed = sift_batcher::reconcile::run(
            &client,
            &self.db.name,
            sift_batcher::reconcile::Schedule {
                settle: Duration::ZERO,
                window: Duration::from_secs(window),
                lookback: self.lookback,
            },
            None,
            (redis, self.keys),
        )
        .await?;
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        let (read_rows, read_bytes, _) = run_reads(self.db, &comment).await?;
        Ok((name, compared, healed.len(), read_rows, read_bytes, ms))
    }
}
