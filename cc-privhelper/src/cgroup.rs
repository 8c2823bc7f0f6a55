//! A cgroup per root job, for the limits a root process is otherwise not
//! held to: the number of processes (`RLIMIT_NPROC` binds no uid 0
//! process) and memory.
//!
//! cgroup v2 when the helper's own cgroup offers the `pids` and `memory`
//! controllers (systemd with `Delegate=yes`: the helper moves itself into a
//! `supervisor` leaf and enables them for its children), otherwise the v1
//! `pids` and `memory` hierarchies. Each job gets `cc-job-<helper pid>-<n>`
//! beneath the helper's own cgroup; its forked child writes `0` to the
//! prepared `cgroup.procs` descriptors before anything else, so every
//! process of the job is counted. The directories are removed when the job
//! is over (its PID namespace is gone by then, so they are empty).

use std::fs;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result, bail};

#[derive(Debug)]
pub(crate) enum Tree {
    V2(PathBuf),
    V1 { pids: PathBuf, memory: PathBuf },
}

/// Where job cgroups go, found once at start, and a few made ahead of
/// time (making one — a v1 memory cgroup above all — costs more than
/// starting `/bin/true`; it is done after a job's answer is sent).
#[derive(Debug)]
pub(crate) struct Cgroups {
    /// Where job cgroups go, or why there are none.
    pub(crate) tree: Result<Tree, String>,
    next: AtomicU64,
    limits: (u64, u64),
    spare: Mutex<Vec<JobCgroup>>,
}

/// Cgroups kept ready.
const SPARE: usize = 2;

/// One job's cgroup(s).
#[derive(Debug)]
pub(crate) struct JobCgroup {
    dirs: Vec<PathBuf>,
    v2: bool,
    /// `cgroup.procs` of each directory, open for writing.
    pub(crate) procs: Vec<OwnedFd>,
}

fn write(path: &Path, value: &str) -> Result<()> {
    fs::OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|mut f| f.write_all(value.as_bytes()))
        .with_context(|| format!("writing {value:?} to {}", path.display()))
}

/// (controllers, path) of each line of `/proc/self/cgroup`.
fn own_cgroups() -> Result<Vec<(String, String)>> {
    let text = fs::read_to_string("/proc/self/cgroup").context("reading /proc/self/cgroup")?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let mut p = l.splitn(3, ':');
            let (_, ctl, path) = (p.next()?, p.next()?, p.next()?);
            Some((ctl.to_owned(), path.to_owned()))
        })
        .collect())
}

/// (mount point, fs type, super options) of each cgroup mount.
fn cgroup_mounts() -> Result<Vec<(PathBuf, String, String)>> {
    let text =
        fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let point = left.split(' ').nth(4)?;
            let mut r = right.split(' ');
            let (fstype, _, opts) = (r.next()?, r.next()?, r.next()?);
            fstype
                .starts_with("cgroup")
                .then(|| (PathBuf::from(point), fstype.to_owned(), opts.to_owned()))
        })
        .collect())
}

fn join(mount: &Path, path: &str) -> PathBuf {
    mount.join(path.trim_start_matches('/'))
}

fn find_tree() -> Result<Tree> {
    let own = own_cgroups()?;
    let mounts = cgroup_mounts()?;
    let v2 = mounts.iter().find(|(_, t, _)| t == "cgroup2");
    if let (Some((mnt, _, _)), Some((_, path))) = (v2, own.iter().find(|(c, _)| c.is_empty())) {
        let dir = join(mnt, path);
        let offered = fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
        let has = |c: &str| offered.split_whitespace().any(|o| o == c);
        if has("pids") && has("memory") {
            // No process may live in a cgroup whose controllers are handed
            // to children: the helper moves into a leaf of its own.
            if path != "/" {
                let leaf = dir.join("supervisor");
                fs::create_dir_all(&leaf)?;
                write(&leaf.join("cgroup.procs"), &std::process::id().to_string())?;
            }
            write(&dir.join("cgroup.subtree_control"), "+pids +memory")?;
            return Ok(Tree::V2(dir));
        }
    }
    let v1 = |ctl: &str| -> Option<PathBuf> {
        let (mnt, _, _) =
            mounts.iter().find(|(_, t, o)| t == "cgroup" && o.split(',').any(|x| x == ctl))?;
        let (_, path) = own.iter().find(|(c, _)| c.split(',').any(|x| x == ctl))?;
        Some(join(mnt, path))
    };
    match (v1("pids"), v1("memory")) {
        (Some(pids), Some(memory)) => Ok(Tree::V1 { pids, memory }),
        _ => bail!(
            "neither cgroup v2 with the pids and memory controllers nor the v1 pids and memory hierarchies are available"
        ),
    }
}

/// Kills every process in a left-over job cgroup and removes it (waiting
/// up to a second for the processes to go).
fn kill_and_remove(dir: &Path) {
    for _ in 0..100 {
        let procs = fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        let mut any = false;
        for pid in procs.split_whitespace().filter_map(|p| p.parse::<i32>().ok()) {
            any = true;
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        if fs::remove_dir(dir).is_ok() || !any && !dir.exists() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    tracing::warn!(cgroup = %dir.display(), "a previous helper's job cgroup could not be emptied");
}

impl Cgroups {
    /// Job cgroups with these limits: (processes, memory bytes).
    pub(crate) fn detect(max_processes: u64, max_memory: u64) -> Self {
        let tree = find_tree().map_err(|e| format!("{e:#}"));
        if let Ok(t) = &tree {
            for dir in match t {
                Tree::V2(d) => vec![d.clone()],
                Tree::V1 { pids, memory } => vec![pids.clone(), memory.clone()],
            } {
                // Job cgroups a helper that is gone left (it was killed):
                // whatever still runs there is killed, then they go.
                // Another running helper's are not ours to touch.
                for e in fs::read_dir(&dir).into_iter().flatten().flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let owner = name.strip_prefix("cc-job-").and_then(|r| r.split('-').next());
                    if owner.is_some_and(|pid| !Path::new("/proc").join(pid).exists()) {
                        kill_and_remove(&e.path());
                    }
                }
            }
        }
        Self {
            tree,
            next: AtomicU64::new(0),
            limits: (max_processes, max_memory),
            spare: Mutex::new(Vec::new()),
        }
    }

    /// A fresh cgroup for one job: one made ahead, or a new one.
    pub(crate) fn take(&self) -> Result<JobCgroup> {
        let ready = self.spare.lock().unwrap_or_else(|e| e.into_inner()).pop();
        ready.map_or_else(|| self.create(), Ok)
    }

    /// Makes cgroups ahead of the next jobs, up to [`SPARE`].
    pub(crate) fn replenish(&self) {
        while self.spare.lock().unwrap_or_else(|e| e.into_inner()).len() < SPARE {
            let Ok(c) = self.create() else { return };
            self.spare.lock().unwrap_or_else(|e| e.into_inner()).push(c);
        }
    }

    /// A new cgroup with the job limits set.
    fn create(&self) -> Result<JobCgroup> {
        let (max_processes, max_memory) = self.limits;
        let tree = self.tree.as_ref().map_err(|e| anyhow::anyhow!("{e}"))?;
        let name =
            format!("cc-job-{}-{}", std::process::id(), self.next.fetch_add(1, Ordering::Relaxed));
        let (dirs, v2) = match tree {
            Tree::V2(d) => (vec![d.join(&name)], true),
            Tree::V1 { pids, memory } => (vec![pids.join(&name), memory.join(&name)], false),
        };
        let mut job = JobCgroup { dirs: Vec::new(), v2, procs: Vec::new() };
        for d in &dirs {
            fs::create_dir(d).with_context(|| format!("creating {}", d.display()))?;
            job.dirs.push(d.clone());
        }
        let (pids, memory) = (&job.dirs[0], job.dirs.last().unwrap_or(&job.dirs[0]));
        write(&pids.join("pids.max"), &max_processes.to_string())?;
        if v2 {
            write(&memory.join("memory.max"), &max_memory.to_string())?;
            // No swap: the limit is the memory the job may use.
            let _ = write(&memory.join("memory.swap.max"), "0");
        } else {
            write(&memory.join("memory.limit_in_bytes"), &max_memory.to_string())?;
            let _ = write(&memory.join("memory.memsw.limit_in_bytes"), &max_memory.to_string());
        }
        for d in &job.dirs {
            let f = fs::OpenOptions::new()
                .write(true)
                .open(d.join("cgroup.procs"))
                .with_context(|| format!("opening {}/cgroup.procs", d.display()))?;
            job.procs.push(f.into());
        }
        Ok(job)
    }
}

/// The number after `key ` in a flat-keyed cgroup file.
fn counter(path: &Path, key: &str) -> u64 {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0)
}

impl JobCgroup {
    /// What the job ran into: (times a fork was refused at the process
    /// limit, processes killed at the memory limit).
    pub(crate) fn limits_hit(&self) -> (u64, u64) {
        let (pids, memory) = (&self.dirs[0], self.dirs.last().unwrap_or(&self.dirs[0]));
        let forks = counter(&pids.join("pids.events"), "max");
        let oom = if self.v2 {
            counter(&memory.join("memory.events"), "oom_kill")
        } else {
            counter(&memory.join("memory.oom_control"), "oom_kill")
        };
        (forks, oom)
    }
}

impl Drop for JobCgroup {
    /// Removes the directories; a process still exiting keeps one busy
    /// for a moment.
    fn drop(&mut self) {
        for d in self.dirs.iter().rev() {
            for _ in 0..100 {
                match fs::remove_dir(d) {
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                        std::thread::sleep(std::time::Duration::from_millis(5));
                    }
                    _ => break,
                }
            }
        }
    }
}
