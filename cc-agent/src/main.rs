//! `cc-agent`: the unprivileged, network-facing agent on every host.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "cc-agent",
    version,
    about = "CronCommander agent (runs unprivileged)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Connect to the listener and serve jobs.
    Run {
        /// TOML config file.
        #[arg(long, default_value = "/etc/croncommander/agent.toml")]
        config: PathBuf,
    },
    /// Run one scheduled job now (what managed crontab lines call).
    CronRun {
        /// The cron entry's id.
        job_id: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let what = match cli.command {
        Command::Run { .. } => "run",
        Command::CronRun { .. } => "cron-run",
    };
    eprintln!("cc-agent: error: `{what}` is not built yet");
    ExitCode::from(2)
}
