//! Fleet cron entries: cron entries with a [`Target`], held as one set
//! (`PUT /fleet/cron` replaces it whole, a new generation), joined to each
//! host's own list to make its *effective* list — what is pushed, what
//! reports are matched against and what scheduled runs are expected from.
//!
//! This module is pure (no I/O): targets, the set's validation, a host's
//! effective list and the plan of a change. Storage is `store/fleet.rs`,
//! the API `api/fleet.rs`, pushing `push`.
//!
//! Decisions:
//! - A target's comma-joined terms must ALL match (`tag:web,tag:eu`: hosts
//!   bound both tags) — unlike an operator's [`crate::auth::Selector`],
//!   where a comma means any. Tags are the host key's bound tags, never
//!   what an agent declares.
//! - Ids are one namespace per host: a set whose entry would join a host
//!   that has its own entry of the same id is refused, naming the hosts.
//!   A host that later gets such a collision (retag, `PUT /agents/H/cron`)
//!   keeps its own entry; the fleet entry is left out of its list and
//!   status shows it (`shadowed`).
//! - Own entries come first, then fleet entries in the set's order.
//!
//! Invariant: a system-mode host is only ever pushed a list that an
//! operator's signature covers, or the last one signed: fleet entries
//! never reach root unsigned (`push`).

use std::collections::{HashMap, HashSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use cc_proto::wire::{CronEntry, MAX_CRON_ENTRIES};
use cc_proto::{Hostname, Tag};

pub mod push;

/// One term of a [`Target`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Term {
    All,
    Host(Hostname),
    Tag(Tag),
}

/// Most terms a target may join.
pub const MAX_TARGET_TERMS: usize = 16;

/// Which hosts a fleet entry joins: every term must match.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target(Vec<Term>);

impl Target {
    /// `*`, `host:NAME`, `tag:T`, comma-joined (no spaces, no empty term):
    /// a host must match all of them.
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.is_empty() {
            return Err("an empty target: use * for every host".into());
        }
        let mut terms = Vec::new();
        for (i, term) in s.split(',').enumerate() {
            if i == MAX_TARGET_TERMS {
                return Err(format!(
                    "target {:?}…: at most {MAX_TARGET_TERMS} terms",
                    s.chars().take(64).collect::<String>()
                ));
            }
            let t = if term == "*" {
                Term::All
            } else if let Some(h) = term.strip_prefix("host:") {
                Term::Host(Hostname::parse(h).map_err(|e| format!("{term:?}: {e}"))?)
            } else if let Some(t) = term.strip_prefix("tag:") {
                Term::Tag(Tag::parse(t).map_err(|e| format!("{term:?}: {e}"))?)
            } else {
                return Err(format!(
                    "{term:?} in target {s:?}: each term is *, host:NAME or tag:T, joined by commas (a host must match all of them)"
                ));
            };
            if !terms.contains(&t) {
                terms.push(t);
            }
        }
        Ok(Self(terms))
    }

    /// Whether the host `hostname`, whose bound tags are `bound_tags`,
    /// matches every term.
    pub fn matches<S: AsRef<str>>(&self, hostname: &str, bound_tags: &[S]) -> bool {
        self.0.iter().all(|t| match t {
            Term::All => true,
            Term::Host(h) => h.as_str().eq_ignore_ascii_case(hostname),
            Term::Tag(tag) => bound_tags.iter().any(|b| b.as_ref() == tag.as_str()),
        })
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, t) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            match t {
                Term::All => f.write_str("*")?,
                Term::Host(h) => write!(f, "host:{}", h.as_str())?,
                Term::Tag(t) => write!(f, "tag:{}", t.as_str())?,
            }
        }
        Ok(())
    }
}

/// A fleet entry as the API and the store carry it: a cron entry and its
/// target, `{"id","target","schedule","command","timeout"?,"jitter"?,"grace"?}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetEntry {
    pub target: String,
    #[serde(flatten)]
    pub entry: CronEntry,
}

/// A validated fleet entry: its target parsed, its entry canonical.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetJob {
    pub target: Target,
    pub entry: CronEntry,
}

impl FleetJob {
    pub fn to_wire(&self) -> FleetEntry {
        FleetEntry {
            target: self.target.to_string(),
            entry: self.entry.clone(),
        }
    }
}

/// Most entries a fleet set may hold.
pub const MAX_FLEET_ENTRIES: usize = MAX_CRON_ENTRIES;

/// Checks a fleet set entry by entry (as `PUT /agents/H/cron` checks a
/// host's list): each target parses, each entry validates and is put in
/// canonical form, no id appears twice. An error names the entry.
pub fn validate_set(entries: &[FleetEntry]) -> Result<Vec<FleetJob>, String> {
    if entries.len() > MAX_FLEET_ENTRIES {
        return Err(format!("at most {MAX_FLEET_ENTRIES} fleet entries"));
    }
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(entries.len());
    for (i, e) in entries.iter().enumerate() {
        let target = Target::parse(&e.target)
            .map_err(|why| format!("entry {i} (id {:?}): target: {why}", e.entry.id))?;
        let job = e
            .entry
            .validate()
            .map_err(|why| format!("entry {i} (id {:?}): {why}", e.entry.id))?;
        if !seen.insert(job.id.to_string()) {
            return Err(format!("entry {i}: id {:?} appears twice", e.entry.id));
        }
        out.push(FleetJob {
            target,
            entry: CronEntry::from(&job),
        });
    }
    Ok(out)
}

/// A host as the fleet sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FleetHost {
    pub hostname: String,
    /// Its live key's tags (the operator's), never the agent's claim.
    pub bound_tags: Vec<String>,
    /// `"user"`, `"system"`, or `None` for a host not registered yet.
    pub mode: Option<String>,
    /// Its own list (`PUT /agents/H/cron`).
    pub own: Vec<CronEntry>,
    /// The stored signed statements (JSON): of its own list, then of its
    /// effective list (`cron apply --system`).
    pub own_signed: Option<String>,
    pub fleet_signed: Option<String>,
    /// When `fleet_signed` was stored.
    pub fleet_signed_ms: Option<i64>,
    /// What the agent last said it installed (`cron_status`, JSON).
    pub cron_status: Option<String>,
    /// What the agent last said of its cron daemon (`cronHost`, JSON).
    pub cron_host: Option<String>,
}

impl FleetHost {
    pub fn is_system(&self) -> bool {
        self.mode.as_deref() == Some("system")
    }
}

/// A host's effective list: its own entries, then every fleet entry whose
/// target matches it whose id it does not already have; and the ids of
/// the fleet entries left out for that reason.
pub fn effective(host: &FleetHost, fleet: &[FleetJob]) -> (Vec<CronEntry>, Vec<String>) {
    let mut list = host.own.clone();
    let own: HashSet<&str> = host.own.iter().map(|e| e.id.as_str()).collect();
    let mut shadowed = Vec::new();
    for f in fleet {
        if !f.target.matches(&host.hostname, &host.bound_tags) {
            continue;
        }
        if own.contains(f.entry.id.as_str()) {
            shadowed.push(f.entry.id.clone());
        } else {
            list.push(f.entry.clone());
        }
    }
    (list, shadowed)
}

/// What a change of a host's list does to it, by entry id.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Diff {
    pub added: Vec<String>,
    pub changed: Vec<String>,
    pub removed: Vec<String>,
}

impl Diff {
    pub fn of(old: &[CronEntry], new: &[CronEntry]) -> Self {
        let before: HashMap<&str, &CronEntry> = old.iter().map(|e| (e.id.as_str(), e)).collect();
        let after: HashSet<&str> = new.iter().map(|e| e.id.as_str()).collect();
        let mut d = Self::default();
        for e in new {
            match before.get(e.id.as_str()) {
                None => d.added.push(e.id.clone()),
                Some(b) if *b != e => d.changed.push(e.id.clone()),
                Some(_) => {}
            }
        }
        for e in old {
            if !after.contains(e.id.as_str()) {
                d.removed.push(e.id.clone());
            }
        }
        d
    }

    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.changed.is_empty() && self.removed.is_empty()
    }
}

/// Why a fleet set cannot be applied as it is: fleet entries that would
/// join a host holding its own entry of the same id, or lists over
/// [`MAX_CRON_ENTRIES`]. Each names the hosts (the first few, and how many).
pub fn refusals(hosts: &[FleetHost], fleet: &[FleetJob]) -> Vec<String> {
    let mut clash: Vec<(String, Vec<&str>)> = Vec::new();
    let mut too_long = Vec::new();
    for h in hosts {
        let (list, shadowed) = effective(h, fleet);
        for id in shadowed {
            match clash.iter_mut().find(|(i, _)| *i == id) {
                Some((_, hs)) => hs.push(&h.hostname),
                None => clash.push((id, vec![&h.hostname])),
            }
        }
        if list.len() > MAX_CRON_ENTRIES {
            too_long.push(h.hostname.as_str());
        }
    }
    let mut out: Vec<String> = clash
        .into_iter()
        .map(|(id, hs)| {
            format!(
                "fleet entry {id:?} has the id of an entry of the host's own list on {}: rename one of them",
                name_hosts(&hs)
            )
        })
        .collect();
    if !too_long.is_empty() {
        out.push(format!(
            "the list of {} would hold more than {MAX_CRON_ENTRIES} entries",
            name_hosts(&too_long)
        ));
    }
    out
}

/// `a, b, c and 7 more` (`N hosts: …`).
pub fn name_hosts(hosts: &[&str]) -> String {
    const SHOWN: usize = 5;
    let shown = hosts
        .iter()
        .take(SHOWN)
        .copied()
        .collect::<Vec<_>>()
        .join(", ");
    let n = hosts.len();
    let noun = if n == 1 { "host" } else { "hosts" };
    if n > SHOWN {
        format!("{n} {noun} ({shown} and {} more)", n - SHOWN)
    } else {
        format!("{n} {noun} ({shown})")
    }
}

/// Whether the signed statement `signed` (JSON of a
/// [`cc_proto::sign::Signed`]) is for `host` and covers exactly
/// `entries`. Opened as a relay can: whether its key is trusted is the
/// host's to decide.
pub fn covers(signed: Option<&str>, host: &str, entries: &[CronEntry]) -> bool {
    statement(signed, host).is_some_and(|st| st.entries == entries)
}

/// The cron statement in `signed`, if it opens and is for `host`, its
/// entries in canonical form (as stored lists are) where they validate.
pub fn statement(signed: Option<&str>, host: &str) -> Option<cc_proto::sign::CronStatement> {
    let s: cc_proto::sign::Signed = serde_json::from_str(signed?).ok()?;
    let mut st: cc_proto::sign::CronStatement =
        cc_proto::sign::open(&s, cc_proto::sign::CRON_LABEL).ok()?;
    for e in &mut st.entries {
        if let Ok(job) = e.validate() {
            *e = CronEntry::from(&job);
        }
    }
    st.host.eq_ignore_ascii_case(host).then_some(st)
}

/// What a host should be sent, and whether its list awaits a signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    /// The effective list.
    pub entries: Vec<CronEntry>,
    /// Fleet entries left out: their id is one of the host's own.
    pub shadowed: Vec<String>,
    /// A system-mode host whose stored signatures do not cover `entries`.
    pub awaiting_signature: bool,
    /// What to push: the list and the signature (JSON) that goes with it.
    /// For a host awaiting a signature: the last list an operator signed
    /// (or, with none ever signed, its own list as before fleets: never
    /// fleet entries unsigned).
    pub push: (Vec<CronEntry>, Option<String>),
}

/// A host's wanted list and what to push it.
pub fn wanted(host: &FleetHost, fleet: &[FleetJob]) -> Wanted {
    let (entries, shadowed) = effective(host, fleet);
    if !host.is_system() {
        return Wanted {
            push: (entries.clone(), None),
            entries,
            shadowed,
            awaiting_signature: false,
        };
    }
    for s in [&host.fleet_signed, &host.own_signed] {
        if covers(s.as_deref(), &host.hostname, &entries) {
            return Wanted {
                push: (entries.clone(), s.clone()),
                entries,
                shadowed,
                awaiting_signature: false,
            };
        }
    }
    // The newest signed statement, by its generation.
    let newest = [&host.fleet_signed, &host.own_signed]
        .into_iter()
        .filter_map(|s| {
            statement(s.as_deref(), &host.hostname).map(|st| (st.generation, st.entries, s))
        })
        .max_by_key(|(g, ..)| *g);
    let push = match newest {
        Some((_, list, s)) => (list, s.clone()),
        None => (host.own.clone(), None),
    };
    // A list that is only the host's own, never signed, is what it was
    // before fleets: not "awaiting" (the agent or helper says why not).
    let awaiting = entries != push.0;
    Wanted {
        entries,
        shadowed,
        awaiting_signature: awaiting,
        push,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str) -> CronEntry {
        CronEntry {
            id: id.into(),
            schedule: "0 3 * * *".into(),
            command: "/bin/true".into(),
            ..CronEntry::default()
        }
    }

    fn job(target: &str, id: &str) -> FleetJob {
        FleetJob {
            target: Target::parse(target).unwrap(),
            entry: entry(id),
        }
    }

    fn host(name: &str, tags: &[&str]) -> FleetHost {
        FleetHost {
            hostname: name.into(),
            bound_tags: tags.iter().map(|t| t.to_string()).collect(),
            mode: Some("user".into()),
            ..FleetHost::default()
        }
    }

    #[test]
    fn targets_match_all_their_terms() {
        let t = Target::parse("tag:web,tag:eu").unwrap();
        assert!(t.matches("a", &["eu", "web"]));
        assert!(!t.matches("a", &["web"]));
        assert!(Target::parse("*").unwrap().matches("a", &[] as &[&str]));
        let t = Target::parse("host:a,tag:web").unwrap();
        assert!(t.matches("a", &["web"]));
        assert!(!t.matches("b", &["web"]));
        assert_eq!(t.to_string(), "host:a,tag:web");
        for bad in ["", "web", "tag:", "host:a b", "tag:web,", ",*", "tag:a;b"] {
            assert!(Target::parse(bad).is_err(), "{bad:?}");
        }
    }

    /// A target is bounded: a body of a million terms is refused at once,
    /// not deduplicated in quadratic time.
    #[test]
    fn targets_are_bounded() {
        let terms = |n: usize| {
            (0..n)
                .map(|i| format!("tag:t{i}"))
                .collect::<Vec<_>>()
                .join(",")
        };
        assert!(Target::parse(&terms(MAX_TARGET_TERMS)).is_ok());
        let e = Target::parse(&terms(MAX_TARGET_TERMS + 1)).unwrap_err();
        assert!(e.contains("at most"), "{e}");
        // Refused by the bound, before any deduplication (which took
        // quadratic time on such a body): the bound's own error.
        let e = Target::parse(&terms(200_000)).unwrap_err();
        assert!(e.contains("at most"), "{e}");
        // Cut where a character spans byte 64: no panic.
        let wide = format!("{}x{}", "*,".repeat(MAX_TARGET_TERMS), "é".repeat(40));
        assert!(Target::parse(&wide).is_err());
    }

    #[test]
    fn the_effective_list_is_own_then_matching_fleet_entries() {
        let fleet = [job("tag:web", "a"), job("*", "b"), job("host:x", "c")];
        let mut h = host("y", &["web"]);
        h.own = vec![entry("own"), entry("b")];
        let (list, shadowed) = effective(&h, &fleet);
        let ids: Vec<_> = list.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, ["own", "b", "a"]);
        assert_eq!(shadowed, ["b"]);
        let r = refusals(&[h], &fleet);
        assert_eq!(r.len(), 1);
        assert!(
            r[0].contains("\"b\"") && r[0].contains("1 host (y)"),
            "{r:?}"
        );
    }

    #[test]
    fn diffs_name_added_changed_removed() {
        let mut b2 = entry("b");
        b2.jitter = Some(30);
        let d = Diff::of(&[entry("a"), entry("b")], &[b2, entry("c")]);
        assert_eq!(d.added, ["c"]);
        assert_eq!(d.changed, ["b"]);
        assert_eq!(d.removed, ["a"]);
        assert!(Diff::of(&[entry("a")], &[entry("a")]).is_empty());
    }

    #[test]
    fn sets_are_checked_entry_by_entry() {
        let e = |t: &str, id: &str| FleetEntry {
            target: t.into(),
            entry: entry(id),
        };
        assert!(validate_set(&[e("*", "a"), e("tag:x", "b")]).is_ok());
        let err = validate_set(&[e("*", "a"), e("*", "a")]).unwrap_err();
        assert!(err.contains("appears twice"), "{err}");
        let err = validate_set(&[e("nope", "a")]).unwrap_err();
        assert!(err.starts_with("entry 0 (id \"a\"): target"), "{err}");
        let mut bad = e("*", "a");
        bad.entry.jitter = Some(86_401);
        assert!(validate_set(&[bad]).is_err());
    }

    /// A system-mode host never gets fleet entries without a signature
    /// covering them: it keeps its own (here unsigned) list.
    #[test]
    fn system_hosts_without_a_signature_await_one() {
        let mut h = host("s", &["web"]);
        h.mode = Some("system".into());
        h.own = vec![entry("own")];
        let w = wanted(&h, &[job("tag:web", "a")]);
        assert!(w.awaiting_signature);
        assert_eq!(w.push, (vec![entry("own")], None));
        // Nothing from the fleet: not awaiting.
        let w = wanted(&h, &[job("tag:db", "a")]);
        assert!(!w.awaiting_signature);
    }
}
