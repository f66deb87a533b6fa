//! Runs `sift-bench` (the workspace's load tool) and reads its JSON report.

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// `sift-bench ARGS --quiet --json FILE`; its report and exit code (0 every check passed, 1
/// a check failed: both still report).
pub async fn run(args: &[String]) -> Result<(Value, i32)> {
    let file = tempfile::NamedTempFile::new()?;
    let out = tokio::process::Command::new(sift_e2e::bin("sift-bench"))
        .args(args)
        .arg("--quiet")
        .arg("--json")
        .arg(file.path())
        .output()
        .await
        .context("running sift-bench")?;
    let code = out.status.code().unwrap_or(-1);
    if code != 0 && code != 1 {
        bail!(
            "sift-bench {args:?} exited {code}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let report: Value =
        serde_json::from_slice(&std::fs::read(file.path())?).with_context(|| {
            format!(
                "sift-bench wrote no report: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
    Ok((report, code))
}

/// A number of the report at `path` (`/rates/events_per_s`), NaN when absent.
pub fn num(report: &Value, path: &str) -> f64 {
    report
        .pointer(path)
        .and_then(Value::as_f64)
        .unwrap_or(f64::NAN)
}
