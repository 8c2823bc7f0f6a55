//! The fleet cron set on each engine: replaced whole with a generation, a
//! stale plan refused, and joined to each host on its bound tags.

use super::*;
use crate::fleet::FleetEntry;

fn fleet_entry(id: &str, target: &str) -> FleetEntry {
    FleetEntry {
        target: target.into(),
        entry: CronEntry {
            id: id.into(),
            schedule: "@daily".into(),
            command: "/bin/true".into(),
            ..CronEntry::default()
        },
    }
}

fn ids(list: &[CronEntry]) -> Vec<&str> {
    list.iter().map(|e| e.id.as_str()).collect()
}

#[test]
fn effective_lists_join_own_and_matching_fleet_entries() {
    for (_guard, s) in stores() {
        let tags = |t: &[&str]| t.iter().map(|t| (*t).to_owned()).collect::<Vec<_>>();
        s.add_key_tagged("w", Some("web1"), Some(&tags(&["web", "eu"])), 0)
            .unwrap();
        s.add_key_tagged("d", Some("db1"), Some(&tags(&["db"])), 0)
            .unwrap();
        let own = fleet_entry("mine", "*").entry;
        s.set_cron("db1", std::slice::from_ref(&own), None, 0)
            .unwrap();
        assert_eq!(s.fleet_set().unwrap().generation, 0);
        let set = [fleet_entry("a", "tag:web,tag:eu"), fleet_entry("b", "*")];
        assert_eq!(s.put_fleet_set(&set, &[], None, 1).unwrap(), 1);
        assert_eq!(ids(&s.effective_cron("web1").unwrap()), ["a", "b"]);
        assert_eq!(ids(&s.effective_cron("db1").unwrap()), ["mine", "b"]);
        assert!(s.effective_cron("nobody").unwrap().is_empty());
        let all = s.effective_cron_all().unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(
            (all[0].0.as_str(), ids(&all[0].1)),
            ("db1", vec!["mine", "b"])
        );
        // Retagged away from eu: only `b`.
        s.retag_key("w", &tags(&["web"])).unwrap();
        assert_eq!(ids(&s.effective_cron("web1").unwrap()), ["b"]);
        // A plan against generation 0 is stale now: refused, set unchanged.
        let e = s.put_fleet_set(&[], &[], Some(0), 2).unwrap_err();
        assert_eq!(StoreError::classify(&e), ErrorKind::Conflict, "{e:#}");
        assert_eq!(s.fleet_set().unwrap().entries, set);
        assert_eq!(s.put_fleet_set(&[], &[], Some(1), 2).unwrap(), 2);
        assert_eq!(ids(&s.effective_cron("web1").unwrap()), Vec::<&str>::new());
        assert_eq!(s.fleet_generation().unwrap(), 2);
    }
}

#[test]
fn resend_requests_are_read_in_order_once() {
    for (_guard, s) in stores() {
        assert_eq!(s.resends_after(0).unwrap(), (vec![], 0));
        s.request_resend("a").unwrap();
        s.request_resend("b").unwrap();
        let (hosts, last) = s.resends_after(0).unwrap();
        assert_eq!((hosts, last), (vec!["a".to_owned(), "b".to_owned()], 2));
        // Asked again: after the cursor once more, with a new number.
        s.request_resend("a").unwrap();
        assert_eq!(s.resends_after(2).unwrap(), (vec!["a".to_owned()], 3));
        assert_eq!(s.resends_after(3).unwrap(), (vec![], 3));
    }
}
