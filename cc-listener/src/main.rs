//! `cc-listener`: the central server agents connect to.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "cc-listener", version, about = "CronCommander listener")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Accept agents and serve the operator API.
    Serve,
    /// Manage agent API keys.
    Keys,
}

fn main() -> ExitCode {
    let what = match Cli::parse().command {
        Command::Serve => "serve",
        Command::Keys => "keys",
    };
    eprintln!("cc-listener: error: `{what}` is not built yet");
    ExitCode::from(2)
}
