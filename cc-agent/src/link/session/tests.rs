//! The session's outbox bookkeeping, without a socket.

use super::*;
use crate::outbox::tests::report;

/// A `report_rejected` deletes the one report it names, and only if
/// this connection sent it; one with an invalid id or a reason that
/// would forge log lines deletes nothing (a hostile listener could
/// ack the report anyway, but not write into the agent's log).
#[test]
fn a_rejection_deletes_only_the_valid_named_report_this_connection_sent() {
    let dir = std::env::temp_dir().join(format!("cc-reject-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let ob = Outbox::open(&dir).unwrap();
    let a = ob.put(report("a")).unwrap();
    let b = ob.put(report("b")).unwrap();
    let unsent = ob.put(report("c")).unwrap();
    let mut sent: Sent = ob
        .list()
        .unwrap()
        .into_iter()
        .filter(|e| e.report_id != unsent)
        .map(|e| (e.report_id.clone(), e))
        .collect();
    let ids = |ob: &Outbox| -> Vec<String> {
        ob.list()
            .unwrap()
            .into_iter()
            .map(|e| e.report_id)
            .collect()
    };
    let rejected = |id: &str, reason: &str| ReportRejected {
        report_id: id.into(),
        reason: reason.into(),
    };
    for bad in [
        rejected(&a, "quota\n2026-01-01T00:00:00Z  INFO forged line"),
        rejected(&a, &"q".repeat(1025)),
        rejected(&a, ""),
        rejected("../a", "quota"),
        rejected(&unsent, "quota"),
        rejected("never-sent", "quota"),
    ] {
        on_rejected(&ob, &mut sent, &bad);
    }
    assert_eq!(ids(&ob), [a.clone(), b.clone(), unsent.clone()]);
    assert_eq!(sent.len(), 2);
    on_rejected(&ob, &mut sent, &rejected(&a, "report quota reached"));
    assert_eq!(ids(&ob), [b.clone(), unsent.clone()]);
    assert!(!sent.contains_key(&a));
    // Twice is harmless.
    on_rejected(&ob, &mut sent, &rejected(&a, "report quota reached"));
    assert_eq!(ids(&ob), [b, unsent]);
    std::fs::remove_dir_all(dir).unwrap();
}
