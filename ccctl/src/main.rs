//! `ccctl`: the operator's command line for CronCommander.
//!
//! It talks to the listener's operator API (URL and token from `--url` /
//! `--token-file`, `CC_URL` / `CC_TOKEN_FILE`, or
//! `~/.config/croncommander/ccctl.toml`), and signs root work with the
//! operator's own key, offline: the listener stores and relays the signed
//! statement but cannot change it, and a host's helper runs only what a key
//! it trusts signed.
//!
//! What it prints is mostly the listener's and the agents' text, so it is
//! all written through [`term`], which escapes control characters.
//!
//! Modules: [`cli`] (the command line), [`api`] (the listener's operator
//! API), one per command group ([`run`], [`job`], [`agents`], [`reports`],
//! [`keys`], [`operators`] (with `audit`), [`notify`], [`cron`], [`doctor`]), [`signing`] (the operator's key and statements),
//! and [`term`] (the print boundary).
#![forbid(unsafe_code)]

mod agents;
mod api;
mod cli;
mod cron;
mod doctor;
mod fleet;
mod job;
mod keys;
mod notify;
mod operators;
mod reports;
mod run;
mod signing;
mod term;

use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;

use crate::api::{Api, FileConfig, file_config};
use crate::cli::{Cli, Command, RunArgs, RunCommand};

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Doctor = cli.command {
        // It reads the config file itself, to say what is wrong with it.
        return if doctor::doctor(&cli) {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        };
    }
    match file_config().and_then(|file| dispatch(&cli, &file)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            // Line by line: a parse error of ccctl.toml points at its line
            // over several.
            for line in format!("ccctl: error: {e:#}").lines() {
                term::err_line(line);
            }
            ExitCode::from(2)
        }
    }
}

/// Runs one command: `Ok(true)` for success (exit 0), `Ok(false)` when it
/// ran but what it reports failed (exit 1); an error is exit 2.
fn dispatch(cli: &Cli, file: &FileConfig) -> Result<bool> {
    let api = || Api::new(cli, file);
    match &cli.command {
        Command::Keygen { out, name } => signing::keygen(out, name).map(|()| true),
        Command::Run(args) => run_command(&api()?, file, args),
        Command::Sign(args) => {
            let api = if args.tags.is_empty() {
                None
            } else {
                Some(api()?)
            };
            let signed = signing::sign_for_hosts(api.as_ref(), file, args)?;
            term::json(&signed)?;
            Ok(true)
        }
        Command::Job {
            id,
            output,
            host: None,
            ..
        } => job::show(&api()?, id, output == "json"),
        Command::Job {
            id,
            output,
            host: Some(host),
            all,
        } => job::show_entry(&api()?, host, id, *all, output == "json"),
        Command::Agents { tags, offline } => agents::print_agents(&api()?, tags, *offline),
        Command::Reports {
            host,
            job,
            since,
            limit,
            output,
        } => reports::print_reports(
            &api()?,
            host.as_deref(),
            job.as_deref(),
            since.as_deref(),
            *limit,
            output == "json",
        ),
        Command::Keys { command } => keys::keys(&api()?, command),
        Command::Operators { command } => operators::operators(&api()?, command),
        Command::Notify { command } => notify::notify(&api()?, command.as_ref()),
        Command::Audit {
            since,
            operator,
            limit,
            verify,
            output,
        } => {
            if *verify {
                operators::verify(&api()?)
            } else {
                operators::audit(
                    &api()?,
                    since.as_deref(),
                    operator.as_deref(),
                    *limit,
                    output == "json",
                )
            }
        }
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(*shell, &mut Cli::command(), "ccctl", &mut std::io::stdout());
            Ok(true)
        }
        Command::Cron { command } => cron::command(cli, file, command),
        Command::Doctor => Ok(doctor::doctor(cli)),
    }
}

/// `ccctl run`: a new run, or `status`/`watch` of one.
fn run_command(api: &Api, file: &FileConfig, args: &RunArgs) -> Result<bool> {
    let json_out = args.output == "json";
    match &args.follow {
        Some(RunCommand::Status { id, output }) => run::run_table(api, id, output == "json"),
        Some(RunCommand::Watch { id, output }) => {
            run::stop_waiting_on_ctrl_c(id);
            run::wait_run(api, id, args.timeout)?;
            run::run_table(api, id, output == "json")
        }
        None if args.system => run::system_run(api, file, args, json_out),
        None => run::fan_out(api, args, json_out),
    }
}
