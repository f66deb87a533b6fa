//! Logging set-up: `RUST_LOG` filters (default `info`, quiet PostgreSQL notices), written to
//! stderr so that stdout stays for what a command prints.

/// Installs the global subscriber; `format` is `json` or anything else for text.
pub fn init(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,tokio_postgres=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}
