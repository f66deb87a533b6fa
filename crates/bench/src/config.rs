//! The command line of `sift-bench`: one clap struct, every flag also read from `SIFT_BENCH_*`
//! (as the other sift binaries read `SIFT_*`), and the checks across flags that clap cannot
//! express. Anything wrong here is a usage error: exit code 2, before any request is sent.

use std::path::PathBuf;
use std::time::Duration;

use clap::builder::BoolishValueParser;
use clap::error::ErrorKind;
use clap::{CommandFactory, Parser};
use reqwest::Url;

/// Defaults of `--concurrency`: a closed loop needs few clients to saturate a server; an open
/// loop needs room for the requests that pile up while the server stalls.
pub const CLOSED_CONCURRENCY: u32 = 32;
pub const OPEN_CONCURRENCY: u32 = 256;
/// The length of a run when neither `--duration` nor `--events` is given.
pub const DEFAULT_DURATION: Duration = Duration::from_secs(10);

#[derive(Debug, Parser)]
#[command(
    name = "sift-bench",
    version,
    about = "Load tool for sift-ingest: realistic duplicate-heavy telemetry, latency, and an end-to-end exactly-once check",
    long_about = "Load tool for sift-ingest: realistic duplicate-heavy telemetry, latency, and an end-to-end exactly-once check.\n\n\
        Closed loop (default): --concurrency requests in flight, each sent as soon as the previous one was answered.\n\
        Open loop (--rate R): R events per second at scheduled times; latency is measured from the scheduled time, \
        so a stalled server shows as latency (coordinated omission corrected).\n\n\
        Length: --duration or --events (not both); neither means --duration 10s.\n\n\
        Exit codes: 0 the run and every check passed; 1 a check failed (unexpected answers, more errors than \
        --max-error-rate, no request answered, rows missing or doubled in ClickHouse) or the run could not be done; \
        2 bad usage.",
    after_help = "Every flag is also read from the environment: --batch-size from SIFT_BENCH_BATCH_SIZE, and so on."
)]
pub struct Cli {
    /// Base URL of sift-ingest (plain HTTP).
    #[arg(long, env = "SIFT_BENCH_URL", default_value = "http://127.0.0.1:8080", value_parser = parse_http_url)]
    pub url: Url,

    /// API key; each key is one tenant, and events are spread over them: repeat the flag or
    /// separate keys with commas.
    #[arg(
        long = "key",
        value_name = "KEY",
        env = "SIFT_BENCH_KEY",
        required = true,
        value_delimiter = ',',
        hide_env_values = true,
        value_parser = parse_key
    )]
    pub keys: Vec<String>,

    /// Requests in flight at most. Closed loop: each is sent as soon as the previous one was
    /// answered. Open loop: the bound on connections in flight [default: 32 closed, 256 open].
    #[arg(long, env = "SIFT_BENCH_CONCURRENCY", value_parser = clap::value_parser!(u32).range(1..=65_536))]
    pub concurrency: Option<u32>,

    /// Open loop: EVENTS per second (not requests; a batch of 100 counts 100), sent at the
    /// scheduled times t0 + i/rate. Without it, a closed loop.
    #[arg(long, env = "SIFT_BENCH_RATE", value_parser = parse_rate)]
    pub rate: Option<f64>,

    /// Events per request: 1 sends single events to /v1/ai/events, more sends JSON arrays to
    /// /v1/ai/events/batch.
    #[arg(long, env = "SIFT_BENCH_BATCH_SIZE", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub batch_size: u32,

    /// Send batches as NDJSON (`Content-Type: application/x-ndjson`), one event per line, to
    /// /v1/ai/events/batch (with --batch-size 1 too).
    #[arg(long, env = "SIFT_BENCH_NDJSON", value_parser = BoolishValueParser::new())]
    pub ndjson: bool,

    /// Send these pre-built requests instead of generated events, each once, in order, over
    /// the keys in turn; the run ends when they are all answered (or at --duration). Records:
    /// u32 LE events, u32 LE body length, body. Read whole before the clock starts; the
    /// duplicate flags do not apply. The bodies must be in the format the other flags name
    /// (--batch-size > 1: JSON arrays, --ndjson, --otlp).
    #[arg(long, env = "SIFT_BENCH_REPLAY", value_name = "FILE")]
    pub replay: Option<PathBuf>,

    /// The bodies (of --replay) are OTLP protobuf trace exports: sent to /v1/traces as
    /// `application/x-protobuf`; each answer's partial success counts rejected spans, and
    /// every other span counts as accepted (OTLP does not tell collapsed spans apart).
    #[arg(long, env = "SIFT_BENCH_OTLP", value_parser = BoolishValueParser::new(), requires = "replay", conflicts_with = "ndjson")]
    pub otlp: bool,

    /// Compress bodies (`Content-Encoding: gzip`, fastest level, done by the sending task).
    #[arg(long, env = "SIFT_BENCH_GZIP", value_parser = BoolishValueParser::new())]
    pub gzip: bool,

    /// Sessions per tenant; each intent is in one of them, drawn at random.
    #[arg(long, env = "SIFT_BENCH_SESSIONS", default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=100_000_000))]
    pub sessions: u32,

    /// Model versions, `v1.0.0`, `v1.1.0`, ...; each intent uses one, drawn at random.
    #[arg(long, env = "SIFT_BENCH_MODELS", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub models: u32,

    /// Fraction of the sent events that are duplicates of an intent already sent, 0.0 to 0.95.
    #[arg(long, env = "SIFT_BENCH_DUPLICATES", default_value_t = 0.5, value_parser = parse_duplicates)]
    pub duplicates: f64,

    /// Weights of the kinds of duplicates: `retry` (the same event again, same event_id and
    /// timestamp), `variant` (the prompt re-rendered in case, punctuation and whitespace,
    /// no event_id, within --variant-max-age of the original's answer), `stream` (an intent
    /// sent as --stream-chunks chunks; each chunk after the first is a duplicate).
    #[arg(long, env = "SIFT_BENCH_DUP_KINDS", default_value = "retry=1,variant=1,stream=1", value_parser = parse_dup_kinds)]
    pub dup_kinds: DupKinds,

    /// Chunks per streamed intent (the last one carries `"final": true`).
    #[arg(long, env = "SIFT_BENCH_STREAM_CHUNKS", default_value_t = 8, value_parser = clap::value_parser!(u32).range(2..=10_000))]
    pub stream_chunks: u32,

    /// A variant re-renders an intent answered at most this long ago: well inside the
    /// server's semantic window (5 s by default), beyond which a variant is a new intent.
    #[arg(long, env = "SIFT_BENCH_VARIANT_MAX_AGE", default_value = "1s", value_parser = parse_duration)]
    pub variant_max_age: Duration,

    /// Length of the measured run (`30s`, `2m`, `1h`); conflicts with --events. Default 10s.
    #[arg(long, env = "SIFT_BENCH_DURATION", value_parser = parse_duration, conflicts_with = "events")]
    pub duration: Option<Duration>,

    /// Length of the measured run in sent events (a batch counts its events); conflicts with
    /// --duration.
    #[arg(long, env = "SIFT_BENCH_EVENTS", value_parser = clap::value_parser!(u64).range(1..))]
    pub events: Option<u64>,

    /// Load before the measured run: its requests are sent, answered and checked in
    /// ClickHouse, but not in the rates and latencies.
    #[arg(long, env = "SIFT_BENCH_WARMUP", default_value = "0s", value_parser = parse_duration)]
    pub warmup: Duration,

    /// Time limit of one request; a request past it counts as an error of unknown outcome.
    #[arg(long, env = "SIFT_BENCH_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub timeout: Duration,

    /// Fail (exit 1) when more than this fraction of the requests failed (any non-2xx answer
    /// but 422, or no answer); 1 never fails on errors (an overload test expecting 429s).
    #[arg(long, env = "SIFT_BENCH_MAX_ERROR_RATE", default_value_t = 0.01, value_parser = parse_fraction)]
    pub max_error_rate: f64,

    /// Threads of the tool's runtime [default: the machine's cores].
    #[arg(long, env = "SIFT_BENCH_THREADS", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub threads: Option<u32>,

    /// Seed of the random choices (sessions, models, kinds, variants) [default: random].
    #[arg(long, env = "SIFT_BENCH_SEED")]
    pub seed: Option<u64>,

    /// Id of this run, 4 to 32 lowercase letters and digits, in every session id
    /// (`bench-<run-id>-...`), event id and prompt [default: random].
    #[arg(long, env = "SIFT_BENCH_RUN_ID", value_parser = parse_run_id)]
    pub run_id: Option<String>,

    /// Hide the progress bar (it is hidden anyway when stderr is not a terminal).
    #[arg(long, short, env = "SIFT_BENCH_QUIET", value_parser = BoolishValueParser::new())]
    pub quiet: bool,

    /// Also write the report as JSON to this file (schema: see the crate's documentation).
    #[arg(long, env = "SIFT_BENCH_JSON")]
    pub json: Option<PathBuf>,

    /// ClickHouse HTTP URL: after the run, wait for the run's rows in `ai_events`, report the
    /// end-to-end lag and check exactly-once. Without it, no end-to-end check.
    #[arg(long, env = "SIFT_BENCH_CLICKHOUSE_URL", value_parser = parse_http_url)]
    pub clickhouse_url: Option<Url>,

    /// ClickHouse database of sift's tables.
    #[arg(long, env = "SIFT_BENCH_CLICKHOUSE_DATABASE", default_value = "ai_analytics", value_parser = parse_identifier)]
    pub clickhouse_database: String,

    /// ClickHouse user [default: the server's default user].
    #[arg(long, env = "SIFT_BENCH_CLICKHOUSE_USER")]
    pub clickhouse_user: Option<String>,

    /// ClickHouse password (prefer the environment variable to the flag).
    #[arg(long, env = "SIFT_BENCH_CLICKHOUSE_PASSWORD", hide_env_values = true)]
    pub clickhouse_password: Option<String>,

    /// How long to wait, after the last answer, for the accepted events to appear in ClickHouse.
    #[arg(long, env = "SIFT_BENCH_LAG_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub lag_timeout: Duration,

    /// After the rows are all there, watch this much longer, so that a late double is caught.
    #[arg(long, env = "SIFT_BENCH_SETTLE", default_value = "1s", value_parser = parse_duration)]
    pub settle: Duration,
}

/// Weights of the three kinds of duplicates.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct DupKinds {
    pub retry: f64,
    pub variant: f64,
    pub stream: f64,
}

/// How long a run is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Length {
    Duration(Duration),
    Events(u64),
}

impl Cli {
    /// Parses the command line; a bad one exits 2 with clap's message.
    pub fn parse_checked() -> Self {
        let cli = Self::parse();
        if let Err(message) = cli.check() {
            Self::command()
                .error(ErrorKind::ValueValidation, message)
                .exit();
        }
        cli
    }

    /// What clap cannot check flag by flag.
    pub fn check(&self) -> Result<(), String> {
        let weights = self.dup_kinds;
        if self.duplicates > 0.0 && weights.retry + weights.variant + weights.stream <= 0.0 {
            return Err("--duplicates is above 0 but every weight of --dup-kinds is 0".into());
        }
        if self.rate.is_some_and(|rate| rate < 0.001) {
            return Err("--rate must be at least 0.001 events per second".into());
        }
        if self.duration.is_some_and(|d| d.is_zero()) {
            return Err("--duration must be more than 0".into());
        }
        if self.timeout.is_zero() {
            return Err("--timeout must be more than 0".into());
        }
        if self.variant_max_age.is_zero() && self.duplicates > 0.0 && weights.variant > 0.0 {
            return Err("--variant-max-age must be more than 0 when variants are sent".into());
        }
        Ok(())
    }

    pub fn concurrency(&self) -> u32 {
        self.concurrency.unwrap_or(if self.rate.is_some() {
            OPEN_CONCURRENCY
        } else {
            CLOSED_CONCURRENCY
        })
    }

    pub fn length(&self) -> Length {
        match (self.duration, self.events) {
            (_, Some(events)) => Length::Events(events),
            (Some(duration), None) => Length::Duration(duration),
            (None, None) => Length::Duration(DEFAULT_DURATION),
        }
    }

    /// Whether events go to the batch endpoint.
    pub fn batch_endpoint(&self) -> bool {
        self.batch_size > 1 || self.ndjson
    }

    /// Whether the workload makes duplicates (never when replaying pre-built bodies).
    pub fn duplicates(&self) -> f64 {
        if self.replay.is_some() {
            0.0
        } else {
            self.duplicates
        }
    }
}

fn parse_http_url(text: &str) -> Result<Url, String> {
    let url = Url::parse(text).map_err(|e| format!("not a URL: {e}"))?;
    match url.scheme() {
        "http" => Ok(url),
        "https" => Err("https is not supported (this build speaks plain HTTP); use http://".into()),
        other => Err(format!("scheme {other:?} is not supported; use http://")),
    }
}

fn parse_key(text: &str) -> Result<String, String> {
    let key = text.trim();
    if key.is_empty() {
        return Err("an API key must not be empty".into());
    }
    if !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("an API key must be printable ASCII without spaces".into());
    }
    Ok(key.to_owned())
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("{e} (examples: 500ms, 30s, 2m)"))
}

fn parse_rate(text: &str) -> Result<f64, String> {
    let rate: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number of events per second"))?;
    if !(rate.is_finite() && rate > 0.0) {
        return Err("must be a positive number of events per second".into());
    }
    Ok(rate)
}

fn parse_fraction(text: &str) -> Result<f64, String> {
    let value: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number"))?;
    if !(0.0..=1.0).contains(&value) {
        return Err("must be from 0 to 1".into());
    }
    Ok(value)
}

fn parse_duplicates(text: &str) -> Result<f64, String> {
    let value: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number"))?;
    if !(0.0..=0.95).contains(&value) {
        return Err(
            "must be from 0.0 to 0.95 (the fraction of sent events that are duplicates)".into(),
        );
    }
    Ok(value)
}

fn parse_dup_kinds(text: &str) -> Result<DupKinds, String> {
    let mut kinds = DupKinds {
        retry: 0.0,
        variant: 0.0,
        stream: 0.0,
    };
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, weight) = part.split_once('=').ok_or_else(|| {
            format!("{part:?} is not KIND=WEIGHT (e.g. retry=2,variant=1,stream=1)")
        })?;
        let weight: f64 = weight
            .trim()
            .parse()
            .ok()
            .filter(|w: &f64| w.is_finite() && *w >= 0.0)
            .ok_or_else(|| format!("the weight of {name:?} must be a number >= 0"))?;
        match name.trim() {
            "retry" => kinds.retry = weight,
            "variant" => kinds.variant = weight,
            "stream" => kinds.stream = weight,
            other => {
                return Err(format!(
                    "unknown kind {other:?}: the kinds are retry, variant and stream"
                ))
            }
        }
    }
    Ok(kinds)
}

fn parse_run_id(text: &str) -> Result<String, String> {
    let ok = (4..=32).contains(&text.len())
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if !ok {
        return Err("must be 4 to 32 lowercase letters and digits".into());
    }
    Ok(text.to_owned())
}

fn parse_identifier(text: &str) -> Result<String, String> {
    let ok = !text.is_empty()
        && text.len() <= 128
        && text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !ok {
        return Err("must be letters, digits and underscores".into());
    }
    Ok(text.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("sift-bench").chain(args.iter().copied()))
    }

    #[test]
    fn the_command_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn keys_repeat_or_split_on_commas() {
        let cli = parse(&["--key", "sk_a,sk_b", "--key", "sk_c"]).unwrap();
        assert_eq!(cli.keys, ["sk_a", "sk_b", "sk_c"]);
    }

    #[test]
    fn defaults_follow_the_mode() {
        let closed = parse(&["--key", "k"]).unwrap();
        assert_eq!(closed.concurrency(), CLOSED_CONCURRENCY);
        assert_eq!(closed.length(), Length::Duration(DEFAULT_DURATION));
        let open = parse(&["--key", "k", "--rate", "100", "--events", "5"]).unwrap();
        assert_eq!(open.concurrency(), OPEN_CONCURRENCY);
        assert_eq!(open.length(), Length::Events(5));
    }

    #[test]
    fn bad_values_are_usage_errors() {
        for args in [
            &["--key", "k", "--duplicates", "0.99"][..],
            &["--key", "k", "--dup-kinds", "retry=1,replay=2"],
            &["--key", "k", "--duration", "10s", "--events", "5"],
            &["--key", "k", "--url", "https://example.org"],
            &["--key", "k", "--run-id", "Bad-Id"],
            &["--key", "k", "--duration", "ten seconds"],
            &["--key", "k", "--stream-chunks", "1"],
            &["--key", "k", "--clickhouse-database", "x; DROP"],
            &["--key", "k", "--otlp"],
        ] {
            let error = parse(args).expect_err("refused");
            assert_eq!(error.exit_code(), 2, "{args:?}");
        }
    }

    #[test]
    fn flags_read_their_environment() {
        // Both spellings of a true flag (1, true), as a shell or a manifest writes them.
        std::env::set_var("SIFT_BENCH_GZIP", "1");
        std::env::set_var("SIFT_BENCH_NDJSON", "true");
        std::env::set_var("SIFT_BENCH_SESSIONS", "7");
        let cli = parse(&["--key", "k"]);
        for name in [
            "SIFT_BENCH_GZIP",
            "SIFT_BENCH_NDJSON",
            "SIFT_BENCH_SESSIONS",
        ] {
            std::env::remove_var(name);
        }
        let cli = cli.unwrap();
        assert!(cli.gzip && cli.ndjson && !cli.quiet);
        assert_eq!(cli.sessions, 7);
    }

    #[test]
    fn dup_kinds_parse() {
        let kinds = parse_dup_kinds("retry=2, stream=0.5").unwrap();
        assert_eq!(
            kinds,
            DupKinds {
                retry: 2.0,
                variant: 0.0,
                stream: 0.5
            }
        );
        let cli = parse(&["--key", "k", "--dup-kinds", "retry=0"]).unwrap();
        assert!(cli.check().is_err());
    }
}
