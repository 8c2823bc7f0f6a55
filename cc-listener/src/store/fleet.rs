//! The fleet cron set (one row, replaced whole: `fleet_cron`), the
//! operators' signatures over system-mode hosts' effective lists
//! (`fleet_signed`), and the reads that join them to each host
//! (`crate::fleet` does the joining).

use anyhow::{Context, Result};

use cc_proto::wire::CronEntry;

use crate::fleet::{FleetEntry, FleetHost, FleetJob};
use crate::sql::{Sql, p};

use super::{Store, json_list};

/// The fleet set as stored: its generation (0: never set) and entries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FleetSet {
    pub generation: u64,
    pub entries: Vec<FleetEntry>,
    /// When it was last replaced (0: never).
    pub updated_ms: i64,
}

impl FleetSet {
    /// The entries, parsed; an entry that no longer parses (a stored set
    /// from a newer listener) is left out rather than failing every host.
    pub fn jobs(&self) -> Vec<FleetJob> {
        self.entries
            .iter()
            .filter_map(|e| crate::fleet::validate_set(std::slice::from_ref(e)).ok())
            .flatten()
            .collect()
    }
}

impl Store {
    /// The fleet set.
    pub fn fleet_set(&self) -> Result<FleetSet> {
        self.read(|c| Self::fleet_set_in(c))
    }

    fn fleet_set_in(c: &mut dyn Sql) -> Result<FleetSet> {
        let row = c.one(
            "SELECT generation, entries, updated_ms FROM fleet_cron WHERE one = 1",
            &[],
        )?;
        match row {
            None => Ok(FleetSet::default()),
            Some(r) => Ok(FleetSet {
                generation: u64::try_from(r.get::<i64>(0)?).unwrap_or(0),
                entries: serde_json::from_str(&r.get::<String>(1)?)
                    .context("stored fleet cron set is corrupt")?,
                updated_ms: r.get(2)?,
            }),
        }
    }

    /// Every known host's effective list (own entries, then matching fleet
    /// entries), in hostname order, from one read of each table: what a
    /// full resync of the expected runs reads instead of asking host by host.
    pub fn effective_cron_all(&self) -> Result<Vec<(String, Vec<CronEntry>)>> {
        let fleet = self.fleet_set()?.jobs();
        Ok(self
            .fleet_hosts(None)?
            .iter()
            .map(|h| (h.hostname.clone(), crate::fleet::effective(h, &fleet).0))
            .collect())
    }

    /// Just the fleet set's generation (what the push loop polls).
    pub fn fleet_generation(&self) -> Result<u64> {
        self.read(|c| {
            Ok(
                c.one("SELECT generation FROM fleet_cron WHERE one = 1", &[])?
                    .map(|r| r.get::<i64>(0))
                    .transpose()?
                    .map_or(0, |g| u64::try_from(g).unwrap_or(0)),
            )
        })
    }

    /// Replaces the fleet set whole, with the signatures given for
    /// system-mode hosts' new lists, in one transaction; `expect`: the
    /// generation the caller planned against (a conflict if another apply
    /// came first). Returns the new generation.
    pub fn put_fleet_set(
        &self,
        entries: &[FleetEntry],
        signatures: &[(String, String)],
        expect: Option<u64>,
        now_ms: i64,
    ) -> Result<u64> {
        let text = serde_json::to_string(entries)?;
        self.write(|tx| {
            let current = Self::fleet_set_in(tx)?.generation;
            if let Some(e) = expect {
                if e != current {
                    return Err(super::StoreError::Conflict(format!(
                        "the fleet set changed since the plan (generation {current}, planned against {e}): plan again"
                    ))
                    .into());
                }
            }
            let generation = current + 1;
            let g = i64::try_from(generation).context("generation overflow")?;
            // Written only over the generation read: of two applies that
            // read it at once (two listeners), the second finds the row
            // changed when it gets its lock, and writes nothing.
            let written = tx.exec(
                "INSERT INTO fleet_cron (one, generation, entries, updated_ms) VALUES (1, ?1, ?2, ?3)
                 ON CONFLICT (one) DO UPDATE SET generation = ?1, entries = ?2, updated_ms = ?3
                 WHERE fleet_cron.generation = ?4",
                &p![g, text, now_ms, i64::try_from(current).context("generation overflow")?],
            )?;
            if written != 1 {
                return Err(super::StoreError::Conflict(format!(
                    "the fleet set changed while it was applied (after generation {current}): plan again"
                ))
                .into());
            }
            for (host, signed) in signatures {
                tx.exec(
                    "INSERT INTO fleet_signed (hostname, signed, updated_ms) VALUES (?1, ?2, ?3)
                     ON CONFLICT (hostname) DO UPDATE SET signed = ?2, updated_ms = ?3",
                    &p![host, signed, now_ms],
                )?;
            }
            Ok(generation)
        })
    }

    /// Every known host (registered, or bound to a live key) with what the
    /// fleet needs of it, in hostname order; `only`: just these.
    pub fn fleet_hosts(&self, only: Option<&[String]>) -> Result<Vec<FleetHost>> {
        const COLUMNS: &str = "SELECT h.hostname, k.tags, a.execution_mode, c.entries, c.signed,
                    f.signed, a.cron_status, a.cron_host, f.updated_ms";
        const JOINS: &str = "
             LEFT JOIN api_keys k ON k.hostname = h.hostname AND k.revoked_ms IS NULL
             LEFT JOIN agents a ON a.hostname = h.hostname
             LEFT JOIN cron_sets c ON c.hostname = h.hostname
             LEFT JOIN fleet_signed f ON f.hostname = h.hostname";
        let rows = self.read(|c| match only {
            None => c.query(
                &format!(
                    "{COLUMNS} FROM (SELECT hostname FROM agents
                           UNION SELECT hostname FROM api_keys
                                 WHERE hostname IS NOT NULL AND revoked_ms IS NULL) h
                     {JOINS} ORDER BY h.hostname"
                ),
                &[],
            ),
            // One host: by its key columns alone (no scan of every host).
            Some(hosts) => {
                let mut all = Vec::new();
                for h in hosts {
                    all.extend(c.query(
                        &format!(
                            "{COLUMNS} FROM (SELECT CAST(?1 AS TEXT) AS hostname) h {JOINS}
                             WHERE EXISTS (SELECT 1 FROM agents WHERE hostname = ?1)
                                OR EXISTS (SELECT 1 FROM api_keys
                                           WHERE hostname = ?1 AND revoked_ms IS NULL)"
                        ),
                        &p![h],
                    )?);
                }
                Ok(all)
            }
        })?;
        let mut out: Vec<FleetHost> = Vec::with_capacity(rows.len());
        for r in rows {
            let hostname: String = r.get(0)?;
            // Two live keys bound to one host: the first row stands.
            if out.last().is_some_and(|h| h.hostname == hostname) {
                continue;
            }
            let own: Option<String> = r.get(3)?;
            out.push(FleetHost {
                hostname,
                bound_tags: r
                    .get::<Option<String>>(1)?
                    .map(|t| json_list(&t))
                    .unwrap_or_default(),
                mode: r.get(2)?,
                own: own
                    .map(|t| serde_json::from_str::<Vec<CronEntry>>(&t))
                    .transpose()
                    .context("stored cron list is corrupt")?
                    .unwrap_or_default(),
                own_signed: r.get(4)?,
                fleet_signed: r.get(5)?,
                cron_status: r.get(6)?,
                cron_host: r.get(7)?,
                fleet_signed_ms: r.get(8)?,
            });
        }
        Ok(out)
    }

    /// Whether `job_id` is the id of a fleet entry whose target matches
    /// `hostname` (on its bound tags), in the caller's transaction: what a
    /// report not of a job nor of the host's own list is matched against.
    /// Cheap per report: the set is parsed only when its text names the id.
    pub(super) fn is_fleet_entry(tx: &mut dyn Sql, hostname: &str, job_id: &str) -> Result<bool> {
        // Job ids hold no `%`; a `_` matches any one character, so this
        // only narrows: the parse below decides.
        let pattern = format!("%\"id\":\"{job_id}\"%");
        let Some(row) = tx.one(
            "SELECT entries FROM fleet_cron WHERE one = 1 AND entries LIKE ?1",
            &p![pattern],
        )?
        else {
            return Ok(false);
        };
        let entries: Vec<FleetEntry> =
            serde_json::from_str(&row.get::<String>(0)?).unwrap_or_default();
        let Some(target) = entries
            .iter()
            .find(|e| e.entry.id == job_id)
            .and_then(|e| crate::fleet::Target::parse(&e.target).ok())
        else {
            return Ok(false);
        };
        let tags = tx
            .one(
                "SELECT tags FROM api_keys
                 WHERE hostname = ?1 AND revoked_ms IS NULL AND tags IS NOT NULL",
                &p![hostname],
            )?
            .map(|r| r.get::<String>(0))
            .transpose()?
            .map(|t| json_list(&t))
            .unwrap_or_default();
        Ok(target.matches(hostname, &tags))
    }

    /// Asks whichever listener holds `hostname` to send it its list again
    /// (its tags changed): a row in `cron_resend` with the next sequence
    /// number, which every listener's push loop reads.
    pub fn request_resend(&self, hostname: &str) -> Result<()> {
        self.write(|tx| {
            tx.exec(
                "INSERT INTO cron_resend (hostname, seq)
                 VALUES (?1, (SELECT coalesce(max(seq), 0) + 1 FROM cron_resend))
                 ON CONFLICT (hostname) DO UPDATE SET seq = excluded.seq",
                &p![hostname],
            )?;
            Ok(())
        })
    }

    /// The hosts asked to be sent their list again after sequence number
    /// `after`, and the last number (`after` when none).
    pub fn resends_after(&self, after: i64) -> Result<(Vec<String>, i64)> {
        let rows = self.read(|c| {
            c.query(
                "SELECT hostname, seq FROM cron_resend WHERE seq > ?1 ORDER BY seq",
                &p![after],
            )
        })?;
        let mut last = after;
        let mut hosts = Vec::with_capacity(rows.len());
        for r in rows {
            hosts.push(r.get(0)?);
            last = last.max(r.get(1)?);
        }
        Ok((hosts, last))
    }

    /// The hostname bound to the live key `name`, if any.
    pub fn key_hostname(&self, name: &str) -> Result<Option<String>> {
        self.read(|c| {
            Ok(c.one(
                "SELECT hostname FROM api_keys WHERE name = ?1 AND revoked_ms IS NULL",
                &p![name],
            )?
            .map(|r| r.get::<Option<String>>(0))
            .transpose()?
            .flatten())
        })
    }
}
