//! The Redis ceiling of the ingest path: how many events per second Redis itself claims and
//! enqueues with the real `claim.lua`, with nothing of sift's HTTP in between. The commands
//! are built by the API's own code (`sift_ingest::prepare` and `sift_redis::claim::claim_command`) from
//! the same duplicate-heavy load as the wrk script and `tests/benches/ingest.rs` (each intent
//! sent 3 to 5 times), packed before the clock starts, then sent as pipelined `EVALSHA`s on
//! a few connections (one thread each), for single-event calls and for 100-event calls.
//!
//! `cargo bench -p sift-ingest-api --bench redis_ceiling` (wrap it in
//! `flock /tmp/sift-bench.lock` on a shared machine). Environment: SIFT_REDIS_URL
//! (redis://127.0.0.1:6379), SIFT_CEILING_EVENTS (events per row, 400000), SIFT_CEILING_SECS
//! (most seconds per row, 15), SIFT_CEILING_CONNS (connections per row, "1,2,4"),
//! SIFT_CEILING_DEPTH (commands in flight per connection, 32), SIFT_CEILING_SCRIPT (the path
//! of another claim.lua of the same layout, to compare; the crate's own when unset),
//! SIFT_CEILING_TIMESTAMPS (1: every send carries its intent's client `timestamp`, so the
//! copies without an `event_id` take the identity claim too; 0 by default). Prints a Markdown table and
//! writes `target/redis-ceiling.json`. Redis's CPU share comes from /proc when Redis runs on
//! this machine; keys go under a prefix of their own, deleted after each row.

use std::time::{Duration, Instant};

use clap::Parser;
use redis::{Commands, ConnectionLike, Script, Value};
use serde_json::json;
use sift_core::KeySpace;
use sift_ingest::body::Item;
use sift_ingest::config::Config;
use sift_ingest::dedup::ClaimCall;
use sift_ingest::prepare::{claims, prepare};
use sift_redis::claim::{claim_command_for, CLAIM_LUA};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

const TENANT: &str = "bench";

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

/// The sends of intent `n` of `client`, as the wrk script makes them; with `timestamp`
/// (epoch seconds), every copy carries it, as an SDK's retries do.
fn sends_of(client: &str, n: u64, timestamp: Option<f64>) -> Vec<serde_json::Value> {
    let session = format!("bench-session-{client}-{}", n / 20);
    let base = json!({
        "session_id": session, "prompt_text": format!("Summarise ticket {n} for customer {client}"),
        "model_version": "v2.1.0", "latency_ms": 40 + n % 900, "token_count": n % 2000,
        "event_id": format!("c{client}-e{n}"),
    });
    let variant = json!({
        "session_id": session,
        "prompt_text": format!("  summarise TICKET {n} for customer {client}!  "),
        "model_version": "v2.1.0", "latency_ms": 40 + n % 900, "token_count": n % 2000,
    });
    let copies = [4, 3, 4, 4, 4][(n % 5) as usize];
    let mut sends = vec![base; copies - 1];
    sends.push(variant);
    if let Some(at) = timestamp {
        for send in &mut sends {
            send["timestamp"] = json!(at);
        }
    }
    sends
}

/// Calls over which the copies of an intent are spread.
const SPREAD_CALLS: usize = 8;

/// A fixed shuffle of `items` (seeded by `seed`; xorshift, so that runs compare).
fn shuffle<T>(items: &mut [T], seed: u64) {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    for i in (1..items.len()).rev() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        items.swap(i, (state % (i as u64 + 1)) as usize);
    }
}

/// One connection's work: pipelines of `depth` packed commands, and the events they carry.
struct Work {
    pipelines: Vec<(Vec<u8>, usize)>,
    events: u64,
}

fn build(
    config: &Config,
    keys: &KeySpace,
    hash: &str,
    client: &str,
    events: u64,
    per_call: usize,
    depth: usize,
) -> Work {
    let (limits, settings) = (config.limits(), config.dedup());
    let now = sift_core::clock::now_ms();
    let timestamps = env_or("SIFT_CEILING_TIMESTAMPS", "0") == "1";
    let mut pending: Vec<serde_json::Value> = Vec::new();
    let (mut n, mut built) = (0u64, 0u64);
    let mut pipelines = Vec::new();
    while built < events {
        let mut packed = Vec::new();
        let mut count = 0;
        while count < depth && built < events {
            if pending.len() < per_call {
                // Copies of one intent spread over several calls, as a client's retries
                // arrive in later requests (the load tool's do): each copy then checks its
                // event_id's claim in Redis instead of finding it in the call's own table.
                let mut block = Vec::new();
                while block.len() < SPREAD_CALLS * per_call {
                    let at = timestamps.then(|| (now / 1000 - 60 - (n % 3600) as i64) as f64);
                    block.extend(sends_of(client, n, at));
                    n += 1;
                }
                shuffle(&mut block, n);
                pending.extend(block);
            }
            let items: Vec<Item> = pending.drain(..per_call).map(Item::Event).collect();
            let prepared = prepare(TENANT, items, &limits, now);
            let ready = prepared.records(TENANT, now);
            let claims = claims(&ready);
            let call = ClaimCall {
                tenant: TENANT,
                rate_limit: None,
                claims: &claims,
                invalid: &prepared.invalid,
                receipt: None,
                now_ms: now,
            };
            claim_command_for(hash, keys, &settings, &call).write_packed_command(&mut packed);
            count += 1;
            built += per_call as u64;
        }
        pipelines.push((packed, count));
    }
    Work {
        pipelines,
        events: built,
    }
}

/// Sends every pipeline (or until `deadline`); returns (events sent, accepted, elapsed).
fn drive(url: &str, work: Work, deadline: Duration) -> Result<(u64, u64, Duration)> {
    let mut conn = redis::Client::open(url)?.get_connection()?;
    let started = Instant::now();
    let (mut sent, mut accepted) = (0u64, 0u64);
    let per_call = work.events
        / work
            .pipelines
            .iter()
            .map(|p| p.1 as u64)
            .sum::<u64>()
            .max(1);
    for (packed, count) in &work.pipelines {
        let answers = conn.req_packed_commands(packed, 0, *count)?;
        for answer in answers {
            match answer {
                Value::Array(statuses) => {
                    accepted += statuses
                        .iter()
                        .filter(|s| matches!(s, Value::Int(1)))
                        .count() as u64
                }
                other => return Err(format!("the claim script answered {other:?}").into()),
            }
        }
        sent += *count as u64 * per_call;
        if started.elapsed() > deadline {
            break;
        }
    }
    Ok((sent, accepted, started.elapsed()))
}

/// Seconds of CPU (user + system) that process `pid` has used, from /proc.
fn cpu_secs(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command (in parentheses): utime and stime are the 12th and 13th.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / clock_ticks())
}

fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// The pid of the Redis behind `conn` when it runs on this machine.
fn redis_pid(conn: &mut redis::Connection) -> Option<String> {
    let info: String = redis::cmd("INFO").arg("server").query(conn).ok()?;
    let pid = info
        .lines()
        .find_map(|l| l.strip_prefix("process_id:"))?
        .trim()
        .to_owned();
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    comm.starts_with("redis").then_some(pid)
}

/// `INFO commandstats` as (command, calls, microseconds); commands a script runs count too.
fn command_stats(conn: &mut redis::Connection) -> Result<Vec<(String, u64, u64)>> {
    let info: String = redis::cmd("INFO").arg("commandstats").query(conn)?;
    let mut stats = Vec::new();
    for line in info.lines() {
        let Some((name, fields)) = line
            .strip_prefix("cmdstat_")
            .and_then(|l| l.split_once(':'))
        else {
            continue;
        };
        let field = |key: &str| {
            fields
                .split(',')
                .find_map(|f| f.strip_prefix(key)?.strip_prefix('=')?.parse::<u64>().ok())
                .unwrap_or(0)
        };
        stats.push((name.to_owned(), field("calls"), field("usec")));
    }
    Ok(stats)
}

/// What each command cost per event between two `command_stats` (calls and µs per event).
fn per_event(
    before: &[(String, u64, u64)],
    after: &[(String, u64, u64)],
    events: u64,
) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    for (name, calls, usec) in after {
        let (c0, u0) = before
            .iter()
            .find(|b| &b.0 == name)
            .map_or((0, 0), |b| (b.1, b.2));
        if calls > &c0 {
            out.insert(
                name.clone(),
                json!({
                    "calls_per_event": (calls - c0) as f64 / events.max(1) as f64,
                    "usec_per_event": (usec - u0) as f64 / events.max(1) as f64,
                }),
            );
        }
    }
    serde_json::Value::Object(out)
}

fn delete_prefix(conn: &mut redis::Connection, prefix: &str) -> Result<()> {
    // SCAN, not KEYS: the Redis may be shared, and KEYS would hold it for the whole key space.
    let keys: Vec<String> = conn
        .scan_match(format!("{prefix}:*"))?
        .collect::<redis::RedisResult<_>>()?;
    for chunk in keys.chunks(1000) {
        redis::cmd("UNLINK").arg(chunk).query::<()>(conn)?;
    }
    Ok(())
}

fn main() -> Result<()> {
    let url = env_or("SIFT_REDIS_URL", "redis://127.0.0.1:6379");
    let events: u64 = env_or("SIFT_CEILING_EVENTS", "400000").parse()?;
    let secs: u64 = env_or("SIFT_CEILING_SECS", "15").parse()?;
    let depth: usize = env_or("SIFT_CEILING_DEPTH", "32").parse()?;
    let conns: Vec<usize> = env_or("SIFT_CEILING_CONNS", "1,2,4")
        .split(',')
        .map(|c| c.trim().parse())
        .collect::<std::result::Result<_, _>>()?;
    // The API's own defaults, with the queue limit off as in the load benchmarks.
    let config = Config::try_parse_from(["sift-ingest", "--queue-high-water", "0"])?;
    let prefix = format!("ceiling{}", std::process::id());
    let keys = KeySpace::new(&prefix);
    // Another claim.lua of the same layout (an older one, to compare) when given.
    let text = match std::env::var("SIFT_CEILING_SCRIPT") {
        Ok(path) => std::fs::read_to_string(path)?,
        Err(_) => CLAIM_LUA.to_owned(),
    };
    let script = Script::new(&text);
    let mut admin = redis::Client::open(url.as_str())?.get_connection()?;
    script.load(&mut admin)?;
    let pid = redis_pid(&mut admin);

    let mut rows = Vec::new();
    for per_call in [1usize, 100] {
        for &c in &conns {
            eprintln!("building {events} events in calls of {per_call} for {c} connections ...");
            let work: Vec<Work> = (0..c)
                .map(|i| {
                    let client = format!("{prefix}-{per_call}-{c}-{i}");
                    build(
                        &config,
                        &keys,
                        script.get_hash(),
                        &client,
                        events / c as u64,
                        per_call,
                        depth,
                    )
                })
                .collect();
            let stats_before = command_stats(&mut admin)?;
            let redis_before = pid.as_deref().and_then(cpu_secs);
            let self_before = cpu_secs("self");
            let wall = Instant::now();
            let threads: Vec<_> = work
                .into_iter()
                .map(|w| {
                    let url = url.clone();
                    std::thread::spawn(move || drive(&url, w, Duration::from_secs(secs)))
                })
                .collect();
            let (mut sent, mut accepted) = (0u64, 0u64);
            for t in threads {
                let (s, a, _) = t.join().map_err(|_| "a driver thread panicked")??;
                sent += s;
                accepted += a;
            }
            let elapsed = wall.elapsed().as_secs_f64();
            let share = |before: Option<f64>, now: Option<f64>| match (before, now) {
                (Some(b), Some(n)) => Some((n - b) / elapsed * 100.0),
                _ => None,
            };
            let redis_cpu = share(redis_before, pid.as_deref().and_then(cpu_secs));
            let client_cpu = share(self_before, cpu_secs("self"));
            let commands = per_event(&stats_before, &command_stats(&mut admin)?, sent);
            delete_prefix(&mut admin, &prefix)?;
            rows.push(json!({
                "events_per_call": per_call, "connections": c, "depth": depth,
                "events": sent, "seconds": elapsed,
                "events_per_s": sent as f64 / elapsed,
                "calls_per_s": sent as f64 / per_call as f64 / elapsed,
                "accepted_share": accepted as f64 / sent.max(1) as f64,
                "redis_cpu_percent": redis_cpu, "client_cpu_percent": client_cpu,
                "redis_commands": commands,
            }));
        }
    }

    let mut table = String::from(
        "| events/call | connections | depth | events/s | calls/s | accepted | Redis CPU | bench CPU |\n|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    let pct = |v: &serde_json::Value| v.as_f64().map_or("n/a".to_owned(), |p| format!("{p:.0} %"));
    for r in &rows {
        table.push_str(&format!(
            "| {} | {} | {} | {:.0} | {:.0} | {:.0} % | {} | {} |\n",
            r["events_per_call"],
            r["connections"],
            r["depth"],
            r["events_per_s"].as_f64().unwrap_or(0.0),
            r["calls_per_s"].as_f64().unwrap_or(0.0),
            r["accepted_share"].as_f64().unwrap_or(0.0) * 100.0,
            pct(&r["redis_cpu_percent"]),
            pct(&r["client_cpu_percent"]),
        ));
    }
    // Redis's own account of the script's cost per event (busiest row of each call size;
    // other clients of a shared Redis add their few calls).
    table.push_str("\n| events/call | command | calls/event | µs/event |\n|---:|---|---:|---:|\n");
    for per_call in [1u64, 100] {
        let Some(row) = rows
            .iter()
            .filter(|r| r["events_per_call"] == per_call)
            .max_by(|a, b| {
                a["events_per_s"]
                    .as_f64()
                    .partial_cmp(&b["events_per_s"].as_f64())
                    .unwrap_or(std::cmp::Ordering::Equal)
            })
        else {
            continue;
        };
        if let Some(commands) = row["redis_commands"].as_object() {
            let mut commands: Vec<_> = commands.iter().collect();
            commands.sort_by(|a, b| {
                b.1["usec_per_event"]
                    .as_f64()
                    .partial_cmp(&a.1["usec_per_event"].as_f64())
                    .unwrap_or(std::cmp::Ordering::Equal)
            });
            for (name, c) in commands.into_iter().take(8) {
                table.push_str(&format!(
                    "| {per_call} | {name} | {:.2} | {:.2} |\n",
                    c["calls_per_event"].as_f64().unwrap_or(0.0),
                    c["usec_per_event"].as_f64().unwrap_or(0.0)
                ));
            }
        }
    }
    println!("{table}");
    let target = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target");
    std::fs::create_dir_all(&target)?;
    std::fs::write(
        target.join("redis-ceiling.json"),
        serde_json::to_string_pretty(&json!({ "redis_url": url, "rows": rows }))?,
    )?;
    std::fs::write(target.join("redis-ceiling.md"), &table)?;
    Ok(())
}
