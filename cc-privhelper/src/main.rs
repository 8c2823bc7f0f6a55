//! `cc-privhelper`: the small synchronous root helper behind a Unix socket.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "cc-privhelper", version, about = "CronCommander root helper")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the agent on the helper socket.
    Serve {
        /// TOML config file (root-owned, not group/world-writable).
        #[arg(long, default_value = "/etc/croncommander/helper.toml")]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let Cli {
        command: Command::Serve { .. },
    } = Cli::parse();
    eprintln!("cc-privhelper: error: `serve` is not built yet");
    ExitCode::from(2)
}
