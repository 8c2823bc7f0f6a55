//! The listener's operator API: where it is and its token (flags, then
//! the environment, then `ccctl.toml`), and the HTTP calls to it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail, ensure};
use serde::Deserialize;
use serde_json::Value;

use crate::cli::Cli;
use crate::term::{self};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileConfig {
    pub(crate) url: Option<String>,
    pub(crate) token_file: Option<PathBuf>,
    pub(crate) key_file: Option<PathBuf>,
    pub(crate) ca_file: Option<PathBuf>,
    /// Where it was read from (none: there was no file).
    #[serde(skip)]
    pub(crate) path: Option<PathBuf>,
}

pub(crate) struct Api {
    pub(crate) url: String,
    pub(crate) token: String,
    agent: ureq::Agent,
}

/// `~/.config/croncommander/ccctl.toml`, when `HOME` is set.
pub(crate) fn config_path() -> Option<PathBuf> {
    std::env::var_os("HOME").map(|home| Path::new(&home).join(".config/croncommander/ccctl.toml"))
}

/// `~` or `~/…` made absolute with `$HOME`, as a shell would have done
/// for a flag (a path in ccctl.toml or the environment has no shell).
pub(crate) fn expand_tilde(path: &Path) -> PathBuf {
    let home = std::env::var_os("HOME").filter(|h| !h.is_empty());
    match (home, path.strip_prefix("~")) {
        (Some(home), Ok(rest)) => Path::new(&home).join(rest),
        _ => path.to_owned(),
    }
}

pub(crate) fn file_config() -> Result<FileConfig> {
    let Some(path) = config_path() else {
        return Ok(FileConfig::default());
    };
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(FileConfig::default());
    };
    let mut file: FileConfig =
        toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    for p in [&mut file.token_file, &mut file.key_file, &mut file.ca_file]
        .into_iter()
        .flatten()
    {
        *p = expand_tilde(p);
    }
    file.path = Some(path);
    Ok(file)
}

pub(crate) fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// Where a setting came from, for a message that says what to change.
fn from_file(key: &str, file: &FileConfig) -> String {
    match &file.path {
        Some(p) => format!("`{key}` in {}", p.display()),
        None => format!("`{key}` in ccctl.toml"),
    }
}

/// The listener's URL and where it was given; it must say `http://` or
/// `https://`.
pub(crate) fn listener_url(cli: &Cli, file: &FileConfig) -> Result<(String, String)> {
    let (url, source) = if let Some(u) = &cli.url {
        (u.clone(), "--url".to_owned())
    } else if let Some(u) = env("CC_URL") {
        (u, "CC_URL".to_owned())
    } else if let Some(u) = &file.url {
        (u.clone(), from_file("url", file))
    } else {
        bail!(
            "no listener URL: give --url, set CC_URL, or put `url = \"http://HOST:PORT\"` in {}",
            config_path().map_or("ccctl.toml".into(), |p| p.display().to_string())
        )
    };
    ensure!(
        url.starts_with("http://") || url.starts_with("https://"),
        "the listener URL {url:?} (from {source}) needs http:// or https://, for example http://{url}"
    );
    ensure!(
        !url.trim_end_matches('/').ends_with("/api/v1"),
        "the listener URL {url:?} (from {source}) must not end in /api/v1: give the listener's address only, for example {}",
        url.trim_end_matches('/').trim_end_matches("/api/v1")
    );
    Ok((url.trim_end_matches('/').to_owned(), source))
}

/// The token file and where it was given.
pub(crate) fn token_file(cli: &Cli, file: &FileConfig) -> Result<(PathBuf, String)> {
    if let Some(p) = &cli.token_file {
        // `--token-file=~/token` is not expanded by a shell.
        return Ok((expand_tilde(p), "--token-file".to_owned()));
    }
    if let Some(p) = env("CC_TOKEN_FILE") {
        return Ok((expand_tilde(Path::new(&p)), "CC_TOKEN_FILE".to_owned()));
    }
    if let Some(p) = &file.token_file {
        return Ok((p.clone(), from_file("token_file", file)));
    }
    bail!(
        "no token file: give --token-file, set CC_TOKEN_FILE, or put `token_file = \"PATH\"` in {}",
        config_path().map_or("ccctl.toml".into(), |p| p.display().to_string())
    )
}

/// The operator token from its file; an error names the file and the
/// setting that named it.
pub(crate) fn read_token(path: &Path, source: &str) -> Result<String> {
    let token = std::fs::read_to_string(path).map_err(|e| {
        anyhow!(
            "the token file {} (from {source}) cannot be read: {}; put the listener's operator token there, or point {source} at the file holding it",
            path.display(),
            io_reason(&e)
        )
    })?;
    let token = token.trim().to_owned();
    ensure!(
        !token.is_empty(),
        "the token file {} (from {source}) is empty; put the listener's operator token there",
        path.display()
    );
    Ok(token)
}

/// An I/O error's reason in words, without the `(os error N)` tail.
pub(crate) fn io_reason(e: &std::io::Error) -> String {
    use std::io::ErrorKind as K;
    match e.kind() {
        K::NotFound => "it does not exist".to_owned(),
        K::PermissionDenied => "permission denied".to_owned(),
        K::ConnectionRefused => "connection refused".to_owned(),
        K::TimedOut => "timed out".to_owned(),
        _ => {
            let text = e.to_string();
            match text.find(" (os error") {
                Some(i) => text[..i].to_owned(),
                None => text,
            }
        }
    }
}

/// The CA certificate file for `https://`, if one was given.
pub(crate) fn ca_file(cli: &Cli, file: &FileConfig) -> Option<PathBuf> {
    cli.ca_file
        .as_deref()
        .map(expand_tilde)
        .or_else(|| env("CC_CA_FILE").map(|p| expand_tilde(Path::new(&p))))
        .or_else(|| file.ca_file.clone())
}

/// TLS for `https://`: the CA in `ca_file` alone if given, else the
/// platform's trusted roots (an operator's own CA installed there too).
pub(crate) fn tls_config(ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let bad = |why: String| {
                anyhow!(
                    "the CA file {} (--ca-file / `ca_file`) {why}; give the PEM certificate of the CA that signed the listener's certificate",
                    path.display()
                )
            };
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| bad(format!("cannot be read: {e}")))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bad(format!("is not PEM: {e}")))?;
            for c in certs {
                roots
                    .add(c)
                    .map_err(|e| bad(format!("holds a certificate rustls refuses: {e}")))?;
            }
            ensure!(!roots.is_empty(), bad("holds no certificate".into()));
        }
        None => {
            for c in rustls_native_certs::load_native_certs().certs {
                // One unusable root among the platform's is not our concern.
                let _ = roots.add(c);
            }
            ensure!(
                !roots.is_empty(),
                "no trusted CA certificates on this machine for https://: install the ca-certificates package, or give the listener's CA with --ca-file PATH (or `ca_file` in ccctl.toml)"
            );
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("TLS setup")?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The HTTP client for `url`: with TLS for `https://`.
pub(crate) fn agent_for(url: &str, ca_file: Option<&Path>) -> Result<ureq::Agent> {
    let mut b = ureq::AgentBuilder::new();
    if url.starts_with("https://") {
        b = b.tls_config(tls_config(ca_file)?);
    }
    Ok(b.build())
}

/// The errors of a transport error (ureq's own first), innermost last.
fn chain(t: &ureq::Transport) -> Vec<&(dyn std::error::Error + 'static)> {
    let mut out = Vec::new();
    let mut next = std::error::Error::source(t);
    while let Some(e) = next {
        out.push(e);
        next = e.source();
    }
    out
}

/// What failed reaching the listener at `base`, and what to do, once:
/// built from the error's kind rather than its text (which repeats the
/// OS error).
pub(crate) fn unreachable(base: &str, t: &ureq::Transport) -> anyhow::Error {
    use ureq::ErrorKind as K;
    let errors = chain(t);
    let io = errors
        .iter()
        .find_map(|e| e.downcast_ref::<std::io::Error>());
    let tls = errors
        .iter()
        .find_map(|e| e.downcast_ref::<rustls::Error>())
        .or_else(|| io.and_then(|e| e.get_ref()?.downcast_ref::<rustls::Error>()));
    if let Some(tls) = tls {
        return anyhow!(
            "the TLS connection to the listener at {base} failed: {tls}; if a CA of your own signed its certificate, give it with --ca-file PATH (or `ca_file` in ccctl.toml) or install it in this machine's trust store"
        );
    }
    match t.kind() {
        K::Dns => anyhow!(
            "cannot reach the listener at {base}: its host name does not resolve; check the URL (CC_URL / --url / config `url`)"
        ),
        K::ConnectionFailed => anyhow!(
            "cannot reach the listener at {base}: {}; is the listener running? (CC_URL / --url / config `url`)",
            io.map_or_else(|| "connection failed".to_owned(), io_reason)
        ),
        K::InvalidUrl | K::UnknownScheme => anyhow!(
            "the listener URL {base:?} is not a URL ureq can use ({}); it looks like http://HOST:PORT or https://HOST:PORT",
            t.message().unwrap_or("invalid")
        ),
        _ => anyhow!(
            "the connection to the listener at {base} failed: {}; try again, and check the listener's log",
            io.map_or_else(
                || t.message().unwrap_or("no reason given").to_owned(),
                io_reason
            )
        ),
    }
}

impl Api {
    pub(crate) fn new(cli: &Cli, file: &FileConfig) -> Result<Self> {
        let (url, _) = listener_url(cli, file)?;
        let (path, source) = token_file(cli, file)?;
        let token = read_token(&path, &source)?;
        let agent = agent_for(&url, ca_file(cli, file).as_deref())?;
        Ok(Self { url, token, agent })
    }

    /// A request to `path` under `/api/v1`, with the token.
    pub(crate) fn request(&self, method: &str, path: &str) -> ureq::Request {
        self.agent
            .request(method, &format!("{}/api/v1{path}", self.url))
            .set("Authorization", &format!("Bearer {}", self.token))
    }

    /// Sends `req`; an error status becomes the listener's own message.
    pub(crate) fn send(&self, req: ureq::Request, body: Option<&Value>) -> Result<ureq::Response> {
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
                let why = term::clean(&why);
                if code == 401 {
                    bail!(
                        "the token was refused (the listener answered 401: {why}); check that the token file (--token-file / CC_TOKEN_FILE / `token_file`) holds the listener's operator token"
                    )
                }
                bail!("the listener answered {code}: {why}")
            }
            Err(ureq::Error::Transport(t)) => Err(unreachable(&self.url, &t)),
        }
    }

    pub(crate) fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value> {
        let req = self.request(method, path).timeout(Duration::from_secs(30));
        Ok(serde_json::from_str(&self.send(req, body)?.into_string()?)?)
    }

    /// One page of a list and the cursor the listener gave for the next.
    pub(crate) fn page(
        &self,
        path: &str,
        cursor_header: &str,
    ) -> Result<(Vec<Value>, Option<String>)> {
        let req = self.request("GET", path).timeout(Duration::from_secs(60));
        let r = self.send(req, None)?;
        let next = r.header(cursor_header).map(str::to_owned);
        Ok((serde_json::from_str(&r.into_string()?)?, next))
    }

    /// Every item of a paged list: follows `cursor_header` into `param`
    /// until the listener gives no cursor, or `enough` says so.
    pub(crate) fn get_all(
        &self,
        path: &str,
        cursor_header: &str,
        param: &str,
    ) -> Result<Vec<Value>> {
        self.get_until(path, cursor_header, param, |_| false)
    }

    pub(crate) fn get_until(
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
