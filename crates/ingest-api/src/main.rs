//! `sift-ingest`: parses the configuration, sets up logs and metrics, and serves.

use std::process::ExitCode;

use clap::Parser;
use sift_ingest::config::Config;
use sift_ingest::{metrics, server};

// mimalloc: the ingest path allocates and frees many small buffers per event (JSON values,
// strings, the script's arguments); glibc's malloc/free were a fifth of its profile.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[actix_web::main]
async fn main() -> ExitCode {
    let config = Config::parse();
    sift_service::logging::init(&config.log_format);
    let handle = match metrics::install() {
        Ok(handle) => handle,
        Err(error) => {
            eprintln!("error: cannot install the metrics recorder: {error}");
            return ExitCode::FAILURE;
        }
    };
    match server::serve(config, handle).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}
