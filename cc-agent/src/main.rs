//! `cc-agent`: the unprivileged, network-facing agent on every host.
#![forbid(unsafe_code)]

mod atomic;
mod check;
mod config;
mod cron;
mod cronhost;
mod handlers;
mod helper_client;
mod jobs;
mod link;
mod outbox;
mod runner;
mod scheduled;
mod seen;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use cc_proto::JobId;
use clap::{Parser, Subcommand};

use crate::config::{Config, DEFAULT_CONFIG};

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
    /// Connect to the listener and serve jobs until stopped.
    Run {
        /// TOML config file.
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Check this host's setup and say what to fix.
    ///
    /// Config, key file, listener (TCP, TLS), cron daemon, helper socket:
    /// one line per check, `ok: …` or `FAIL: … — what to do`; exit 0 only
    /// when all are ok. Changes nothing, sends no key.
    Check {
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Run one scheduled job now and put its report in the outbox (what the
    /// managed crontab lines call).
    CronRun {
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// The cron entry's id.
        job_id: String,
    },
}

fn cron_run(config: &std::path::Path, job_id: &str) -> Result<()> {
    let cfg = Config::load(config)?;
    let id = JobId::parse(job_id)?;
    let outbox = outbox::Outbox::open(&cfg.state_dir)?;
    let runner = runner::Runner::new(cfg.execution_mode, cfg.helper_socket.clone());
    let entry = cron::load(&cfg.state_dir, &id)?;
    let locks = cfg.state_dir.join("locks");
    let report = scheduled::run(&runner, &locks, cfg.hostname.as_str(), &id, &entry)?;
    outbox.put(report)?;
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CC_LOG").unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new("info,tungstenite=warn,tokio_tungstenite=warn")
            }),
        )
        .with_writer(|| cc_proto::logline::OneLine(std::io::stderr()))
        // Colour only on a terminal: journald and log files get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let result = match &cli.command {
        Command::Run { config } => Config::load(config).and_then(|cfg| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .max_blocking_threads(64)
                .enable_all()
                .build()
                .context("starting the async runtime")?
                .block_on(link::run(cfg))
        }),
        Command::CronRun { config, job_id } => cron_run(config, job_id),
        Command::Check { config } => {
            return if check::run(config) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            };
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cc-agent: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
