//! Agents as they registered, their connections' holds, and their cron
//! lists.
//!
//! Invariant: an agent is held (`listener`, `lease_conn`) by at most one
//! listener's connection, the one that registered it last; only that
//! connection's end releases the hold.

use anyhow::{Context, Result};

use cc_proto::wire::{AgentInfo, CronEntry, CronHost, CronStatus, ExecutionMode};
use cc_proto::{Hostname, JobId};

use crate::sql::{Sql, p};

use super::{AgentRow, Store, json_list};

impl Store {
    pub fn upsert_agent(&self, info: &AgentInfo, now_ms: i64) -> Result<()> {
        self.write(|tx| Self::upsert_in(tx, None, info, now_ms))
    }

    /// Records a registration; `by`: this listener and its connection now
    /// hold the agent.
    pub(super) fn upsert_in(
        tx: &mut dyn Sql,
        by: Option<(&str, u64)>,
        info: &AgentInfo,
        now_ms: i64,
    ) -> Result<()> {
        let tags: Vec<&str> = info.tags.iter().map(|t| t.as_str()).collect();
        let mode = match info.execution_mode {
            ExecutionMode::User => "user",
            ExecutionMode::System => "system",
        };
        let cron_host = info
            .cron_host
            .as_ref()
            .map(serde_json::to_string)
            .transpose()?;
        tx.exec(
            "INSERT INTO agents (hostname, os, arch, tags, execution_mode, is_root, first_seen_ms,
                                 last_seen_ms, listener, lease_conn, cron_host)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7, ?8, ?9, ?10)
             ON CONFLICT (hostname) DO UPDATE SET os = ?2, arch = ?3, tags = ?4,
                 execution_mode = ?5, is_root = ?6, last_seen_ms = ?7, listener = ?8,
                 lease_conn = ?9, cron_host = ?10",
            &p![
                info.hostname.as_str(),
                info.os,
                info.arch,
                serde_json::to_string(&tags)?,
                mode,
                info.is_root,
                now_ms,
                by.map(|b| b.0),
                by.map(|b| b.1),
                cron_host
            ],
        )?;
        Ok(())
    }

    /// Connection `conn` to the agent ended: when it last sent anything,
    /// and, if it still held the agent, the hold is released.
    pub fn touch_agent(&self, hostname: &Hostname, last_seen_ms: i64, conn: u64) -> Result<()> {
        self.write(|tx| Self::touch_in(tx, self.holder.as_deref(), hostname, last_seen_ms, conn))
    }

    /// [`Store::touch_agent`] inside the caller's transaction; `holder`
    /// is this listener's name.
    pub(super) fn touch_in(
        tx: &mut dyn Sql,
        holder: Option<&str>,
        hostname: &Hostname,
        last_seen_ms: i64,
        conn: u64,
    ) -> Result<()> {
        tx.exec(
            "UPDATE agents SET last_seen_ms = CASE WHEN last_seen_ms < ?2 THEN ?2 ELSE last_seen_ms END
             WHERE hostname = ?1",
            &p![hostname, last_seen_ms],
        )?;
        tx.exec(
            "UPDATE agents SET listener = NULL, lease_conn = NULL
             WHERE hostname = ?1 AND listener = ?2 AND lease_conn = ?3",
            &p![hostname, holder, conn],
        )?;
        Ok(())
    }

    pub fn set_cron_status(&self, hostname: &Hostname, status: &CronStatus) -> Result<()> {
        let text = serde_json::to_string(status)?;
        self.write(|tx| {
            tx.exec(
                "UPDATE agents SET cron_status = ?2 WHERE hostname = ?1",
                &p![hostname, text],
            )
        })?;
        Ok(())
    }

    /// What the agent of `hostname` last said of its cron daemon and clock
    /// (validated by the caller).
    pub fn set_cron_host(&self, hostname: &Hostname, host: &CronHost) -> Result<()> {
        let text = serde_json::to_string(host)?;
        self.write(|tx| {
            tx.exec(
                "UPDATE agents SET cron_host = ?2 WHERE hostname = ?1",
                &p![hostname, text],
            )
        })?;
        Ok(())
    }

    /// Hostnames of agents after `after`, in order, up to `limit + 1` of
    /// them (so the caller knows whether more follow), each with an upper
    /// estimate of its size in the API's JSON.
    pub fn agent_page(&self, after: Option<&str>, limit: u32) -> Result<Vec<(String, u64)>> {
        self.read(|c| {
            c.query(
                "SELECT hostname, 512 + octet_length(hostname) + octet_length(tags)
                        + coalesce(octet_length(cron_status), 0)
                        + coalesce(octet_length(cron_host), 0)
                 FROM agents WHERE (CAST(?1 AS TEXT) IS NULL OR hostname > ?1)
                 ORDER BY hostname LIMIT ?2",
                &p![after, i64::from(limit) + 1],
            )?
            .iter()
            .map(|r| Ok((r.get(0)?, u64::try_from(r.get::<i64>(1)?).unwrap_or(0))))
            .collect()
        })
    }

    /// Agents with hostnames from `first` to `last`, in order.
    pub fn agents_between(&self, first: &str, last: &str) -> Result<Vec<AgentRow>> {
        self.read(|c| {
            c.query(
                "SELECT a.hostname, os, arch, tags, execution_mode, is_root, first_seen_ms,
                        last_seen_ms, cron_status, coalesce(u.bytes, 0), a.listener, l.lease_ms,
                        cron_host
                 FROM agents a LEFT JOIN report_usage u ON u.hostname = a.hostname
                      LEFT JOIN listeners l ON l.name = a.listener
                 WHERE a.hostname >= ?1 AND a.hostname <= ?2
                 ORDER BY a.hostname",
                &p![first, last],
            )?
            .iter()
            .map(|r| {
                Ok(AgentRow {
                    hostname: r.get(0)?,
                    os: r.get(1)?,
                    arch: r.get(2)?,
                    tags: json_list(&r.get::<String>(3)?),
                    execution_mode: r.get(4)?,
                    is_root: r.get(5)?,
                    first_seen_ms: r.get(6)?,
                    last_seen_ms: r.get(7)?,
                    cron_status: r.get(8)?,
                    report_bytes: r.get(9)?,
                    listener: r.get(10)?,
                    lease_ms: r.get(11)?,
                    cron_host: r.get(12)?,
                })
            })
            .collect()
        })
    }

    /// Whether an agent with this hostname has ever registered, or a key is
    /// bound to it.
    pub fn agent_known(&self, hostname: &str) -> Result<bool> {
        self.read(|c| {
            Ok(c.one(
                "SELECT 1 FROM agents WHERE hostname = ?1
                 UNION ALL SELECT 1 FROM api_keys WHERE hostname = ?1 LIMIT 1",
                &p![hostname],
            )?
            .is_some())
        })
    }

    /// Hostnames of agents whose key carries every tag in `tags`, in
    /// order: the tags an operator bound, never those an agent declared.
    pub fn hosts_with_tags(&self, tags: &[String]) -> Result<Vec<String>> {
        let rows = self.read(|c| {
            c.query(
                "SELECT a.hostname, k.tags FROM agents a
                 JOIN api_keys k ON k.hostname = a.hostname AND k.revoked_ms IS NULL
                 WHERE k.tags IS NOT NULL ORDER BY a.hostname",
                &[],
            )
        })?;
        let mut hosts = Vec::new();
        for r in rows {
            let have = json_list(&r.get::<String>(1)?);
            if tags.iter().all(|t| have.contains(t)) {
                hosts.push(r.get(0)?);
            }
        }
        Ok(hosts)
    }

    /// Stores a host's cron list and, for a system-mode host, its signed
    /// statement (JSON), relayed untouched.
    pub fn set_cron(
        &self,
        hostname: &str,
        entries: &[CronEntry],
        signed: Option<&str>,
        now_ms: i64,
    ) -> Result<()> {
        let text = serde_json::to_string(entries)?;
        self.write(|tx| {
            tx.exec(
                "INSERT INTO cron_sets (hostname, entries, updated_ms, signed) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (hostname) DO UPDATE SET entries = ?2, updated_ms = ?3, signed = ?4",
                &p![hostname, text, now_ms, signed],
            )
        })?;
        Ok(())
    }

    /// The stored cron list and its signature, or `None` when none was set.
    pub fn get_cron(&self, hostname: &str) -> Result<Option<(Vec<CronEntry>, Option<String>)>> {
        let row = self.read(|c| {
            c.one(
                "SELECT entries, signed FROM cron_sets WHERE hostname = ?1",
                &p![hostname],
            )
        })?;
        row.map(|r| {
            let text: String = r.get(0)?;
            let signed: Option<String> = r.get(1)?;
            serde_json::from_str(&text)
                .map(|e| (e, signed))
                .context("stored cron list is corrupt")
        })
        .transpose()
    }

    /// The list the listener wants `hostname` to run: its own entries and,
    /// once fleet entries exist, every fleet entry whose target matches the
    /// host's bound tags. What is pushed, what reports are matched against
    /// and what scheduled runs are expected from.
    pub fn effective_cron(&self, hostname: &str) -> Result<Vec<CronEntry>> {
        let fleet = self.fleet_set()?.jobs();
        let host = self.fleet_hosts(Some(&[hostname.to_owned()]))?;
        Ok(host
            .first()
            .map(|h| crate::fleet::effective(h, &fleet).0)
            .unwrap_or_default())
    }

    /// The execution mode a host registered with last.
    pub fn agent_mode(&self, hostname: &str) -> Result<Option<String>> {
        self.read(|c| {
            c.one(
                "SELECT execution_mode FROM agents WHERE hostname = ?1",
                &p![hostname],
            )?
            .map(|r| r.get(0))
            .transpose()
        })
    }

    pub(super) fn is_cron_entry(
        tx: &mut dyn Sql,
        hostname: &Hostname,
        job_id: &JobId,
    ) -> Result<bool> {
        let text: Option<String> = tx
            .one(
                "SELECT entries FROM cron_sets WHERE hostname = ?1",
                &p![hostname],
            )?
            .map(|r| r.get(0))
            .transpose()?;
        let entries: Vec<CronEntry> = match text {
            Some(t) => serde_json::from_str(&t).unwrap_or_default(),
            None => Vec::new(),
        };
        Ok(entries.iter().any(|e| e.id == job_id.as_str())
            || Self::is_fleet_entry(tx, hostname.as_str(), job_id.as_str())?)
    }
}
