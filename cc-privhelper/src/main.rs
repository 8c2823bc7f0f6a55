//! `cc-privhelper`: the small synchronous root helper behind a Unix socket.
//!
//! Subcommands (parsed by hand: no CLI framework to trust):
//! - `serve [--config FILE]` — the daemon;
//! - `cron-run [--config FILE] JOB_ID` — what `/etc/cron.d/croncommander`
//!   lines call: asks the running helper, over its socket, to run that
//!   scheduled entry. It runs nothing itself: every root job runs inside
//!   the helper's service, contained alike;
//! - `check-config [--config FILE]` — loads and checks the config as
//!   `serve` would, without serving: the unit runs it before a reload, so
//!   `systemctl reload` refuses a config the helper could not apply.

mod bpf;
mod cgroup;
mod config;
mod cronfile;
mod exec;
mod nonces;
mod reports;
mod sandbox;
mod server;
mod sys;
mod trust;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use cc_proto::frame::MAX_FRAME_LEN;
use cc_proto::helper::{HelperRequest, HelperResponse, RunScheduledRequest};

use crate::config::{Config, DEFAULT_CONFIG};

const USAGE: &str = "Usage: cc-privhelper serve [--config FILE]
       cc-privhelper cron-run [--config FILE] JOB_ID
       cc-privhelper check-config [--config FILE]";

/// `[--config FILE] rest…` → (config, rest).
fn config_arg(args: &[String]) -> Result<(PathBuf, Vec<String>)> {
    match args {
        [flag, path, rest @ ..] if flag == "--config" => Ok((PathBuf::from(path), rest.to_vec())),
        [flag] if flag == "--config" => bail!("--config needs a file"),
        rest => Ok((PathBuf::from(DEFAULT_CONFIG), rest.to_vec())),
    }
}

/// Asks the helper to run one scheduled entry and waits for it to end (the
/// cron daemon sees its duration); the report is the helper's to keep.
fn cron_run(args: &[String]) -> Result<()> {
    let (config, rest) = config_arg(args)?;
    let [job_id] = rest.as_slice() else { bail!("{USAGE}") };
    let cfg = Config::load(&config)?;
    let req = HelperRequest::RunScheduled(RunScheduledRequest { job_id: job_id.clone() });
    let mut stream = std::os::unix::net::UnixStream::connect(&cfg.socket)
        .with_context(|| format!("connecting to the helper at {}", cfg.socket.display()))?;
    let body = cc_proto::helper::encode(&req)?;
    stream.write_all(&cc_proto::frame::encode_frame(&body, MAX_FRAME_LEN)?)?;
    let body = server::read_frame(&mut stream, None).context("reading the helper's answer")?;
    match cc_proto::helper::decode_strict::<HelperResponse>(&body)? {
        HelperResponse::ExecResult(_) => Ok(()),
        HelperResponse::Refused(r) => bail!("the helper refused: {}", r.message),
        _ => bail!("the helper gave an unexpected answer"),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CC_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(|| cc_proto::logline::OneLine(std::io::stderr()))
        // Colour only on a terminal: journald and log files get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    // `--help` anywhere (`serve --help` too): the usage, on stdout.
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let result = match args.first().map(String::as_str) {
        Some("serve") => config_arg(&args[1..]).and_then(|(config, rest)| {
            anyhow::ensure!(rest.is_empty(), "unexpected arguments {rest:?}\n{USAGE}");
            server::serve(Config::load(&config)?)
        }),
        Some("cron-run") => cron_run(&args[1..]),
        Some("check-config") => config_arg(&args[1..]).and_then(|(config, rest)| {
            anyhow::ensure!(rest.is_empty(), "unexpected arguments {rest:?}\n{USAGE}");
            let cfg = Config::load(&config)?;
            println!(
                "{}: valid ({} trusted keys, system mode {})",
                config.display(),
                cfg.trusted_keys.len(),
                if cfg.system_mode { "on" } else { "off" }
            );
            Ok(())
        }),
        Some("--version" | "-V") => {
            println!("cc-privhelper {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        _ => Err(anyhow::anyhow!("{USAGE}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cc-privhelper: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
