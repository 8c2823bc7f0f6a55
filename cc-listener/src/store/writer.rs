//! Group commit: the writes agents' connections make at a high rate
//! (reports, hand-overs, registrations) share transactions.
//!
//! Each kind of grouped write is a type ([`ReportWrite`], [`TakeWrite`],
//! [`BindWrite`], [`RegisterWrite`], [`TouchWrite`]) that says what it
//! answers ([`GroupWrite::Out`]); [`Writer`]'s method for it returns that
//! type, so no caller checks at run time what kind of answer came back.
//!
//! Invariants: one transaction per group; a write is answered only after
//! its group committed (a report is acknowledged only once it is on
//! disk); a write that fails is undone alone (its savepoint) and answered
//! with its own error; if the group's commit fails, none of its writes
//! happened and each is answered with that failure's [`StoreError`] kind.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;
use tokio::sync::{mpsc, oneshot};

use cc_proto::wire::AgentInfo;
use cc_proto::{Hostname, JobId};

use crate::sql::Sql;

use super::{Binding, Db, Flush, JobRow, Plans, ReportLimits, ReportOutcome, Store, StoreError};

/// A write that may share its transaction with others
/// ([`Store::write_batch`], [`Writer`]).
pub trait GroupWrite: Send + 'static {
    /// What the write answers.
    type Out: Send + 'static;

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
    fn may_be_lost(&self) -> bool {
        false
    }

    /// The write, in the group's transaction.
    fn apply(&self, store: &Store, tx: &mut dyn Sql, now_ms: i64) -> Result<Self::Out>;
}

/// [`Store::store_report`], grouped.
#[derive(Debug, Clone)]
pub struct ReportWrite {
    pub hostname: Hostname,
    pub job_id: JobId,
    pub dedupe_key: String,
    pub payload: String,
    pub limits: ReportLimits,
}

impl GroupWrite for ReportWrite {
    type Out = ReportOutcome;

    fn apply(&self, _: &Store, tx: &mut dyn Sql, now_ms: i64) -> Result<ReportOutcome> {
        Store::store_in(
            tx,
            &self.hostname,
            &self.job_id,
            &self.dedupe_key,
            &self.payload,
            now_ms,
            self.limits,
        )
    }
}

/// [`Store::take_for_host`], grouped, for connection `conn` (see
/// [`Store::held_as`]).
#[derive(Debug, Clone)]
pub struct TakeWrite {
    pub hostname: Hostname,
    pub window: Option<u32>,
    /// The connection that asks.
    pub conn: u64,
    /// Its connection's nudges, marked as this hand-over reads the queue.
    pub nudges: Option<Arc<Nudges>>,
}

/// The nudges a connection was given (a job was queued for its host) and
/// how many of them a hand-over has answered: a nudge counted before a
/// hand-over read the queue was given for a job committed before that
/// read, so that hand-over saw the job and the nudge needs no hand-over
/// of its own. A fan-out nudges each host from the API, again from the
/// database's notification, and again from each sweep while the host's
/// hand-over waits its turn; without this, each nudge cost a hand-over.
#[derive(Debug, Default)]
pub struct Nudges {
    given: AtomicU64,
    /// `given` as the last hand-over read it, before reading the queue.
    read: AtomicU64,
    /// `read` of the last hand-over that committed.
    answered: AtomicU64,
    /// Whether the last hand-over took as many jobs as the agent's window
    /// had room for (none, if it had no room): queued jobs may remain, to
    /// be taken when a report frees room.
    filled: AtomicBool,
}

impl Nudges {
    /// A job was queued for the host: a hand-over is due.
    pub fn give(&self) {
        self.given.fetch_add(1, Ordering::SeqCst);
    }

    /// Whether a hand-over that committed read the queue after every
    /// nudge given so far.
    pub fn answered(&self) -> bool {
        self.given.load(Ordering::SeqCst) == self.answered.load(Ordering::SeqCst)
    }

    /// A hand-over is about to read the queue (called in its transaction,
    /// before the statement that reads the jobs).
    fn mark(&self) {
        self.read
            .store(self.given.load(Ordering::SeqCst), Ordering::SeqCst);
    }

    /// The hand-over that marked last has committed.
    pub fn committed(&self) {
        self.answered
            .store(self.read.load(Ordering::SeqCst), Ordering::SeqCst);
    }

    /// Whether a report that freed room in the agent's window calls for a
    /// hand-over: the last one filled the window, or a nudge came since.
    pub fn room_wanted(&self) -> bool {
        self.filled.load(Ordering::SeqCst) || !self.answered()
    }
}

impl TakeWrite {
    /// See [`Nudges::mark`].
    pub(super) fn mark(&self) {
        if let Some(n) = &self.nudges {
            n.mark();
        }
    }

    /// The hand-over had `room` in the agent's window and took `taken`.
    pub(super) fn took(&self, room: i64, taken: usize) {
        if let Some(n) = &self.nudges {
            let filled = i64::try_from(taken).map_or(true, |t| t >= room);
            n.filled.store(filled, Ordering::SeqCst);
        }
    }
}

impl GroupWrite for TakeWrite {
    type Out = Vec<JobRow>;

    fn may_be_lost(&self) -> bool {
        true
    }

    fn apply(&self, store: &Store, tx: &mut dyn Sql, now_ms: i64) -> Result<Vec<JobRow>> {
        self.mark();
        let by = store.holder.as_deref().map(|me| (me, self.conn));
        let (jobs, room) = Store::take_in(tx, by, &self.hostname, self.window, now_ms)?;
        self.took(room, jobs.len());
        Ok(jobs)
    }
}

/// [`Store::bind_key`], grouped.
#[derive(Debug, Clone)]
pub struct BindWrite {
    pub key_id: i64,
    pub hostname: Hostname,
    pub tags: Vec<String>,
}

impl GroupWrite for BindWrite {
    type Out = Binding;

    fn apply(&self, _: &Store, tx: &mut dyn Sql, _: i64) -> Result<Binding> {
        Store::bind_in(tx, self.key_id, &self.hostname, &self.tags)
    }
}

/// [`Store::upsert_agent`], seen now, by connection `conn`; a host
/// condition it changes (back online, root in user mode or no longer) is a
/// kind `host` event.
#[derive(Debug, Clone)]
pub struct RegisterWrite {
    pub info: AgentInfo,
    pub conn: u64,
}

impl GroupWrite for RegisterWrite {
    type Out = ();

    fn apply(&self, store: &Store, tx: &mut dyn Sql, now_ms: i64) -> Result<()> {
        let by = store.holder.as_deref().map(|me| (me, self.conn));
        Store::upsert_in(tx, by, &self.info, now_ms)?;
        let root =
            self.info.is_root && self.info.execution_mode == cc_proto::wire::ExecutionMode::User;
        Store::note_registration_in(tx, self.info.hostname.as_str(), root, now_ms)
    }
}

/// [`Store::touch_agent`]: connection `conn` ended; with `offline` (no
/// newer connection replaced it and this listener is not stopping) the
/// host is offline, a kind `host` event if it was not.
#[derive(Debug, Clone)]
pub struct TouchWrite {
    pub hostname: Hostname,
    pub last_seen_ms: i64,
    pub conn: u64,
    pub offline: bool,
}

impl GroupWrite for TouchWrite {
    type Out = ();

    fn apply(&self, store: &Store, tx: &mut dyn Sql, now_ms: i64) -> Result<()> {
        let holder = store.holder.as_deref();
        Store::touch_in(tx, holder, &self.hostname, self.last_seen_ms, self.conn)?;
        if self.offline {
            Store::note_offline_in(tx, self.hostname.as_str(), now_ms)?;
        }
        Ok(())
    }
}

impl Store {
    /// Several writes of one kind in one transaction — one commit, one
    /// fsync — for writes that arrive together (group commit). Each runs
    /// in its own savepoint: one that fails is undone alone and gets its
    /// error; the others commit. If the commit itself fails, that is the
    /// error, and none happened. [`Writer`] groups writes of every kind;
    /// this runs a group as it does (on PostgreSQL, the set-based pass
    /// first), answering each write's error as a [`StoreError`].
    pub fn write_batch<W: GroupWrite + Clone>(
        &self,
        writes: &[W],
        now_ms: i64,
    ) -> Result<Vec<Result<W::Out>>> {
        let flush = flush_for(writes.iter().all(GroupWrite::may_be_lost));
        let (mut group, answers): (Vec<_>, Vec<_>) =
            writes.iter().map(|w| enqueue(w.clone())).unzip();
        let set_based = self.dialect() == crate::sql::Dialect::Postgres;
        let outs = self.grouped_with(
            flush,
            writes.len(),
            &mut group,
            |group, tx| {
                if set_based {
                    set_pass(self, tx, group, now_ms)
                } else {
                    Ok(Vec::new())
                }
            },
            |group, tx, i| group[i].apply(self, tx, now_ms),
        )?;
        Ok(group
            .into_iter()
            .zip(outs)
            .zip(answers)
            .map(|((pending, own), mut answer)| {
                pending.answer(own.map_err(|e| StoreError::of(&e)));
                match answer.try_recv() {
                    Ok(out) => out.map_err(anyhow::Error::new),
                    Err(_) => Err(anyhow::anyhow!("the write was not answered")),
                }
            })
            .collect())
    }

    /// Runs `apply(state, tx, i)` for each `i` below `n` in one
    /// transaction, after `first`, which may answer some of the writes
    /// itself (entry `i` of what it returns, `Some`). Each other write runs
    /// in its own savepoint: one that fails is undone alone and gets its
    /// error; the others commit. If the commit itself fails, that is the
    /// error, and none happened. A group of one needs no savepoint (two
    /// round trips to PostgreSQL fewer): if it fails, the transaction is
    /// rolled back.
    pub(super) fn grouped_with<S, R>(
        &self,
        flush: Flush,
        n: usize,
        state: &mut S,
        mut first: impl FnMut(&mut S, &mut dyn Sql) -> Result<Vec<Option<Result<R>>>>,
        mut apply: impl FnMut(&mut S, &mut dyn Sql, usize) -> Result<R>,
    ) -> Result<Vec<Result<R>>> {
        if n == 1 {
            let mut failed = None;
            let out = self.write_with(flush, Plans::Kept, |tx| {
                apply(state, tx, 0).map_err(|e| {
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
        self.write_with(flush, Plans::Fresh, |tx| {
            let mut outs: Vec<Option<Result<R>>> = first(state, tx)?;
            outs.resize_with(n, || None);
            let rest: Vec<usize> = (0..n).filter(|&i| outs[i].is_none()).collect();
            // One round trip between two writes: the savepoint of one is
            // released and the next one's made together.
            if !rest.is_empty() {
                tx.batch("SAVEPOINT write_op")?;
            }
            for (k, &i) in rest.iter().enumerate() {
                let next = if k + 1 < rest.len() {
                    "; SAVEPOINT write_op"
                } else {
                    ""
                };
                match apply(state, tx, i) {
                    Ok(o) => {
                        tx.batch(&format!("RELEASE write_op{next}"))?;
                        outs[i] = Some(Ok(o));
                    }
                    Err(e) => {
                        // Undoes this write only.
                        tx.batch(&format!("ROLLBACK TO write_op; RELEASE write_op{next}"))?;
                        outs[i] = Some(Err(e));
                    }
                }
            }
            Ok(outs
                .into_iter()
                .map(|o| o.unwrap_or_else(|| Err(anyhow::anyhow!("the write was not applied"))))
                .collect())
        })
    }
}

/// A group of hand-overs only may commit without waiting for the disk.
fn flush_for(all_may_be_lost: bool) -> Flush {
    if all_may_be_lost {
        Flush::Later
    } else {
        Flush::Wait
    }
}

/// Where a queued write's answer goes.
type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// Where its caller waits for it.
type Answer<T> = oneshot::Receiver<Result<T, StoreError>>;

/// A write waiting for its group, with its reply channel: the two are
/// made together (`enqueue`), so the answer has the type its caller
/// waits for.
struct Queued<W: GroupWrite> {
    write: W,
    /// When it was queued.
    since: Instant,
    reply: Reply<W::Out>,
    /// Its answer, once applied in the group's transaction.
    out: Option<W::Out>,
}

/// `write`, queued: the write as its group runs it, and where its
/// caller waits for the answer.
fn enqueue<W: GroupWrite>(write: W) -> (Box<dyn Waiting>, Answer<W::Out>) {
    let (reply, answer) = oneshot::channel();
    let queued = Queued {
        write,
        since: Instant::now(),
        reply,
        out: None,
    };
    (Box::new(queued), answer)
}

/// A queued write of any kind, as its group runs it.
pub(super) trait Waiting: Send {
    fn may_be_lost(&self) -> bool;
    /// When it was queued.
    fn since(&self) -> Instant;
    /// Applies the write in the group's transaction and keeps its answer.
    fn apply(&mut self, store: &Store, tx: &mut dyn Sql, now_ms: i64) -> Result<()>;
    /// The write itself, for the set-based pass to recognise
    /// ([`super::batch`]).
    fn write_any(&self) -> &dyn std::any::Any;
    /// Keeps `out`, the answer the set-based pass gave (a `W::Out`);
    /// false if it is not of this write's kind.
    fn set_out(&mut self, out: Box<dyn std::any::Any>) -> bool;
    /// Answers the caller once the group is over: `own` is the write's own
    /// failure, or the group's.
    fn answer(self: Box<Self>, own: Result<(), StoreError>);
}

impl<W: GroupWrite> Waiting for Queued<W> {
    fn may_be_lost(&self) -> bool {
        self.write.may_be_lost()
    }

    fn since(&self) -> Instant {
        self.since
    }

    fn write_any(&self) -> &dyn std::any::Any {
        &self.write
    }

    fn set_out(&mut self, out: Box<dyn std::any::Any>) -> bool {
        match out.downcast::<W::Out>() {
            Ok(o) => {
                self.out = Some(*o);
                true
            }
            Err(_) => false,
        }
    }

    fn apply(&mut self, store: &Store, tx: &mut dyn Sql, now_ms: i64) -> Result<()> {
        self.out = Some(self.write.apply(store, tx, now_ms)?);
        Ok(())
    }

    fn answer(self: Box<Self>, own: Result<(), StoreError>) {
        let Self { reply, out, .. } = *self;
        let answer = own.and_then(|()| {
            out.ok_or_else(|| StoreError::Backend("the write was not applied".into()))
        });
        let _ = reply.send(answer);
    }
}

/// A group run: each write with what it is to be answered.
type Answers = Vec<(Box<dyn Waiting>, Result<(), StoreError>)>;

/// Runs `group` in one transaction ([`Store::grouped`]) and pairs each
/// write with its outcome: its own error, or the group's — whose
/// [`StoreError`] kind each write gets — when the commit failed.
fn commit_group(store: &Store, mut group: Vec<Box<dyn Waiting>>, now_ms: i64) -> Answers {
    let flush = flush_for(group.iter().all(|p| p.may_be_lost()));
    let n = group.len();
    let set_based = store.dialect() == crate::sql::Dialect::Postgres;
    let done = store.grouped_with(
        flush,
        n,
        &mut group,
        |group, tx| {
            if set_based {
                set_pass(store, tx, group, now_ms)
            } else {
                Ok(Vec::new())
            }
        },
        |group, tx, i| group[i].apply(store, tx, now_ms),
    );
    match done {
        Ok(outs) => group
            .into_iter()
            .zip(outs)
            .map(|(p, own)| (p, own.map_err(|e| StoreError::of(&e))))
            .collect(),
        Err(e) => {
            let failed = StoreError::of(&e);
            group
                .into_iter()
                .map(|p| (p, Err(failed.clone())))
                .collect()
        }
    }
}

/// The group's reports of jobs and hand-overs in a few set-based
/// statements ([`super::batch`]), in a savepoint: if they fail, nothing of
/// them stays and every write goes one by one. Returns, per write, its
/// answer when this pass gave one.
fn set_pass(
    store: &Store,
    tx: &mut dyn Sql,
    group: &mut [Box<dyn Waiting>],
    now_ms: i64,
) -> Result<Vec<Option<Result<()>>>> {
    let reports: Vec<(usize, &ReportWrite)> = group
        .iter()
        .enumerate()
        .filter_map(|(i, w)| w.write_any().downcast_ref::<ReportWrite>().map(|r| (i, r)))
        .collect();
    let takes: Vec<(usize, &TakeWrite)> = group
        .iter()
        .enumerate()
        .filter_map(|(i, w)| w.write_any().downcast_ref::<TakeWrite>().map(|t| (i, t)))
        .collect();
    if reports.len() + takes.len() < 2 {
        return Ok(Vec::new());
    }
    tx.batch("SAVEPOINT set_pass")?;
    let attempt = (|| -> Result<_> {
        let r: Vec<&ReportWrite> = reports.iter().map(|(_, w)| *w).collect();
        let r_out = super::batch::reports(tx, &r, now_ms)?;
        let t_out = match store.holder.as_deref() {
            Some(me) => {
                let t: Vec<&TakeWrite> = takes.iter().map(|(_, w)| *w).collect();
                let reported: std::collections::HashSet<&str> =
                    r.iter().map(|w| w.hostname.as_str()).collect();
                super::batch::takes(tx, me, &t, &reported, now_ms)?
            }
            None => takes.iter().map(|_| None).collect(),
        };
        Ok((r_out, t_out))
    })();
    let (r_out, t_out) = match attempt {
        Ok(outs) => {
            tx.batch("RELEASE set_pass")?;
            outs
        }
        Err(_) => {
            tx.batch("ROLLBACK TO set_pass; RELEASE set_pass")?;
            return Ok(Vec::new());
        }
    };
    let r_idx: Vec<usize> = reports.iter().map(|(i, _)| *i).collect();
    let t_idx: Vec<usize> = takes.iter().map(|(i, _)| *i).collect();
    let mut outs: Vec<Option<Result<()>>> = (0..group.len()).map(|_| None).collect();
    for (i, d) in r_idx.into_iter().zip(r_out) {
        outs[i] = d.map(|r| r.map(|o| keep(&mut group[i], o)));
    }
    for (i, d) in t_idx.into_iter().zip(t_out) {
        outs[i] = d.map(|r| r.map(|o| keep(&mut group[i], o)));
    }
    Ok(outs)
}

/// Keeps `out` as the answer of `w` (which the set-based pass answered).
fn keep<T: Send + 'static>(w: &mut Box<dyn Waiting>, out: T) {
    let kept = w.set_out(Box::new(out));
    debug_assert!(kept, "an answer of another kind");
}

/// Group commit for the writes connections make at a high rate (reports,
/// handing jobs over): one task takes every write waiting, up to
/// [`MAX_GROUP`], and commits them in one transaction; each caller gets its
/// own result once that transaction is committed — so a report is still
/// acknowledged only after it is on disk, and a burst costs one fsync per
/// group, not per report.
///
/// Writes somebody is told about and hand-overs come through two queues,
/// each bounded: a fan-out queues a hand-over for every host it reaches
/// at once, and a report queued behind them would wait for room until
/// most of them were taken (the first report of a 19,000-host fan-out on
/// one listener was acknowledged 2 s after the POST's answer).
#[derive(Debug, Clone)]
pub struct Writer {
    told: mpsc::Sender<Box<dyn Waiting>>,
    untold: mpsc::Sender<Box<dyn Waiting>>,
}

/// Most writes one transaction takes.
pub const MAX_GROUP: usize = 512;

/// The writes the writer has taken from its queue, in two lines: those
/// somebody is told about (reports, registrations: an agent waits for its
/// `report_ack`) go into the next group before hand-overs, which nobody
/// waits on ([`GroupWrite::may_be_lost`]). A fan-out queues a hand-over
/// per host at once; without this, the first report of it waited behind
/// every one of them. Hand-overs are not starved: reports come only from
/// jobs handed over.
#[derive(Default)]
struct Lines {
    told: std::collections::VecDeque<Box<dyn Waiting>>,
    untold: std::collections::VecDeque<Box<dyn Waiting>>,
}

impl Lines {
    fn push(&mut self, w: Box<dyn Waiting>) {
        if w.may_be_lost() {
            self.untold.push_back(w);
        } else {
            self.told.push_back(w);
        }
    }

    fn is_empty(&self) -> bool {
        self.told.is_empty() && self.untold.is_empty()
    }

    /// Takes what both queues hold now, each line up to `bound`.
    fn fill(
        &mut self,
        told: &mut mpsc::Receiver<Box<dyn Waiting>>,
        untold: &mut mpsc::Receiver<Box<dyn Waiting>>,
        bound: usize,
    ) {
        for (line, queue) in [(&mut self.told, told), (&mut self.untold, untold)] {
            while line.len() < bound {
                match queue.try_recv() {
                    Ok(w) => line.push_back(w),
                    Err(_) => break,
                }
            }
        }
    }

    /// Up to [`MAX_GROUP`] writes, the told ones first, each line in the
    /// order it came.
    fn next_group(&mut self) -> Vec<Box<dyn Waiting>> {
        let n = self.told.len().min(MAX_GROUP);
        let mut group: Vec<_> = self.told.drain(..n).collect();
        let rest = (MAX_GROUP - group.len()).min(self.untold.len());
        group.extend(self.untold.drain(..rest));
        group
    }
}

impl Writer {
    /// `on_commit` is told each group's time (its transaction and
    /// commit), its size, and how long its oldest write waited for it.
    pub fn spawn(db: Db, on_commit: impl Fn(Duration, usize, Duration) + Send + 'static) -> Self {
        let (told, mut told_rx) = mpsc::channel::<Box<dyn Waiting>>(4 * MAX_GROUP);
        let (untold, mut untold_rx) = mpsc::channel::<Box<dyn Waiting>>(4 * MAX_GROUP);
        tokio::spawn(async move {
            let mut waiting = Lines::default();
            let mut open = (true, true);
            loop {
                if waiting.is_empty() {
                    // Told writes first when both wait.
                    let next = tokio::select! {
                        biased;
                        w = told_rx.recv(), if open.0 => w.ok_or(true),
                        w = untold_rx.recv(), if open.1 => w.ok_or(false),
                        else => break,
                    };
                    match next {
                        Ok(w) => waiting.push(w),
                        Err(told) if told => open.0 = false,
                        Err(_) => open.1 = false,
                    }
                    continue;
                }
                // Each line bounded as its queue is: a caller still waits
                // for room.
                waiting.fill(&mut told_rx, &mut untold_rx, 4 * MAX_GROUP);
                let group = waiting.next_group();
                let (n, started) = (group.len(), Instant::now());
                let waited = group
                    .iter()
                    .map(|w| started - w.since())
                    .max()
                    .unwrap_or_default();
                let answers = db
                    .call(move |s| Ok(commit_group(s, group, crate::now_ms())))
                    .await;
                on_commit(started.elapsed(), n, waited);
                // A storage task that failed (panicked) dropped its writes:
                // their callers are told the writer dropped them.
                for (pending, own) in answers.into_iter().flatten() {
                    pending.answer(own);
                }
            }
        });
        Self { told, untold }
    }

    /// Writes waiting for the next group now.
    pub fn queued(&self) -> usize {
        [&self.told, &self.untold]
            .iter()
            .map(|q| q.max_capacity() - q.capacity())
            .sum()
    }

    /// Stores a report; see [`Store::store_report`].
    pub async fn report(&self, write: ReportWrite) -> Result<ReportOutcome, StoreError> {
        self.write(write).await
    }

    /// Hands over the queued jobs the window allows; see
    /// [`Store::take_for_host`].
    pub async fn take(&self, write: TakeWrite) -> Result<Vec<JobRow>, StoreError> {
        self.write(write).await
    }

    /// Binds a key to its host; see [`Store::bind_key`].
    pub async fn bind(&self, write: BindWrite) -> Result<Binding, StoreError> {
        self.write(write).await
    }

    /// Records a registration; see [`Store::upsert_agent`].
    pub async fn register(&self, write: RegisterWrite) -> Result<(), StoreError> {
        self.write(write).await
    }

    /// Records a connection's end; see [`Store::touch_agent`].
    pub async fn touch(&self, write: TouchWrite) -> Result<(), StoreError> {
        self.write(write).await
    }

    /// Queues `write` for the next group and waits until it is committed.
    async fn write<W: GroupWrite>(&self, write: W) -> Result<W::Out, StoreError> {
        let (pending, answer) = enqueue(write);
        let queue = if pending.may_be_lost() {
            &self.untold
        } else {
            &self.told
        };
        queue
            .send(pending)
            .await
            .map_err(|_| StoreError::Backend("the store's writer has stopped".into()))?;
        answer
            .await
            .map_err(|_| StoreError::Backend("the store's writer dropped a write".into()))?
    }
}

#[cfg(test)]
pub(super) mod testing {
    //! The writer's group, run without its task, for tests.
    use super::*;

    /// Runs `group` as the writer does and answers each write.
    pub(in crate::store) fn run_group(store: &Store, group: Vec<Box<dyn Waiting>>, now_ms: i64) {
        for (pending, own) in commit_group(store, group, now_ms) {
            pending.answer(own);
        }
    }

    /// Queues `write` in a group of the caller's.
    pub(in crate::store) fn queue<W: GroupWrite>(
        group: &mut Vec<Box<dyn Waiting>>,
        write: W,
    ) -> Answer<W::Out> {
        let (pending, answer) = enqueue(write);
        group.push(pending);
        answer
    }
}
