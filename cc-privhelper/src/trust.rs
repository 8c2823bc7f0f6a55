//! What makes root work: a statement signed by a key the helper's own
//! config trusts, for this host (the config's `hostname`, never the
//! agent's word), within its validity window, never seen before — and,
//! for a root job, exactly the job the listener sent; for a cron list, of
//! a higher generation than the one installed. `cc_proto::sign` holds the
//! encoding and the signature check; this module the rest.
//!
//! The trusted keys are re-read from the config on SIGHUP: removing a key
//! revokes it, for new work and for installed cron entries alike (each
//! scheduled run verifies its entry's statement again).

use std::sync::RwLock;

use cc_proto::Timestamp;
use cc_proto::sign::{
    self, CRON_LABEL, CronStatement, EXEC_LABEL, ExecStatement, PublicKey, SignError, Signed,
};
use cc_proto::wire::ExecuteJob;
use tracing::{error, info, warn};

use crate::config::Config;
use crate::nonces::Nonces;

/// How far ahead of this host's clock a cron list's generation (its
/// signing time in milliseconds) may be.
const MAX_AHEAD_MS: u64 = 24 * 3600 * 1000;

/// Who signed a root job, and the statement's nonce (for the audit line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Signer {
    pub(crate) key: String,
    pub(crate) nonce: String,
}

/// The fields of `new` that differ from the running config's, besides the
/// trusted keys (which a reload applies).
pub(crate) fn not_applied(running: &Config, new: &Config) -> Vec<&'static str> {
    let fields: [(&'static str, bool); 8] = [
        ("socket", running.socket == new.socket),
        ("agent_user", running.agent_user == new.agent_user),
        ("system_mode", running.system_mode == new.system_mode),
        ("cron_file", running.cron_file == new.cron_file),
        ("state_dir", running.state_dir == new.state_dir),
        ("allowed_commands", running.allowed_commands == new.allowed_commands),
        ("hostname", running.hostname == new.hostname),
        ("sandbox", running.sandbox == new.sandbox),
    ];
    fields.iter().filter(|(_, same)| !same).map(|(name, _)| *name).collect()
}

#[derive(Debug)]
pub(crate) struct Trust {
    keys: RwLock<Vec<PublicKey>>,
    hostname: String,
    nonces: Nonces,
}

impl Trust {
    pub(crate) fn new(cfg: &Config) -> anyhow::Result<Self> {
        Ok(Self {
            keys: RwLock::new(cfg.trusted_keys.clone()),
            hostname: cfg.hostname.clone(),
            nonces: Nonces::open(&cfg.state_dir)?,
        })
    }

    /// Reads the trusted keys from the config again (SIGHUP). Fails
    /// closed: a config that cannot be applied whole leaves **no** key
    /// trusted until a valid one is loaded, since the edit that broke it
    /// may be the one that removed a compromised key. Fields a reload does
    /// not apply (everything but the keys, read once at start) are named.
    pub(crate) fn reload(&self, running: &Config) {
        let mut keys = self.keys.write().unwrap_or_else(|e| e.into_inner());
        match Config::load(&running.path) {
            Ok(cfg) => {
                let names: Vec<String> = cfg.trusted_keys.iter().map(|k| k.name.clone()).collect();
                *keys = cfg.trusted_keys.clone();
                info!(keys = ?names, "trusted keys reloaded");
                let changed = not_applied(running, &cfg);
                if !changed.is_empty() {
                    warn!(fields = ?changed, "changed in the config but not applied by a reload: restart cc-privhelper for them");
                }
            }
            Err(e) => {
                keys.clear();
                error!(
                    "config not reloaded, and no key is trusted until a valid config is loaded (fix it, then reload again): {e:#}"
                );
            }
        }
    }

    fn verify<T: serde::Serialize + serde::de::DeserializeOwned>(
        &self,
        signed: &Signed,
        label: &str,
    ) -> Result<(T, String), SignError> {
        let keys = self.keys.read().unwrap_or_else(|e| e.into_inner());
        sign::verify::<T>(signed, label, &keys).map(|(t, k)| (t, k.name.clone()))
    }

    fn for_this_host(&self, host: &str) -> Result<(), SignError> {
        if host.eq_ignore_ascii_case(&self.hostname) {
            Ok(())
        } else {
            Err(SignError::WrongHost { statement: host.to_owned(), host: self.hostname.clone() })
        }
    }

    /// A root job's signature: returns who signed it, and its nonce.
    pub(crate) fn exec(
        &self,
        signed: Result<Signed, SignError>,
        job: &ExecuteJob,
    ) -> Result<Signer, SignError> {
        let signed = signed?;
        let (s, by): (ExecStatement, _) = self.verify(&signed, EXEC_LABEL)?;
        self.for_this_host(&s.host)?;
        sign::check_window(&s.not_before, &s.expires_at, Timestamp::now())?;
        s.check_job(job)?;
        self.once(&signed, &s.nonce, &s.expires_at)?;
        Ok(Signer { key: by, nonce: s.nonce })
    }

    /// A cron list's signature, its generation above `installed`: the
    /// statement, the envelope to store, the signer's key name.
    pub(crate) fn cron(
        &self,
        signed: Option<&str>,
        installed: u64,
    ) -> Result<(CronStatement, Signed, String), SignError> {
        let signed = cc_proto::helper::signed(signed)?;
        let (s, by): (CronStatement, _) = self.verify(&signed, CRON_LABEL)?;
        self.for_this_host(&s.host)?;
        sign::check_window(&s.not_before, &s.expires_at, Timestamp::now())?;
        if s.generation <= installed {
            return Err(SignError::RolledBack { got: s.generation, installed });
        }
        // A list from far ahead would lock out every later one.
        let now = u64::try_from(Timestamp::now().unix_millis()).unwrap_or(0);
        if s.generation > now.saturating_add(MAX_AHEAD_MS) {
            return Err(SignError::FromTheFuture { got: s.generation, now });
        }
        self.once(&signed, &s.nonce, &s.expires_at)?;
        Ok((s, signed, by))
    }

    /// An installed cron list, at a scheduled run: still signed by a key
    /// trusted now, for this host (its window was checked at install).
    pub(crate) fn installed(&self, signed: &Signed) -> Result<(CronStatement, String), SignError> {
        let (s, by): (CronStatement, _) = self.verify(signed, CRON_LABEL)?;
        self.for_this_host(&s.host)?;
        Ok((s, by))
    }

    /// Makes the records of accepted nonces durable, beside the job's start.
    pub(crate) fn sync(&self) -> crate::nonces::Syncing {
        self.nonces.sync()
    }

    fn once(&self, signed: &Signed, nonce: &str, expires_at: &str) -> Result<(), SignError> {
        if !sign::valid_nonce(nonce) {
            return Err(SignError::Malformed("the nonce is not 32 hex digits".into()));
        }
        let until = Timestamp::parse("expiresAt", expires_at)
            .map_err(|e| SignError::Malformed(e.to_string()))?;
        self.nonces.record(&signed.key, nonce, until.unix_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> ring::signature::Ed25519KeyPair {
        ring::signature::Ed25519KeyPair::from_seed_unchecked(&[3u8; 32]).unwrap()
    }

    fn trust(name: &str) -> (Trust, std::path::PathBuf) {
        let d = std::env::temp_dir().join(format!("cc-trust-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        let public = PublicKey::parse(&format!("{} ops", sign::public_id(&key()))).unwrap();
        let t = Trust {
            keys: RwLock::new(vec![public]),
            hostname: "web1".into(),
            nonces: Nonces::open(&d).unwrap(),
        };
        (t, d)
    }

    fn statement(host: &str, nonce: &str) -> (ExecStatement, ExecuteJob) {
        let (not_before, expires_at) = sign::window(Timestamp::now(), 600);
        let job = ExecuteJob {
            job_id: "j1".into(),
            command: "/usr/bin/id".into(),
            args: vec!["-u".into()],
            timeout: Some(60),
        };
        let s = ExecStatement {
            host: host.into(),
            job_id: job.job_id.clone(),
            program: job.command.clone(),
            args: job.args.clone(),
            timeout: 60,
            not_before,
            expires_at,
            nonce: nonce.into(),
        };
        (s, job)
    }

    #[test]
    fn a_job_is_trusted_for_this_host_once_with_a_well_formed_nonce() {
        let (t, d) = trust("exec");
        let (s, job) = statement("WEB1", &"a".repeat(32));
        let signed = sign::sign(&s, EXEC_LABEL, &key()).unwrap();
        assert_eq!(t.exec(Ok(signed.clone()), &job).map(|s| s.key), Ok("ops".into()));
        assert!(matches!(t.exec(Ok(signed), &job), Err(SignError::Replayed(..))));
        let (s, job) = statement("web2", &"b".repeat(32));
        let signed = sign::sign(&s, EXEC_LABEL, &key()).unwrap();
        assert!(matches!(t.exec(Ok(signed), &job), Err(SignError::WrongHost { .. })));
        let (s, job) = statement("web1", &"C".repeat(32));
        let signed = sign::sign(&s, EXEC_LABEL, &key()).unwrap();
        assert!(matches!(t.exec(Ok(signed), &job), Err(SignError::Malformed(_))));
        assert_eq!(t.exec(Err(SignError::Unsigned), &job), Err(SignError::Unsigned));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_cron_list_must_be_newer_than_the_installed_one() {
        let (t, d) = trust("cron");
        let list = |generation, nonce: &str| {
            let (not_before, expires_at) = sign::window(Timestamp::now(), 600);
            let s = CronStatement {
                host: "web1".into(),
                generation,
                entries: vec![],
                not_before,
                expires_at,
                nonce: nonce.into(),
            };
            serde_json::to_string(&sign::sign(&s, CRON_LABEL, &key()).unwrap()).unwrap()
        };
        let same = list(5, &"1".repeat(32));
        assert_eq!(
            t.cron(Some(&same), 5).unwrap_err(),
            SignError::RolledBack { got: 5, installed: 5 }
        );
        let (s, signed, by) = t.cron(Some(&list(6, &"2".repeat(32))), 5).unwrap();
        assert_eq!((s.generation, by.as_str()), (6, "ops"));
        assert_eq!(t.installed(&signed).unwrap().0.generation, 6);
        assert_eq!(t.cron(None, 0).unwrap_err(), SignError::Unsigned);
        // A list signed far ahead would lock out every later one: more than
        // 24 h ahead of this clock is refused, just under it is not.
        // A day, written out here (not the module's constant), so a wrong
        // constant fails this test.
        const DAY_MS: u64 = 86_400_000;
        let now = u64::try_from(Timestamp::now().unix_millis()).unwrap();
        let far = t.cron(Some(&list(now + DAY_MS + 60_000, &"3".repeat(32))), 6);
        assert!(matches!(far, Err(SignError::FromTheFuture { .. })), "{far:?}");
        let near = t.cron(Some(&list(now + DAY_MS - 60_000, &"4".repeat(32))), 6);
        assert!(near.is_ok(), "{near:?}");
        let _ = std::fs::remove_dir_all(&d);
    }

    /// A reload applies the keys only; every other field that changed is
    /// named, and nothing when nothing changed.
    #[test]
    fn a_reload_names_the_fields_it_does_not_apply() {
        let a = crate::config::tests::cfg(&[]);
        assert!(not_applied(&a, &a.clone()).is_empty());
        let mut b = a.clone();
        b.trusted_keys =
            vec![PublicKey::parse(&format!("{} ops", sign::public_id(&key()))).unwrap()];
        assert!(not_applied(&a, &b).is_empty(), "the keys are applied, not named");
        type Change = (&'static str, fn(&mut Config));
        let changes: [Change; 8] = [
            ("socket", |c| c.socket = "/run/other".into()),
            ("agent_user", |c| c.agent_user = "other".into()),
            ("system_mode", |c| c.system_mode = !c.system_mode),
            ("cron_file", |c| c.cron_file = "/etc/cron.d/other".into()),
            ("state_dir", |c| c.state_dir = "/var/lib/other".into()),
            ("allowed_commands", |c| c.allowed_commands = Some(vec![])),
            ("hostname", |c| c.hostname = "other".into()),
            ("sandbox", |c| c.sandbox.max_processes += 1),
        ];
        for (name, change) in changes {
            let mut b = a.clone();
            change(&mut b);
            assert_eq!(not_applied(&a, &b), vec![name]);
        }
    }

    /// A config that cannot be loaded empties the key set (the end-to-end
    /// suite shows a valid one bringing its keys back).
    #[test]
    fn a_failed_reload_trusts_no_key() {
        let (t, d) = trust("reload");
        let mut running = crate::config::tests::cfg(&[]);
        running.path = d.join("missing-helper.toml");
        t.reload(&running);
        assert!(t.keys.read().unwrap().is_empty(), "a config that cannot be read");
        let _ = std::fs::remove_dir_all(&d);
    }
}
