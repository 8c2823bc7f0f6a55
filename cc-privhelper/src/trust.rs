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
use tracing::{info, warn};

use crate::config::Config;
use crate::nonces::Nonces;

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

    /// Reads the trusted keys from the config again (SIGHUP).
    pub(crate) fn reload(&self, path: &std::path::Path) {
        match Config::load(path) {
            Ok(cfg) => {
                let names: Vec<String> = cfg.trusted_keys.iter().map(|k| k.name.clone()).collect();
                *self.keys.write().unwrap_or_else(|e| e.into_inner()) = cfg.trusted_keys;
                info!(keys = ?names, "trusted keys reloaded");
            }
            Err(e) => warn!("config not reloaded, the old keys stay: {e:#}"),
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

    /// A root job's signature: returns the signer's key name.
    pub(crate) fn exec(
        &self,
        signed: Result<Signed, SignError>,
        job: &ExecuteJob,
    ) -> Result<String, SignError> {
        let signed = signed?;
        let (s, by): (ExecStatement, _) = self.verify(&signed, EXEC_LABEL)?;
        self.for_this_host(&s.host)?;
        sign::check_window(&s.not_before, &s.expires_at, Timestamp::now())?;
        s.check_job(job)?;
        self.once(&signed, &s.nonce, &s.expires_at)?;
        Ok(by)
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
        assert_eq!(t.exec(Ok(signed.clone()), &job), Ok("ops".into()));
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
        let _ = std::fs::remove_dir_all(&d);
    }
}
