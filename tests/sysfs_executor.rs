//! The off-loop sysfs executor (`gfs_controld::kernel::SysfsExecutor`): one FIFO per
//! filesystem, filesystems independent, results in per-filesystem order, a write stuck in the
//! kernel never holding up another filesystem nor the daemon's exit.
//!
//! The blocking kernel file is [`SlowSysfs`]: today a FIFO written by a `SysfsWriter` that opens
//! without `O_NONBLOCK`, so the write blocks in `open(2)` until a reader comes `hold` later, as
//! a real `first`/`jid` write blocks until the DLM join completes. To run these tests against
//! the FUSE kernel simulator instead, only `SlowSysfs` changes: it must make one
//! `<root>/<table>/lock_module/<file>` write take `hold` and hand out the root's writer.

mod common;
use common::{Captured, TempDir};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gfs_controld::kernel::{SysfsDone, SysfsExecutor, SysfsOp, SysfsWriter};
use gfs_core::{SysfsFile, Table, WriteError};
use tokio::sync::mpsc::UnboundedReceiver;

fn table(fs: &str) -> Table {
    Table::parse(&format!("alpha:{fs}")).unwrap()
}

/// Regular `lock_module/` files for `fs`, as the kernel simulator lays them out.
fn make_table(root: &Path, fs: &str) -> PathBuf {
    let lm = root.join(format!("alpha:{fs}")).join("lock_module");
    std::fs::create_dir_all(&lm).unwrap();
    for file in ["block", "first", "jid", "recover", "withdraw"] {
        std::fs::write(lm.join(file), "0\n").unwrap();
    }
    lm
}

/// A sysfs root where writing `<slow_fs>`'s `lock_module/<file>` takes `hold`.
struct SlowSysfs {
    root: TempDir,
    fifo: PathBuf,
    /// What the slow write delivered, once it got through.
    got: Arc<Mutex<Option<String>>>,
}

impl SlowSysfs {
    fn new(tag: &str, slow_fs: &str, file: SysfsFile, hold: Duration) -> SlowSysfs {
        let root = TempDir::new(tag);
        let lm = make_table(&root.0, slow_fs);
        let fifo = lm.join(file.name());
        std::fs::remove_file(&fifo).unwrap();
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let got = Arc::new(Mutex::new(None));
        let (path, sink) = (fifo.clone(), got.clone());
        std::thread::spawn(move || {
            std::thread::sleep(hold);
            // Opening for reading lets the writer's open return; read what it writes.
            if let Ok(text) = std::fs::read_to_string(&path) {
                *sink.lock().unwrap() = Some(text);
            }
        });
        SlowSysfs { root, fifo, got }
    }

    fn root(&self) -> &Path {
        &self.root.0
    }

    fn writer(&self) -> SysfsWriter {
        SysfsWriter::new(self.root()).with_blocking_open()
    }

    /// Lets a writer still stuck in `open(2)` through at once.
    fn release(&self) {
        let fifo = self.fifo.clone();
        std::thread::spawn(move || {
            let _ = std::fs::read_to_string(fifo);
        });
    }
}

async fn next(rx: &mut UnboundedReceiver<SysfsDone>, within: Duration) -> Option<SysfsDone> {
    tokio::time::timeout(within, rx.recv()).await.ok().flatten()
}

fn write(file: SysfsFile, value: i64) -> SysfsOp {
    SysfsOp::Write { file, value }
}

fn write_done(fs: &str, file: SysfsFile, value: i64, result: Result<(), WriteError>) -> SysfsDone {
    SysfsDone::Write {
        table: table(fs),
        file,
        value,
        result,
    }
}

#[tokio::test]
async fn a_write_blocked_for_10s_does_not_delay_another_filesystems_block() {
    let hold = Duration::from_secs(10);
    let slow = SlowSysfs::new("block", "slow", SysfsFile::Jid, hold);
    let lm_other = make_table(slow.root(), "other");
    let (mut exec, mut rx) = SysfsExecutor::new(slow.writer());
    let start = Instant::now();
    exec.submit(table("slow"), write(SysfsFile::Jid, 2));
    // Queued behind the stuck write of its own filesystem.
    exec.submit(table("slow"), write(SysfsFile::Block, 1));
    exec.submit(table("other"), write(SysfsFile::Block, 1));

    let done = next(&mut rx, Duration::from_secs(2)).await;
    let other_took = start.elapsed();
    assert_eq!(
        done.map(|d| exec.complete(d)),
        Some(write_done("other", SysfsFile::Block, 1, Ok(()))),
        "the other filesystem's block=1 came first"
    );
    assert!(
        other_took < Duration::from_secs(1),
        "block=1 of another filesystem took {other_took:?}"
    );
    assert_eq!(
        std::fs::read_to_string(lm_other.join("block")).unwrap(),
        "1\n"
    );
    assert_eq!((exec.running(), exec.queued()), (1, 1));

    // The stuck write returns after `hold`, then its filesystem's next operation runs.
    let jid = next(&mut rx, hold + Duration::from_secs(10)).await.unwrap();
    let jid_took = start.elapsed();
    assert_eq!(
        exec.complete(jid),
        write_done("slow", SysfsFile::Jid, 2, Ok(()))
    );
    assert!(
        jid_took >= hold - Duration::from_millis(100),
        "{jid_took:?}"
    );
    // The reader stores what it read after the writer closed: it may come a little later.
    let deadline = Instant::now() + Duration::from_secs(5);
    while slow.got.lock().unwrap().is_none() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(slow.got.lock().unwrap().as_deref(), Some("2\n"));
    let block = next(&mut rx, Duration::from_secs(2)).await.unwrap();
    assert_eq!(
        exec.complete(block),
        write_done("slow", SysfsFile::Block, 1, Ok(()))
    );
    assert_eq!((exec.running(), exec.queued()), (0, 0));
}

#[tokio::test]
async fn results_come_in_submission_order_per_filesystem() {
    let slow = SlowSysfs::new("order", "a", SysfsFile::First, Duration::from_millis(300));
    make_table(slow.root(), "b");
    std::fs::write(
        slow.root().join("alpha:a/status"),
        "Journal ID:               1\nMounted RO:               1\n",
    )
    .unwrap();
    let (mut exec, mut rx) = SysfsExecutor::new(slow.writer());
    exec.submit(table("a"), write(SysfsFile::First, 0));
    exec.submit(table("a"), write(SysfsFile::Jid, 1));
    exec.submit(
        table("a"),
        SysfsOp::Read {
            file: SysfsFile::Jid,
        },
    );
    exec.submit(table("a"), SysfsOp::ReadMode);
    exec.submit(table("b"), SysfsOp::ReadMode);
    exec.submit(table("gone"), write(SysfsFile::Block, 1));
    let mut a = Vec::new();
    let mut others = Vec::new();
    while a.len() < 4 || others.len() < 2 {
        let done = next(&mut rx, Duration::from_secs(5)).await.expect("result");
        let done = exec.complete(done);
        if *done.table() == table("a") {
            a.push(done);
        } else {
            others.push(done);
        }
    }
    assert_eq!(
        a,
        vec![
            write_done("a", SysfsFile::First, 0, Ok(())),
            write_done("a", SysfsFile::Jid, 1, Ok(())),
            SysfsDone::Read {
                table: table("a"),
                file: SysfsFile::Jid,
                result: Ok(1)
            },
            SysfsDone::Mode {
                table: table("a"),
                ro: Some(true)
            },
        ]
    );
    others.sort_by_key(|d| d.table().to_string());
    assert_eq!(
        others,
        vec![
            SysfsDone::Mode {
                table: table("b"),
                ro: None
            },
            // A filesystem whose directory is gone: ENODEV, not ENOENT.
            write_done("gone", SysfsFile::Block, 1, Err(WriteError::Gone)),
        ]
    );
}

#[tokio::test]
async fn the_thread_bound_makes_filesystems_wait_their_turn() {
    let slow = SlowSysfs::new("bound", "a", SysfsFile::Jid, Duration::from_millis(400));
    make_table(slow.root(), "b");
    let (mut exec, mut rx) = SysfsExecutor::with_max_workers(slow.writer(), 1);
    let start = Instant::now();
    exec.submit(table("a"), write(SysfsFile::Jid, 0));
    exec.submit(table("b"), write(SysfsFile::Block, 1));
    let first = exec.complete(next(&mut rx, Duration::from_secs(5)).await.unwrap());
    assert_eq!(first.table(), &table("a"));
    let second = exec.complete(next(&mut rx, Duration::from_secs(5)).await.unwrap());
    assert_eq!(second, write_done("b", SysfsFile::Block, 1, Ok(())));
    assert!(start.elapsed() >= Duration::from_millis(350));
}

#[tokio::test]
async fn a_burst_beyond_the_thread_bound_warns_once() {
    let captured = Captured::default();
    let sink = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || sink.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::WARN)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let root = TempDir::new("burst");
    let names: Vec<String> = (0..20).map(|i| format!("f{i}")).collect();
    for name in &names {
        make_table(&root.0, name);
    }
    let (mut exec, mut rx) = SysfsExecutor::with_max_workers(SysfsWriter::new(&root.0), 2);
    for name in &names {
        exec.submit(table(name), write(SysfsFile::Block, 1));
    }
    for _ in &names {
        exec.complete(next(&mut rx, Duration::from_secs(5)).await.unwrap());
    }
    let text = captured.text();
    assert_eq!(
        text.matches("every sysfs worker thread is busy").count(),
        1,
        "{text}"
    );
}

#[test]
fn exit_does_not_wait_for_a_write_stuck_in_the_kernel() {
    let slow = SlowSysfs::new("exit", "a", SysfsFile::Jid, Duration::from_secs(3600));
    let writer = slow.writer();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let started = runtime.block_on(async move {
        let (mut exec, rx) = SysfsExecutor::new(writer);
        exec.submit(table("a"), write(SysfsFile::Jid, 0));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(exec.running(), 1);
        (exec, rx)
    });
    let t = Instant::now();
    drop(started);
    drop(runtime);
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "shutting down waited {:?} for a stuck write",
        t.elapsed()
    );
    slow.release();
}
