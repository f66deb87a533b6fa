//! `sift-batcher`: the worker binary and the operator commands. It parses the command line,
//! hands each command to its module in [`sift_batcher::commands`], and prints the error that
//! ends it, if any, in one line.

use std::process::ExitCode;

use clap::Parser;
use sift_batcher::commands::{self, describe, Context};
use sift_batcher::config::{Cli, Command};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    sift_service::logging::init(&cli.log_format);
    let ctx = Context::from(&cli);
    match ctx.clickhouse.topology() {
        Ok(topology) => sift_batcher::cluster::configure(topology),
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::FAILURE;
        }
    }
    let done = match cli.command {
        Command::Migrate(args) => commands::migrate::run(args, &ctx).await,
        Command::Run(args) => commands::run::run(args, &ctx).await,
        Command::Backfill { command } => commands::backfill::run(command, &ctx).await,
        Command::Dlq { command } => commands::dlq::run(command, &ctx).await,
        Command::Tenant { command } => commands::tenant::run(command, &ctx).await,
        Command::Key { command } => commands::key::run(command, &ctx).await,
        Command::Erase(args) => commands::erase::run(args, &ctx).await,
    };
    match done {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {}", describe(&error));
            ExitCode::FAILURE
        }
    }
}
