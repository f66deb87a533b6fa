//! The validation limits as command-line flags, shared by `sift-ingest` (which validates
//! events as they arrive) and `sift-batcher dlq replay --invalid` (which validates refused
//! events again): one definition, the same flags and variables, so both apply the same rules.

use clap::Args;
use sift_core::Limits;

#[derive(Debug, Clone, Args)]
pub struct LimitArgs {
    /// Longest `prompt_text`, in bytes.
    #[arg(long, env = "SIFT_MAX_PROMPT_BYTES", default_value_t = 32 * 1024)]
    pub max_prompt_bytes: usize,

    /// How far in the future a `timestamp` may be, in seconds (clock skew).
    #[arg(long, env = "SIFT_MAX_FUTURE_SKEW_SECS", default_value_t = 300)]
    pub max_future_skew_secs: i64,

    /// How old a `timestamp` may be, in days.
    #[arg(long, env = "SIFT_MAX_EVENT_AGE_DAYS", default_value_t = 30)]
    pub max_event_age_days: i64,

    /// Largest `properties` object, in bytes of JSON.
    #[arg(long, env = "SIFT_MAX_PROPERTIES_BYTES", default_value_t = 8 * 1024)]
    pub max_properties_bytes: usize,
}

impl LimitArgs {
    pub fn limits(&self) -> Limits {
        Limits {
            max_prompt_bytes: self.max_prompt_bytes,
            max_future_skew_ms: self.max_future_skew_secs.saturating_mul(1000),
            max_age_ms: self.max_event_age_days.saturating_mul(86_400_000),
            max_properties_bytes: self.max_properties_bytes,
            ..Limits::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        limits: super::LimitArgs,
    }

    #[test]
    fn the_defaults_are_the_cores() {
        let cli = Cli::parse_from(["test"]);
        let (flags, core) = (cli.limits.limits(), sift_core::Limits::default());
        assert_eq!(flags.max_prompt_bytes, core.max_prompt_bytes);
        assert_eq!(flags.max_future_skew_ms, core.max_future_skew_ms);
        assert_eq!(flags.max_age_ms, core.max_age_ms);
        assert_eq!(flags.max_properties_bytes, core.max_properties_bytes);
    }
}
