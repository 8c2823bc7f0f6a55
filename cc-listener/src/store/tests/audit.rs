//! The audit log's chain: verified whole, broken by an edit, a deletion
//! or a cut end (each named by its first bad row), and kept verifiable
//! across pruning by its anchor.

use super::*;

fn entry(at_ms: i64, who: &str) -> AuditEntry {
    AuditEntry {
        at_ms,
        operator: who.into(),
        source: "127.0.0.1:5000".into(),
        action: "POST /api/v1/agents/{hostname}/jobs".into(),
        target: "web-1".into(),
        ids: vec!["job-1".into()],
        outcome: 202,
    }
}

fn seeded(s: &Store, n: i64) {
    for i in 1..=n {
        let row = s.append_audit(&entry(i * 1000, "alice")).unwrap();
        assert_eq!(row.seq, i);
    }
}

fn bad_seq(s: &Store) -> (i64, String) {
    match s.verify_audit().unwrap() {
        Verdict::Bad { seq, reason } => (seq, reason),
        ok => panic!("verified: {ok:?}"),
    }
}

#[test]
fn an_untouched_chain_verifies_and_lists_newest_rows_in_order() {
    for (_guard, s) in stores() {
        assert_eq!(
            s.verify_audit().unwrap(),
            Verdict::Ok {
                rows: 0,
                anchor_seq: 0
            }
        );
        seeded(&s, 5);
        s.append_audit(&entry(6000, "bob")).unwrap();
        assert_eq!(
            s.verify_audit().unwrap(),
            Verdict::Ok {
                rows: 6,
                anchor_seq: 0
            }
        );
        let rows = s.list_audit(None, None, 3).unwrap();
        assert_eq!(rows.iter().map(|r| r.seq).collect::<Vec<_>>(), [4, 5, 6]);
        assert_eq!(rows[1].prev_hash, rows[0].hash);
        let bob = s.list_audit(None, Some("bob"), 10).unwrap();
        assert_eq!(bob.len(), 1);
        let since = s.list_audit(Some(5000), None, 10).unwrap();
        assert_eq!(since.iter().map(|r| r.seq).collect::<Vec<_>>(), [5, 6]);
    }
}

#[test]
fn an_edited_row_is_named() {
    for (_guard, s) in stores() {
        seeded(&s, 5);
        s.write(|tx| tx.exec("UPDATE audit SET operator = 'mallory' WHERE seq = 3", &[]))
            .unwrap();
        let (seq, why) = bad_seq(&s);
        assert_eq!(seq, 3, "{why}");
        assert!(why.contains("edited"), "{why}");
    }
}

#[test]
fn an_edited_row_whose_hash_was_recomputed_breaks_the_next_link() {
    for (_guard, s) in stores() {
        seeded(&s, 5);
        let mut row = s.list_audit(None, None, 10).unwrap().remove(2);
        row.entry.operator = "mallory".into();
        let hash = super::super::audit::row_hash(row.seq, &row.entry, &row.prev_hash);
        s.write(|tx| {
            tx.exec(
                "UPDATE audit SET operator = 'mallory', hash = ?1 WHERE seq = 3",
                &p![hash],
            )
        })
        .unwrap();
        let (seq, why) = bad_seq(&s);
        assert_eq!(seq, 4, "{why}");
        assert!(why.contains("prev_hash"), "{why}");
    }
}

#[test]
fn a_deleted_row_is_named_and_so_is_a_cut_end() {
    for (_guard, s) in stores() {
        seeded(&s, 5);
        s.write(|tx| tx.exec("DELETE FROM audit WHERE seq = 2", &[]))
            .unwrap();
        let (seq, why) = bad_seq(&s);
        assert_eq!(seq, 2, "{why}");
        assert!(why.contains("missing"), "{why}");
    }
    for (_guard, s) in stores() {
        seeded(&s, 5);
        s.write(|tx| tx.exec("DELETE FROM audit WHERE seq >= 4", &[]))
            .unwrap();
        let (seq, why) = bad_seq(&s);
        assert_eq!(seq, 4, "{why}");
        assert!(why.contains("missing from the end"), "{why}");
    }
}

#[test]
fn pruning_keeps_the_anchor_so_the_rest_still_verifies() {
    for (_guard, s) in stores() {
        seeded(&s, 6);
        // Rows 1..=3 are older than 3500; at most 2 per call.
        assert_eq!(s.prune_audit(3500, 2).unwrap(), 2);
        assert_eq!(s.prune_audit(3500, 2).unwrap(), 1);
        assert_eq!(s.prune_audit(3500, 2).unwrap(), 0);
        assert_eq!(
            s.verify_audit().unwrap(),
            Verdict::Ok {
                rows: 3,
                anchor_seq: 3
            }
        );
        s.append_audit(&entry(7000, "alice")).unwrap();
        assert!(matches!(
            s.verify_audit().unwrap(),
            Verdict::Ok { rows: 4, .. }
        ));
        // Deleting the first row after the anchor is still seen.
        s.write(|tx| tx.exec("DELETE FROM audit WHERE seq = 4", &[]))
            .unwrap();
        assert_eq!(bad_seq(&s).0, 4);
    }
}
