//! Who is asking, and what they may do: named operators, their roles and
//! the hosts their selector reaches.
//!
//! - [`Role`]: `viewer` reads; `operator` also runs jobs, fans out and
//!   sets cron lists on the hosts its selector matches; `admin` also
//!   manages agent keys and operators.
//! - [`Selector`]: `*`, `host:NAME`, `tag:T`, comma-joined meaning any of
//!   them (an operator given `tag:web,host:db-1` reaches both). A tag is
//!   matched against a host's **bound** tags only (the operator's
//!   statement at `keys add`/`keys retag`, never an agent's claim).
//! - [`Operator`]: a name, a role and a selector, as the operator API's
//!   middleware puts it into every authenticated request.
//!
//! - [`resolve`]: a token's operator — the `--admin-token-file` token is
//!   the first admin, [`FIRST_ADMIN`]; a named operator's is found by its
//!   SHA-256 in [`Operators`], this listener's copy of the live operators
//!   (reloaded every [`RELOAD`]); [`still_valid`] asks the database again.
//!
//! Invariant: a check here never widens: an unknown role, an empty or
//! malformed selector is a parse error, never `*`; a stored row that no
//! longer parses is refused.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use tokio::sync::watch;
use tracing::warn;

use cc_proto::{Hostname, Tag};

use crate::store::OperatorRecord;

/// What an operator may do, in increasing order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Reads what its selector reaches.
    Viewer,
    /// Also runs jobs and sets cron lists on what its selector reaches.
    Operator,
    /// Also manages agent keys and operators; its selector is `*`.
    Admin,
}

impl Role {
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "viewer" => Ok(Self::Viewer),
            "operator" => Ok(Self::Operator),
            "admin" => Ok(Self::Admin),
            other => Err(format!(
                "unknown role {other:?}: one of viewer, operator, admin"
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Viewer => "viewer",
            Self::Operator => "operator",
            Self::Admin => "admin",
        }
    }

    /// Whether this role may change state on the hosts it reaches (run
    /// jobs, fan out, set cron lists).
    pub fn may_act(self) -> bool {
        self >= Self::Operator
    }

    /// Whether this role may manage agent keys and operators.
    pub fn may_administer(self) -> bool {
        self == Self::Admin
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One term of a [`Selector`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    All,
    Host(Hostname),
    Tag(Tag),
}

/// The hosts an operator reaches: any of its terms.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Selector(Vec<Target>);

impl Selector {
    /// Every host.
    pub fn all() -> Self {
        Self(vec![Target::All])
    }

    /// `*`, `host:NAME`, `tag:T`, comma-joined (no spaces, no empty term).
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.is_empty() {
            return Err("an empty host selector: use * for every host".into());
        }
        let mut terms = Vec::new();
        for term in s.split(',') {
            let t = if term == "*" {
                Target::All
            } else if let Some(h) = term.strip_prefix("host:") {
                Target::Host(Hostname::parse(h).map_err(|e| format!("{term:?}: {e}"))?)
            } else if let Some(t) = term.strip_prefix("tag:") {
                Target::Tag(Tag::parse(t).map_err(|e| format!("{term:?}: {e}"))?)
            } else {
                return Err(format!(
                    "{term:?} in host selector {s:?}: each term is *, host:NAME or tag:T, joined by commas"
                ));
            };
            if !terms.contains(&t) {
                terms.push(t);
            }
        }
        Ok(Self(terms))
    }

    /// Whether this selector reaches every host.
    pub fn is_all(&self) -> bool {
        self.0.contains(&Target::All)
    }

    /// Whether the host `hostname`, whose bound tags are `bound_tags`,
    /// is one this selector reaches.
    pub fn matches<S: AsRef<str>>(&self, hostname: &str, bound_tags: &[S]) -> bool {
        self.0.iter().any(|t| match t {
            Target::All => true,
            Target::Host(h) => h.as_str() == hostname,
            Target::Tag(tag) => bound_tags.iter().any(|b| b.as_ref() == tag.as_str()),
        })
    }

    pub fn terms(&self) -> &[Target] {
        &self.0
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, t) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            match t {
                Target::All => f.write_str("*")?,
                Target::Host(h) => write!(f, "host:{}", h.as_str())?,
                Target::Tag(t) => write!(f, "tag:{}", t.as_str())?,
            }
        }
        Ok(())
    }
}

/// Who made a request: put into every authenticated request's extensions
/// by the operator API's middleware (and by the console's session check).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operator {
    pub name: String,
    pub role: Role,
    pub hosts: Selector,
}

impl Operator {
    /// The operator the single `--admin-token-file` token stands for.
    pub fn first_admin(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            role: Role::Admin,
            hosts: Selector::all(),
        }
    }

    /// Whether this operator may read what concerns `hostname`.
    pub fn may_read<S: AsRef<str>>(&self, hostname: &str, bound_tags: &[S]) -> bool {
        self.hosts.matches(hostname, bound_tags)
    }

    /// Whether this operator may run jobs on, or set the cron list of,
    /// `hostname`.
    pub fn may_act_on<S: AsRef<str>>(&self, hostname: &str, bound_tags: &[S]) -> bool {
        self.role.may_act() && self.hosts.matches(hostname, bound_tags)
    }
}

/// The name the `--admin-token-file` token stands for; no named operator
/// may take it.
pub const FIRST_ADMIN: &str = "admin";

/// How often each listener reads the operators table again: a token
/// revoked through another listener (or `cc-listener operators revoke`)
/// is refused here at most this long after.
pub const RELOAD: Duration = Duration::from_millis(250);

/// Longest `--expires`, in days (ten years).
pub const MAX_EXPIRES_DAYS: u64 = 3650;

/// A new operator's name, role and hosts, checked: what `cc-listener
/// operators add` and `POST /operators` both accept. The error names the
/// field.
pub fn operator_spec(
    name: &str,
    role: &str,
    hosts: Option<&str>,
) -> Result<(String, Role, Selector), (&'static str, String)> {
    let (name, _) = crate::key_spec(name, None)?;
    if name == FIRST_ADMIN || name == "-" {
        return Err((
            "name",
            format!(
                "{name:?} is reserved (the admin token's operator, or nobody in the audit log)"
            ),
        ));
    }
    let role = Role::parse(role).map_err(|e| ("role", e))?;
    let hosts = Selector::parse(hosts.unwrap_or("*")).map_err(|e| ("hosts", e))?;
    if role == Role::Admin && !hosts.is_all() {
        return Err((
            "hosts",
            "an admin reaches every host: give no hosts selector, or *".into(),
        ));
    }
    Ok((name, role, hosts))
}

/// When an operator created now for `days` days expires: refused at 0 and
/// above [`MAX_EXPIRES_DAYS`].
pub fn expires_ms(now_ms: i64, days: u64) -> Result<i64, String> {
    if days == 0 || days > MAX_EXPIRES_DAYS {
        return Err(format!("expires: 1 to {MAX_EXPIRES_DAYS} days"));
    }
    Ok(now_ms + i64::try_from(days).unwrap_or(0) * 86_400_000)
}

/// An operator as a stored row describes it; `None` when its role or
/// selector no longer parses (refused, never widened).
fn operator_of(r: &OperatorRecord) -> Option<Operator> {
    let parsed = Role::parse(&r.role).and_then(|role| Ok((role, Selector::parse(&r.hosts)?)));
    match parsed {
        Ok((role, hosts)) => Some(Operator {
            name: r.name.clone(),
            role,
            hosts,
        }),
        Err(e) => {
            warn!(operator = %r.name, "an operator's stored role or hosts do not parse ({e}): refused");
            None
        }
    }
}

/// This listener's copy of the live operators, by token hash: what
/// [`resolve`] reads, reloaded every [`RELOAD`] by [`reload_loop`] and
/// changed at once by this listener's own revocations.
#[derive(Debug, Default)]
pub struct Operators(RwLock<HashMap<String, (Operator, Option<i64>)>>);

impl Operators {
    /// Replaces the copy with `live` (token hash, row).
    pub fn replace(&self, live: &[(String, OperatorRecord)]) {
        let map = live
            .iter()
            .filter_map(|(hash, r)| Some((hash.clone(), (operator_of(r)?, r.expires_ms))))
            .collect();
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = map;
    }

    /// The unexpired operator whose token hashes to `hash`.
    fn by_hash(&self, hash: &str, now_ms: i64) -> Option<Operator> {
        let m = self.0.read().unwrap_or_else(PoisonError::into_inner);
        let (op, expires) = m.get(hash)?;
        expires.is_none_or(|e| e > now_ms).then(|| op.clone())
    }

    /// Whether `name` is in the copy, unexpired.
    fn has(&self, name: &str, now_ms: i64) -> bool {
        let m = self.0.read().unwrap_or_else(PoisonError::into_inner);
        m.values()
            .any(|(op, expires)| op.name == name && expires.is_none_or(|e| e > now_ms))
    }

    /// Drops `name` from the copy (this listener revoked it).
    pub fn forget(&self, name: &str) {
        let mut m = self.0.write().unwrap_or_else(PoisonError::into_inner);
        m.retain(|_, (op, _)| op.name != name);
    }
}

/// Loads the operators now.
pub async fn reload(state: &crate::AppState) -> anyhow::Result<()> {
    let live = state.db.read(|s| s.live_operators()).await?;
    state.operators.replace(&live);
    Ok(())
}

/// Reloads the operators every [`RELOAD`] until shutdown.
pub async fn reload_loop(state: Arc<crate::AppState>, mut shutdown: watch::Receiver<bool>) {
    let mut ticker = tokio::time::interval(RELOAD);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.changed() => return,
        }
        if let Err(e) = reload(&state).await {
            warn!("reading the operators failed (the last copy stays): {e:#}");
        }
    }
}

/// The operator a bearer token (or a console login's token) stands for,
/// if any: the `--admin-token-file` token is the first admin, named
/// [`FIRST_ADMIN`]; any other is looked up by its SHA-256 among the live,
/// unexpired operators (this listener's copy, at most [`RELOAD`] old).
pub fn resolve(state: &crate::AppState, presented: &str) -> Option<Operator> {
    if crate::api::token_matches(state, presented) {
        return Some(Operator::first_admin(FIRST_ADMIN));
    }
    state
        .operators
        .by_hash(&crate::store::hash_key(presented), crate::now_ms())
}

/// Whether `op`, resolved earlier, may still act: long-lived event streams
/// and console sessions ask again and end when it no longer may (revoked,
/// expired). Read fresh from the database; when it cannot be read, this
/// listener's copy answers.
pub async fn still_valid(state: &crate::AppState, op: &Operator) -> bool {
    if *op == Operator::first_admin(FIRST_ADMIN) {
        return true;
    }
    let name = op.name.clone();
    match state
        .db
        .read(move |s| s.operator_live(&name, crate::now_ms()))
        .await
    {
        Ok(live) => live,
        Err(e) => {
            warn!("checking operator {:?} failed: {e:#}", op.name);
            state.operators.has(&op.name, crate::now_ms())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_parse_and_order() {
        assert_eq!(Role::parse("viewer"), Ok(Role::Viewer));
        assert_eq!(Role::parse("operator"), Ok(Role::Operator));
        assert_eq!(Role::parse("admin"), Ok(Role::Admin));
        assert!(Role::parse("Admin").is_err());
        assert!(Role::parse("").is_err());
        assert!(!Role::Viewer.may_act());
        assert!(Role::Operator.may_act() && !Role::Operator.may_administer());
        assert!(Role::Admin.may_act() && Role::Admin.may_administer());
        for r in [Role::Viewer, Role::Operator, Role::Admin] {
            assert_eq!(Role::parse(r.as_str()), Ok(r));
        }
    }

    #[test]
    fn selectors_match_any_term_on_bound_tags_only() {
        let s = Selector::parse("tag:web,host:db-1").unwrap();
        assert!(s.matches("w1", &["web"]));
        assert!(s.matches("db-1", &[] as &[&str]));
        assert!(!s.matches("db-2", &["db"]));
        assert!(!s.matches("webby", &["webs"]));
        assert!(!s.is_all());
        assert_eq!(s.to_string(), "tag:web,host:db-1");
        let all = Selector::parse("*").unwrap();
        assert!(all.is_all() && all.matches("any", &[] as &[&str]));
        assert_eq!(Selector::parse("host:a,host:a").unwrap().terms().len(), 1);
    }

    #[test]
    fn a_malformed_selector_is_refused_never_widened() {
        for bad in [
            "", ",", "web", "tag:", "host:", "tag:web,", "*,", " tag:web", "host:a b", "tags:web",
        ] {
            assert!(Selector::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn only_operators_and_admins_act_and_only_where_they_reach() {
        let viewer = Operator {
            name: "v".into(),
            role: Role::Viewer,
            hosts: Selector::all(),
        };
        assert!(viewer.may_read("h", &[] as &[&str]));
        assert!(!viewer.may_act_on("h", &[] as &[&str]));
        let web = Operator {
            name: "w".into(),
            role: Role::Operator,
            hosts: Selector::parse("tag:web").unwrap(),
        };
        assert!(web.may_act_on("w1", &["web"]));
        assert!(!web.may_act_on("db1", &["db"]));
        assert!(!web.may_read("db1", &["db"]));
        let admin = Operator::first_admin("admin");
        assert!(admin.may_act_on("db1", &["db"]) && admin.role.may_administer());
    }
}
