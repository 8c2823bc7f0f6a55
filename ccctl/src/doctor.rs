//! `ccctl doctor`: the operator's side of the setup checked, one line
//! each, `ok …` or what is wrong and what to do: the config file, the
//! listener's URL, the token file and its mode, the listener reachable,
//! TLS verified, the token accepted.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use crate::api::{self, FileConfig};
use crate::cli::Cli;
use crate::term::outln;

/// Prints a line per check; true when every one is ok. Later checks that
/// need an earlier one (the URL, the token) are skipped when it failed.
pub(crate) fn doctor(cli: &Cli) -> bool {
    let mut ok = true;
    let mut fail = |line: String| {
        ok = false;
        outln!("FAIL {line}");
    };
    let file = config(&mut fail);
    let url = match api::listener_url(cli, &file) {
        Ok((url, source)) => {
            outln!("ok   listener URL {url} (from {source})");
            Some(url)
        }
        Err(e) => {
            fail(format!("{e:#}"));
            None
        }
    };
    let token = token(cli, &file, &mut fail);
    if let Some(url) = url {
        reach(cli, &file, &url, token.as_deref(), &mut fail);
    }
    if ok {
        outln!("all checks passed");
    }
    ok
}

/// The config file: found and parsed, or absent (then flags and the
/// environment give everything).
fn config(fail: &mut impl FnMut(String)) -> FileConfig {
    let Some(path) = api::config_path() else {
        outln!("ok   no HOME: no config file read (flags and environment only)");
        return FileConfig::default();
    };
    match std::fs::read_to_string(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            outln!(
                "ok   no config file at {} (flags and environment only)",
                path.display()
            );
            FileConfig::default()
        }
        Err(e) => {
            fail(format!(
                "the config file {} cannot be read: {}; fix its permissions (it is yours: chmod 600)",
                path.display(),
                api::io_reason(&e)
            ));
            FileConfig::default()
        }
        Ok(_) => match api::file_config() {
            Ok(file) => {
                outln!("ok   config file {}", path.display());
                file
            }
            Err(e) => {
                // The parse error points at its line over several.
                fail(format!("{e:#}"));
                FileConfig::default()
            }
        },
    }
}

/// The token file: there, readable, not empty, and no one else's to read.
fn token(cli: &Cli, file: &FileConfig, fail: &mut impl FnMut(String)) -> Option<String> {
    let (path, source) = match api::token_file(cli, file) {
        Ok(t) => t,
        Err(e) => {
            fail(format!("{e:#}"));
            return None;
        }
    };
    let token = match api::read_token(&path, &source) {
        Ok(t) => t,
        Err(e) => {
            fail(format!("{e:#}"));
            return None;
        }
    };
    let mode = std::fs::metadata(&path).map_or(0, |m| m.permissions().mode() & 0o777);
    if mode & 0o077 == 0 {
        outln!(
            "ok   token file {} (from {source}), mode {mode:o}",
            path.display()
        );
    } else {
        fail(format!(
            "the token file {} is mode {mode:o}: others can read the operator token; chmod 600 {}",
            path.display(),
            path.display()
        ));
    }
    Some(token)
}

/// One authenticated `GET /api/v1/agents?limit=1` (the cheapest call that
/// needs the token; `/healthz` does not): the listener reachable, TLS
/// verified (https), the token accepted.
fn reach(
    cli: &Cli,
    file: &FileConfig,
    url: &str,
    token: Option<&str>,
    fail: &mut impl FnMut(String),
) {
    let https = url.starts_with("https://");
    let agent = match api::agent_for(url, api::ca_file(cli, file).as_deref()) {
        Ok(a) => a,
        Err(e) => {
            fail(format!("{e:#}"));
            return;
        }
    };
    let mut req = agent
        .get(&format!("{url}/api/v1/agents?limit=1"))
        .timeout(Duration::from_secs(10));
    if let Some(t) = token {
        req = req.set("Authorization", &format!("Bearer {t}"));
    }
    let reached = |what: &str| {
        outln!("ok   listener reachable at {url}{what}");
        if https {
            outln!("ok   TLS: the listener's certificate is verified");
        }
    };
    match req.call() {
        Ok(_) if token.is_some() => {
            reached("");
            outln!("ok   the token is accepted");
        }
        Ok(_) => reached(" (the token not checked: no token)"),
        Err(ureq::Error::Status(401, _)) => {
            reached("");
            if token.is_some() {
                fail(
                    "the token was refused (401): put the listener's operator token in the token file"
                        .to_owned(),
                );
            }
        }
        Err(ureq::Error::Status(code, _)) => fail(format!(
            "{url}/api/v1/agents answered {code}: is {url} the listener's operator address (admin_addr), not its agent address or a proxy's other route?"
        )),
        Err(ureq::Error::Transport(t)) => fail(format!("{:#}", api::unreachable(url, &t))),
    }
}
