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

/// `listener_url`: one URL, or a list tried in order.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Urls {
    One(String),
    Many(Vec<String>),
}

/// Listener URLs an agent may be given.
pub(crate) const MAX_LISTENERS: usize = 16;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    listener_url: Option<Urls>,
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

/// One listener URL, checked, and whether it speaks TLS (`wss://`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Listener {
    pub(crate) url: String,
    pub(crate) tls: bool,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    /// The file it came from (cron lines name it).
    pub(crate) path: PathBuf,
    /// Where to connect, in the order they are tried (at least one).
    pub(crate) listeners: Vec<Listener>,
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
        Self::load_with(path, |name| std::env::var(name).ok())
    }

    /// [`Config::load`] with the environment given: `CC_LISTENER_URL` and
    /// `CC_API_KEY_FILE` override the file when set and not empty.
    fn load_with(path: &Path, getenv: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let file: File =
            toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        let env = |name: &str| getenv(name).filter(|v| !v.is_empty());
        // The environment's list is comma-separated.
        let urls: Vec<String> = match (env("CC_LISTENER_URL"), file.listener_url) {
            (Some(v), _) => v.split(',').map(|u| u.trim().to_owned()).collect(),
            (None, Some(Urls::One(u))) => vec![u],
            (None, Some(Urls::Many(list))) => list,
            (None, None) => bail!("listener_url is not set (config file or CC_LISTENER_URL)"),
        };
        ensure!(
            !urls.is_empty() && urls.len() <= MAX_LISTENERS,
            "listener_url must hold 1 to {MAX_LISTENERS} URLs, not {}",
            urls.len()
        );
        let api_key_file = env("CC_API_KEY_FILE")
            .map(PathBuf::from)
            .or(file.api_key_file)
            .context("api_key_file is not set (config file or CC_API_KEY_FILE)")?;
        let mut listeners: Vec<Listener> = Vec::with_capacity(urls.len());
        for url in urls {
            ensure!(
                !listeners.iter().any(|l| l.url == url),
                "listener_url lists {url:?} twice"
            );
            let tls = check_url(&url, file.insecure_allow_plaintext)?;
            listeners.push(Listener { url, tls });
        }
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
            listeners,
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

    /// Whether the key comes on standard input (`api_key_file = "-"`).
    pub(crate) fn key_on_stdin(&self) -> bool {
        self.api_key_file.as_os_str() == "-"
    }

    /// Reads the API key: from standard input when `api_key_file` is `-`
    /// (the packaged unit opens a root-only file there), else from the
    /// file, refusing one that group or others may read.
    pub(crate) fn read_api_key(&self) -> Result<String> {
        if self.key_on_stdin() {
            return read_key_from_stdin();
        }
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
        parse_key(&text, &format!("api_key_file {}", path.display()))
    }
}

/// The most a key on standard input may hold.
const MAX_KEY_BYTES: u64 = 4096;

/// Reads the key from standard input once, then points standard input at
/// `/dev/null`: the descriptor that held a root-only file is gone before
/// any job starts, and the key lives in this process's memory only.
fn read_key_from_stdin() -> Result<String> {
    use std::io::Read as _;
    use std::os::fd::AsFd as _;
    let stdin = std::io::stdin();
    let st = nix::sys::stat::fstat(stdin.as_fd())
        .context("api_key_file is \"-\" but standard input is closed")?;
    use nix::sys::stat::SFlag;
    let kind = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
    ensure!(
        kind == SFlag::S_IFREG || kind == SFlag::S_IFIFO,
        "api_key_file is \"-\": standard input must be the key file (systemd: \
         StandardInput=file:/etc/croncommander/agent.key) or a pipe, not a terminal or device"
    );
    if kind == SFlag::S_IFREG {
        let mode = st.st_mode & 0o777;
        ensure!(
            mode & 0o077 == 0,
            "the key file on standard input has mode {mode:04o}: group or others can read it; chmod 600 it"
        );
    }
    let mut text = String::new();
    stdin
        .lock()
        .take(MAX_KEY_BYTES)
        .read_to_string(&mut text)
        .context("reading the key from standard input")?;
    let null = std::fs::File::open("/dev/null").context("opening /dev/null")?;
    nix::unistd::dup2_stdin(&null).context("closing the key's descriptor")?;
    parse_key(&text, "the key on standard input")
}

/// One key: printable ASCII, surrounding white space trimmed.
fn parse_key(text: &str, from: &str) -> Result<String> {
    let key = text.trim().to_owned();
    ensure!(!key.is_empty(), "{from} is empty");
    ensure!(
        key.bytes().all(|b| b.is_ascii_graphic()),
        "{from} holds something that is not a key"
    );
    Ok(key)
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
    use std::os::unix::fs::PermissionsExt;

    /// A fresh directory for one test, removed at the end.
    struct Dir(PathBuf);
    impl Dir {
        fn new(name: &str) -> Self {
            let p = std::env::temp_dir().join(format!(
                "cc-agent-config-{name}-{}-{}",
                std::process::id(),
                uuid::Uuid::new_v4()
            ));
            fs_create(&p);
            Self(p)
        }
        fn write(&self, name: &str, text: &str, mode: u32) -> PathBuf {
            let p = self.0.join(name);
            std::fs::write(&p, text).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            p
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    fn fs_create(p: &Path) {
        std::fs::create_dir_all(p).unwrap();
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn config(d: &Dir, extra: &str) -> PathBuf {
        let key = d.0.join("key");
        d.write(
            "agent.toml",
            &format!(
                "listener_url = \"ws://127.0.0.1:8081/agent\"\napi_key_file = {key:?}\nhostname = \"h\"\n{extra}"
            ),
            0o600,
        )
    }

    fn load_err(d: &Dir, extra: &str) -> String {
        format!(
            "{:#}",
            Config::load_with(&config(d, extra), no_env).unwrap_err()
        )
    }

    /// Each bound is accepted at its edge and refused one past it.
    #[test]
    fn numeric_settings_are_bounded_at_their_edges() {
        let d = Dir::new("bounds");
        for ok in [
            "heartbeat_interval_secs = 1",
            "heartbeat_interval_secs = 3600",
            "max_concurrent_jobs = 1",
            "max_concurrent_jobs = 256",
            "drain_timeout_secs = 0",
            "drain_timeout_secs = 3600",
        ] {
            assert!(Config::load_with(&config(&d, ok), no_env).is_ok(), "{ok}");
        }
        let c = Config::load_with(
            &config(
                &d,
                "max_concurrent_jobs = 7\ndrain_timeout_secs = 9\nheartbeat_interval_secs = 11",
            ),
            no_env,
        )
        .unwrap();
        assert_eq!(c.max_concurrent_jobs, 7);
        assert_eq!(c.drain_timeout, Duration::from_secs(9));
        assert_eq!(c.heartbeat_interval, Duration::from_secs(11));
        for (bad, says) in [
            (
                "heartbeat_interval_secs = 0",
                "heartbeat_interval_secs must be 1 to 3600",
            ),
            (
                "heartbeat_interval_secs = 3601",
                "heartbeat_interval_secs must be 1 to 3600",
            ),
            (
                "max_concurrent_jobs = 0",
                "max_concurrent_jobs must be 1 to 256",
            ),
            (
                "max_concurrent_jobs = 257",
                "max_concurrent_jobs must be 1 to 256",
            ),
            (
                "drain_timeout_secs = 3601",
                "drain_timeout_secs must be 0 to 3600",
            ),
            ("unknown_key = 1", "unknown field"),
            ("hostname = \"a/b\"", "hostname"),
        ] {
            let e = load_err(&d, bad);
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    /// The environment overrides the file only when set and not empty.
    #[test]
    fn the_environment_overrides_the_file_when_not_empty() {
        let d = Dir::new("env");
        let path = config(&d, "");
        let c = Config::load_with(&path, |_| Some(String::new())).unwrap();
        assert_eq!(
            c.listeners[0].url, "ws://127.0.0.1:8081/agent",
            "an empty variable is unset"
        );
        assert_eq!(c.api_key_file, d.0.join("key"));
        let c = Config::load_with(&path, |name| match name {
            "CC_LISTENER_URL" => Some("wss://cc.example/agent".into()),
            "CC_API_KEY_FILE" => Some("/other/key".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(
            c.listeners,
            [Listener {
                url: "wss://cc.example/agent".into(),
                tls: true
            }]
        );
        assert_eq!(c.api_key_file, PathBuf::from("/other/key"));
        // Neither file nor environment: the error names both.
        let bare = d.write("bare.toml", "hostname = \"h\"\n", 0o600);
        let e = format!("{:#}", Config::load_with(&bare, no_env).unwrap_err());
        assert!(
            e.contains("listener_url is not set") && e.contains("CC_LISTENER_URL"),
            "{e}"
        );
        let only_url = d.write(
            "url.toml",
            "listener_url = \"ws://127.0.0.1/agent\"\n",
            0o600,
        );
        let e = format!("{:#}", Config::load_with(&only_url, no_env).unwrap_err());
        assert!(e.contains("api_key_file is not set"), "{e}");
    }

    /// `listener_url` is one URL or a list (the environment's: commas),
    /// each checked like one; 1 to 16 of them, none twice.
    #[test]
    fn listener_url_may_be_a_list_tried_in_order() {
        let d = Dir::new("urls");
        let key = d.0.join("key");
        let with = |urls: &str| {
            let path = d.write(
                "urls.toml",
                &format!("listener_url = {urls}\napi_key_file = {key:?}\nhostname = \"h\"\n"),
                0o600,
            );
            Config::load_with(&path, no_env)
        };
        let c = with(r#"["ws://127.0.0.1:1/agent", "wss://b.example/agent"]"#).unwrap();
        let got: Vec<(&str, bool)> = c
            .listeners
            .iter()
            .map(|l| (l.url.as_str(), l.tls))
            .collect();
        assert_eq!(
            got,
            [
                ("ws://127.0.0.1:1/agent", false),
                ("wss://b.example/agent", true)
            ]
        );
        let sixteen: Vec<String> = (0..16)
            .map(|i| format!("\"wss://h{i}.example/agent\""))
            .collect();
        assert_eq!(
            with(&format!("[{}]", sixteen.join(",")))
                .unwrap()
                .listeners
                .len(),
            16
        );
        for (bad, says) in [
            ("[]", "1 to 16 URLs, not 0"),
            (
                &format!("[{}, \"wss://x.example/agent\"]", sixteen.join(",")) as &str,
                "not 17",
            ),
            (
                r#"["wss://a.example/agent", "wss://a.example/agent"]"#,
                "twice",
            ),
            (
                r#"["wss://a.example/agent", "ws://10.0.0.1/agent"]"#,
                "not loopback",
            ),
            (
                r#"["wss://a.example/agent", "http://a.example/"]"#,
                "not ws or wss",
            ),
        ] {
            let e = format!("{:#}", with(bad).unwrap_err());
            assert!(e.contains(says), "{bad}: {e}");
        }
        let path = config(&d, "");
        let c = Config::load_with(&path, |name| {
            (name == "CC_LISTENER_URL")
                .then(|| "wss://a.example/agent, wss://b.example/agent".into())
        })
        .unwrap();
        let urls: Vec<&str> = c.listeners.iter().map(|l| l.url.as_str()).collect();
        assert_eq!(urls, ["wss://a.example/agent", "wss://b.example/agent"]);
    }

    /// The key file: only its owner may read it; it must hold one key.
    #[test]
    fn the_api_key_file_is_private_and_holds_a_key() {
        let d = Dir::new("key");
        let c = Config::load_with(&config(&d, ""), no_env).unwrap();
        d.write("key", "cck_0123abcd\n", 0o600);
        assert_eq!(c.read_api_key().unwrap(), "cck_0123abcd");
        d.write("key", "cck_0123abcd\n", 0o400);
        assert_eq!(c.read_api_key().unwrap(), "cck_0123abcd");
        for mode in [0o640, 0o604, 0o660, 0o644, 0o610, 0o601] {
            d.write("key", "cck_0123abcd\n", mode);
            let e = c.read_api_key().unwrap_err().to_string();
            assert!(e.contains("group or others can read it"), "{mode:o}: {e}");
        }
        for (text, says) in [
            ("\n", "is empty"),
            ("", "is empty"),
            ("cck_01 23\n", "not a key"),
            ("cck_é\n", "not a key"),
        ] {
            d.write("key", text, 0o600);
            let e = c.read_api_key().unwrap_err().to_string();
            assert!(e.contains(says), "{text:?}: {e}");
        }
        std::fs::remove_file(d.0.join("key")).unwrap();
        assert!(c.read_api_key().is_err(), "a missing key file");
    }

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
