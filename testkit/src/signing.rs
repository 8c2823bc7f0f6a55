//! Signing for the suites: an operator key made once per test process, the
//! `trusted_keys` line a helper config needs for it, and statements signed
//! with it (or with any other key, for the attacks).

use std::sync::OnceLock;

use cc_proto::Timestamp;
use cc_proto::sign::{self, CronStatement, ExecStatement, Signed};
use ring::signature::Ed25519KeyPair;
use serde_json::Value;

/// A fresh Ed25519 key: (PKCS#8 PEM, the pair).
pub fn new_key() -> (String, Ed25519KeyPair) {
    let rng = ring::rand::SystemRandom::new();
    let doc = Ed25519KeyPair::generate_pkcs8(&rng).expect("generating a key");
    let pair = Ed25519KeyPair::from_pkcs8(doc.as_ref()).expect("loading the key");
    (sign::pem(doc.as_ref()), pair)
}

/// The suite's operator key.
pub fn operator() -> &'static (String, Ed25519KeyPair) {
    static KEY: OnceLock<(String, Ed25519KeyPair)> = OnceLock::new();
    KEY.get_or_init(new_key)
}

/// `ed25519:BASE64 NAME` for a helper's `trusted_keys`.
pub fn trusted_line(key: &Ed25519KeyPair, name: &str) -> String {
    format!("{} {name}", sign::public_id(key))
}

pub fn nonce() -> String {
    let mut r = [0u8; 16];
    getrandom::fill(&mut r).expect("randomness");
    sign::nonce(r)
}

/// The statement of `job` (an `execute_job` payload) for `host`, valid
/// for an hour from now.
pub fn exec_statement(job: &Value, host: &str) -> ExecStatement {
    let (not_before, expires_at) = sign::window(Timestamp::now(), 3600);
    ExecStatement {
        host: host.to_owned(),
        job_id: job["jobId"].as_str().unwrap_or("").to_owned(),
        program: job["command"].as_str().unwrap_or("").to_owned(),
        args: job["args"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|v| v.as_str().unwrap_or("").to_owned())
                    .collect()
            })
            .unwrap_or_default(),
        timeout: job["timeout"].as_u64().unwrap_or(3600),
        not_before,
        expires_at,
        nonce: nonce(),
    }
}

pub fn sign_exec(st: &ExecStatement, key: &Ed25519KeyPair) -> Signed {
    sign::sign(st, sign::EXEC_LABEL, key).expect("signing")
}

/// A cron list's statement for `host`, valid for an hour from now.
pub fn cron_statement(entries: &Value, host: &str, generation: u64) -> CronStatement {
    let (not_before, expires_at) = sign::window(Timestamp::now(), 3600);
    CronStatement {
        host: host.to_owned(),
        generation,
        entries: serde_json::from_value(entries.clone()).expect("cron entries"),
        not_before,
        expires_at,
        nonce: nonce(),
    }
}

pub fn sign_cron(st: &CronStatement, key: &Ed25519KeyPair) -> Signed {
    sign::sign(st, sign::CRON_LABEL, key).expect("signing")
}

/// A generation above every earlier one in this process.
pub fn next_generation() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = u64::try_from(Timestamp::now().unix_millis()).unwrap_or(0);
    let prev = LAST.fetch_max(now, Ordering::SeqCst);
    if prev >= now {
        LAST.fetch_add(1, Ordering::SeqCst) + 1
    } else {
        now
    }
}
