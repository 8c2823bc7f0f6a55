//! Named operators: created with a token shown once (the store keeps its
//! SHA-256), listed, revoked by name.
//!
//! Invariants: only a token's hash is stored; a name is used once (a
//! revoked operator's name is not given again, so the audit log's names
//! stay unambiguous); role and hosts are stored as the text
//! [`crate::auth::operator_spec`] checked, and read back through the same
//! parsers (a row that no longer parses is refused, never widened).

use anyhow::{Context, Result};

use crate::sql::p;

use super::{Store, StoreError, conflict_on_constraint, hash_key};

/// An operator as stored, without its token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorRecord {
    pub name: String,
    pub role: String,
    pub hosts: String,
    pub created_ms: i64,
    pub expires_ms: Option<i64>,
    pub revoked_ms: Option<i64>,
}

/// What a new operator is: its name, role and selector, checked.
#[derive(Debug, Clone)]
pub struct NewOperator<'a> {
    pub name: &'a str,
    pub role: crate::auth::Role,
    pub hosts: &'a crate::auth::Selector,
    pub expires_ms: Option<i64>,
}

const OPERATOR_COLUMNS: &str = "name, role, hosts, created_ms, expires_ms, revoked_ms";

fn record(r: &crate::sql::Row) -> Result<OperatorRecord> {
    Ok(OperatorRecord {
        name: r.get(0)?,
        role: r.get(1)?,
        hosts: r.get(2)?,
        created_ms: r.get(3)?,
        expires_ms: r.get(4)?,
        revoked_ms: r.get(5)?,
    })
}

impl Store {
    /// Creates an operator and returns its token; only the token's hash is
    /// stored. A name used before (even revoked) is a
    /// [`StoreError::Conflict`].
    pub fn add_operator(&self, op: &NewOperator<'_>, now_ms: i64) -> Result<String> {
        let mut raw = [0u8; 32];
        getrandom::fill(&mut raw).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
        let token = format!("cco_{}", hex::encode(raw));
        let (name, role, hosts) = (op.name, op.role.as_str(), op.hosts.to_string());
        self.write(|tx| {
            tx.exec(
                "INSERT INTO operators (name, role, hosts, token_hash, created_ms, expires_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                &p![name, role, hosts, hash_key(&token), now_ms, op.expires_ms],
            )
            .map_err(|e| {
                conflict_on_constraint(e, || {
                    format!("an operator named {name:?} exists (or existed: names are not reused)")
                })
            })
        })?;
        Ok(token)
    }

    /// Every operator, by name (revoked and expired ones too).
    pub fn list_operators(&self) -> Result<Vec<OperatorRecord>> {
        self.read(|c| {
            c.query(
                &format!("SELECT {OPERATOR_COLUMNS} FROM operators ORDER BY name"),
                &[],
            )?
            .iter()
            .map(record)
            .collect()
        })
    }

    /// The operators whose token is not revoked, each with its token's
    /// hash (what the listener's cache of operators is loaded from).
    pub fn live_operators(&self) -> Result<Vec<(String, OperatorRecord)>> {
        self.read(|c| {
            c.query(
                &format!(
                    "SELECT {OPERATOR_COLUMNS}, token_hash FROM operators WHERE revoked_ms IS NULL"
                ),
                &[],
            )?
            .iter()
            .map(|r| Ok((r.get(6)?, record(r)?)))
            .collect()
        })
    }

    /// The live operator whose token has this hash, if any (expiry is the
    /// caller's to check: it knows the time).
    pub fn operator_by_token_hash(&self, token_hash: &str) -> Result<Option<OperatorRecord>> {
        self.read(|c| {
            c.one(
                &format!(
                    "SELECT {OPERATOR_COLUMNS} FROM operators
                     WHERE token_hash = ?1 AND revoked_ms IS NULL"
                ),
                &p![token_hash],
            )?
            .as_ref()
            .map(record)
            .transpose()
        })
    }

    /// Revokes an operator by name; [`StoreError::NotFound`] when there is
    /// no such live operator.
    pub fn revoke_operator(&self, name: &str, now_ms: i64) -> Result<()> {
        let n = self.write(|tx| {
            tx.exec(
                "UPDATE operators SET revoked_ms = ?2 WHERE name = ?1 AND revoked_ms IS NULL",
                &p![name, now_ms],
            )
        })?;
        if n == 1 {
            Ok(())
        } else {
            Err(StoreError::NotFound(format!("no active operator named {name:?}")).into())
        }
    }

    /// Whether operator `name` is live (exists, not revoked, not expired
    /// at `now_ms`): read fresh, for the checks of long-lived streams and
    /// sessions.
    pub fn operator_live(&self, name: &str, now_ms: i64) -> Result<bool> {
        let row = self.read(|c| {
            c.one(
                "SELECT expires_ms FROM operators WHERE name = ?1 AND revoked_ms IS NULL",
                &p![name],
            )
        })?;
        match row {
            None => Ok(false),
            Some(r) => {
                let expires: Option<i64> = r.get(0).context("reading an operator's expiry")?;
                Ok(expires.is_none_or(|e| e > now_ms))
            }
        }
    }
}
