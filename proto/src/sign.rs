//! Signed root work: a root job or a root cron list runs only if a key the
//! host trusts signed exactly that work, for that host, recently, once.
//!
//! A *statement* is canonical JSON (our own encoding of the struct, so one
//! statement has exactly one byte form) naming every field that changes
//! what runs. The signature (Ed25519) covers a domain-separation label, a
//! NUL, and those bytes: an exec statement cannot pass for a cron list, nor
//! either for anything a later version signs. On the wire a [`Signed`]
//! carries the statement's exact bytes, the signature and the public key.
//! [`verify`] checks the key is trusted, the signature, and that the bytes
//! are the canonical encoding of what they decode to; the caller checks the
//! host, the time window ([`check_window`]), the nonce (replay) and, for a
//! cron list, the generation.
//!
//! Pure computation: no I/O, no clock (the caller passes the time).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::Timestamp;
use crate::wire::{CronEntry, ExecuteJob};

/// Label of a root job's statement.
pub const EXEC_LABEL: &str = "croncommander exec v1";
/// Label of a root cron list's statement.
pub const CRON_LABEL: &str = "croncommander cron v1";
/// Longest validity: `expiresAt` at most this long after `notBefore`.
pub const MAX_VALIDITY_SECS: i64 = 24 * 3600;
/// Clocks disagree: a statement is accepted this long before `notBefore`.
pub const CLOCK_SKEW_SECS: i64 = 60;
/// Largest statement, in bytes (a cron list of 1,000 entries fits).
pub const MAX_STATEMENT_BYTES: usize = 512 * 1024;

/// One root job: what runs, on which host, in which window, once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ExecStatement {
    pub host: String,
    pub job_id: String,
    pub program: String,
    pub args: Vec<String>,
    pub timeout: u64,
    pub not_before: String,
    pub expires_at: String,
    /// 128 random bits, hex.
    pub nonce: String,
}

/// A host's whole root cron list; `generation` must increase.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CronStatement {
    pub host: String,
    pub generation: u64,
    pub entries: Vec<CronEntry>,
    pub not_before: String,
    pub expires_at: String,
    pub nonce: String,
}

/// A statement as it travels: its exact bytes, the signature, the key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signed {
    /// The statement's bytes, base64.
    pub statement: String,
    /// Ed25519 signature over label, NUL, statement bytes; base64.
    pub signature: String,
    /// The signer's public key, `ed25519:BASE64`.
    pub key: String,
}

/// A trusted key from a config line `ed25519:BASE64 name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    bytes: [u8; 32],
    pub name: String,
}

/// Which check refused the statement; the message says it in words.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SignError {
    #[error("unsigned: system-mode work must carry an operator's signature")]
    Unsigned,
    #[error("malformed signature envelope: {0}")]
    Malformed(String),
    #[error("unknown key: {0} is not among this host's trusted keys")]
    UnknownKey(String),
    #[error("bad signature: the statement was not signed by {0}")]
    BadSignature(String),
    #[error("not canonical: the signed bytes are not the statement's one encoding")]
    NotCanonical,
    #[error("wrong host: the statement is for {statement:?}, this host is {host:?}")]
    WrongHost { statement: String, host: String },
    #[error("not yet valid: valid from {0}")]
    NotYetValid(String),
    #[error("expired: valid until {0}")]
    Expired(String),
    #[error("too long: valid from {0} to {1}, more than 24 h")]
    TooLong(String, String),
    #[error("replayed: this statement (key {0}, nonce {1}) was accepted before")]
    Replayed(String, String),
    #[error("rolled back: generation {got} is not above the installed {installed}")]
    RolledBack { got: u64, installed: u64 },
    #[error(
        "from the future: generation {got} is more than 24 h ahead of this host's clock ({now})"
    )]
    FromTheFuture { got: u64, now: u64 },
    #[error("changed after signing: the job's {0} is not what was signed")]
    Changed(&'static str),
}

impl PublicKey {
    /// `ed25519:BASE64` and an optional name (the key itself by default).
    pub fn parse(line: &str) -> Result<Self, SignError> {
        let mut parts = line.split_whitespace();
        let key = parts.next().unwrap_or("");
        let bytes = decode_key(key)?;
        let name = parts.collect::<Vec<_>>().join(" ");
        Ok(Self {
            bytes,
            name: if name.is_empty() {
                key.to_owned()
            } else {
                name
            },
        })
    }

    /// `ed25519:BASE64`.
    pub fn id(&self) -> String {
        format!("ed25519:{}", B64.encode(self.bytes))
    }

    pub fn from_bytes(bytes: [u8; 32], name: &str) -> Self {
        Self {
            bytes,
            name: name.to_owned(),
        }
    }
}

fn decode_key(key: &str) -> Result<[u8; 32], SignError> {
    let b64 = key
        .strip_prefix("ed25519:")
        .ok_or_else(|| SignError::Malformed(format!("key {key:?} is not ed25519:BASE64")))?;
    B64.decode(b64)
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .ok_or_else(|| SignError::Malformed(format!("key {key:?} is not 32 bytes of base64")))
}

/// What a signature covers.
pub fn message(label: &str, statement: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(label.len() + 1 + statement.len());
    m.extend_from_slice(label.as_bytes());
    m.push(0);
    m.extend_from_slice(statement);
    m
}

/// Checks `signed` against `trusted` and decodes its statement: the key is
/// trusted, the signature is over `label` and these exact bytes, and the
/// bytes are the statement's canonical encoding.
pub fn verify<'k, T: Serialize + DeserializeOwned>(
    signed: &Signed,
    label: &str,
    trusted: &'k [PublicKey],
) -> Result<(T, &'k PublicKey), SignError> {
    let key_bytes = decode_key(&signed.key)?;
    let key = trusted
        .iter()
        .find(|k| k.bytes == key_bytes)
        .ok_or_else(|| SignError::UnknownKey(signed.key.clone()))?;
    let statement = decode_statement_bytes(&signed.statement)?;
    let signature = B64
        .decode(&signed.signature)
        .ok()
        .filter(|s| s.len() == 64)
        .ok_or_else(|| SignError::Malformed("the signature is not 64 bytes of base64".into()))?;
    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, key.bytes)
        .verify(&message(label, &statement), &signature)
        .map_err(|_| SignError::BadSignature(key.name.clone()))?;
    let value: T = serde_json::from_slice(&statement)
        .map_err(|e| SignError::Malformed(format!("statement: {e}")))?;
    if serde_json::to_vec(&value).ok().as_deref() != Some(statement.as_slice()) {
        return Err(SignError::NotCanonical);
    }
    Ok((value, key))
}

fn decode_statement_bytes(b64: &str) -> Result<Vec<u8>, SignError> {
    // Checked before decoding: base64 is 4/3 of the bytes.
    if b64.len() > MAX_STATEMENT_BYTES / 3 * 4 + 4 {
        return Err(SignError::Malformed("the statement is too large".into()));
    }
    B64.decode(b64)
        .map_err(|_| SignError::Malformed("the statement is not base64".into()))
}

/// The statement's validity window holds `now`, and is at most 24 h long.
pub fn check_window(not_before: &str, expires_at: &str, now: Timestamp) -> Result<(), SignError> {
    let parse = |field, v: &str| {
        Timestamp::parse(field, v).map_err(|e| SignError::Malformed(e.to_string()))
    };
    let (from, until) = (
        parse("notBefore", not_before)?,
        parse("expiresAt", expires_at)?,
    );
    let (from_ms, until_ms, now_ms) = (from.unix_millis(), until.unix_millis(), now.unix_millis());
    if until_ms.saturating_sub(from_ms) > MAX_VALIDITY_SECS * 1000 || until_ms < from_ms {
        return Err(SignError::TooLong(not_before.into(), expires_at.into()));
    }
    if now_ms.saturating_add(CLOCK_SKEW_SECS * 1000) < from_ms {
        return Err(SignError::NotYetValid(not_before.into()));
    }
    if now_ms >= until_ms {
        return Err(SignError::Expired(expires_at.into()));
    }
    Ok(())
}

/// A nonce: 32 hex digits.
pub fn valid_nonce(n: &str) -> bool {
    n.len() == 32
        && n.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

impl ExecStatement {
    /// The job as the listener sent it is exactly what was signed.
    pub fn check_job(&self, job: &ExecuteJob) -> Result<(), SignError> {
        if job.job_id != self.job_id {
            return Err(SignError::Changed("job id"));
        }
        if job.command != self.program || job.args != self.args {
            return Err(SignError::Changed("argv"));
        }
        if job.timeout.unwrap_or(crate::Timeout::DEFAULT.secs()) != self.timeout {
            return Err(SignError::Changed("timeout"));
        }
        Ok(())
    }

    /// The `execute_job` this statement describes.
    pub fn job(&self) -> ExecuteJob {
        ExecuteJob {
            job_id: self.job_id.clone(),
            command: self.program.clone(),
            args: self.args.clone(),
            timeout: Some(self.timeout),
        }
    }
}

/// Signs `statement` (canonical bytes) under `label` with an Ed25519 key
/// pair; `public` is its `ed25519:BASE64` id.
pub fn sign<T: Serialize>(
    statement: &T,
    label: &str,
    key: &ring::signature::Ed25519KeyPair,
) -> Result<Signed, serde_json::Error> {
    use ring::signature::KeyPair as _;
    let bytes = serde_json::to_vec(statement)?;
    let signature = key.sign(&message(label, &bytes));
    Ok(Signed {
        statement: B64.encode(&bytes),
        signature: B64.encode(signature.as_ref()),
        key: format!("ed25519:{}", B64.encode(key.public_key().as_ref())),
    })
}

/// Decodes `signed`'s statement checking only what needs no trust: the
/// signature is valid for the key it names, and the bytes are canonical.
/// For a relay (the listener), which stores and forwards what it cannot
/// judge; a host still checks the key is one it trusts ([`verify`]).
pub fn open<T: Serialize + DeserializeOwned>(signed: &Signed, label: &str) -> Result<T, SignError> {
    let key = PublicKey::from_bytes(decode_key(&signed.key)?, &signed.key);
    verify(signed, label, std::slice::from_ref(&key)).map(|(t, _)| t)
}

/// An Ed25519 key pair from a PEM `PRIVATE KEY` block (PKCS#8, as
/// `ccctl keygen` writes it).
pub fn key_pair_from_pem(text: &str) -> Result<ring::signature::Ed25519KeyPair, SignError> {
    let b64: String = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("-----"))
        .collect();
    let der = B64
        .decode(b64)
        .map_err(|_| SignError::Malformed("the key file is not a PEM private key".into()))?;
    ring::signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der)
        .map_err(|e| SignError::Malformed(format!("the key file holds no Ed25519 key: {e}")))
}

/// PEM text of a PKCS#8 private key.
pub fn pem(pkcs8: &[u8]) -> String {
    let b64 = B64.encode(pkcs8);
    let mut out = String::from("-----BEGIN PRIVATE KEY-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str("-----END PRIVATE KEY-----\n");
    out
}

/// `ed25519:BASE64` of a key pair's public half.
pub fn public_id(key: &ring::signature::Ed25519KeyPair) -> String {
    use ring::signature::KeyPair as _;
    format!("ed25519:{}", B64.encode(key.public_key().as_ref()))
}

/// A nonce from 16 random bytes.
pub fn nonce(random: [u8; 16]) -> String {
    random.iter().map(|b| format!("{b:02x}")).collect()
}

/// `notBefore` and `expiresAt` for a statement valid from `now` for
/// `secs` (capped at 24 h).
pub fn window(now: Timestamp, secs: i64) -> (String, String) {
    let secs = secs.clamp(1, MAX_VALIDITY_SECS);
    let until = chrono::DateTime::from_timestamp_millis(now.unix_millis() + secs * 1000)
        .map(Timestamp::from_datetime)
        .unwrap_or(now);
    (now.to_string(), until.to_string())
}

/// The statement bytes of `signed`, decoded (for tools that show it).
pub fn statement_bytes(signed: &Signed) -> Result<Vec<u8>, SignError> {
    decode_statement_bytes(&signed.statement)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> ring::signature::Ed25519KeyPair {
        // A fixed test seed: deterministic, no randomness needed.
        ring::signature::Ed25519KeyPair::from_seed_unchecked(&[7u8; 32]).unwrap()
    }

    fn trusted(k: &ring::signature::Ed25519KeyPair) -> Vec<PublicKey> {
        use ring::signature::KeyPair as _;
        let bytes: [u8; 32] = k.public_key().as_ref().try_into().unwrap();
        vec![PublicKey::from_bytes(bytes, "ops")]
    }

    fn stmt() -> ExecStatement {
        ExecStatement {
            host: "web1".into(),
            job_id: "j1".into(),
            program: "/usr/bin/id".into(),
            args: vec!["-u".into()],
            timeout: 60,
            not_before: "2026-01-01T00:00:00Z".into(),
            expires_at: "2026-01-01T01:00:00Z".into(),
            nonce: "0123456789abcdef0123456789abcdef".into(),
        }
    }

    #[test]
    fn a_signed_statement_verifies_and_nothing_else_does() {
        let k = pair();
        let keys = trusted(&k);
        let s = sign(&stmt(), EXEC_LABEL, &k).unwrap();
        let (got, by): (ExecStatement, _) = verify(&s, EXEC_LABEL, &keys).unwrap();
        assert_eq!((got, by.name.as_str()), (stmt(), "ops"));
        // Another label (a cron list), another key, a flipped byte.
        assert!(matches!(
            verify::<ExecStatement>(&s, CRON_LABEL, &keys),
            Err(SignError::BadSignature(_))
        ));
        let other = ring::signature::Ed25519KeyPair::from_seed_unchecked(&[8u8; 32]).unwrap();
        assert!(matches!(
            verify::<ExecStatement>(&s, EXEC_LABEL, &trusted(&other)),
            Err(SignError::UnknownKey(_))
        ));
        let mut bytes = statement_bytes(&s).unwrap();
        bytes[10] ^= 1;
        let tampered = Signed {
            statement: B64.encode(&bytes),
            ..s.clone()
        };
        assert!(matches!(
            verify::<ExecStatement>(&tampered, EXEC_LABEL, &keys),
            Err(SignError::BadSignature(_))
        ));
        let truncated = Signed {
            signature: s.signature[..40].into(),
            ..s.clone()
        };
        assert!(matches!(
            verify::<ExecStatement>(&truncated, EXEC_LABEL, &keys),
            Err(SignError::Malformed(_))
        ));
    }

    /// The statement size limit, exactly at its edge, and a cron list of
    /// 1,000 entries (what the limit is for) within it.
    #[test]
    fn statements_are_bounded_and_a_thousand_entry_cron_list_fits() {
        let k = pair();
        let keys = trusted(&k);
        let s = sign(&stmt(), EXEC_LABEL, &k).unwrap();
        let limit = MAX_STATEMENT_BYTES / 3 * 4 + 4;
        let at = Signed {
            statement: "A".repeat(limit),
            ..s.clone()
        };
        // At the limit the bytes are decoded, and the signature judged.
        assert!(matches!(
            verify::<ExecStatement>(&at, EXEC_LABEL, &keys),
            Err(SignError::BadSignature(_))
        ));
        let over = Signed {
            statement: "A".repeat(limit + 4),
            ..s
        };
        assert_eq!(
            verify::<ExecStatement>(&over, EXEC_LABEL, &keys),
            Err(SignError::Malformed("the statement is too large".into()))
        );
        let entries = (0..1000)
            .map(|i| CronEntry {
                id: format!("entry-{i:04}"),
                schedule: "*/5 * * * *".into(),
                command: "/usr/local/sbin/rotate --all /var/log/app".into(),
                ..Default::default()
            })
            .collect();
        let list = CronStatement {
            host: "web1".into(),
            generation: 1,
            entries,
            not_before: "2026-01-01T00:00:00Z".into(),
            expires_at: "2026-01-01T01:00:00Z".into(),
            nonce: "0123456789abcdef0123456789abcdef".into(),
        };
        let signed = sign(&list, CRON_LABEL, &k).unwrap();
        assert!(signed.statement.len() > 64 * 1024, "the list is large");
        let (got, _): (CronStatement, _) = verify(&signed, CRON_LABEL, &keys).unwrap();
        assert_eq!(got.entries.len(), 1000);
    }

    /// The window's edges: an empty window is expired, not "too long"; a
    /// statement is valid exactly the allowed skew before `notBefore`.
    #[test]
    fn window_edges() {
        let t = |ms: i64| {
            Timestamp::from_datetime(chrono::DateTime::from_timestamp_millis(ms).unwrap())
        };
        let from = t(1_767_225_600_000); // 2026-01-01T00:00:00Z
        let (nb, ea) = (
            from.to_string(),
            t(from.unix_millis() + 3_600_000).to_string(),
        );
        let skew = CLOCK_SKEW_SECS * 1000;
        assert_eq!(check_window(&nb, &ea, t(from.unix_millis() - skew)), Ok(()));
        assert_eq!(
            check_window(&nb, &ea, t(from.unix_millis() - skew - 1)),
            Err(SignError::NotYetValid(nb.clone()))
        );
        assert_eq!(
            check_window(&nb, &nb, t(from.unix_millis() + 1)),
            Err(SignError::Expired(nb.clone()))
        );
        let day = t(from.unix_millis() + MAX_VALIDITY_SECS * 1000).to_string();
        assert_eq!(check_window(&nb, &day, from), Ok(()));
        let longer = t(from.unix_millis() + MAX_VALIDITY_SECS * 1000 + 1).to_string();
        assert!(matches!(
            check_window(&nb, &longer, from),
            Err(SignError::TooLong(..))
        ));
        assert!(matches!(
            check_window(&ea, &nb, from),
            Err(SignError::TooLong(..))
        ));
    }

    /// What `ccctl keygen` writes and prints: the key file loads back to
    /// the same key, its public line parses to the same bytes, and nonces
    /// are 32 lowercase hex digits of the random bytes given.
    #[test]
    fn key_files_public_ids_and_nonces_round_trip() {
        use ring::signature::KeyPair as _;
        let doc = ring::signature::Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new())
            .unwrap();
        let text = pem(doc.as_ref());
        assert!(text.starts_with("-----BEGIN PRIVATE KEY-----\n"), "{text}");
        assert!(text.ends_with("\n-----END PRIVATE KEY-----\n"), "{text}");
        assert!(text.lines().all(|l| l.len() <= 64), "{text}");
        let made = ring::signature::Ed25519KeyPair::from_pkcs8(doc.as_ref()).unwrap();
        let loaded = key_pair_from_pem(&text).unwrap();
        assert_eq!(made.public_key().as_ref(), loaded.public_key().as_ref());
        assert!(key_pair_from_pem("-----BEGIN PRIVATE KEY-----\nnot base64!\n").is_err());
        assert!(key_pair_from_pem(&pem(b"not a key")).is_err());
        let id = public_id(&loaded);
        assert_eq!(
            id,
            format!("ed25519:{}", B64.encode(loaded.public_key().as_ref()))
        );
        let parsed = PublicKey::parse(&format!("{id} alice@ops")).unwrap();
        assert_eq!((parsed.id(), parsed.name.as_str()), (id, "alice@ops"));
        assert_eq!(parsed.bytes.as_slice(), loaded.public_key().as_ref());
        assert_eq!(nonce([0xab; 16]), "ab".repeat(16));
        assert_eq!(nonce([0x01; 16]), "01".repeat(16));
        assert!(valid_nonce(&nonce([0x7f; 16])));
    }

    #[test]
    fn only_the_canonical_encoding_is_accepted() {
        let k = pair();
        // The same statement with a space after a colon, signed.
        let text = serde_json::to_string(&stmt())
            .unwrap()
            .replacen(':', ": ", 1);
        let sig = k.sign(&message(EXEC_LABEL, text.as_bytes()));
        use ring::signature::KeyPair as _;
        let s = Signed {
            statement: B64.encode(text.as_bytes()),
            signature: B64.encode(sig.as_ref()),
            key: format!("ed25519:{}", B64.encode(k.public_key().as_ref())),
        };
        assert_eq!(
            verify::<ExecStatement>(&s, EXEC_LABEL, &trusted(&k)).unwrap_err(),
            SignError::NotCanonical
        );
    }

    #[test]
    fn the_window_is_checked_with_skew_and_a_24_hour_cap() {
        let at = |t: &str| Timestamp::parse("t", t).unwrap();
        let (from, until) = ("2026-01-01T00:00:00Z", "2026-01-01T01:00:00Z");
        assert!(check_window(from, until, at("2026-01-01T00:30:00Z")).is_ok());
        assert!(
            check_window(from, until, at("2025-12-31T23:59:30Z")).is_ok(),
            "skew"
        );
        assert!(matches!(
            check_window(from, until, at("2025-12-31T23:58:00Z")),
            Err(SignError::NotYetValid(_))
        ));
        assert!(matches!(
            check_window(from, until, at("2026-01-01T01:00:00Z")),
            Err(SignError::Expired(_))
        ));
        assert!(matches!(
            check_window(from, "2026-01-02T00:00:01Z", at("2026-01-01T00:30:00Z")),
            Err(SignError::TooLong(..))
        ));
        assert!(check_window(from, "2026-01-02T00:00:00Z", at("2026-01-01T00:30:00Z")).is_ok());
        assert!(matches!(
            check_window(until, from, at("2026-01-01T00:30:00Z")),
            Err(SignError::TooLong(..))
        ));
    }

    #[test]
    fn a_job_must_be_what_was_signed() {
        let s = stmt();
        assert!(s.check_job(&s.job()).is_ok());
        let mut j = s.job();
        j.args.push("x".into());
        assert_eq!(s.check_job(&j), Err(SignError::Changed("argv")));
        let mut j = s.job();
        j.timeout = Some(61);
        assert_eq!(s.check_job(&j), Err(SignError::Changed("timeout")));
        let mut j = s.job();
        j.job_id = "j2".into();
        assert_eq!(s.check_job(&j), Err(SignError::Changed("job id")));
        assert!(valid_nonce(&s.nonce) && !valid_nonce("xyz") && !valid_nonce(&"A".repeat(32)));
    }

    #[test]
    fn a_relay_opens_what_it_cannot_judge_and_nothing_broken() {
        let k = pair();
        let s = sign(&stmt(), EXEC_LABEL, &k).unwrap();
        assert_eq!(open::<ExecStatement>(&s, EXEC_LABEL).unwrap(), stmt());
        assert!(open::<ExecStatement>(&s, CRON_LABEL).is_err());
        let pem_text = pem(&[0u8; 3]);
        assert!(key_pair_from_pem(&pem_text).is_err());
        let (from, until) = window(
            Timestamp::parse("t", "2026-01-01T00:00:00Z").unwrap(),
            99_999,
        );
        assert_eq!(
            (from.as_str(), until.as_str()),
            ("2026-01-01T00:00:00.000Z", "2026-01-02T00:00:00.000Z")
        );
    }

    #[test]
    fn keys_parse_from_config_lines() {
        let k = pair();
        let keys = trusted(&k);
        let line = format!("{} alice laptop", keys[0].id());
        let p = PublicKey::parse(&line).unwrap();
        assert_eq!((p.id(), p.name.as_str()), (keys[0].id(), "alice laptop"));
        assert!(PublicKey::parse("rsa:AAAA").is_err());
        assert!(PublicKey::parse("ed25519:AAAA").is_err());
    }
}
