//! The command line as operators type it: defaults, environment, refusals.

use clap::Parser;

use super::Cli;

/// A heartbeat that lives 0 ms is `SET ... PX 0`, which Redis refuses; a retry delay of
/// 0 retries a dependency that is down in a tight loop: the flags say so.
#[test]
fn zero_heartbeat_ttl_and_retry_delay_are_refused_naming_the_flag() {
    for flag in ["--heartbeat-ttl-ms", "--retry-base-ms", "--retry-max-ms"] {
        let error =
            Cli::try_parse_from(["sift-batcher", "run", flag, "0"]).expect_err("0 must be refused");
        assert_eq!(error.kind(), clap::error::ErrorKind::ValueValidation);
        assert!(error.to_string().contains(flag), "{error}");
        let cli = Cli::try_parse_from(["sift-batcher", "run", flag, "1"]);
        assert!(cli.is_ok(), "{cli:?}");
    }
}

#[test]
fn raw_retention_is_days_or_default() {
    let parse = |value: &str| {
        Cli::try_parse_from([
            "sift-batcher",
            "tenant",
            "set-retention",
            "acme",
            "--raw-days",
            value,
        ])
        .map(|cli| match cli.command {
            super::Command::Tenant {
                command: super::TenantCommand::SetRetention { raw_days, .. },
            } => raw_days,
            other => panic!("parsed as {other:?}"),
        })
    };
    assert_eq!(parse("7").ok(), Some(super::RawDays::Days(7)));
    assert_eq!(parse("3650").ok(), Some(super::RawDays::Days(3650)));
    assert_eq!(parse("default").ok(), Some(super::RawDays::Default));
    for bad in ["0", "3651", "none", "7d", ""] {
        let error = parse(bad).expect_err(bad);
        assert_eq!(
            error.kind(),
            clap::error::ErrorKind::ValueValidation,
            "{bad}"
        );
        assert!(error.to_string().contains("--raw-days"), "{error}");
    }
}

/// The scopes `key create` was given, as the library receives them.
fn scopes_of(args: &[&str]) -> Result<sift_core::Scopes, clap::Error> {
    let cli = Cli::try_parse_from(["sift-batcher", "key", "create", "acme"].iter().chain(args))?;
    match cli.command {
        super::Command::Key {
            command: super::KeyCommand::Create { scopes, .. },
        } => Ok(scopes.into_iter().map(sift_core::Scope::from).collect()),
        other => panic!("parsed as {other:?}"),
    }
}

#[test]
fn key_scopes_default_to_ingest_and_read_and_are_repeatable_or_comma_separated() {
    let names = |args: &[&str]| scopes_of(args).map(|s| s.to_string());
    assert_eq!(names(&[]).ok().as_deref(), Some("ingest,read"));
    assert_eq!(names(&["--scope", "read"]).ok().as_deref(), Some("read"));
    assert_eq!(
        names(&["--scope", "admin", "--scope", "ingest"])
            .ok()
            .as_deref(),
        Some("ingest,admin")
    );
    assert_eq!(
        names(&["--scope", "read,admin"]).ok().as_deref(),
        Some("read,admin")
    );
    assert_eq!(
        names(&["--scope=ingest,read,admin", "--scope", "read"])
            .ok()
            .as_deref(),
        Some("ingest,read,admin")
    );
    for bad in ["write", "", "Read", "read,"] {
        let error = scopes_of(&["--scope", bad]).expect_err(bad);
        assert_eq!(error.kind(), clap::error::ErrorKind::InvalidValue, "{bad}");
    }
}
