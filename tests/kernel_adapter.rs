//! The kernel adapters (`gfs_controld::kernel`) against real netlink and the kernel simulator.
//!
//! Netlink tests run in a private network namespace: a thread `unshare(CLONE_NEWNET)`s itself
//! (only that thread moves; the namespace disappears with the thread and the processes it
//! started), so uevents never leave it. They need root: without it they are skipped with a
//! note, unless `CI` is set, where they fail.
//!
//! The simulator end-to-end test runs `gfs_kernel_sim` from `target/<profile>/` (or
//! `$GFS_BIN_DIR`), building it with cargo first if it is missing or older than its sources.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use gfs_controld::core::{
    format_uevent, KernelEvent, KernelEventKind, SysfsFile, Table, UeventError,
};
use gfs_controld::kernel::{send_uevent, KernelError, SysfsWriter, UeventListener};

const WAIT: Duration = Duration::from_secs(10);

// ------------------------------------------------------------------------------------------
// Helpers

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "gfs-kernel-adapter-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn table(s: &str) -> Table {
    Table::parse(s).unwrap()
}

/// True when the root-only part may run; otherwise prints why it is skipped (panics under CI).
fn root_or_skip(test: &str) -> bool {
    let why = if !nix::unistd::geteuid().is_root() {
        "needs root for a private network namespace".to_owned()
    } else {
        // Root without CAP_SYS_ADMIN (some containers) cannot unshare either.
        match std::thread::spawn(|| nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET))
            .join()
            .expect("probe thread")
        {
            Ok(()) => return true,
            Err(e) => format!("unshare(CLONE_NEWNET) fails: {e}"),
        }
    };
    if std::env::var_os("CI").is_some() {
        panic!("{test}: {why}, and CI is set: refusing to skip");
    }
    eprintln!("SKIPPED {test}: {why}");
    false
}

/// Runs `f` on a thread moved into a fresh network namespace, with a current-thread tokio
/// runtime. Processes spawned from `f` inherit the namespace.
fn in_netns<F, R>(f: F) -> R
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    let handle = std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
        f()
    });
    match handle.join() {
        Ok(r) => r,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

async fn next_event(l: &mut UeventListener) -> Result<KernelEvent, UeventError> {
    tokio::time::timeout(WAIT, l.next())
        .await
        .expect("no uevent within 10 s")
        .expect("uevent socket failed")
}

async fn expect_event(l: &mut UeventListener, want: &KernelEvent) {
    let got = next_event(l).await;
    assert_eq!(got.as_ref(), Ok(want), "unexpected uevent");
}

fn ev(t: &str, kind: KernelEventKind) -> KernelEvent {
    KernelEvent {
        table: table(t),
        kind,
    }
}

/// A child process ended by PID when dropped (SIGTERM, then SIGKILL after 5 s).
struct ChildGuard {
    child: Option<Child>,
    what: &'static str,
}

impl ChildGuard {
    fn new(child: Child, what: &'static str) -> ChildGuard {
        ChildGuard {
            child: Some(child),
            what,
        }
    }

    /// Waits (bounded) for the process to exit on its own.
    fn wait(&mut self, limit: Duration) -> ExitStatus {
        let child = self.child.as_mut().expect("already reaped");
        let deadline = Instant::now() + limit;
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                self.child = None;
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit within {limit:?}",
                self.what
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// SIGTERM, then a bounded wait; SIGKILL if it does not go.
    fn terminate(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(st)) = child.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        child.wait().ok()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.terminate();
    }
}

fn newest_mtime(dir: &Path) -> std::time::SystemTime {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|e| e.metadata().ok()?.modified().ok())
        .max()
        .unwrap_or(std::time::UNIX_EPOCH)
}

/// `gfs_kernel_sim`, built if missing or stale.
fn sim_binary() -> PathBuf {
    let dir = match std::env::var_os("GFS_BIN_DIR") {
        Some(d) => PathBuf::from(d),
        None => {
            let exe = std::env::current_exe().unwrap();
            // target/<profile>/deps/kernel_adapter-<hash>
            exe.parent().unwrap().parent().unwrap().to_path_buf()
        }
    };
    let bin = dir.join("gfs_kernel_sim");
    let sources = Path::new(env!("CARGO_MANIFEST_DIR")).join("crates/gfs-testkit/src");
    let stale = match std::fs::metadata(&bin).and_then(|m| m.modified()) {
        Ok(built) => built < newest_mtime(&sources),
        Err(_) => true,
    };
    if stale && std::env::var_os("GFS_BIN_DIR").is_none() {
        let profile = dir.file_name().unwrap().to_str().unwrap().to_owned();
        let mut cmd = Command::new(env!("CARGO"));
        cmd.args(["build", "-p", "gfs-testkit", "--bin", "gfs_kernel_sim"])
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        if profile == "release" {
            cmd.arg("--release");
        }
        let mut build = ChildGuard::new(cmd.spawn().expect("run cargo build"), "cargo build");
        let st = build.wait(Duration::from_secs(600));
        assert!(st.success(), "cargo build -p gfs-testkit failed: {st}");
    }
    assert!(
        bin.exists(),
        "{} missing: run `cargo build -p gfs-testkit`",
        bin.display()
    );
    bin
}

// ------------------------------------------------------------------------------------------
// SysfsWriter (no root needed)

#[test]
fn writer_writes_decimal_newline_and_reports_enodev() {
    let tmp = TempDir::new("writer");
    let w = SysfsWriter::new(&tmp.0);
    assert_eq!(w.root(), tmp.0.as_path());
    let t = table("clu:fs1");
    assert_eq!(w.write(&t, SysfsFile::Jid, 3), Err(libc::ENODEV));

    let lm = tmp.0.join("clu:fs1/lock_module");
    std::fs::create_dir_all(&lm).unwrap();
    assert_eq!(w.write(&t, SysfsFile::Recover, 3), Err(libc::ENODEV));
    assert!(
        !lm.join("recover").exists(),
        "a missing file must not be created"
    );

    for f in ["block", "first", "jid", "recover", "withdraw"] {
        std::fs::write(lm.join(f), "9999999\n").unwrap();
    }
    w.write(&t, SysfsFile::Block, 1).unwrap();
    w.write(&t, SysfsFile::First, 0).unwrap();
    w.write(&t, SysfsFile::Jid, -22).unwrap();
    w.write(&t, SysfsFile::Recover, 12).unwrap();
    w.write(&t, SysfsFile::Withdraw, 1).unwrap();
    let read = |f: &str| std::fs::read_to_string(lm.join(f)).unwrap();
    assert_eq!(read("block"), "1\n");
    assert_eq!(read("first"), "0\n");
    assert_eq!(read("jid"), "-22\n");
    assert_eq!(read("recover"), "12\n");
    assert_eq!(read("withdraw"), "1\n");

    // A read-only file reports the errno as is.
    if !nix::unistd::geteuid().is_root() {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(lm.join("block"), std::fs::Permissions::from_mode(0o444)).unwrap();
        assert_eq!(w.write(&t, SysfsFile::Block, 0), Err(libc::EACCES));
    }
}

#[test]
fn writer_lists_existing_tables() {
    let tmp = TempDir::new("existing");
    assert!(SysfsWriter::new(tmp.0.join("absent"))
        .existing_tables()
        .is_empty());
    let lm = tmp.0.join("clu:fs1/lock_module");
    std::fs::create_dir_all(&lm).unwrap();
    std::fs::write(lm.join("proto_name"), "lock_dlm\n").unwrap();
    std::fs::write(lm.join("jid"), "2\n").unwrap();
    let got = SysfsWriter::new(&tmp.0).existing_tables();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].name, "clu:fs1");
    assert_eq!(got[0].proto.as_deref(), Some("lock_dlm"));
    assert_eq!(got[0].jid, Some(2));
}

// ------------------------------------------------------------------------------------------
// Netlink

#[test]
fn listener_receives_uevent_sent_in_namespace() {
    if !root_or_skip("listener_receives_uevent_sent_in_namespace") {
        return;
    }
    in_netns(|| {
        runtime().block_on(async {
            let mut l = UeventListener::bind().unwrap();
            let want = ev("clu:fs1", KernelEventKind::Recovery { jid: 2, done: true });
            send_uevent(&format_uevent(&want)).unwrap();
            expect_event(&mut l, &want).await;
            // The research note's literal example (no LOCKTABLE/LOCKPROTO: malformed for us).
            send_uevent(
                b"change@/fs/gfs2/NAME:fs1\0ACTION=change\0DEVPATH=/fs/gfs2/NAME:fs1\0\
                  SUBSYSTEM=gfs2\0RECOVERY=Done\0JID=2\0",
            )
            .unwrap();
            assert!(matches!(
                next_event(&mut l).await,
                Err(UeventError::Malformed(_))
            ));
        })
    });
}

#[test]
fn listener_skips_foreign_events_and_reports_malformed_ones() {
    if !root_or_skip("listener_skips_foreign_events_and_reports_malformed_ones") {
        return;
    }
    in_netns(|| {
        runtime().block_on(async {
            let mut l = UeventListener::bind().unwrap();
            // Other subsystems, a lock_nolock gfs2, garbage, udev-style: skipped silently.
            send_uevent(
                b"add@/kernel/dlm/fs1\0ACTION=add\0DEVPATH=/kernel/dlm/fs1\0SUBSYSTEM=dlm\0",
            )
            .unwrap();
            send_uevent(
                b"add@/fs/gfs2/a:b\0ACTION=add\0DEVPATH=/fs/gfs2/a:b\0SUBSYSTEM=gfs2\0\
                  LOCKTABLE=a:b\0LOCKPROTO=lock_nolock\0",
            )
            .unwrap();
            send_uevent(b"\xff\xfe garbage").unwrap();
            send_uevent(b"libudev\0\xfe\xed\xca\xfe").unwrap();
            send_uevent(
                b"add@/devices/virtual/net/lo\0ACTION=add\0DEVPATH=/devices/virtual/net/lo\0\
                  SUBSYSTEM=net\0",
            )
            .unwrap();
            // A gfs2 lock_dlm event with a bad value: inner Err.
            send_uevent(
                b"change@/fs/gfs2/a:b\0ACTION=change\0DEVPATH=/fs/gfs2/a:b\0SUBSYSTEM=gfs2\0\
                  LOCKTABLE=a:b\0LOCKPROTO=lock_dlm\0JID=1\0RECOVERY=Maybe\0",
            )
            .unwrap();
            let good = ev("a:b", KernelEventKind::Offline);
            send_uevent(&format_uevent(&good)).unwrap();
            match next_event(&mut l).await {
                Err(UeventError::Malformed(why)) => assert!(why.contains("RECOVERY"), "{why}"),
                other => panic!("expected the malformed gfs2 event first, got {other:?}"),
            }
            expect_event(&mut l, &good).await;
        })
    });
}

#[test]
fn listener_does_not_hear_other_namespaces() {
    if !root_or_skip("listener_does_not_hear_other_namespaces") {
        return;
    }
    in_netns(|| {
        runtime().block_on(async {
            let mut l = UeventListener::bind().unwrap();
            // Sent from a second private namespace: must not arrive here.
            in_netns(|| {
                send_uevent(&format_uevent(&ev("x:other", KernelEventKind::Remove))).unwrap();
            });
            let mine = ev("x:mine", KernelEventKind::Remove);
            send_uevent(&format_uevent(&mine)).unwrap();
            expect_event(&mut l, &mine).await;
        })
    });
}

#[test]
fn listener_next_is_cancel_safe() {
    if !root_or_skip("listener_next_is_cancel_safe") {
        return;
    }
    in_netns(|| {
        runtime().block_on(async {
            let mut l = UeventListener::bind().unwrap();
            // Cancelled while waiting: nothing is lost afterwards.
            for _ in 0..3 {
                tokio::select! {
                    r = l.next() => panic!("no event was sent, got {r:?}"),
                    _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                }
            }
            let events: Vec<KernelEvent> = (0..200)
                .map(|j| {
                    ev(
                        "c:burst",
                        KernelEventKind::Recovery {
                            jid: j % 256,
                            done: j % 2 == 0,
                        },
                    )
                })
                .collect();
            for e in &events {
                send_uevent(&format_uevent(e)).unwrap();
            }
            for e in &events {
                expect_event(&mut l, e).await;
            }
        })
    });
}

#[test]
fn listener_reports_overflow_and_keeps_working() {
    if !root_or_skip("listener_reports_overflow_and_keeps_working") {
        return;
    }
    in_netns(|| {
        runtime().block_on(async {
            let mut l = UeventListener::bind().unwrap();
            // Far more than the (forced, 8 MiB) receive buffer holds, unread.
            let flood = format_uevent(&ev("c:flood", KernelEventKind::Offline));
            for _ in 0..60_000 {
                send_uevent(&flood).unwrap();
            }
            let mut overflowed = false;
            let mut received = 0u32;
            // Drain: the overflow is reported once, the queued events still arrive.
            loop {
                match tokio::time::timeout(Duration::from_millis(500), l.next()).await {
                    Err(_) => break,
                    Ok(Err(KernelError::Overflow)) => overflowed = true,
                    Ok(Err(e)) => panic!("socket failed: {e}"),
                    Ok(Ok(Ok(_))) => received += 1,
                    Ok(Ok(Err(e))) => panic!("flood event did not parse: {e}"),
                }
            }
            assert!(overflowed, "no overflow reported after {received} events");
            // Still usable once drained (the kernel drops everything while congested).
            let marker = ev("c:marker", KernelEventKind::Remove);
            send_uevent(&format_uevent(&marker)).unwrap();
            expect_event(&mut l, &marker).await;
            assert!(received > 0 && received < 60_000, "{received}");
        })
    });
}

// ------------------------------------------------------------------------------------------
// Simulator end to end

struct Sim {
    bin: PathBuf,
    socket: PathBuf,
}

impl Sim {
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        c.arg("--socket").arg(&self.socket).args(args);
        c
    }

    /// Runs a short client command (bounded).
    fn run(&self, args: &[&str]) -> ExitStatus {
        let child = self.cmd(args).spawn().expect("spawn gfs_kernel_sim client");
        ChildGuard::new(child, "gfs_kernel_sim client").wait(WAIT)
    }

    fn status(&self) -> serde_json::Value {
        let out = self
            .cmd(&["status", "--json"])
            .output()
            .expect("gfs_kernel_sim status");
        assert!(out.status.success(), "status failed: {:?}", out);
        serde_json::from_slice(&out.stdout).expect("status --json is JSON")
    }

    fn spawn_mount(&self, args: &[&str]) -> ChildGuard {
        let mut all = vec!["mount"];
        all.extend_from_slice(args);
        ChildGuard::new(
            self.cmd(&all).spawn().expect("spawn mount"),
            "gfs_kernel_sim mount",
        )
    }
}

fn table_status<'a>(status: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    status["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["table"] == name)
        .unwrap_or_else(|| panic!("{name} not in status {status:#}"))
}

#[test]
fn simulator_end_to_end() {
    if !root_or_skip("simulator_end_to_end") {
        return;
    }
    let bin = sim_binary();
    in_netns(move || {
        let tmp = TempDir::new("sim");
        let root = tmp.0.join("sys-fs-gfs2");
        let sim = Sim {
            bin,
            socket: tmp.0.join("sim.sock"),
        };
        runtime().block_on(async move {
            let mut l = UeventListener::bind().unwrap();
            let mut server = ChildGuard::new(
                Command::new(&sim.bin)
                    .args(["serve", "--replay-ms", "50", "--root"])
                    .arg(&root)
                    .arg("--socket")
                    .arg(&sim.socket)
                    .spawn()
                    .expect("spawn gfs_kernel_sim serve"),
                "gfs_kernel_sim serve",
            );
            let deadline = Instant::now() + WAIT;
            while !sim.socket.exists() {
                assert!(Instant::now() < deadline, "simulator socket never appeared");
                assert!(server.running(), "simulator exited early");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let w = SysfsWriter::new(&root);
            let t = table("clu:fs1");

            // Mount: add, then the mount waits for first + jid.
            let mut mount = sim.spawn_mount(&["clu:fs1"]);
            expect_event(
                &mut l,
                &ev(
                    "clu:fs1",
                    KernelEventKind::Add {
                        ro: false,
                        spectator: false,
                        kernel_managed: false,
                    },
                ),
            )
            .await;
            let lm = root.join("clu:fs1/lock_module");
            let read = |f: &str| std::fs::read_to_string(lm.join(f)).unwrap();
            assert_eq!(read("proto_name"), "lock_dlm\n");
            assert_eq!(read("first"), "1\n");
            assert_eq!(read("jid"), "");
            tokio::time::sleep(Duration::from_millis(200)).await;
            assert!(mount.running(), "mount returned before jid was written");
            assert_eq!(
                w.existing_tables()
                    .iter()
                    .map(|e| (e.name.as_str(), e.proto.as_deref(), e.jid))
                    .collect::<Vec<_>>(),
                vec![("clu:fs1", Some("lock_dlm"), None)]
            );
            w.write(&t, SysfsFile::First, 1).unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
            assert!(mount.running(), "mount returned after first, before jid");
            w.write(&t, SysfsFile::Jid, 0).unwrap();
            expect_event(&mut l, &ev("clu:fs1", KernelEventKind::FirstMountDone)).await;
            expect_event(
                &mut l,
                &ev(
                    "clu:fs1",
                    KernelEventKind::Online {
                        ro: false,
                        spectator: false,
                    },
                ),
            )
            .await;
            assert!(mount.wait(WAIT).success(), "mount client failed");
            assert_eq!(read("first_done"), "1\n");

            // recover: replay, then RECOVERY=Done and recover_done/recover_status.
            w.write(&t, SysfsFile::Block, 1).unwrap();
            w.write(&t, SysfsFile::Recover, 1).unwrap();
            expect_event(
                &mut l,
                &ev("clu:fs1", KernelEventKind::Recovery { jid: 1, done: true }),
            )
            .await;
            assert_eq!(read("recover_done"), "1\n");
            assert_eq!(read("recover_status"), "309\n");

            // A failing replay.
            let st = sim.run(&["set", "--fail-next-replays", "1"]);
            assert!(st.success());
            w.write(&t, SysfsFile::Recover, 2).unwrap();
            expect_event(
                &mut l,
                &ev(
                    "clu:fs1",
                    KernelEventKind::Recovery {
                        jid: 2,
                        done: false,
                    },
                ),
            )
            .await;
            assert_eq!(read("recover_status"), "308\n");

            // Back-to-back writes of different jids are each seen (concurrent replays), and
            // the same jid written twice while replaying is a violation, replayed once.
            for j in [3, 5, 6, 6] {
                w.write(&t, SysfsFile::Recover, j).unwrap();
            }
            let mut got = Vec::new();
            for _ in 0..3 {
                match next_event(&mut l).await {
                    Ok(KernelEvent {
                        kind: KernelEventKind::Recovery { jid, done: true },
                        ..
                    }) => got.push(jid),
                    other => panic!("expected a recovery, got {other:?}"),
                }
            }
            got.sort();
            assert_eq!(got, vec![3, 5, 6]);
            w.write(&t, SysfsFile::Block, 0).unwrap();

            // A second jid write: the real kernel answers EBUSY; the simulator records it.
            w.write(&t, SysfsFile::Jid, 0).unwrap();
            // recover of its own journal: a violation too, and no event.
            w.write(&t, SysfsFile::Recover, 0).unwrap();

            let deadline = Instant::now() + WAIT;
            let status = loop {
                let s = sim.status();
                if s["violations"].as_array().unwrap().len() >= 3 {
                    break s;
                }
                assert!(
                    Instant::now() < deadline,
                    "violations never recorded: {s:#}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            };
            let ts = table_status(&status, "clu:fs1");
            assert_eq!(ts["mode"], "rw");
            assert_eq!(ts["jid"], 0);
            assert_eq!(ts["first"], 1);
            assert_eq!(ts["mounted"], true);
            assert_eq!(ts["blocked"], false);
            let mut done = ts["replays_done"].as_array().unwrap().clone();
            done.sort_by_key(|v| v.as_u64());
            assert_eq!(
                done,
                serde_json::json!([1, 3, 5, 6]).as_array().unwrap().clone()
            );
            assert_eq!(ts["replays_failed"], serde_json::json!([2]));
            assert_eq!(ts["replaying"], serde_json::json!([]));
            let violations: Vec<String> = status["violations"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v["what"].as_str().unwrap().to_owned())
                .collect();
            assert!(
                violations.iter().any(|v| v.contains("jid=0 written twice")),
                "{violations:?}"
            );
            assert!(
                violations.iter().any(|v| v.contains("own journal")),
                "{violations:?}"
            );
            assert!(
                violations
                    .iter()
                    .any(|v| v == "recover=6 already replaying (EBUSY)"),
                "{violations:?}"
            );
            assert_eq!(violations.len(), 3, "{violations:?}");
            let timeline: Vec<String> = status["timeline"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["what"].as_str().unwrap().to_owned())
                .collect();
            for want in [
                "uevent add RDONLY=0 SPECTATOR=0",
                "write first=1",
                "write jid=0",
                "uevent change FIRSTMOUNT=Done",
                "uevent online RDONLY=0 SPECTATOR=0",
                "write recover=1",
                "replay start jid=1",
                "uevent change JID=1 RECOVERY=Done",
                "uevent change JID=2 RECOVERY=Failed",
            ] {
                assert!(
                    timeline.iter().any(|e| e == want),
                    "timeline lacks {want:?}: {timeline:#?}"
                );
            }
            assert!(status["timeline"][0]["t_ms"].as_u64().unwrap() > 1_600_000_000_000);

            // A refused mount (negative jid): remove, the directory goes, the client fails
            // with that errno.
            let t2 = table("clu:fs2");
            let mut refused = sim.spawn_mount(&["clu:fs2", "--ro"]);
            expect_event(
                &mut l,
                &ev(
                    "clu:fs2",
                    KernelEventKind::Add {
                        ro: true,
                        spectator: false,
                        kernel_managed: false,
                    },
                ),
            )
            .await;
            w.write(&t2, SysfsFile::First, 0).unwrap();
            w.write(&t2, SysfsFile::Jid, -i64::from(libc::EUSERS))
                .unwrap();
            expect_event(&mut l, &ev("clu:fs2", KernelEventKind::Remove)).await;
            assert_eq!(refused.wait(WAIT).code(), Some(libc::EUSERS));
            assert_eq!(w.write(&t2, SysfsFile::Jid, 1), Err(libc::ENODEV));

            // A non-first mounter replays its own journal and reports it.
            let mut second = sim.spawn_mount(&["clu:fs3"]);
            let t3 = table("clu:fs3");
            expect_event(
                &mut l,
                &ev(
                    "clu:fs3",
                    KernelEventKind::Add {
                        ro: false,
                        spectator: false,
                        kernel_managed: false,
                    },
                ),
            )
            .await;
            w.write(&t3, SysfsFile::First, 0).unwrap();
            w.write(&t3, SysfsFile::Jid, 4).unwrap();
            expect_event(
                &mut l,
                &ev("clu:fs3", KernelEventKind::Recovery { jid: 4, done: true }),
            )
            .await;
            expect_event(
                &mut l,
                &ev(
                    "clu:fs3",
                    KernelEventKind::Online {
                        ro: false,
                        spectator: false,
                    },
                ),
            )
            .await;
            assert!(second.wait(WAIT).success());

            // A spectator: no replay, straight to online; `first` and `recover` are refused.
            let mut spectator = sim.spawn_mount(&["clu:fs5", "--spectator"]);
            let t5 = table("clu:fs5");
            expect_event(
                &mut l,
                &ev(
                    "clu:fs5",
                    KernelEventKind::Add {
                        ro: true,
                        spectator: true,
                        kernel_managed: false,
                    },
                ),
            )
            .await;
            w.write(&t5, SysfsFile::First, 0).unwrap();
            w.write(&t5, SysfsFile::Jid, 0).unwrap();
            expect_event(
                &mut l,
                &ev(
                    "clu:fs5",
                    KernelEventKind::Online {
                        ro: true,
                        spectator: true,
                    },
                ),
            )
            .await;
            assert!(spectator.wait(WAIT).success());
            w.write(&t5, SysfsFile::Recover, 1).unwrap();
            let deadline = Instant::now() + WAIT;
            loop {
                let s = sim.status();
                let v: Vec<String> = s["violations"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|v| v["table"] == "clu:fs5")
                    .map(|v| v["what"].as_str().unwrap().to_owned())
                    .collect();
                if v.len() >= 2 {
                    assert!(
                        v[0].contains("first") && v[0].contains("spectator"),
                        "{v:?}"
                    );
                    assert!(v[1].contains("ESHUTDOWN"), "{v:?}");
                    assert_eq!(table_status(&s, "clu:fs5")["mode"], "spectator");
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "spectator violations missing: {v:?}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }

            // withdraw, remount, umount.
            assert!(sim.run(&["withdraw", "clu:fs3"]).success());
            expect_event(&mut l, &ev("clu:fs3", KernelEventKind::Offline)).await;
            assert!(sim.run(&["remount", "clu:fs1", "--ro"]).success());
            expect_event(
                &mut l,
                &ev(
                    "clu:fs1",
                    KernelEventKind::Online {
                        ro: true,
                        spectator: false,
                    },
                ),
            )
            .await;
            assert!(sim.run(&["umount", "clu:fs1"]).success());
            expect_event(&mut l, &ev("clu:fs1", KernelEventKind::Remove)).await;
            assert_eq!(w.write(&t, SysfsFile::Block, 1), Err(libc::ENODEV));
            assert!(!root.join("clu:fs1").exists());

            // A mount nobody answers fails after --timeout-ms with EINTR.
            let mut stuck = sim.spawn_mount(&["clu:fs4", "--timeout-ms", "200"]);
            assert_eq!(stuck.wait(WAIT).code(), Some(libc::EINTR));

            // Clean shutdown on SIGTERM.
            let st = server.terminate().expect("simulator was running");
            assert!(st.success(), "simulator exit: {st}");
            assert!(!sim.socket.exists(), "socket left behind");
            assert!(
                !root.join("clu:fs3").exists(),
                "table directory left behind"
            );
        });
    });
}
