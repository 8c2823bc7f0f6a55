//! The command line: clap's types for every command and its flags.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "ccctl",
    version,
    about = "CronCommander operator CLI",
    long_about = "Runs jobs on hosts, reads their reports, manages cron lists, and signs root \
                  work with your own key.\n\nThe listener and its token come from --url and \
                  --token-file, else CC_URL and CC_TOKEN_FILE, else \
                  ~/.config/croncommander/ccctl.toml (keys url, token_file, key_file, ca_file). \
                  `ccctl doctor` checks them."
)]
pub(crate) struct Cli {
    /// The listener's operator API, e.g. http://127.0.0.1:8082.
    #[arg(long, global = true)]
    pub(crate) url: Option<String>,
    /// File holding the operator API token.
    #[arg(long, global = true)]
    pub(crate) token_file: Option<PathBuf>,
    /// For an https:// URL: the PEM certificate of the CA that signed the
    /// listener's certificate, trusted instead of the platform's roots.
    #[arg(long, global = true)]
    pub(crate) ca_file: Option<PathBuf>,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Make an operator signing key: writes the private key (0600) and
    /// prints the public key line to put in a host's helper.toml
    /// (`trusted_keys`).
    Keygen {
        /// Where to write the private key.
        #[arg(long, default_value = "ccctl-signing.key")]
        out: PathBuf,
        /// A name for the key, printed after it (who holds it).
        #[arg(long, default_value = "operator")]
        name: String,
    },
    /// Run a program on hosts and wait for the reports.
    ///
    /// `ccctl run web1 web2 -- /usr/bin/uptime`; `ccctl run --tag db --tag eu
    /// --batch 2 -- /usr/bin/apt-get -q update` (hosts carrying every tag
    /// given, at most 2 at once). Exits 0 only if every host succeeded.
    /// With --system the job runs as root through each host's helper,
    /// signed here with --key. `ccctl run status ID` and `ccctl run watch
    /// ID` follow a run started earlier (or left with Ctrl-C).
    Run(RunArgs),
    /// Sign root work for hosts and print the statements (a JSON list)
    /// without sending them: for the web console's "Root work" box, or to
    /// send later (`POST /api/v1/runs {"signed": [...]}`). Takes `ccctl run`'s
    /// hosts, --tag (which asks the listener for the hosts), --timeout,
    /// --key and --valid-for.
    Sign(RunArgs),
    /// Show a job and its report (stdout and stderr verbatim).
    ///
    /// With --host, ID is a cron entry's id: its latest scheduled run on
    /// that host (`--all`: every stored run, newest first).
    Job {
        id: String,
        /// `text` (default: the report, stdout and stderr verbatim) or `json`.
        #[arg(long, default_value = "text", value_parser = ["text", "json"])]
        output: String,
        /// ID is a cron entry of this host: show its scheduled runs.
        #[arg(long)]
        host: Option<String>,
        /// With --host: list every stored run of the entry, not the latest.
        #[arg(long, requires = "host")]
        all: bool,
    },
    /// List agents: host, online, mode, root, last heartbeat, cron status,
    /// tags; a warning under any agent that runs as root in user mode.
    Agents {
        /// Only agents carrying this tag (repeat: all of them).
        #[arg(long = "tag", value_name = "TAG")]
        tags: Vec<String>,
        /// Only agents not connected now.
        #[arg(long)]
        offline: bool,
    },
    /// Reports, newest first: ad-hoc and scheduled runs alike.
    ///
    /// `ccctl reports --host web1 --since 2h`; `ccctl reports --job nightly`
    /// (a cron entry's id gives every scheduled run of it).
    Reports {
        /// Only this host's reports.
        #[arg(long)]
        host: Option<String>,
        /// Only this job's (or cron entry's) reports.
        #[arg(long)]
        job: Option<String>,
        /// Only reports received since then: an age (`90s`, `30m`, `2h`,
        /// `7d`) or an RFC 3339 time.
        #[arg(long)]
        since: Option<String>,
        /// At most this many reports.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// `table` (default: one line each) or `json` (the reports whole).
        #[arg(long, default_value = "table", value_parser = ["table", "json"])]
        output: String,
    },
    /// Manage the keys agents connect with (as `cc-listener keys` does on
    /// the listener's host).
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Manage named operators (admin): each with its own token, a role and
    /// the hosts it reaches.
    Operators {
        #[command(subcommand)]
        command: OperatorsCommand,
    },
    /// Notification sinks (`[[notify]]` in the listener config; admin):
    /// `ccctl notify` lists them and their queues, `ccctl notify test
    /// NAME` sends a test through the same queue.
    Notify {
        #[command(subcommand)]
        command: Option<NotifyCommand>,
    },
    /// Read the audit log (admin): who did what, from where, with what
    /// outcome; `--verify` checks its hash chain.
    ///
    /// `ccctl audit --since 1d --operator alice`; `ccctl audit --verify`
    /// (exit 1 naming the first bad row when a row was edited or deleted).
    Audit {
        /// Only rows since then: an age (`90s`, `30m`, `2h`, `7d`) or an
        /// RFC 3339 time.
        #[arg(long)]
        since: Option<String>,
        /// Only this operator's rows (`-`: nobody authenticated).
        #[arg(long)]
        operator: Option<String>,
        /// At most this many rows (the newest).
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Check the chain instead of listing it.
        #[arg(long)]
        verify: bool,
        /// `table` (default) or `json`.
        #[arg(long, default_value = "table", value_parser = ["table", "json"])]
        output: String,
    },
    /// Print a shell completion script: `ccctl completions bash >
    /// /etc/bash_completion.d/ccctl` (also zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
    /// Read or replace a host's cron list.
    Cron {
        #[command(subcommand)]
        command: CronCommand,
    },
    /// Check this side of the setup, one line each: the config file, the
    /// URL, the token file and its mode, the listener reachable, TLS
    /// verified, the token accepted. Exits 0 when every line is ok.
    Doctor,
}

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub(crate) struct RunArgs {
    #[command(subcommand)]
    pub(crate) follow: Option<RunCommand>,
    /// Hosts to run on.
    pub(crate) hosts: Vec<String>,
    /// Also every agent carrying this tag (repeat: all of them).
    #[arg(long = "tag", value_name = "TAG")]
    pub(crate) tags: Vec<String>,
    /// At most this many hosts running at once; the next starts as one reports.
    #[arg(long)]
    pub(crate) batch: Option<u32>,
    /// Seconds before the job is stopped.
    #[arg(long, default_value_t = 3600)]
    pub(crate) timeout: u64,
    /// Root work: sign the job for each host with your key.
    #[arg(long)]
    pub(crate) system: bool,
    /// Your signing key (else key_file in ccctl.toml, else CC_KEY_FILE).
    #[arg(long)]
    pub(crate) key: Option<PathBuf>,
    /// How long the signature stays valid, in seconds (at most a day).
    #[arg(long, default_value_t = 3600)]
    pub(crate) valid_for: i64,
    /// Print the run and job ids and return without waiting.
    #[arg(long)]
    pub(crate) no_wait: bool,
    /// `table` (default) or `json`.
    #[arg(long, default_value = "table", value_parser = ["table", "json"])]
    pub(crate) output: String,
    /// The program and its arguments, after `--`.
    #[arg(last = true)]
    pub(crate) command: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum RunCommand {
    /// Where a run is now: one line per host.
    Status {
        id: String,
        /// `table` (default) or `json` (as `ccctl run --output json`).
        #[arg(long, default_value = "table", value_parser = ["table", "json"])]
        output: String,
    },
    /// Wait for a run to finish, then one line per host.
    Watch {
        id: String,
        /// `table` (default) or `json` (as `ccctl run --output json`).
        #[arg(long, default_value = "table", value_parser = ["table", "json"])]
        output: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum KeysCommand {
    /// Make a key for an agent; prints the key, and only it, on stdout
    /// (put it in the agent's `api_key_file`). The listener keeps its hash.
    Add {
        name: String,
        /// Bind the key to this hostname now (else to the first hostname
        /// that registers with it).
        #[arg(long)]
        hostname: Option<String>,
        /// The tags its host may have, comma-separated (else those it
        /// first registers with); runs select hosts by these.
        #[arg(long, value_delimiter = ',')]
        tags: Option<Vec<String>>,
    },
    /// Set the tags the key's host may have (comma-separated; "" for
    /// none). Its agent must register with the same from now on.
    Retag { name: String, tags: String },
    /// Every key: name, bound hostname, created, active or revoked.
    List,
    /// Refuse the key from now on; an agent connected with it is
    /// disconnected at once.
    Revoke { name: String },
}

#[derive(Debug, Subcommand)]
pub(crate) enum OperatorsCommand {
    /// Make an operator; prints its token, and only it, on stdout (the
    /// listener keeps its hash).
    Add {
        name: String,
        /// viewer (reads), operator (also runs jobs and sets cron lists),
        /// admin (also manages keys, operators, and reads the audit log).
        #[arg(long)]
        role: String,
        /// The hosts it reaches: `*`, `host:NAME`, `tag:T`, comma-joined
        /// (any of them) [default: *].
        #[arg(long)]
        hosts: Option<String>,
        /// Refuse its token after this many days.
        #[arg(long, value_name = "DAYS")]
        expires: Option<u64>,
    },
    /// Every operator: name, role, hosts, created, expires, state.
    List,
    /// Refuse the operator from now on: its API access, event streams and
    /// console sessions end within a second.
    Revoke { name: String },
}

#[derive(Debug, Subcommand)]
pub(crate) enum NotifyCommand {
    /// Every sink: name, URL (without its query), events, hosts, queued.
    List,
    /// Queue a test notification (event `test`) for the sink NAME.
    Test { name: String },
}

#[derive(Debug, Subcommand)]
pub(crate) enum CronCommand {
    /// Print the list as `ID SCHEDULE COMMAND` lines.
    Get { host: String },
    /// Replace the list with a file of `ID SCHEDULE COMMAND` lines (`#`
    /// comments); every line is checked here first, and an error names it.
    Set {
        host: String,
        /// The file, or `-` for standard input.
        file: PathBuf,
        /// Root cron entries: sign the list with your key.
        #[arg(long)]
        system: bool,
        #[arg(long)]
        key: Option<PathBuf>,
    },
    /// Show what a fleet file (`ID TARGET [OPTIONS] SCHEDULE COMMAND`
    /// lines; TARGET `*`, `host:NAME`, `tag:T`, comma-joined: all of them)
    /// would change, per host: entries added (+), changed (~), removed (-).
    Plan {
        /// The file, or `-` for standard input.
        file: PathBuf,
        #[arg(long, default_value = "text", value_parser = ["text", "json"])]
        output: String,
    },
    /// Replace the fleet set with a fleet file, after showing its plan
    /// (and asking, unless --yes).
    Apply {
        /// The file, or `-` for standard input.
        file: PathBuf,
        /// Apply without asking.
        #[arg(long)]
        yes: bool,
        /// Sign each changed system-mode host's new list with your key.
        #[arg(long)]
        system: bool,
        #[arg(long)]
        key: Option<PathBuf>,
    },
    /// Per host: the entries wanted against those the agent installed
    /// (drift), refusals, signatures awaited, cron daemon warnings.
    Status {
        #[arg(long)]
        host: Option<String>,
        #[arg(long)]
        tag: Option<String>,
        /// Only hosts with an entry whose last scheduled run failed.
        #[arg(long)]
        failing: bool,
        /// Only hosts with an entry whose last expected run was missed.
        #[arg(long)]
        missed: bool,
        #[arg(long, default_value = "table", value_parser = ["table", "json"])]
        output: String,
    },
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::Cli;

    /// `--output` takes only what the command prints: a typo is refused
    /// naming the choices, never taken for the default.
    #[test]
    fn output_takes_only_the_formats_it_prints() {
        for ok in [
            &["ccctl", "reports", "--output", "json"][..],
            &["ccctl", "job", "x", "--output", "text"],
            &["ccctl", "run", "status", "r", "--output", "table"],
            &["ccctl", "audit", "--output", "json"],
        ] {
            assert!(Cli::try_parse_from(ok).is_ok(), "{ok:?}");
        }
        for bad in [
            &["ccctl", "reports", "--output", "jsno"][..],
            &["ccctl", "job", "x", "--output", "table"],
            &["ccctl", "run", "status", "r", "--output", "yaml"],
            &["ccctl", "run", "h", "--output", "JSON", "--", "/bin/true"],
            &["ccctl", "audit", "--output", ""],
        ] {
            let e = Cli::try_parse_from(bad).expect_err(&format!("{bad:?} was accepted"));
            assert_eq!(e.kind(), clap::error::ErrorKind::InvalidValue, "{bad:?}");
            assert!(e.to_string().contains("possible values"), "{e}");
        }
    }
}
