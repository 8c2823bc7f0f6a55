//! The agent's configuration: TOML at `/etc/croncommander/agent.toml` (or
//! `--config`), with `CC_LISTENER_URL` and `CC_API_KEY_FILE` overriding the
//! file. Everything is checked here, once, before anything connects.

use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use cc_proto::wire::ExecutionMode;
use cc_proto::{Hostname, Tag};
use serde::Deserialize;

pub(crate) const DEFAULT_CONFIG: &str = "/etc/croncommander/agent.toml";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    listener_url: Option<String>,
    api_key_file: Option<PathBuf>,
    hostname: Option<String>,
    #[serde(default)]
    tags: Vec<String>,
    execution_mode: Option<ExecutionMode>,
    heartbeat_interval_secs: Option<u64>,
    state_dir: Option<PathBuf>,
    helper_socket: Option<PathBuf>,
    max_concurrent_jobs: Option<usize>,
    drain_timeout_secs: Option<u64>,
    #[serde(default)]
    insecure_allow_plaintext: bool,
    ca_file: Option<PathBuf>,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    /// The file it came from (cron lines name it).
    pub(crate) path: PathBuf,
    pub(crate) listener_url: String,
    pub(crate) tls: bool,
    pub(crate) api_key_file: PathBuf,
    pub(crate) hostname: Hostname,
    pub(crate) tags: Vec<Tag>,
    pub(crate) execution_mode: ExecutionMode,
    pub(crate) heartbeat_interval: Duration,
    pub(crate) state_dir: PathBuf,
    /// Where cc-privhelper listens (system mode).
    pub(crate) helper_socket: PathBuf,
    pub(crate) max_concurrent_jobs: usize,
    /// How long running jobs may go on once the agent is asked to stop.
    pub(crate) drain_timeout: Duration,
    pub(crate) ca_file: Option<PathBuf>,
}

impl Config {
    pub(crate) fn load(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let file: File =
            toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let listener_url = env("CC_LISTENER_URL")
            .or(file.listener_url)
            .context("listener_url is not set (config file or CC_LISTENER_URL)")?;
        let api_key_file = env("CC_API_KEY_FILE")
            .map(PathBuf::from)
            .or(file.api_key_file)
            .context("api_key_file is not set (config file or CC_API_KEY_FILE)")?;
        let tls = check_url(&listener_url, file.insecure_allow_plaintext)?;
        let hostname = match file.hostname {
            Some(h) => h,
            None => nix::unistd::gethostname()
                .context("reading the system hostname")?
                .into_string()
                .map_err(|_| anyhow::anyhow!("the system hostname is not UTF-8"))?,
        };
        let hostname = Hostname::parse(&hostname).context("hostname")?;
        let tags = Tag::parse_all(&file.tags).context("tags")?;
        let heartbeat = file.heartbeat_interval_secs.unwrap_or(60);
        ensure!(
            (1..=3600).contains(&heartbeat),
            "heartbeat_interval_secs must be 1 to 3600"
        );
        let max_jobs = file.max_concurrent_jobs.unwrap_or(4);
        ensure!(
            (1..=256).contains(&max_jobs),
            "max_concurrent_jobs must be 1 to 256"
        );
        let drain = file.drain_timeout_secs.unwrap_or(30);
        ensure!(drain <= 3600, "drain_timeout_secs must be 0 to 3600");
        let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
        Ok(Self {
            path,
            listener_url,
            tls,
            api_key_file,
            hostname,
            tags,
            execution_mode: file.execution_mode.unwrap_or(ExecutionMode::User),
            heartbeat_interval: Duration::from_secs(heartbeat),
            state_dir: file
                .state_dir
                .unwrap_or_else(|| PathBuf::from("/var/lib/croncommander")),
            helper_socket: file
                .helper_socket
                .unwrap_or_else(|| PathBuf::from("/run/croncommander/helper.sock")),
            max_concurrent_jobs: max_jobs,
            drain_timeout: Duration::from_secs(drain),
            ca_file: file.ca_file,
        })
    }

    /// Reads the API key, refusing a file that group or others may read.
    pub(crate) fn read_api_key(&self) -> Result<String> {
        let path = &self.api_key_file;
        let meta =
            std::fs::metadata(path).with_context(|| format!("api_key_file {}", path.display()))?;
        let mode = meta.mode() & 0o777;
        if mode & 0o077 != 0 {
            bail!(
                "api_key_file {} has mode {mode:04o}: group or others can read it; chmod 600 it",
                path.display()
            );
        }
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let key = text.trim().to_owned();
        ensure!(!key.is_empty(), "api_key_file {} is empty", path.display());
        ensure!(
            key.bytes().all(|b| b.is_ascii_graphic()),
            "api_key_file {} holds something that is not a key",
            path.display()
        );
        Ok(key)
    }
}

/// `ws://` only to a loopback host, unless the operator says otherwise.
/// Returns whether the URL is `wss://`.
///
/// The URL is parsed by the parser the WebSocket client uses (`http::Uri`),
/// so the host checked is the host it connects to; userinfo is refused, as
/// it only serves to make a URL read as a different host than it is.
fn check_url(url: &str, insecure_allow_plaintext: bool) -> Result<bool> {
    use tokio_tungstenite::tungstenite::http::Uri;
    let uri: Uri = url
        .parse()
        .with_context(|| format!("listener_url {url:?} is not a URL"))?;
    let scheme = uri
        .scheme_str()
        .context("listener_url has no scheme (ws:// or wss://)")?;
    let authority = uri.authority().context("listener_url has no host")?;
    let host = authority.host().trim_matches(['[', ']']);
    ensure!(!host.is_empty(), "listener_url has no host");
    ensure!(
        !authority.as_str().contains('@'),
        "listener_url {url:?} has a user name or password before '@': it connects to {host:?}; \
         write the listener's address alone (the key goes in api_key_file)"
    );
    match scheme {
        "wss" => Ok(true),
        "ws" => {
            let loopback =
                host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
            if !loopback && !insecure_allow_plaintext {
                bail!(
                    "listener_url {url} is plaintext ws:// to {host:?}, which is not loopback; use wss://, or set insecure_allow_plaintext = true"
                );
            }
            Ok(false)
        }
        other => bail!("listener_url scheme {other:?} is not ws or wss"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plaintext_is_for_loopback_only() {
        assert!(!check_url("ws://127.0.0.1:8081/agent", false).unwrap());
        assert!(!check_url("ws://localhost:8081/agent", false).unwrap());
        assert!(!check_url("ws://[::1]:8081/agent", false).unwrap());
        assert!(check_url("wss://cc.example.com/agent", false).unwrap());
        let e = check_url("ws://cc.example.com:8081/agent", false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("insecure_allow_plaintext"), "{e}");
        assert!(check_url("ws://10.0.0.5:8081/agent", true).is_ok());
        assert!(check_url("http://127.0.0.1/agent", false).is_err());
    }

    /// The host checked is the host the WebSocket client connects to: a
    /// URL with userinfo whose text starts like a loopback address is
    /// refused, and the message names where it would really go.
    #[test]
    fn userinfo_cannot_disguise_the_host() {
        for url in [
            "ws://127.0.0.1:x@elsewhere/agent",
            "ws://127.0.0.1:8081@elsewhere:8081/agent",
            "ws://user@elsewhere/agent",
            "wss://127.0.0.1@elsewhere/agent",
        ] {
            let e = check_url(url, false).unwrap_err().to_string();
            assert!(e.contains("elsewhere"), "{url}: {e}");
            assert!(e.contains("user name or password"), "{url}: {e}");
        }
        // Even with plaintext allowed: a key must not go to a disguised host.
        assert!(check_url("ws://127.0.0.1:x@elsewhere/agent", true).is_err());
        for url in ["ws://", "ws:///agent", "ws://:8081/agent", "not a url"] {
            assert!(check_url(url, false).is_err(), "{url}");
        }
    }
}
