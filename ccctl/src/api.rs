//! The listener's operator API: where it is and its token (flags, then
//! the environment, then `ccctl.toml`), and the HTTP calls to it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
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
}

pub(crate) struct Api {
    pub(crate) url: String,
    pub(crate) token: String,
}

pub(crate) fn file_config() -> Result<FileConfig> {
    let Some(home) = std::env::var_os("HOME") else {
        return Ok(FileConfig::default());
    };
    let path = Path::new(&home).join(".config/croncommander/ccctl.toml");
    match std::fs::read_to_string(&path) {
        Ok(t) => toml::from_str(&t).with_context(|| format!("parsing {}", path.display())),
        Err(_) => Ok(FileConfig::default()),
    }
}

pub(crate) fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

impl Api {
    pub(crate) fn new(cli: &Cli, file: &FileConfig) -> Result<Self> {
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
    pub(crate) fn request(&self, method: &str, path: &str) -> ureq::Request {
        ureq::request(method, &format!("{}/api/v1{path}", self.url))
            .set("Authorization", &format!("Bearer {}", self.token))
    }

    /// Sends `req`; an error status becomes the listener's own message.
    pub(crate) fn send(req: ureq::Request, body: Option<&Value>) -> Result<ureq::Response> {
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

    pub(crate) fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value> {
        let req = self.request(method, path).timeout(Duration::from_secs(30));
        Ok(serde_json::from_str(
            &Self::send(req, body)?.into_string()?,
        )?)
    }

    /// One page of a list and the cursor the listener gave for the next.
    pub(crate) fn page(
        &self,
        path: &str,
        cursor_header: &str,
    ) -> Result<(Vec<Value>, Option<String>)> {
        let req = self.request("GET", path).timeout(Duration::from_secs(60));
        let r = Self::send(req, None)?;
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
