//! Runs sysfs writes and reads off the event loop: one FIFO queue per filesystem, its operations
//! one at a time and in order on a thread of their own, filesystems independent of each other
//! (the drive rule in `gfs_core::io`).
//!
//! The real kernel blocks a `first`/`jid` write until the DLM join completes (quorum, fencing,
//! dlm_controld's delays) and a `recover` write until this node's own journal is ready. A write
//! stuck there must not hold up CPG, quorum, the control socket or another filesystem's
//! `block=1`, so each operation runs on a detached worker thread: nothing ever joins one, and
//! the daemon can exit while one is still inside the kernel. Workers stay for the next
//! operation for a while: a failure with F filesystems starts 3F operations in bursts, and a
//! thread's start costs more than a sysfs write.
//!
//! Results come back on a channel in completion order, which is per-filesystem order because a
//! filesystem has at most one operation running. The owner passes each result through
//! [`SysfsExecutor::complete`], which starts that filesystem's next operation.

use std::collections::{BTreeMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use gfs_core::{SysfsFile, Table, WriteError};
use tokio::sync::mpsc;

use super::SysfsWriter;

/// Threads running at most at once: one per filesystem with an operation in flight. Beyond it,
/// filesystems wait for a thread in the order their operations became ready.
pub const MAX_WORKERS: usize = 128;
/// An operation still in the kernel after this long is reported, and again as often.
pub const SLOW_OP: Duration = Duration::from_secs(10);
/// A worker with nothing to do exits after this long, so an idle daemon keeps no threads (and
/// no wakeups) while the phases of one recovery (block, recover, unblock) reuse them.
const WORKER_IDLE_EXIT: Duration = Duration::from_secs(30);

/// One operation on a filesystem's sysfs directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SysfsOp {
    /// Write `value` to `lock_module/<file>`.
    Write { file: SysfsFile, value: i64 },
    /// Read `lock_module/<file>` as a decimal integer.
    Read { file: SysfsFile },
    /// Read the mount's read-only state from `<table>/status`.
    ReadMode,
}

impl SysfsOp {
    fn describe(&self) -> String {
        match self {
            SysfsOp::Write { file, value } => format!("write {}={value}", file.name()),
            SysfsOp::Read { file } => format!("read {}", file.name()),
            SysfsOp::ReadMode => "read status".to_owned(),
        }
    }
}

/// The result of a [`SysfsOp`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SysfsDone {
    Write {
        table: Table,
        file: SysfsFile,
        value: i64,
        result: Result<(), WriteError>,
    },
    Read {
        table: Table,
        file: SysfsFile,
        result: Result<i64, i32>,
    },
    /// `None`: no `status` file, or no `Mounted RO:` line in it.
    Mode { table: Table, ro: Option<bool> },
}

impl SysfsDone {
    pub fn table(&self) -> &Table {
        match self {
            SysfsDone::Write { table, .. }
            | SysfsDone::Read { table, .. }
            | SysfsDone::Mode { table, .. } => table,
        }
    }

    fn failed(table: Table, op: SysfsOp, errno: i32) -> SysfsDone {
        match op {
            SysfsOp::Write { file, value } => SysfsDone::Write {
                table,
                file,
                value,
                result: Err(WriteError::Refused(errno)),
            },
            SysfsOp::Read { file } => SysfsDone::Read {
                table,
                file,
                result: Err(errno),
            },
            SysfsOp::ReadMode => SysfsDone::Mode { table, ro: None },
        }
    }
}

struct Running {
    op: SysfsOp,
    since: Instant,
    reported: Option<Instant>,
}

/// The per-filesystem queues. Owned by the event loop; never blocks.
pub struct SysfsExecutor {
    sysfs: SysfsWriter,
    tx: mpsc::UnboundedSender<SysfsDone>,
    workers: Workers,
    queued: BTreeMap<Table, VecDeque<SysfsOp>>,
    running: BTreeMap<Table, Running>,
    /// Filesystems with a queued operation and none running, waiting for a free thread.
    waiting: VecDeque<Table>,
    max_workers: usize,
    /// Filesystems have been waiting for a thread since the last warning: one warning per
    /// episode, not one per operation started or finished (hundreds after a failure with
    /// many filesystems).
    saturated: bool,
}

impl std::fmt::Debug for SysfsExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SysfsExecutor")
            .field("root", &self.sysfs.root())
            .field("running", &self.running.len())
            .field(
                "queued",
                &self.queued.values().map(VecDeque::len).sum::<usize>(),
            )
            .finish()
    }
}

impl SysfsExecutor {
    /// The executor and the channel its results come back on.
    pub fn new(sysfs: SysfsWriter) -> (SysfsExecutor, mpsc::UnboundedReceiver<SysfsDone>) {
        SysfsExecutor::with_max_workers(sysfs, MAX_WORKERS)
    }

    pub fn with_max_workers(
        sysfs: SysfsWriter,
        max_workers: usize,
    ) -> (SysfsExecutor, mpsc::UnboundedReceiver<SysfsDone>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let workers = Workers {
            sysfs: sysfs.clone(),
            tx: tx.clone(),
            shared: Arc::default(),
        };
        let executor = SysfsExecutor {
            sysfs,
            tx,
            workers,
            queued: BTreeMap::new(),
            running: BTreeMap::new(),
            waiting: VecDeque::new(),
            max_workers: max_workers.max(1),
            saturated: false,
        };
        (executor, rx)
    }

    /// Queues `op` behind every earlier operation of `table`; starts it at once when the
    /// filesystem is idle and a thread is free.
    pub fn submit(&mut self, table: Table, op: SysfsOp) {
        let idle = !self.running.contains_key(&table);
        let queue = self.queued.entry(table.clone()).or_default();
        queue.push_back(op);
        if !idle {
            tracing::debug!(fs = %table.fs(), op = %op.describe(), "sysfs operation queued behind one in the kernel");
            return;
        }
        if queue.len() == 1 {
            self.waiting.push_back(table);
        }
        self.start_waiting();
    }

    /// Takes a result off the channel's books: logs it, frees its filesystem for its next
    /// operation, and hands it back for the core.
    pub fn complete(&mut self, done: SysfsDone) -> SysfsDone {
        let table = done.table().clone();
        let took = self
            .running
            .remove(&table)
            .map(|r| r.since.elapsed())
            .unwrap_or_default();
        log_done(&done, took);
        if self.queued.get(&table).is_some_and(|q| !q.is_empty()) {
            self.waiting.push_back(table);
        }
        self.start_waiting();
        done
    }

    /// Operations in the kernel now.
    pub fn running(&self) -> usize {
        self.running.len()
    }

    /// Operations not yet started.
    pub fn queued(&self) -> usize {
        self.queued.values().map(VecDeque::len).sum()
    }

    /// When [`SysfsExecutor::warn_slow`] has something to report next (`None` while nothing runs,
    /// so an idle daemon sets no timer for it).
    pub fn next_slow_warning(&self) -> Option<Instant> {
        self.running
            .values()
            .map(|r| r.reported.unwrap_or(r.since) + SLOW_OP)
            .min()
    }

    /// Reports operations that have been in the kernel for [`SLOW_OP`] or longer (once, then
    /// again every [`SLOW_OP`]). Call it at [`SysfsExecutor::next_slow_warning`].
    pub fn warn_slow(&mut self) {
        let now = Instant::now();
        for (table, r) in &mut self.running {
            let waited = now.duration_since(r.since);
            let due = waited >= SLOW_OP
                && r.reported
                    .is_none_or(|last| now.duration_since(last) >= SLOW_OP);
            if due {
                r.reported = Some(now);
                tracing::warn!(
                    fs = %table.fs(),
                    op = %r.op.describe(),
                    waited_s = waited.as_secs(),
                    queued = self.queued.get(table).map_or(0, VecDeque::len),
                    "a sysfs operation has not returned from the kernel yet (a first/jid write \
                     waits for the DLM join, recover for this node's journal); other filesystems \
                     are not held up"
                );
            }
        }
    }

    fn start_waiting(&mut self) {
        while self.running.len() < self.max_workers {
            let Some(table) = self.waiting.pop_front() else {
                return;
            };
            let Some(op) = self.queued.get_mut(&table).and_then(VecDeque::pop_front) else {
                continue;
            };
            if self.queued.get(&table).is_some_and(VecDeque::is_empty) {
                self.queued.remove(&table);
            }
            self.start(table, op);
        }
        if self.waiting.is_empty() {
            if std::mem::replace(&mut self.saturated, false) {
                tracing::debug!("no filesystem waits for a sysfs worker thread any more");
            }
        } else if !std::mem::replace(&mut self.saturated, true) {
            tracing::warn!(
                running = self.running.len(),
                waiting = self.waiting.len(),
                "every sysfs worker thread is busy; filesystems wait for one"
            );
        }
    }

    fn start(&mut self, table: Table, op: SysfsOp) {
        self.running.insert(
            table.clone(),
            Running {
                op,
                since: Instant::now(),
                reported: None,
            },
        );
        if let Err((e, (table, op))) = self.workers.run(table, op) {
            let errno = e.raw_os_error().unwrap_or(libc::EAGAIN);
            tracing::error!(fs = %table.fs(), op = %op.describe(), error = %e, "cannot start a sysfs worker thread");
            let _ = self.tx.send(SysfsDone::failed(table, op, errno));
        }
    }
}

/// The worker threads: a queue of started operations and the threads that take them. The
/// executor starts at most one operation per filesystem and at most `max_workers` at once, so
/// every queued operation has a thread that is idle or about to be started for it.
struct Workers {
    sysfs: SysfsWriter,
    tx: mpsc::UnboundedSender<SysfsDone>,
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    state: Mutex<Pool>,
    work: Condvar,
}

#[derive(Default)]
struct Pool {
    jobs: VecDeque<(Table, SysfsOp)>,
    /// Workers waiting for a job (notified ones included until they wake).
    idle: usize,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Pool> {
        // A worker never panics while holding the lock; even so, the queue stays usable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Workers {
    /// Hands the operation to an idle worker, or to a new one when none is idle. A thread that
    /// cannot be started gives back an operation to fail.
    #[allow(clippy::result_large_err)]
    fn run(&self, table: Table, op: SysfsOp) -> Result<(), (std::io::Error, (Table, SysfsOp))> {
        let mut pool = self.shared.lock();
        pool.jobs.push_back((table, op));
        if pool.jobs.len() <= pool.idle {
            self.shared.work.notify_one();
            return Ok(());
        }
        drop(pool);
        let (sysfs, tx, shared) = (self.sysfs.clone(), self.tx.clone(), self.shared.clone());
        let spawned = std::thread::Builder::new()
            .name("gfs-sysfs".to_owned())
            .spawn(move || work(&sysfs, &tx, &shared));
        match spawned {
            Ok(_) => Ok(()),
            Err(e) => {
                let job = self.shared.lock().jobs.pop_back();
                // Another worker took it meanwhile and answers for it.
                job.map_or(Ok(()), |job| Err((e, job)))
            }
        }
    }
}

/// A worker: runs queued operations until none has come for [`WORKER_IDLE_EXIT`].
fn work(sysfs: &SysfsWriter, tx: &mpsc::UnboundedSender<SysfsDone>, shared: &Shared) {
    loop {
        let (table, op) = {
            let mut pool = shared.lock();
            loop {
                if let Some(job) = pool.jobs.pop_front() {
                    break job;
                }
                pool.idle += 1;
                let (guard, waited) = shared
                    .work
                    .wait_timeout(pool, WORKER_IDLE_EXIT)
                    .unwrap_or_else(PoisonError::into_inner);
                pool = guard;
                pool.idle -= 1;
                if waited.timed_out() && pool.jobs.is_empty() {
                    return;
                }
            }
        };
        // A panic must still answer, or the filesystem's queue would stop for good.
        let done = std::panic::catch_unwind(AssertUnwindSafe(|| run(sysfs, table.clone(), op)))
            .unwrap_or_else(|_| SysfsDone::failed(table, op, libc::EIO));
        // The loop may be gone (daemon exit): nobody to tell, and nothing more will come.
        if tx.send(done).is_err() {
            return;
        }
    }
}

fn run(sysfs: &SysfsWriter, table: Table, op: SysfsOp) -> SysfsDone {
    match op {
        SysfsOp::Write { file, value } => SysfsDone::Write {
            result: sysfs.write(&table, file, value),
            table,
            file,
            value,
        },
        SysfsOp::Read { file } => SysfsDone::Read {
            result: sysfs.read(&table, file),
            table,
            file,
        },
        SysfsOp::ReadMode => SysfsDone::Mode {
            ro: sysfs.read_mount_ro(&table),
            table,
        },
    }
}

fn log_done(done: &SysfsDone, took: Duration) {
    let ms = took.as_millis() as u64;
    match done {
        SysfsDone::Write {
            table,
            file,
            value,
            result: Ok(()),
        } => tracing::debug!(fs = %table.fs(), file = file.name(), value, ms, "sysfs write"),
        SysfsDone::Write {
            table,
            file,
            value,
            result: Err(error),
        } => tracing::warn!(
            fs = %table.fs(),
            file = file.name(),
            value,
            ms,
            error = %std::io::Error::from_raw_os_error(error.errno()),
            "the kernel refused a sysfs write"
        ),
        SysfsDone::Read {
            table,
            file,
            result: Ok(value),
        } => tracing::debug!(fs = %table.fs(), file = file.name(), value, ms, "sysfs read"),
        SysfsDone::Read {
            table,
            file,
            result: Err(errno),
        } => tracing::warn!(
            fs = %table.fs(),
            file = file.name(),
            ms,
            error = %std::io::Error::from_raw_os_error(*errno),
            "a sysfs read failed"
        ),
        SysfsDone::Mode { table, ro } => {
            tracing::trace!(fs = %table.fs(), ro = ?ro, ms, "mount mode read from status")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The thread ids of this process's sysfs workers alive now.
    fn workers_alive() -> Vec<u32> {
        let mut tids: Vec<u32> = std::fs::read_dir("/proc/self/task")
            .unwrap()
            .flatten()
            .filter(|t| {
                std::fs::read_to_string(t.path().join("comm"))
                    .is_ok_and(|c| c.trim() == "gfs-sysfs")
            })
            .filter_map(|t| t.file_name().to_str()?.parse().ok())
            .collect();
        tids.sort();
        tids
    }

    /// One filesystem's operations come one after another (block, recover, unblock, and the
    /// reads between): they run on one worker thread that stays, instead of a thread each.
    #[tokio::test]
    async fn operations_one_after_another_reuse_one_worker_thread() {
        let root = std::env::temp_dir().join(format!("gfs-executor-unit-{}", std::process::id()));
        let table = Table::parse("alpha:fs1").unwrap();
        let lm = root.join(table.to_string()).join("lock_module");
        std::fs::create_dir_all(&lm).unwrap();
        std::fs::write(lm.join("block"), "0\n").unwrap();
        let (mut exec, mut rx) = SysfsExecutor::new(SysfsWriter::new(&root));

        let mut seen = Vec::new();
        for value in [1, 0, 1, 0, 1, 0, 1, 0] {
            let op = SysfsOp::Write {
                file: SysfsFile::Block,
                value,
            };
            exec.submit(table.clone(), op);
            let done = tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .expect("a result within 10 s")
                .expect("the channel is open");
            assert!(
                matches!(done, SysfsDone::Write { result: Ok(()), .. }),
                "{done:?}"
            );
            exec.complete(done);
            // Time for a finished thread to be gone, were it to go.
            tokio::time::sleep(Duration::from_millis(20)).await;
            seen.push(workers_alive());
        }
        let _ = std::fs::remove_dir_all(&root);
        assert!(
            seen.iter().all(|tids| tids.len() == 1 && *tids == seen[0]),
            "the worker threads after each operation: {seen:?}"
        );
    }
}
