//! User mode `cron_refresh`: the agent's own crontab, through `crontab -`.
//!
//! Only the block between [`BEGIN`] and [`END`] is ours; every other line
//! of the crontab is kept as it is. Each managed line is
//! `SCHEDULE /path/to/cc-agent cron-run --config /path/to/agent.toml JOB_ID`:
//! the schedule is re-rendered by the proto grammar, the job id is
//! validated, and the paths are checked for a plain character set, so no
//! text from the listener reaches the line's structure. The command itself
//! is kept in the state directory (`cron/JOB_ID.json`), never in the
//! crontab. Nothing is rewritten when nothing changed.

use std::fs;
use std::io::Write;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use cc_proto::wire::{
    CronEntry, CronJob, CronRejection, CronStatus, MAX_CRON_DELAY_SECS, jitter_offset,
};
use cc_proto::{CommandLine, JobId, Timeout};
use serde::{Deserialize, Serialize};

pub(crate) const BEGIN: &str =
    "# BEGIN croncommander: managed by cc-agent, do not edit between these lines";
pub(crate) const END: &str = "# END croncommander";

/// What `cron-run` needs to know about an entry: its argv, and its
/// `timeout` and `jitter` (seconds) when set. A file written before these
/// existed has neither: the default timeout, no jitter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StoredEntry {
    pub(crate) argv: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) timeout: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) jitter: Option<u64>,
}

impl StoredEntry {
    fn of(job: &CronJob) -> Self {
        let entry = CronEntry::from(job);
        Self {
            argv: std::iter::once(job.command.program().to_owned())
                .chain(job.command.args().iter().cloned())
                .collect(),
            timeout: entry.timeout,
            jitter: entry.jitter,
        }
    }

    pub(crate) fn command(&self) -> Result<CommandLine> {
        let (program, args) = self
            .argv
            .split_first()
            .context("stored cron entry has no program")?;
        Ok(CommandLine::new(program, args)?)
    }

    /// The run's timeout, checked again as `CronEntry::validate` checks it.
    pub(crate) fn timeout(&self) -> Result<Timeout> {
        Ok(match self.timeout {
            Some(secs) => Timeout::from_secs(secs)?,
            None => Timeout::DEFAULT,
        })
    }

    /// How long this host's run waits before it starts:
    /// `jitter_offset(hostname, id, jitter)`, the offset the listener
    /// computes too. A jitter over the bound is refused, not shortened.
    pub(crate) fn wait(&self, hostname: &str, id: &JobId) -> Result<Duration> {
        let jitter = self.jitter.unwrap_or(0);
        ensure!(
            jitter <= MAX_CRON_DELAY_SECS,
            "stored cron entry {id}: jitter {jitter} s is over {MAX_CRON_DELAY_SECS} s"
        );
        Ok(Duration::from_secs(jitter_offset(
            hostname,
            id.as_str(),
            jitter,
        )))
    }
}

fn entries_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("cron")
}

/// The stored command of a cron entry.
pub(crate) fn load(state_dir: &Path, id: &JobId) -> Result<StoredEntry> {
    let path = entries_dir(state_dir).join(format!("{id}.json"));
    let text = fs::read_to_string(&path)
        .with_context(|| format!("no cron entry {id} ({})", path.display()))?;
    Ok(serde_json::from_str(&text)?)
}

fn plain_path(p: &Path) -> Result<&str> {
    let s = p.to_str().context("path is not UTF-8")?;
    Ok(cc_proto::command::plain_cron_path(s)?)
}

/// Applies a `cron_refresh`: valid entries are installed, invalid ones are
/// skipped and reported.
pub(crate) fn apply(
    state_dir: &Path,
    agent_exe: &Path,
    config: &Path,
    entries: &[CronEntry],
) -> Result<CronStatus> {
    // As the listener and the helper bound a list: a longer one is refused
    // whole, before any of it costs a file or a fork.
    anyhow::ensure!(
        entries.len() <= cc_proto::wire::MAX_CRON_ENTRIES,
        "{} entries: a cron list holds at most {}",
        entries.len(),
        cc_proto::wire::MAX_CRON_ENTRIES
    );
    let exe = plain_path(agent_exe).context("the agent's own path")?;
    let config = plain_path(config).context("the config path")?;
    let mut valid: Vec<CronJob> = Vec::new();
    let mut status = CronStatus::default();
    for e in entries {
        match e.validate() {
            Ok(job) if valid.iter().any(|v| v.id == job.id) => {
                status.rejected.push(CronRejection {
                    id: e.id.clone(),
                    reason: "duplicate id".into(),
                })
            }
            Ok(job) => valid.push(job),
            Err(err) => status.rejected.push(CronRejection {
                id: e.id.chars().take(128).collect(),
                reason: err.to_string(),
            }),
        }
    }
    // State first, so a cron run that starts right after finds its command.
    let dir = entries_dir(state_dir);
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)?;
    for job in &valid {
        let stored = StoredEntry::of(job);
        crate::atomic::write_file(
            &dir,
            &format!("{}.json", job.id),
            &serde_json::to_vec(&stored)?,
        )?;
    }
    let block: Vec<String> = valid
        .iter()
        .map(|job| {
            format!(
                "{} {exe} cron-run --config {config} {}",
                job.schedule, job.id
            )
        })
        .collect();
    let current = read_crontab()?;
    let next = merge(&current, &block);
    if next != current {
        write_crontab(&next)?;
    }
    // Then drop the commands of entries that are gone.
    for entry in fs::read_dir(&dir)? {
        let path = entry?.path();
        let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
        if !valid.iter().any(|j| j.id.as_str() == stem) {
            let _ = fs::remove_file(&path);
        }
    }
    status.installed = valid.iter().map(|j| j.id.to_string()).collect();
    Ok(status)
}

/// `current` with the managed block replaced by `block` (appended when
/// there was none; removed when `block` is empty).
pub(crate) fn merge(current: &str, block: &[String]) -> String {
    let mut out = Vec::new();
    let mut inside = false;
    let mut placed = false;
    let push_block = |out: &mut Vec<String>| {
        if !block.is_empty() {
            out.push(BEGIN.to_owned());
            out.extend(block.iter().cloned());
            out.push(END.to_owned());
        }
    };
    for line in current.lines() {
        if line == BEGIN {
            inside = true;
            if !placed {
                push_block(&mut out);
                placed = true;
            }
            continue;
        }
        if inside {
            if line == END {
                inside = false;
            }
            continue;
        }
        out.push(line.to_owned());
    }
    if !placed {
        push_block(&mut out);
    }
    let mut text = out.join("\n");
    if !text.is_empty() {
        text.push('\n');
    }
    text
}

fn read_crontab() -> Result<String> {
    let out = Command::new("crontab")
        .arg("-l")
        .stdin(Stdio::null())
        .output()
        .context("running crontab -l")?;
    if out.status.success() {
        return String::from_utf8(out.stdout).context("the crontab is not UTF-8");
    }
    let err = String::from_utf8_lossy(&out.stderr);
    if err.contains("no crontab for") {
        return Ok(String::new());
    }
    bail!("crontab -l failed: {}", err.trim())
}

fn write_crontab(text: &str) -> Result<()> {
    let mut child = Command::new("crontab")
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("running crontab -")?;
    child
        .stdin
        .take()
        .context("crontab stdin")?
        .write_all(text.as_bytes())?;
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success(),
        "crontab - failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hostile listener's list of 1,001 entries costs no file and no
    /// fork: refused whole, before the state directory is touched.
    #[test]
    fn a_list_over_the_bound_is_refused_whole_before_any_work() {
        let dir = std::env::temp_dir().join(format!("cc-cron-bound-{}", std::process::id()));
        let entries: Vec<CronEntry> = (0..=cc_proto::wire::MAX_CRON_ENTRIES)
            .map(|i| CronEntry {
                id: format!("e{i}"),
                schedule: "* * * * *".into(),
                command: "/bin/true".into(),
                ..Default::default()
            })
            .collect();
        let e = apply(
            &dir,
            Path::new("/usr/bin/cc-agent"),
            Path::new("/etc/a.toml"),
            &entries,
        )
        .unwrap_err();
        assert!(e.to_string().contains("at most 1000"), "{e}");
        assert!(!dir.exists(), "nothing written");
    }

    #[test]
    fn merge_keeps_foreign_lines_and_replaces_only_the_block() {
        let hand = "MAILTO=ops\n# my own job\n5 4 * * * /usr/bin/backup\n";
        let once = merge(hand, &["* * * * * /a cron-run --config /c x".into()]);
        assert_eq!(
            once,
            format!("{hand}{BEGIN}\n* * * * * /a cron-run --config /c x\n{END}\n")
        );
        let twice = merge(&once, &["@daily /a cron-run --config /c y".into()]);
        assert_eq!(
            twice,
            format!("{hand}{BEGIN}\n@daily /a cron-run --config /c y\n{END}\n")
        );
        assert_eq!(merge(&twice, &[]), hand);
        assert_eq!(merge("", &[]), "");
    }
}
