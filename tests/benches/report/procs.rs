//! CPU time of the processes a scenario runs on: the ClickHouse server, the Redis server and
//! sift's own processes, read from /proc, so that a figure comes with where the cores went.

use anyhow::{Context, Result};
use serde::Serialize;

/// Cores busy over a span (1.0 = one core all the time).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Cpu {
    pub sift: f64,
    pub clickhouse: f64,
    pub redis: f64,
    /// The whole machine (every process, including the load tool).
    pub machine: f64,
}

/// CPU seconds used so far.
pub struct Sample {
    sift: f64,
    clickhouse: f64,
    redis: f64,
    machine: f64,
}

impl Sample {
    pub fn since(&self, before: &Sample, seconds: f64) -> Cpu {
        let per = |a: f64, b: f64| ((a - b) / seconds.max(1e-9)).max(0.0);
        Cpu {
            sift: per(self.sift, before.sift),
            clickhouse: per(self.clickhouse, before.clickhouse),
            redis: per(self.redis, before.redis),
            machine: per(self.machine, before.machine),
        }
    }
}

const TICKS: f64 = 100.0;

/// CPU seconds of process `pid` (user and system), 0 when it is gone.
fn seconds_of(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            // Fields after the command name, which may hold spaces: from the last ')'.
            let rest = &stat[stat.rfind(')')? + 2..];
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let utime: f64 = fields.get(11)?.parse().ok()?;
            let stime: f64 = fields.get(12)?.parse().ok()?;
            Some((utime + stime) / TICKS)
        })
        .unwrap_or(0.0)
}

/// Processes whose command line contains `needle`.
fn pids_with(needle: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(needle))
                .unwrap_or(false)
        })
        .collect()
}

/// The pid of the tests' Redis (from `INFO server`).
async fn redis_pid() -> Result<u32> {
    let mut conn = sift_e2e::redis_connection(&sift_e2e::redis_url()).await?;
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(&mut conn)
        .await?;
    info.lines()
        .find_map(|l| l.strip_prefix("process_id:"))
        .and_then(|p| p.trim().parse().ok())
        .context("INFO server names no process_id")
}

/// CPU seconds so far of `sift` (sift's processes of the scenario), ClickHouse and Redis.
pub async fn sample(sift: &[u32]) -> Result<Sample> {
    let clickhouse: f64 = pids_with("clickhouse").iter().map(|p| seconds_of(*p)).sum();
    let machine = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            let cpu = s.lines().next()?;
            let v: Vec<f64> = cpu
                .split_whitespace()
                .skip(1)
                .filter_map(|x| x.parse().ok())
                .collect();
            // user nice system (idle iowait) irq softirq steal
            Some((v.first()? + v.get(1)? + v.get(2)? + v.get(5)? + v.get(6)? + v.get(7)?) / TICKS)
        })
        .unwrap_or(0.0);
    Ok(Sample {
        sift: sift.iter().map(|p| seconds_of(*p)).sum(),
        clickhouse,
        redis: seconds_of(redis_pid().await?),
        machine,
    })
}
