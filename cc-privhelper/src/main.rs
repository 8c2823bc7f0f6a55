//! `cc-privhelper`: the small synchronous root helper behind a Unix socket.
//!
//! Subcommands (parsed by hand: no CLI framework to trust):
//! - `serve [--config FILE]` — the daemon;
//! - `cron-run [--config FILE] JOB_ID` — what `/etc/cron.d/croncommander`
//!   lines call: runs one scheduled job in the sandbox and leaves its report
//!   for the agent.

mod config;
mod cronfile;
mod exec;
mod sandbox;
mod server;
mod sys;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use cc_proto::JobId;

use crate::config::{Config, DEFAULT_CONFIG};

const USAGE: &str = "Usage: cc-privhelper serve [--config FILE]
       cc-privhelper cron-run [--config FILE] JOB_ID";

/// `[--config FILE] rest…` → (config, rest).
fn config_arg(args: &[String]) -> Result<(PathBuf, Vec<String>)> {
    match args {
        [flag, path, rest @ ..] if flag == "--config" => Ok((PathBuf::from(path), rest.to_vec())),
        [flag] if flag == "--config" => bail!("--config needs a file"),
        rest => Ok((PathBuf::from(DEFAULT_CONFIG), rest.to_vec())),
    }
}

fn cron_run(args: &[String]) -> Result<()> {
    let (config, rest) = config_arg(args)?;
    let [job_id] = rest.as_slice() else {
        bail!("{USAGE}")
    };
    let cfg = Config::load(&config)?;
    let id = JobId::parse(job_id)?;
    let agent =
        nix::unistd::User::from_name(&cfg.agent_user)?.context("agent_user does not exist")?;
    let command = cronfile::load(&cfg, &id)?;
    let spec = cc_proto::wire::JobSpec {
        id: id.clone(),
        command: command.clone(),
        timeout: cronfile::CRON_TIMEOUT,
    };
    let mut report = if cfg.system_mode {
        match exec::run(&cfg, &spec) {
            Ok(r) => r,
            Err(refusal) => exec::stamp(
                &cc_exec::refused(cc_exec::EXIT_NOT_EXECUTABLE, &refusal.message),
                &id,
                &command,
            ),
        }
    } else {
        exec::stamp(
            &cc_exec::refused(
                cc_exec::EXIT_NOT_EXECUTABLE,
                "system mode is not enabled on this host",
            ),
            &id,
            &command,
        )
    };
    report.report_id = Some(scheduled_report_id(
        std::process::id(),
        cc_proto::Timestamp::now().unix_millis(),
    ));
    let path = cronfile::deliver(&cfg, &report, agent.gid.as_raw())?;
    tracing::info!(job_id = %id, exit_code = report.exit_code, report = %path.display(), "scheduled system job ran");
    Ok(())
}

/// A report id for a scheduled run: unique per process and moment, and
/// short whatever the job id (a `reportId` must fit the job-id rules, or the
/// listener refuses the report and it would stay in the agent's outbox).
fn scheduled_report_id(pid: u32, unix_millis: i64) -> String {
    format!("sys-{unix_millis}-{pid}")
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CC_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colour only on a terminal: journald and log files get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let result = match args.first().map(String::as_str) {
        Some("serve") => config_arg(&args[1..]).and_then(|(config, rest)| {
            if !rest.is_empty() {
                bail!("{USAGE}");
            }
            server::serve(Config::load(&config)?)
        }),
        Some("cron-run") => cron_run(&args[1..]),
        Some("--help" | "-h") => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: the id once embedded the job id, so a 128-character job
    /// id gave a reportId the listener refused for ever.
    #[test]
    fn scheduled_report_ids_are_valid_report_ids() {
        let id = scheduled_report_id(u32::MAX, i64::MAX);
        assert!(cc_proto::JobId::parse(&id).is_ok(), "{id}");
        assert!(id.len() <= cc_proto::JobId::MAX_LEN);
    }
}
