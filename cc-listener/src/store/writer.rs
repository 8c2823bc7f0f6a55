//! Group commit.

use anyhow::Result;

use cc_proto::wire::AgentInfo;

use crate::sql::Sql;

use super::{Binding, Db, Flush, JobRow, ReportLimits, Store, Stored};

/// A write that may share its transaction with others ([`Store::write_batch`]).
#[derive(Debug, Clone)]
pub enum WriteOp {
    Report {
        hostname: String,
        job_id: String,
        dedupe_key: String,
        payload: String,
        limits: ReportLimits,
    },
    Take {
        hostname: String,
        window: Option<u32>,
        /// The connection that asks (see [`Store::held_as`]).
        conn: u64,
    },
    /// [`Store::bind_key`].
    Bind {
        key_id: i64,
        hostname: String,
        tags: Vec<String>,
    },
    /// [`Store::upsert_agent`], seen now.
    Register { info: AgentInfo, conn: u64 },
    /// [`Store::touch_agent`]: a connection ended.
    Touch {
        hostname: String,
        last_seen_ms: i64,
        conn: u64,
    },
}

impl WriteOp {
    /// Whether a database crash may undo this write once committed,
    /// because nothing was promised on it and what follows repairs it: a
    /// hand-over undone puts the job back in the queue, so it is sent
    /// again (the agent runs a job id at most once, and its report settles
    /// the job whatever its state). A group of hand-overs only commits on
    /// PostgreSQL without waiting for the disk (`synchronous_commit = off`
    /// for that transaction); the next commit that waits flushes it too,
    /// since the log is written in order. Everything else waits: reports,
    /// registrations and bindings are acknowledged, and a connection's end
    /// undone would show the agent connected, held by a connection that is
    /// gone, while its listener lives.
    pub(super) fn may_be_lost(&self) -> bool {
        matches!(self, Self::Take { .. })
    }
}

#[derive(Debug, Clone)]
pub enum WriteOut {
    Report {
        stored: Stored,
        released: Vec<String>,
        new: Option<NewReport>,
    },
    Taken(Vec<JobRow>),
    Bound(Binding),
    Registered,
    Touched,
}

/// A new report's kind (`job`, `cron`, `unmatched`) and whether it
/// settled its job (for the metrics).
pub type NewReport = (&'static str, bool);

impl Store {
    /// Several writes in one transaction — one commit, one fsync — for
    /// writes that arrive together (group commit). Each runs in its own
    /// savepoint: one that fails is undone alone and gets its error; the
    /// others commit. If the commit itself fails, every write gets that
    /// error and none happened. A group of one needs no savepoint (two
    /// round trips to PostgreSQL fewer): if it fails, the transaction is
    /// rolled back.
    pub fn write_batch(&self, ops: &[WriteOp], now_ms: i64) -> Result<Vec<Result<WriteOut>>> {
        let flush = if ops.iter().all(WriteOp::may_be_lost) {
            Flush::Later
        } else {
            Flush::Wait
        };
        if let [op] = ops {
            let mut failed = None;
            let out = self.write_with(flush, |tx| {
                self.apply(tx, op, now_ms).map_err(|e| {
                    failed = Some(e);
                    anyhow::anyhow!("undone")
                })
            });
            return match (out, failed) {
                (Ok(o), _) => Ok(vec![Ok(o)]),
                (Err(_), Some(e)) => Ok(vec![Err(e)]),
                (Err(e), None) => Err(e),
            };
        }
        self.write_with(flush, |tx| {
            let mut outs = Vec::with_capacity(ops.len());
            for op in ops {
                tx.batch("SAVEPOINT write_op")?;
                match self.apply(tx, op, now_ms) {
                    Ok(o) => {
                        tx.batch("RELEASE write_op")?;
                        outs.push(Ok(o));
                    }
                    Err(e) => {
                        // Undoes this write only.
                        tx.batch("ROLLBACK TO write_op; RELEASE write_op")?;
                        outs.push(Err(e));
                    }
                }
            }
            Ok(outs)
        })
    }

    /// One grouped write, in the caller's transaction.
    fn apply(&self, tx: &mut dyn Sql, op: &WriteOp, now_ms: i64) -> Result<WriteOut> {
        match op {
            WriteOp::Report {
                hostname,
                job_id,
                dedupe_key,
                payload,
                limits,
            } => Self::store_in(tx, hostname, job_id, dedupe_key, payload, now_ms, *limits).map(
                |(stored, released, new)| WriteOut::Report {
                    stored,
                    released,
                    new,
                },
            ),
            WriteOp::Take {
                hostname,
                window,
                conn,
            } => {
                let by = self.holder.as_deref().map(|me| (me, *conn));
                Self::take_in(tx, by, hostname, *window, now_ms).map(WriteOut::Taken)
            }
            WriteOp::Bind {
                key_id,
                hostname,
                tags,
            } => Self::bind_in(tx, *key_id, hostname, tags).map(WriteOut::Bound),
            WriteOp::Register { info, conn } => {
                let by = self.holder.as_deref().map(|me| (me, *conn));
                Self::upsert_in(tx, by, info, now_ms).map(|()| WriteOut::Registered)
            }
            WriteOp::Touch {
                hostname,
                last_seen_ms,
                conn,
            } => Self::touch_in(tx, self.holder.as_deref(), hostname, *last_seen_ms, *conn)
                .map(|()| WriteOut::Touched),
        }
    }
}

/// Group commit for the writes connections make at a high rate (reports,
/// handing jobs over): one task takes every write waiting, up to
/// [`MAX_GROUP`], and commits them in one transaction
/// ([`Store::write_batch`]); each caller gets its own result once that
/// transaction is committed — so a report is still acknowledged only after
/// it is on disk, and a burst costs one fsync per group, not per report.
#[derive(Debug, Clone)]
pub struct Writer(
    tokio::sync::mpsc::Sender<(WriteOp, tokio::sync::oneshot::Sender<Result<WriteOut>>)>,
);

/// Most writes one transaction takes.
pub const MAX_GROUP: usize = 512;

impl Writer {
    /// `on_commit` is told each group's commit time and size.
    pub fn spawn(db: Db, on_commit: impl Fn(std::time::Duration, usize) + Send + 'static) -> Self {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<(
            WriteOp,
            tokio::sync::oneshot::Sender<Result<WriteOut>>,
        )>(4 * MAX_GROUP);
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut group = vec![first];
                while group.len() < MAX_GROUP {
                    match rx.try_recv() {
                        Ok(w) => group.push(w),
                        Err(_) => break,
                    }
                }
                let (ops, replies): (Vec<WriteOp>, Vec<_>) = group.into_iter().unzip();
                let (n, started) = (ops.len(), std::time::Instant::now());
                let committed = db.call(move |s| s.write_batch(&ops, crate::now_ms())).await;
                on_commit(started.elapsed(), n);
                match committed {
                    Ok(outs) => {
                        for (reply, out) in replies.into_iter().zip(outs) {
                            let _ = reply.send(out);
                        }
                    }
                    Err(e) => {
                        let why = format!("{e:#}");
                        for reply in replies {
                            let _ = reply.send(Err(anyhow::anyhow!("{why}")));
                        }
                    }
                }
            }
        });
        Self(tx)
    }

    /// Writes waiting for the next group now.
    pub fn queued(&self) -> usize {
        self.0.max_capacity() - self.0.capacity()
    }

    /// Queues `op` for the next group and waits until it is committed.
    pub async fn write(&self, op: WriteOp) -> Result<WriteOut> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.0
            .send((op, tx))
            .await
            .map_err(|_| anyhow::anyhow!("the store's writer has stopped"))?;
        rx.await
            .map_err(|_| anyhow::anyhow!("the store's writer dropped a write"))?
    }
}
