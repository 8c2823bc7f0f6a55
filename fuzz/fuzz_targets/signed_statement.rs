//! Signed root work: nothing but a valid signature over these exact bytes
//! is accepted. A reference statement is signed with a fixed key; the input
//! flips bits of its statement bytes, its signature or its key (pairs of
//! position and XOR mask), and verification must fail unless every flip
//! was a no-op. Whole inputs are also decoded as envelopes and verified:
//! never a panic, never an acceptance (the fuzzer does not hold the key).
#![no_main]

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use cc_proto::sign::{self, CRON_LABEL, EXEC_LABEL, ExecStatement, PublicKey, Signed};
use libfuzzer_sys::fuzz_target;
use ring::signature::{Ed25519KeyPair, KeyPair as _};

fn reference() -> (Signed, Vec<PublicKey>) {
    let key = Ed25519KeyPair::from_seed_unchecked(&[9u8; 32]).unwrap();
    let st = ExecStatement {
        host: "web1.example".into(),
        job_id: "job-1".into(),
        program: "/usr/bin/id".into(),
        args: vec!["-u".into()],
        timeout: 60,
        not_before: "2026-01-01T00:00:00.000Z".into(),
        expires_at: "2026-01-01T01:00:00.000Z".into(),
        nonce: "00112233445566778899aabbccddeeff".into(),
    };
    let signed = sign::sign(&st, EXEC_LABEL, &key).unwrap();
    let public: [u8; 32] = key.public_key().as_ref().try_into().unwrap();
    (signed, vec![PublicKey::from_bytes(public, "fuzz")])
}

fuzz_target!(|data: &[u8]| {
    let (good, trusted) = reference();
    // 1. Arbitrary bytes as an envelope.
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(s) = cc_proto::helper::signed(Some(text)) {
            if s != good {
                assert!(sign::verify::<ExecStatement>(&s, EXEC_LABEL, &trusted).is_err());
            }
            let _ = sign::open::<ExecStatement>(&s, EXEC_LABEL);
        }
        let mut parts = text.splitn(2, '|');
        let _ = sign::check_window(parts.next().unwrap_or(""), parts.next().unwrap_or(""), cc_proto::Timestamp::now());
    }
    // 2. Bit flips of the reference.
    let mut stmt = B64.decode(&good.statement).unwrap();
    let mut sig = B64.decode(&good.signature).unwrap();
    let mut key = B64.decode(good.key.trim_start_matches("ed25519:")).unwrap();
    let mut changed = false;
    for pair in data.chunks_exact(3) {
        let pos = usize::from(u16::from_le_bytes([pair[0], pair[1]]));
        let mask = pair[2];
        let (buf, at) = if pos < stmt.len() {
            (&mut stmt, pos)
        } else if pos - stmt.len() < sig.len() {
            (&mut sig, pos - stmt.len())
        } else if pos - stmt.len() - sig.len() < key.len() {
            (&mut key, pos - stmt.len() - sig.len())
        } else {
            continue;
        };
        buf[at] ^= mask;
        changed |= mask != 0;
    }
    let flipped = Signed {
        statement: B64.encode(&stmt),
        signature: B64.encode(&sig),
        key: format!("ed25519:{}", B64.encode(&key)),
    };
    let same = stmt == B64.decode(&good.statement).unwrap()
        && sig == B64.decode(&good.signature).unwrap()
        && key == B64.decode(good.key.trim_start_matches("ed25519:")).unwrap();
    let verdict = sign::verify::<ExecStatement>(&flipped, EXEC_LABEL, &trusted);
    assert_eq!(verdict.is_ok(), same, "changed: {changed}");
    // Never under another label.
    assert!(sign::verify::<ExecStatement>(&flipped, CRON_LABEL, &trusted).is_err());
});
