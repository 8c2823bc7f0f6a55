//! API keys: created hashed, bound to their host (and its tags) by the
//! first registration, revoked by name.
//!
//! Invariants: only a key's hash is stored; a key binds one hostname and a
//! hostname one key, once; a registration refused for its tags binds
//! nothing.

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

use cc_proto::Hostname;

use crate::sql::{Sql, p};

use super::{Binding, KeyInfo, KeyRecord, Store, StoreError, conflict_on_constraint, json_list};

/// Tags as a key keeps them: sorted, each once.
pub fn canonical_tags<S: AsRef<str>>(tags: &[S]) -> Vec<String> {
    let set: std::collections::BTreeSet<&str> = tags.iter().map(AsRef::as_ref).collect();
    set.into_iter().map(str::to_owned).collect()
}

/// SHA-256 of an API key, hex. Keys are 256 random bits, so a fast hash is
/// enough: there is nothing to brute-force.
pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

impl Store {
    /// Creates a key and returns it; only its hash is stored.
    pub fn add_key(&self, name: &str, hostname: Option<&str>, now_ms: i64) -> Result<String> {
        let mut keys = self.add_keys(&[(name, hostname)], now_ms)?;
        keys.pop().context("no key created")
    }

    /// [`Store::add_key`] with the tags its host may have (`None`: those
    /// of its first registration).
    pub fn add_key_tagged(
        &self,
        name: &str,
        hostname: Option<&str>,
        tags: Option<&[String]>,
        now_ms: i64,
    ) -> Result<String> {
        let tags = tags
            .map(|t| serde_json::to_string(&canonical_tags(t)))
            .transpose()?;
        let key = self.add_key(name, hostname, now_ms)?;
        if tags.is_some() {
            self.write(|tx| {
                tx.exec(
                    "UPDATE api_keys SET tags = ?2 WHERE name = ?1",
                    &p![name, tags],
                )
            })?;
        }
        Ok(key)
    }

    /// Sets the tags the host of live key `name` may have, and those its
    /// agent is listed and selected with; the agent's next registration
    /// must declare the same. [`StoreError::NotFound`] when there is no
    /// such live key.
    pub fn retag_key(&self, name: &str, tags: &[String]) -> Result<Vec<String>> {
        let tags = canonical_tags(tags);
        let text = serde_json::to_string(&tags)?;
        let n = self.write(|tx| {
            let n = tx.exec(
                "UPDATE api_keys SET tags = ?2 WHERE name = ?1 AND revoked_ms IS NULL",
                &p![name, text],
            )?;
            tx.exec(
                "UPDATE agents SET tags = ?2
                 WHERE hostname = (SELECT hostname FROM api_keys WHERE name = ?1)",
                &p![name, text],
            )?;
            Ok(n)
        })?;
        if n == 1 {
            Ok(tags)
        } else {
            Err(StoreError::NotFound(format!("no active key named {name:?}")).into())
        }
    }

    /// Creates several keys in one transaction (provisioning a fleet).
    pub fn add_keys(&self, specs: &[(&str, Option<&str>)], now_ms: i64) -> Result<Vec<String>> {
        self.write(|tx| {
            let mut keys = Vec::with_capacity(specs.len());
            for &(name, hostname) in specs {
                let mut raw = [0u8; 32];
                getrandom::fill(&mut raw).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
                let key = format!("cck_{}", hex::encode(raw));
                tx.exec(
                    "INSERT INTO api_keys (name, key_hash, hostname, created_ms) VALUES (?1, ?2, ?3, ?4)",
                    &p![name, hash_key(&key), hostname, now_ms],
                )
                .map_err(|e| {
                    conflict_on_constraint(e, || {
                        format!("a key named {name:?} exists, or the hostname already has a key")
                    })
                })?;
                keys.push(key);
            }
            Ok(keys)
        })
    }

    pub fn list_keys(&self) -> Result<Vec<KeyInfo>> {
        self.read(|c| {
            c.query(
                "SELECT name, hostname, created_ms, revoked_ms IS NOT NULL, tags FROM api_keys ORDER BY name",
                &[],
            )?
            .iter()
            .map(|r| {
                Ok(KeyInfo {
                    name: r.get(0)?,
                    hostname: r.get(1)?,
                    tags: r.get::<Option<String>>(4)?.as_deref().map(json_list),
                    created_ms: r.get(2)?,
                    revoked: r.get(3)?,
                })
            })
            .collect()
        })
    }

    /// Revokes a key by name; [`StoreError::NotFound`] when there is no such
    /// live key.
    pub fn revoke_key(&self, name: &str, now_ms: i64) -> Result<()> {
        let n = self.write(|tx| {
            tx.exec(
                "UPDATE api_keys SET revoked_ms = ?2 WHERE name = ?1 AND revoked_ms IS NULL",
                &p![name, now_ms],
            )
        })?;
        if n == 1 {
            Ok(())
        } else {
            Err(StoreError::NotFound(format!("no active key named {name:?}")).into())
        }
    }

    /// The live key with this value, if any.
    pub fn authenticate(&self, key: &str) -> Result<Option<KeyRecord>> {
        self.read(|c| {
            c.one(
                "SELECT id, name, hostname FROM api_keys WHERE key_hash = ?1 AND revoked_ms IS NULL",
                &p![hash_key(key)],
            )?
            .map(|r| {
                Ok(KeyRecord {
                    id: r.get(0)?,
                    name: r.get(1)?,
                    hostname: r.get(2)?,
                })
            })
            .transpose()
        })
    }

    /// Ids of revoked keys (few; checked against live connections).
    pub fn revoked_key_ids(&self) -> Result<std::collections::HashSet<i64>> {
        self.chore_read(|c| {
            c.query("SELECT id FROM api_keys WHERE revoked_ms IS NOT NULL", &[])?
                .iter()
                .map(|r| r.get(0))
                .collect()
        })
    }

    /// Binds key `id` to `hostname` and `tags` the first time it
    /// registers; later, checks that they are the same.
    pub fn bind_key(&self, id: i64, hostname: &Hostname, tags: &[String]) -> Result<Binding> {
        self.write(|tx| Self::bind_in(tx, id, hostname, tags))
    }

    /// Checks everything before it writes anything: a registration refused
    /// for its tags binds no hostname either.
    pub(super) fn bind_in(
        tx: &mut dyn Sql,
        id: i64,
        hostname: &Hostname,
        tags: &[String],
    ) -> Result<Binding> {
        // Read under the key's row lock (held to the commit): two
        // listeners binding one key at once (two hosts racing with it)
        // take turns, and the second sees what the first bound.
        let row = tx
            .one(
                "UPDATE api_keys SET id = id WHERE id = ?1 RETURNING hostname, tags",
                &p![id],
            )?
            .context("no such key")?;
        let (bound, bound_tags): (Option<String>, Option<String>) = (row.get(0)?, row.get(1)?);
        match &bound {
            Some(h) if h == hostname.as_str() => {}
            Some(h) => return Ok(Binding::OtherHost(h.clone())),
            None => {
                let taken = tx
                    .one("SELECT 1 FROM api_keys WHERE hostname = ?1", &p![hostname])?
                    .is_some();
                if taken {
                    return Ok(Binding::HostnameTaken);
                }
            }
        }
        let sent = canonical_tags(tags);
        match bound_tags.as_deref().map(json_list) {
            Some(have) if have != sent => return Ok(Binding::OtherTags(have)),
            Some(_) => {}
            None => {
                tx.exec(
                    "UPDATE api_keys SET tags = ?2 WHERE id = ?1",
                    &p![id, serde_json::to_string(&sent)?],
                )?;
            }
        }
        if bound.is_none() {
            tx.exec(
                "UPDATE api_keys SET hostname = ?2 WHERE id = ?1",
                &p![id, hostname],
            )?;
        }
        Ok(Binding::Ok)
    }
}
