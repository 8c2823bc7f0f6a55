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
#![forbid(unsafe_code)]

mod term;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use cc_proto::Timestamp;
use cc_proto::sign::{self, CronStatement, ExecStatement};
use cc_proto::wire::CronEntry;
use clap::{Parser, Subcommand};
use serde::Deserialize;
use serde_json::{Value, json};
use term::{errln, outln};

#[derive(Debug, Parser)]
#[command(
    name = "ccctl",
    version,
    about = "CronCommander operator CLI",
    long_about = "Runs jobs on hosts, reads their reports, manages cron lists, and signs root \
                  work with your own key.\n\nThe listener and its token come from --url and \
                  --token-file, else CC_URL and CC_TOKEN_FILE, else \
                  ~/.config/croncommander/ccctl.toml (keys url, token_file, key_file)."
)]
struct Cli {
    /// The listener's operator API, e.g. http://127.0.0.1:8082.
    #[arg(long, global = true)]
    url: Option<String>,
    /// File holding the operator API token.
    #[arg(long, global = true)]
    token_file: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
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
    Job {
        id: String,
        /// `text` (default: the report, stdout and stderr verbatim) or `json`.
        #[arg(long, default_value = "text")]
        output: String,
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
        #[arg(long, default_value = "table")]
        output: String,
    },
    /// Manage the keys agents connect with (as `cc-listener keys` does on
    /// the listener's host).
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Print a shell completion script: `ccctl completions bash >
    /// /etc/bash_completion.d/ccctl` (also zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
    /// Read or replace a host's cron list.
    Cron {
        #[command(subcommand)]
        command: CronCommand,
    },
}

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
struct RunArgs {
    #[command(subcommand)]
    follow: Option<RunCommand>,
    /// Hosts to run on.
    hosts: Vec<String>,
    /// Also every agent carrying this tag (repeat: all of them).
    #[arg(long = "tag", value_name = "TAG")]
    tags: Vec<String>,
    /// At most this many hosts running at once; the next starts as one reports.
    #[arg(long)]
    batch: Option<u32>,
    /// Seconds before the job is stopped.
    #[arg(long, default_value_t = 3600)]
    timeout: u64,
    /// Root work: sign the job for each host with your key.
    #[arg(long)]
    system: bool,
    /// Your signing key (else key_file in ccctl.toml, else CC_KEY_FILE).
    #[arg(long)]
    key: Option<PathBuf>,
    /// How long the signature stays valid, in seconds (at most a day).
    #[arg(long, default_value_t = 3600)]
    valid_for: i64,
    /// Print the run and job ids and return without waiting.
    #[arg(long)]
    no_wait: bool,
    /// `table` (default) or `json`.
    #[arg(long, default_value = "table")]
    output: String,
    /// The program and its arguments, after `--`.
    #[arg(last = true)]
    command: Vec<String>,
}

#[derive(Debug, Subcommand)]
enum RunCommand {
    /// Where a run is now: one line per host.
    Status { id: String },
    /// Wait for a run to finish, then one line per host.
    Watch { id: String },
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
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
enum CronCommand {
    /// Print the list as `ID SCHEDULE COMMAND` lines.
    Get { host: String },
    /// Replace the list with a file of `ID SCHEDULE COMMAND` lines (`#`
    /// comments); every line is checked here first, and an error names it.
    Set {
        host: String,
        file: PathBuf,
        /// Root cron entries: sign the list with your key.
        #[arg(long)]
        system: bool,
        #[arg(long)]
        key: Option<PathBuf>,
    },
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    url: Option<String>,
    token_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
}

struct Api {
    url: String,
    token: String,
}

fn file_config() -> Result<FileConfig> {
    let Some(home) = std::env::var_os("HOME") else {
        return Ok(FileConfig::default());
    };
    let path = Path::new(&home).join(".config/croncommander/ccctl.toml");
    match std::fs::read_to_string(&path) {
        Ok(t) => toml::from_str(&t).with_context(|| format!("parsing {}", path.display())),
        Err(_) => Ok(FileConfig::default()),
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

impl Api {
    fn new(cli: &Cli, file: &FileConfig) -> Result<Self> {
        let url = cli
            .url
            .clone()
            .or_else(|| env("CC_URL"))
            .or_else(|| file.url.clone())
            .context("no listener URL: --url, CC_URL or url in ccctl.toml")?;
        let token_file = cli
            .token_file
            .clone()
            .or_else(|| env("CC_TOKEN_FILE").map(PathBuf::from))
            .or_else(|| file.token_file.clone())
            .context("no token: --token-file, CC_TOKEN_FILE or token_file in ccctl.toml")?;
        let token = std::fs::read_to_string(&token_file)
            .with_context(|| format!("reading {}", token_file.display()))?
            .trim()
            .to_owned();
        Ok(Self {
            url: url.trim_end_matches('/').to_owned(),
            token,
        })
    }

    /// A request to `path` under `/api/v1`, with the token.
    fn request(&self, method: &str, path: &str) -> ureq::Request {
        ureq::request(method, &format!("{}/api/v1{path}", self.url))
            .set("Authorization", &format!("Bearer {}", self.token))
    }

    /// Sends `req`; an error status becomes the listener's own message.
    fn send(req: ureq::Request, body: Option<&Value>) -> Result<ureq::Response> {
        let resp = match body {
            Some(b) => req.send_string(&b.to_string()),
            None => req.call(),
        };
        match resp {
            Ok(r) => Ok(r),
            Err(ureq::Error::Status(code, r)) => {
                let text = r.into_string().unwrap_or_default();
                let why = serde_json::from_str::<Value>(&text)
                    .ok()
                    .and_then(|v| v["error"].as_str().map(str::to_owned))
                    .unwrap_or(text);
                // Cleaned here, where the listener's text joins ours: the
                // error is printed line by line, and a line break of its
                // own would pass for one of ccctl's.
                bail!("the listener answered {code}: {}", term::clean(&why))
            }
            Err(e) => Err(e).context("reaching the listener"),
        }
    }

    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value> {
        let req = self.request(method, path).timeout(Duration::from_secs(30));
        Ok(serde_json::from_str(
            &Self::send(req, body)?.into_string()?,
        )?)
    }

    /// One page of a list and the cursor the listener gave for the next.
    fn page(&self, path: &str, cursor_header: &str) -> Result<(Vec<Value>, Option<String>)> {
        let req = self.request("GET", path).timeout(Duration::from_secs(60));
        let r = Self::send(req, None)?;
        let next = r.header(cursor_header).map(str::to_owned);
        Ok((serde_json::from_str(&r.into_string()?)?, next))
    }

    /// Every item of a paged list: follows `cursor_header` into `param`
    /// until the listener gives no cursor, or `enough` says so.
    fn get_all(&self, path: &str, cursor_header: &str, param: &str) -> Result<Vec<Value>> {
        self.get_until(path, cursor_header, param, |_| false)
    }

    fn get_until(
        &self,
        path: &str,
        cursor_header: &str,
        param: &str,
        mut enough: impl FnMut(&mut Vec<Value>) -> bool,
    ) -> Result<Vec<Value>> {
        let mut all = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let sep = if path.contains('?') { '&' } else { '?' };
            let page_path = match &cursor {
                Some(c) => format!("{path}{sep}{param}={c}"),
                None => path.to_owned(),
            };
            let (page, next) = self.page(&page_path, cursor_header)?;
            all.extend(page);
            // A cursor must move on, or the listener is not paging.
            if enough(&mut all) || next.is_none() || next == cursor {
                return Ok(all);
            }
            cursor = next;
        }
    }
}

fn key_path(given: Option<PathBuf>, file: &FileConfig) -> Result<PathBuf> {
    given
        .or_else(|| env("CC_KEY_FILE").map(PathBuf::from))
        .or_else(|| file.key_file.clone())
        .context("root work needs your signing key: --key, CC_KEY_FILE or key_file in ccctl.toml")
}

fn load_key(path: &Path) -> Result<ring::signature::Ed25519KeyPair> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(sign::key_pair_from_pem(&text)?)
}

fn nonce() -> Result<String> {
    let mut r = [0u8; 16];
    getrandom::fill(&mut r).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    Ok(sign::nonce(r))
}

fn keygen(out: &Path, name: &str) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let rng = ring::rand::SystemRandom::new();
    let doc = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng)
        .map_err(|_| anyhow::anyhow!("could not generate a key"))?;
    let key = ring::signature::Ed25519KeyPair::from_pkcs8(doc.as_ref())
        .map_err(|_| anyhow::anyhow!("the generated key does not load"))?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .with_context(|| format!("creating {} (it must not exist yet)", out.display()))?;
    f.write_all(sign::pem(doc.as_ref()).as_bytes())?;
    f.sync_all()?;
    outln!("{} {name}", sign::public_id(&key));
    Ok(())
}

/// A report's first line of output (stdout, else stderr) for a table: at
/// most 60 characters (its control characters are escaped with the rest
/// of the row, by `outln!`).
fn first_line(report: &Value) -> String {
    report["stdout"]
        .as_str()
        .filter(|s| !s.trim().is_empty())
        .or(report["stderr"].as_str())
        .unwrap_or("")
        .lines()
        .next()
        .unwrap_or("")
        .chars()
        .take(60)
        .collect()
}

/// One line per host: exit code, duration, first line of output.
fn summarize(jobs: &[(String, String, Value)], json_out: bool) -> bool {
    let ok = jobs.iter().all(|(_, _, j)| j["report"]["exitCode"] == 0);
    if json_out {
        let v: Vec<Value> = jobs
            .iter()
            .map(|(h, id, j)| json!({"host": h, "jobId": id, "status": j["status"], "report": j["report"]}))
            .collect();
        let _ = term::json(&v);
        return ok;
    }
    outln!(
        "{:<28} {:<8} {:>6} {:>9}  OUTPUT",
        "HOST",
        "STATUS",
        "EXIT",
        "MS"
    );
    for (h, _, j) in jobs {
        let r = &j["report"];
        let first = first_line(r);
        outln!(
            "{:<28} {:<8} {:>6} {:>9}  {}",
            h,
            j["status"].as_str().unwrap_or("?"),
            r["exitCode"].as_i64().map_or("-".into(), |c| c.to_string()),
            r["durationMs"]
                .as_u64()
                .map_or("-".into(), |d| d.to_string()),
            first
        );
        if let Some(w) = r["warning"].as_str() {
            outln!("{:<28} warning: {w}", "");
        }
    }
    ok
}

/// One `exec` statement per host — the hosts given and those carrying
/// every tag — signed here with the operator's key, each for its host.
fn sign_for_hosts(
    api: Option<&Api>,
    file: &FileConfig,
    args: &RunArgs,
) -> Result<Vec<sign::Signed>> {
    let (program, rest) = args
        .command
        .split_first()
        .context("no program given: HOST… | --tag T… -- PROGRAM ARGS…")?;
    ensure!(
        program.starts_with('/'),
        "{program}: root work names its program by absolute path (the signature covers the path, not a name the host looks up in PATH): for example /usr/bin/{program}"
    );
    let mut hosts = Vec::new();
    for h in &args.hosts {
        // Signed for the canonical (lowercase) name: the one hosts compare.
        hosts.push(
            cc_proto::Hostname::parse(h)
                .with_context(|| format!("host {h:?}"))?
                .to_string(),
        );
    }
    if !args.tags.is_empty() {
        let api = api.context("--tag needs the listener to find the hosts: give --url")?;
        hosts.extend(hosts_with_tags(api, &args.tags)?);
    }
    hosts.sort();
    hosts.dedup();
    ensure!(!hosts.is_empty(), "no host matches tags {:?}", args.tags);
    let key = load_key(&key_path(args.key.clone(), file)?)?;
    let mut statements = Vec::with_capacity(hosts.len());
    for host in hosts {
        let (not_before, expires_at) = sign::window(Timestamp::now(), args.valid_for);
        let st = ExecStatement {
            host,
            job_id: uuid::Uuid::new_v4().to_string(),
            program: program.clone(),
            args: rest.to_vec(),
            timeout: args.timeout,
            not_before,
            expires_at,
            nonce: nonce()?,
        };
        statements.push(sign::sign(&st, sign::EXEC_LABEL, &key)?);
    }
    Ok(statements)
}

/// Root work: the statements sent as one signed run, then followed like
/// any run.
fn system_run(api: &Api, file: &FileConfig, args: &RunArgs, json_out: bool) -> Result<bool> {
    let statements = sign_for_hosts(Some(api), file, args)?;
    let mut body = json!({ "signed": statements });
    if let Some(b) = args.batch {
        body["batch"] = json!(b);
    }
    follow_run(api, &body, args, json_out)
}

/// A job as a person reads it: what ran where, how it ended, then its
/// output verbatim.
fn print_job(j: &Value) {
    let text = |v: &Value| v.as_str().unwrap_or("-").to_owned();
    let args: Vec<String> = j["args"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| a.as_str().unwrap_or("").to_owned())
        .collect();
    outln!("job      {}", text(&j["jobId"]));
    outln!("host     {}", text(&j["hostname"]));
    outln!("command  {} {}", text(&j["command"]), args.join(" "));
    outln!("status   {}", text(&j["status"]));
    let r = &j["report"];
    if r.is_object() {
        outln!("exit     {}", r["exitCode"]);
        outln!(
            "ran as   {} (uid {})",
            text(&r["executingUser"]),
            r["executingUid"]
        );
        outln!("started  {}", text(&r["startTime"]));
        outln!("took     {} ms", r["durationMs"]);
        if let Some(w) = r["warning"].as_str() {
            outln!("warning  {w}");
        }
        for stream in ["stdout", "stderr"] {
            let out = r[stream].as_str().unwrap_or("");
            if !out.is_empty() {
                outln!("--- {stream} ---");
                term::verbatim(out);
            }
        }
    }
}

/// Whether the agent carries every tag in `tags`.
fn has_tags(agent: &Value, tags: &[String]) -> bool {
    tags.iter().all(|t| {
        agent["tags"]
            .as_array()
            .is_some_and(|have| have.iter().any(|h| h == t))
    })
}

/// `ccctl agents`: the table, with the count of agents that are root in
/// user mode above it, where it cannot be missed.
fn print_agents(api: &Api, tags: &[String], offline: bool) -> Result<bool> {
    let all = api.get_all("/agents", "x-cc-next-after", "after")?;
    let shown: Vec<&Value> = all
        .iter()
        .filter(|a| has_tags(a, tags) && !(offline && a["connected"] == true))
        .collect();
    let warned = shown.iter().filter(|a| a["warning"].is_string()).count();
    if warned > 0 {
        outln!(
            "WARNING: {warned} agent(s) run as root (UID 0) in user mode: every job they run runs as root"
        );
    }
    outln!(
        "{:<28} {:<7} {:<7} {:<6} {:<25} {:<22} TAGS",
        "HOST",
        "ONLINE",
        "MODE",
        "ROOT",
        "LAST HEARTBEAT",
        "CRON"
    );
    for x in shown {
        let tags: Vec<&str> = x["tags"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let cron = &x["cronStatus"];
        let cron = if cron.is_object() {
            let n = |k: &str| cron[k].as_array().map_or(0, Vec::len);
            format!("{} installed, {} refused", n("installed"), n("rejected"))
        } else {
            "-".to_owned()
        };
        outln!(
            "{:<28} {:<7} {:<7} {:<6} {:<25} {:<22} {}",
            x["hostname"].as_str().unwrap_or("?"),
            if x["connected"] == true { "yes" } else { "no" },
            x["executionMode"].as_str().unwrap_or("?"),
            if x["isRoot"] == true { "yes" } else { "no" },
            x["lastHeartbeat"].as_str().unwrap_or("-"),
            cron,
            tags.join(",")
        );
        if let Some(w) = x["warning"].as_str() {
            outln!("{:<28} WARNING: {w}", "");
        }
    }
    Ok(true)
}

/// `--since`: an age (`90s`, `30m`, `2h`, `7d`) before `now_ms`, or an
/// RFC 3339 time; in Unix milliseconds.
fn since_ms(text: &str, now_ms: i64) -> Result<i64> {
    let unit = |c: char| match c {
        's' => Some(1_000),
        'm' => Some(60_000),
        'h' => Some(3_600_000),
        'd' => Some(86_400_000),
        _ => None,
    };
    // The unit is ASCII, so the number is all but the last byte.
    let age = text
        .chars()
        .last()
        .and_then(unit)
        .and_then(|ms| Some((text[..text.len() - 1].parse::<i64>().ok()?, ms)));
    if let Some((n, ms)) = age {
        ensure!(n >= 0, "--since: an age is not negative");
        return Ok(now_ms - n.saturating_mul(ms));
    }
    Timestamp::parse("since", text)
        .map(Timestamp::unix_millis)
        .map_err(|_| anyhow::anyhow!("--since {text:?}: expected an age such as 30m, 2h or 7d, or an RFC 3339 time such as 2026-11-30T12:00:00Z"))
}

/// `ccctl reports`: newest first, following the listener's pages until
/// `limit` reports or one older than `since`.
fn print_reports(
    api: &Api,
    host: Option<&str>,
    job: Option<&str>,
    since: Option<&str>,
    limit: u32,
    json_out: bool,
) -> Result<bool> {
    ensure!((1..=100_000).contains(&limit), "--limit is 1 to 100000");
    let mut query = vec![format!("limit={}", limit.min(1000))];
    if let Some(h) = host {
        let h = cc_proto::Hostname::parse(h).with_context(|| format!("--host {h:?}"))?;
        query.push(format!("hostname={h}"));
    }
    if let Some(j) = job {
        cc_proto::JobId::parse(j).with_context(|| format!("--job {j:?}"))?;
        query.push(format!("jobId={j}"));
    }
    let since = since
        .map(|t| since_ms(t, Timestamp::now().unix_millis()))
        .transpose()?;
    let received = |r: &Value| {
        r["receivedAt"]
            .as_str()
            .and_then(|t| Timestamp::parse("receivedAt", t).ok())
            .map_or(i64::MIN, Timestamp::unix_millis)
    };
    let path = format!("/reports?{}", query.join("&"));
    let reports = api.get_until(&path, "x-cc-next-before", "before", |all| {
        let old = since.and_then(|s| all.iter().position(|r| received(r) < s));
        if let Some(i) = old {
            all.truncate(i);
        }
        all.truncate(limit as usize);
        old.is_some() || all.len() >= limit as usize
    })?;
    if json_out {
        term::json(&reports)?;
        return Ok(true);
    }
    outln!(
        "{:<24} {:<28} {:<24} {:<6} {:>5} {:>6}  OUTPUT",
        "RECEIVED",
        "HOST",
        "JOB",
        "KIND",
        "EXIT",
        "UID"
    );
    for r in &reports {
        let rep = &r["report"];
        outln!(
            "{:<24} {:<28} {:<24} {:<6} {:>5} {:>6}  {}",
            r["receivedAt"].as_str().unwrap_or("-"),
            r["hostname"].as_str().unwrap_or("?"),
            r["jobId"].as_str().unwrap_or("?"),
            r["kind"].as_str().unwrap_or("?"),
            rep["exitCode"]
                .as_i64()
                .map_or("-".into(), |c| c.to_string()),
            rep["executingUid"]
                .as_i64()
                .map_or("-".into(), |c| c.to_string()),
            first_line(rep)
        );
    }
    Ok(true)
}

/// `ccctl keys`: the listener's `keys` subcommand, through the API.
fn keys(api: &Api, command: &KeysCommand) -> Result<bool> {
    match command {
        KeysCommand::Add {
            name,
            hostname,
            tags,
        } => {
            let body = json!({"name": name, "hostname": hostname, "tags": tags});
            let k = api.call("POST", "/keys", Some(&body))?;
            outln!("{}", k["key"].as_str().context("no key in the answer")?);
            errln!(
                "key {name} added{}; it is shown only now",
                k["hostname"]
                    .as_str()
                    .map(|h| format!(" for {h}"))
                    .unwrap_or_default()
            );
        }
        KeysCommand::List => {
            outln!(
                "{:<24} {:<28} {:<25} {:<8} TAGS",
                "NAME",
                "HOSTNAME",
                "CREATED",
                "STATE"
            );
            for k in api
                .call("GET", "/keys", None)?
                .as_array()
                .into_iter()
                .flatten()
            {
                // `-`: not bound yet (the first registration's tags).
                let tags = k["tags"].as_array().map_or_else(
                    || "-".to_owned(),
                    |t| {
                        t.iter()
                            .filter_map(|t| t.as_str())
                            .collect::<Vec<_>>()
                            .join(",")
                    },
                );
                outln!(
                    "{:<24} {:<28} {:<25} {:<8} {}",
                    k["name"].as_str().unwrap_or("?"),
                    k["hostname"].as_str().unwrap_or("-"),
                    k["created"].as_str().unwrap_or("-"),
                    if k["revoked"] == true {
                        "revoked"
                    } else {
                        "active"
                    },
                    tags
                );
            }
        }
        KeysCommand::Retag { name, tags } => {
            cc_proto::JobId::parse(name).with_context(|| format!("key name {name:?}"))?;
            let tags: Vec<&str> = tags.split(',').filter(|t| !t.is_empty()).collect();
            let k = api.call("PUT", &format!("/keys/{name}/tags"), Some(&json!(tags)))?;
            errln!(
                "key {name}: tags {}; its agent must register with the same",
                k["tags"]
                    .as_array()
                    .map(|t| t
                        .iter()
                        .filter_map(|t| t.as_str())
                        .collect::<Vec<_>>()
                        .join(","))
                    .unwrap_or_default()
            );
        }
        KeysCommand::Revoke { name } => {
            cc_proto::JobId::parse(name).with_context(|| format!("key name {name:?}"))?;
            let req = api
                .request("DELETE", &format!("/keys/{name}"))
                .timeout(Duration::from_secs(30));
            Api::send(req, None)?;
            errln!("revoked {name}; an agent connected with it was disconnected");
        }
    }
    Ok(true)
}

/// Hostnames of the agents carrying every tag in `tags`.
fn hosts_with_tags(api: &Api, tags: &[String]) -> Result<Vec<String>> {
    let agents = api.get_all("/agents", "x-cc-next-after", "after")?;
    Ok(agents
        .iter()
        .filter(|a| has_tags(a, tags))
        .filter_map(|a| a["hostname"].as_str().map(str::to_owned))
        .collect())
}

/// One `POST /runs` for the hosts and tags given, then wait and print.
fn fan_out(api: &Api, args: &RunArgs, json_out: bool) -> Result<bool> {
    let (program, rest) = args
        .command
        .split_first()
        .context("no program given: ccctl run HOST… | --tag T… -- PROGRAM ARGS…")?;
    ensure!(
        !args.hosts.is_empty() || !args.tags.is_empty(),
        "give hosts, --tag, or both"
    );
    let mut body = json!({"hosts": args.hosts, "tags": args.tags, "command": program,
        "args": rest, "timeout": args.timeout});
    if let Some(b) = args.batch {
        body["batch"] = json!(b);
    }
    follow_run(api, &body, args, json_out)
}

/// Posts the run, then (unless `--no-wait`) follows it to the end on the
/// event stream and prints its table; Ctrl-C stops the waiting only.
fn follow_run(api: &Api, body: &Value, args: &RunArgs, json_out: bool) -> Result<bool> {
    let accepted = api.call("POST", "/runs", Some(body))?;
    let id = accepted["runId"]
        .as_str()
        .context("no runId in the answer")?
        .to_owned();
    if args.no_wait {
        outln!("run {id}");
        for j in accepted["jobs"].as_array().into_iter().flatten() {
            outln!(
                "{} {}",
                j["hostname"].as_str().unwrap_or("?"),
                j["jobId"].as_str().unwrap_or("?")
            );
        }
        return Ok(true);
    }
    errln!("run {id}: follow it later with `ccctl run status {id}` or `ccctl run watch {id}`");
    stop_waiting_on_ctrl_c(&id);
    wait_run(api, &id, args.timeout)?;
    run_table(api, &id, json_out)
}

/// Ctrl-C while waiting for a run: the jobs go on (nothing is sent to the
/// listener); say how to follow the run, and exit 130 as a shell expects.
fn stop_waiting_on_ctrl_c(id: &str) {
    let msg = format!(
        "ccctl: stopped waiting; run {id} goes on. Follow it with `ccctl run status {id}` or `ccctl run watch {id}`"
    );
    // The handler runs on its own thread, not in signal context. One run
    // is waited for per process, so a second install cannot happen.
    let _ = ctrlc::set_handler(move || {
        // A line of its own, after any progress line.
        term::err_line("");
        term::err_line(&msg);
        std::process::exit(130);
    });
}

/// Waits until every job of the run has ended (done, lost or expired),
/// reading the listener's live event stream for the run — from its first
/// event, so nothing that happened before is missed, and again from the
/// last event seen if the stream drops. On a terminal, a progress line on
/// stderr.
fn wait_run(api: &Api, id: &str, timeout: u64) -> Result<()> {
    use std::collections::HashMap;
    use std::io::{BufRead, IsTerminal};
    let tty = std::io::stderr().is_terminal();
    let started = Instant::now();
    let limit = started + Duration::from_secs(timeout + 120);
    let run = api.call("GET", &format!("/runs/{id}"), None)?;
    let mut state: HashMap<String, (String, Option<i64>)> = run["hosts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|h| {
            let status = h["status"].as_str().unwrap_or("").to_owned();
            Some((
                h["jobId"].as_str()?.to_owned(),
                (status, h["exitCode"].as_i64()),
            ))
        })
        .collect();
    let total = state.len();
    let ended = |s: &str| matches!(s, "done" | "lost" | "expired");
    // Over already (its events may have been pruned since).
    if state.values().all(|(st, _)| ended(st)) {
        return Ok(());
    }
    let mut last = 0i64;
    loop {
        // No timeout: the stream stays open while the run goes on.
        let req = api
            .request("GET", &format!("/events?run={id}"))
            .set("Last-Event-ID", &last.to_string());
        let resp = Api::send(req, None).context("the listener's event stream")?;
        for line in std::io::BufReader::new(resp.into_reader()).lines() {
            let Ok(line) = line else { break };
            let Some(data) = line.strip_prefix("data:") else {
                continue;
            };
            let Ok(e) = serde_json::from_str::<Value>(data.trim()) else {
                continue;
            };
            last = e["id"].as_i64().unwrap_or(last);
            if let (Some(job), Some(status)) = (e["jobId"].as_str(), e["status"].as_str()) {
                state.insert(job.to_owned(), (status.to_owned(), e["exitCode"].as_i64()));
            }
            let count = |s: &str| state.values().filter(|(st, _)| st == s).count();
            let failed = state
                .values()
                .filter(|(st, code)| st == "done" && *code != Some(0))
                .count();
            if tty {
                term::progress(&format!(
                    "{} done ({failed} failed), {} lost, {} expired of {total}; {:.1} s",
                    count("done"),
                    count("lost"),
                    count("expired"),
                    started.elapsed().as_secs_f64()
                ));
            }
            if state.values().all(|(st, _)| ended(st)) {
                if tty {
                    term::progress_done();
                }
                return Ok(());
            }
            if Instant::now() > limit {
                bail!("gave up waiting; follow with `ccctl run watch {id}`");
            }
        }
        // The stream ended (listener restart, network): resume from `last`.
        if Instant::now() > limit {
            bail!("gave up waiting; follow with `ccctl run watch {id}`");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The run's table (or JSON), from each job; true when every host succeeded.
fn run_table(api: &Api, id: &str, json_out: bool) -> Result<bool> {
    let r = api.call("GET", &format!("/runs/{id}"), None)?;
    let mut jobs = Vec::new();
    for h in r["hosts"].as_array().into_iter().flatten() {
        let job_id = h["jobId"].as_str().context("a host without jobId")?;
        let j = api.call("GET", &format!("/jobs/{job_id}"), None)?;
        jobs.push((
            h["hostname"].as_str().unwrap_or("?").to_owned(),
            job_id.to_owned(),
            j,
        ));
    }
    Ok(summarize(&jobs, json_out))
}

/// The first `n` whitespace-separated words of `line` and the rest of it,
/// verbatim (a command keeps its own spacing); `None` when nothing is left.
fn words_then_rest(line: &str, n: usize) -> Option<(Vec<&str>, &str)> {
    let mut rest = line.trim();
    let mut words = Vec::with_capacity(n);
    for _ in 0..n {
        let end = rest.find(char::is_whitespace)?;
        words.push(&rest[..end]);
        rest = rest[end..].trim_start();
    }
    (!rest.is_empty()).then_some((words, rest))
}

/// `ID SCHEDULE COMMAND` lines; the schedule is five fields or one `@`
/// word; blank lines and `#` comments are skipped (the listener stores the
/// entries, not the comments). Every entry is validated as the agent will
/// (`cc-proto`), and an error names its line.
fn parse_cron_file(text: &str) -> Result<Vec<CronEntry>> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields = if line
            .split_whitespace()
            .nth(1)
            .is_some_and(|w| w.starts_with('@'))
        {
            1
        } else {
            5
        };
        let (words, command) = words_then_rest(line, 1 + fields)
            .with_context(|| format!("line {}: expected ID SCHEDULE COMMAND: {line:?}", n + 1))?;
        let entry = CronEntry {
            id: words[0].to_owned(),
            schedule: words[1..].join(" "),
            command: command.to_owned(),
        };
        entry
            .validate()
            .with_context(|| format!("line {}: {line:?}", n + 1))?;
        out.push(entry);
    }
    Ok(out)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = (|| -> Result<bool> {
        let file = file_config()?;
        match &cli.command {
            Command::Keygen { out, name } => keygen(out, name).map(|()| true),
            Command::Run(args) => {
                let api = Api::new(&cli, &file)?;
                let json_out = args.output == "json";
                match &args.follow {
                    Some(RunCommand::Status { id }) => run_table(&api, id, json_out),
                    Some(RunCommand::Watch { id }) => {
                        stop_waiting_on_ctrl_c(id);
                        wait_run(&api, id, args.timeout)?;
                        run_table(&api, id, json_out)
                    }
                    None if args.system => system_run(&api, &file, args, json_out),
                    None => fan_out(&api, args, json_out),
                }
            }
            Command::Sign(args) => {
                let api = if args.tags.is_empty() {
                    None
                } else {
                    Some(Api::new(&cli, &file)?)
                };
                let signed = sign_for_hosts(api.as_ref(), &file, args)?;
                term::json(&signed)?;
                Ok(true)
            }
            Command::Job { id, output } => {
                let j = Api::new(&cli, &file)?.call("GET", &format!("/jobs/{id}"), None)?;
                if output == "json" {
                    term::json(&j)?;
                } else {
                    print_job(&j);
                }
                Ok(j["report"]["exitCode"] == 0)
            }
            Command::Agents { tags, offline } => {
                print_agents(&Api::new(&cli, &file)?, tags, *offline)
            }
            Command::Reports {
                host,
                job,
                since,
                limit,
                output,
            } => print_reports(
                &Api::new(&cli, &file)?,
                host.as_deref(),
                job.as_deref(),
                since.as_deref(),
                *limit,
                output == "json",
            ),
            Command::Keys { command } => keys(&Api::new(&cli, &file)?, command),
            Command::Completions { shell } => {
                use clap::CommandFactory;
                clap_complete::generate(
                    *shell,
                    &mut Cli::command(),
                    "ccctl",
                    &mut std::io::stdout(),
                );
                Ok(true)
            }
            Command::Cron { command } => match command {
                CronCommand::Get { host } => {
                    let list = Api::new(&cli, &file)?.call(
                        "GET",
                        &format!("/agents/{host}/cron"),
                        None,
                    )?;
                    for e in list.as_array().into_iter().flatten() {
                        outln!(
                            "{} {} {}",
                            e["id"].as_str().unwrap_or(""),
                            e["schedule"].as_str().unwrap_or(""),
                            e["command"].as_str().unwrap_or("")
                        );
                    }
                    Ok(true)
                }
                CronCommand::Set {
                    host,
                    file: path,
                    system,
                    key,
                } => {
                    let text = std::fs::read_to_string(path)
                        .with_context(|| format!("reading {}", path.display()))?;
                    let entries = parse_cron_file(&text)?;
                    let body = if *system {
                        for e in &entries {
                            let program = e.validate()?.command.program().to_owned();
                            ensure!(
                                program.starts_with('/'),
                                "entry {}: {program}: root entries name their program by absolute path (the signature covers the path, not a name the host looks up in PATH)",
                                e.id
                            );
                        }
                        let k = load_key(&key_path(key.clone(), &file)?)?;
                        let (not_before, expires_at) =
                            sign::window(Timestamp::now(), sign::MAX_VALIDITY_SECS);
                        let st = CronStatement {
                            host: cc_proto::Hostname::parse(host)
                                .with_context(|| format!("host {host:?}"))?
                                .to_string(),
                            generation: u64::try_from(Timestamp::now().unix_millis()).unwrap_or(0),
                            entries,
                            not_before,
                            expires_at,
                            nonce: nonce()?,
                        };
                        json!({"signed": sign::sign(&st, sign::CRON_LABEL, &k)?})
                    } else {
                        serde_json::to_value(&entries)?
                    };
                    let stored = Api::new(&cli, &file)?.call(
                        "PUT",
                        &format!("/agents/{host}/cron"),
                        Some(&body),
                    )?;
                    outln!(
                        "{} entries stored for {host}",
                        stored.as_array().map_or(0, Vec::len)
                    );
                    Ok(true)
                }
            },
        }
    })();
    match result {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cron_files_parse_line_by_line_and_errors_name_the_line() {
        let ok = parse_cron_file(
            "# backups\nnightly 0 3 * * * /usr/local/sbin/backup --full\n\nhourly @hourly /bin/true\n",
        )
        .unwrap();
        assert_eq!(ok.len(), 2);
        assert_eq!(ok[0].schedule, "0 3 * * *");
        assert_eq!(ok[0].command, "/usr/local/sbin/backup --full");
        assert_eq!(ok[1].schedule, "@hourly");
        let e = parse_cron_file("a @daily /bin/true\nbad 61 * * * * /bin/true\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("line 2"), "{e}");
        let e = parse_cron_file("short 0 3 *\n").unwrap_err().to_string();
        assert!(e.starts_with("line 1"), "{e}");
        let e = parse_cron_file("# c\nfive 0 3 * * *\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("line 2: expected ID SCHEDULE COMMAND"), "{e}");
        // A command keeps its own spacing; the schedule is normalised.
        let ok = parse_cron_file("  s  0  3 * * *   /bin/echo 'a  b'  \n").unwrap();
        assert_eq!(ok[0].schedule, "0 3 * * *");
        assert_eq!(ok[0].command, "/bin/echo 'a  b'");
    }

    #[test]
    fn since_takes_an_age_or_a_time() {
        let now = 1_000_000_000_000;
        assert_eq!(since_ms("90s", now).unwrap(), now - 90_000);
        assert_eq!(since_ms("30m", now).unwrap(), now - 1_800_000);
        assert_eq!(since_ms("2h", now).unwrap(), now - 7_200_000);
        assert_eq!(since_ms("7d", now).unwrap(), now - 604_800_000);
        assert_eq!(
            since_ms("2026-11-30T12:00:00Z", now).unwrap(),
            1_796_040_000_000
        );
        for bad in ["", "h", "-3h", "3w", "yesterday", "2026-13-01T00:00:00Z"] {
            let e = since_ms(bad, now).unwrap_err().to_string();
            assert!(e.contains("--since"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn a_table_line_never_carries_a_control_character() {
        let r = json!({"stdout": "\u{1b}[31mred\u{1b}[0m\rover\nsecond", "stderr": ""});
        let line = term::clean(&first_line(&r)).into_owned();
        assert!(!line.chars().any(char::is_control), "{line:?}");
        assert!(line.starts_with("\\u{1b}[31mred"), "{line:?}");
        assert!(line.ends_with("\\rover"), "the first line only: {line:?}");
        let r = json!({"stdout": " \n", "stderr": "boom\n"});
        assert_eq!(first_line(&r), "boom");
        let long = json!({"stdout": "x".repeat(100)});
        assert_eq!(first_line(&long).len(), 60);
    }
}
