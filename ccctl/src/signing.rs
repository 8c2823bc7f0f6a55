//! The operator's signing key and the statements signed with it,
//! offline: `ccctl keygen`, `ccctl sign`, and what `run --system` and
//! `cron set --system` sign.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};
use cc_proto::Timestamp;
use cc_proto::sign::{self, ExecStatement};

use crate::api::{Api, FileConfig, env};
use crate::cli::RunArgs;
use crate::run::{hosts_with_tags, program_of};
use crate::term::outln;

pub(crate) fn key_path(given: Option<PathBuf>, file: &FileConfig) -> Result<PathBuf> {
    given
        .or_else(|| env("CC_KEY_FILE").map(PathBuf::from))
        .or_else(|| file.key_file.clone())
        .map(|p| crate::api::expand_tilde(&p))
        .context("root work needs your signing key: --key, CC_KEY_FILE or key_file in ccctl.toml")
}

pub(crate) fn load_key(path: &Path) -> Result<ring::signature::Ed25519KeyPair> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(sign::key_pair_from_pem(&text)?)
}

pub(crate) fn nonce() -> Result<String> {
    let mut r = [0u8; 16];
    getrandom::fill(&mut r).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    Ok(sign::nonce(r))
}

pub(crate) fn keygen(out: &Path, name: &str) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let rng = ring::rand::SystemRandom::new();
    let doc = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng)
        .map_err(|_| anyhow::anyhow!("could not generate a key"))?;
    let key = ring::signature::Ed25519KeyPair::from_pkcs8(doc.as_ref())
        .map_err(|_| anyhow::anyhow!("the generated key does not load"))?;
    make_parent_dirs(out)?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => anyhow::anyhow!(
                "{} already exists: ccctl keygen never overwrites a key; give another --out, or move the old key away first",
                out.display()
            ),
            _ => anyhow::anyhow!(
                "creating {}: {}",
                out.display(),
                crate::api::io_reason(&e)
            ),
        })?;
    f.write_all(sign::pem(doc.as_ref()).as_bytes())?;
    f.sync_all()?;
    outln!("{} {name}", sign::public_id(&key));
    Ok(())
}

/// Creates the directories above `out` that are missing, each 0700 (as
/// `ssh-keygen` does for `~/.ssh`): a key's directory is its owner's alone.
fn make_parent_dirs(out: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) else {
        return Ok(());
    };
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| {
            anyhow::anyhow!(
                "creating the directory {} for the key: {}; make it with `mkdir -m 700 -p {}`, or give another --out",
                dir.display(),
                crate::api::io_reason(&e),
                dir.display()
            )
        })
}

/// One `exec` statement per host — the hosts given and those carrying
/// every tag — signed here with the operator's key, each for its host.
pub(crate) fn sign_for_hosts(
    api: Option<&Api>,
    file: &FileConfig,
    args: &RunArgs,
) -> Result<Vec<sign::Signed>> {
    let (program, rest) = program_of(args)?;
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
