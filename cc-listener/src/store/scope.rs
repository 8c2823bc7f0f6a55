//! What an operator's host selector reaches ([`Scope`]), and the reads
//! that list only that: pages of agents and reports, a run's hosts.
//!
//! Bound tags are a live key's tags (`api_keys.tags`, set by `keys add
//! --tags`, the first registration or `keys retag`), the same ones a run by
//! tag selects on (`hosts_with_tags`), never what an agent declares.
//!
//! Invariant: a `*` selector is [`Scope::All`], built without a query, and
//! every read below then is the unscoped read itself: an admin pays nothing.

use std::collections::HashSet;

use anyhow::Result;

use crate::auth::Selector;
use crate::sql::p;

use super::{ReportQuery, Store, json_list};

/// The hosts an operator may read or act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every host (`*`).
    All,
    /// Only these hostnames.
    Hosts(HashSet<String>),
}

impl Scope {
    pub fn contains(&self, hostname: &str) -> bool {
        match self {
            Self::All => true,
            Self::Hosts(h) => h.contains(hostname),
        }
    }

    pub fn is_all(&self) -> bool {
        matches!(self, Self::All)
    }
}

/// Rows read per look while a scoped page is gathered.
const SCAN: u32 = 1000;

impl Store {
    /// The hosts `selector` reaches: `host:` terms as named, `tag:` terms
    /// on live keys' bound tags (one query, only when there is a tag term).
    pub fn scope(&self, selector: &Selector) -> Result<Scope> {
        if selector.is_all() {
            return Ok(Scope::All);
        }
        let mut hosts = HashSet::new();
        for t in selector.terms() {
            if let crate::auth::Target::Host(h) = t {
                hosts.insert(h.to_string());
            }
        }
        let has_tags = selector
            .terms()
            .iter()
            .any(|t| matches!(t, crate::auth::Target::Tag(_)));
        if has_tags {
            let rows = self.read(|c| {
                c.query(
                    "SELECT hostname, tags FROM api_keys
                     WHERE revoked_ms IS NULL AND hostname IS NOT NULL AND tags IS NOT NULL",
                    &[],
                )
            })?;
            for r in rows {
                let host: String = r.get(0)?;
                if selector.matches(&host, &json_list(&r.get::<String>(1)?)) {
                    hosts.insert(host);
                }
            }
        }
        Ok(Scope::Hosts(hosts))
    }

    /// The tags bound to `hostname`'s live key (none without one).
    pub fn bound_tags(&self, hostname: &str) -> Result<Vec<String>> {
        self.read(|c| {
            Ok(c.one(
                "SELECT tags FROM api_keys
                 WHERE hostname = ?1 AND revoked_ms IS NULL AND tags IS NOT NULL",
                &p![hostname],
            )?
            .map(|r| r.get::<String>(0))
            .transpose()?
            .map(|t| json_list(&t))
            .unwrap_or_default())
        })
    }

    /// [`Store::agent_page`] of the agents in `scope` only: up to `limit +
    /// 1` of them, read [`SCAN`] at a time until enough are found.
    pub fn agent_page_in(
        &self,
        scope: &Scope,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<(String, u64)>> {
        self.agent_page_scanning(scope, after, limit, SCAN)
    }

    fn agent_page_scanning(
        &self,
        scope: &Scope,
        after: Option<&str>,
        limit: u32,
        scan: u32,
    ) -> Result<Vec<(String, u64)>> {
        if scope.is_all() {
            return self.agent_page(after, limit);
        }
        let want = limit as usize + 1;
        let mut out = Vec::new();
        let mut after = after.map(str::to_owned);
        loop {
            let chunk = self.agent_page(after.as_deref(), scan)?;
            let more = chunk.len() > scan as usize;
            after = chunk.last().map(|r| r.0.clone());
            out.extend(chunk.into_iter().filter(|r| scope.contains(&r.0)));
            if out.len() >= want || !more {
                out.truncate(want);
                return Ok(out);
            }
        }
    }

    /// [`Store::report_page`] of the reports of hosts in `scope` only.
    pub fn report_page_in(&self, scope: &Scope, q: &ReportQuery) -> Result<Vec<(i64, u64)>> {
        if scope.is_all() {
            return self.report_page(q);
        }
        if q.hostname.as_deref().is_some_and(|h| !scope.contains(h)) {
            return Ok(Vec::new());
        }
        let want = q.limit as usize + 1;
        let mut out = Vec::new();
        let mut before = q.before;
        loop {
            let chunk = self.read(|c| {
                c.query(
                    "SELECT id, size, hostname FROM reports
                     WHERE (CAST(?1 AS TEXT) IS NULL OR hostname = ?1)
                       AND (CAST(?2 AS TEXT) IS NULL OR job_id = ?2)
                       AND (CAST(?3 AS BIGINT) IS NULL OR id < ?3)
                     ORDER BY id DESC LIMIT ?4",
                    &p![q.hostname, q.job_id, before, i64::from(SCAN) + 1],
                )
            })?;
            let more = chunk.len() > SCAN as usize;
            for r in &chunk {
                let id: i64 = r.get(0)?;
                before = Some(id);
                if scope.contains(&r.get::<String>(2)?) {
                    out.push((id, u64::try_from(r.get::<i64>(1)?).unwrap_or(0)));
                }
            }
            if out.len() >= want || !more {
                out.truncate(want);
                return Ok(out);
            }
        }
    }

    /// Every host a run's jobs are for.
    pub fn run_hosts(&self, run_id: &str) -> Result<Vec<String>> {
        self.read(|c| {
            c.query(
                "SELECT DISTINCT hostname FROM jobs WHERE run_id = ?1",
                &p![run_id],
            )?
            .iter()
            .map(|r| r.get(0))
            .collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cc_proto::wire::{AgentInfo, ExecutionMode};

    fn register(s: &Store, host: &str, tags: &[&str]) {
        let tags: Vec<String> = tags.iter().map(|t| (*t).to_owned()).collect();
        s.add_key_tagged(host, Some(host), Some(&tags), 1).unwrap();
        let info = AgentInfo {
            hostname: cc_proto::Hostname::parse(host).unwrap(),
            os: "linux".into(),
            arch: "amd64".into(),
            tags: cc_proto::Tag::parse_all(&tags).unwrap(),
            execution_mode: ExecutionMode::User,
            is_root: false,
            job_window: Some(4),
            cron_host: None,
        };
        s.upsert_agent(&info, 1).unwrap();
    }

    fn hosts(scope: &Scope) -> Vec<String> {
        let Scope::Hosts(h) = scope else {
            panic!("not a host set: {scope:?}")
        };
        let mut v: Vec<String> = h.iter().cloned().collect();
        v.sort();
        v
    }

    /// Tags are a live key's, never an agent's: a revoked key's host is
    /// reached by name only; pages of a scope hold only its hosts and still
    /// say when more follow, across scans.
    #[test]
    fn a_scope_is_the_selector_on_live_keys_bound_tags_and_pages_hold_only_it() {
        let dir = cc_testkit::TempDir::new("scope");
        let s = Store::open(&dir.path().join("cc.db")).unwrap();
        for (h, t) in [
            ("a.test", "web"),
            ("b.test", "db"),
            ("c.test", "web"),
            ("d.test", "db"),
            ("e.test", "web"),
            ("f.test", "web"),
        ] {
            register(&s, h, &[t]);
        }
        s.revoke_key("f.test", 2).unwrap();
        // An agent row claiming web with no key: not bound, not reached.
        let info = AgentInfo {
            hostname: cc_proto::Hostname::parse("g.test").unwrap(),
            os: "linux".into(),
            arch: "amd64".into(),
            tags: cc_proto::Tag::parse_all(&["web"]).unwrap(),
            execution_mode: ExecutionMode::User,
            is_root: false,
            job_window: Some(4),
            cron_host: None,
        };
        s.upsert_agent(&info, 1).unwrap();
        let web = s.scope(&Selector::parse("tag:web").unwrap()).unwrap();
        assert_eq!(hosts(&web), ["a.test", "c.test", "e.test"]);
        let mixed = s
            .scope(&Selector::parse("tag:db,host:f.test").unwrap())
            .unwrap();
        assert_eq!(hosts(&mixed), ["b.test", "d.test", "f.test"]);
        assert_eq!(s.scope(&Selector::all()).unwrap(), Scope::All);
        assert_eq!(s.bound_tags("a.test").unwrap(), ["web"]);
        assert!(s.bound_tags("f.test").unwrap().is_empty(), "revoked");
        assert!(s.bound_tags("g.test").unwrap().is_empty(), "claimed only");

        let names = |rows: Vec<(String, u64)>| rows.into_iter().map(|r| r.0).collect::<Vec<_>>();
        // limit 1: one row and one more to say more follow; scans of 2.
        let page = names(s.agent_page_scanning(&web, None, 1, 2).unwrap());
        assert_eq!(page, ["a.test", "c.test"]);
        let page = names(s.agent_page_scanning(&web, Some("a.test"), 1, 2).unwrap());
        assert_eq!(page, ["c.test", "e.test"]);
        let page = names(s.agent_page_scanning(&web, Some("c.test"), 1, 2).unwrap());
        assert_eq!(page, ["e.test"], "the last: nothing follows");
        let all = names(s.agent_page_in(&Scope::All, None, 100).unwrap());
        assert_eq!(all.len(), 7);
    }
}
