//! The kernel adapters (`gfs_controld::kernel`) against real netlink and the kernel simulator.
//!
//! Netlink tests run in a private network namespace: a thread `unshare(CLONE_NEWNET)`s itself
//! (only that thread moves; the namespace disappears with the thread and the processes it
//! started), so uevents never leave it. They need root: without it they are skipped with a
//! note, unless `CI` is set, where they fail.
//!
//! The simulator tests run `gfs_kernel_sim` from `target/<profile>/` (or `$GFS_BIN_DIR`),
//! building it with cargo first if it is missing or older than its sources. It serves its files
//! through FUSE (root and `/dev/fuse`), in the test's mount namespace.

mod common;
use common::TempDir;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use gfs_controld::kernel::{KernelError, SysfsWriter, UeventListener};
use gfs_core::{
    format_uevent, KernelEvent, KernelEventKind, SysfsFile, Table, UeventError, WriteError,
};
use gfs_testkit::uevent::{send_test_uevent, send_uevent, UeventSender};

const WAIT: Duration = Duration::from_secs(10);

// ------------------------------------------------------------------------------------------
// Helpers

/// [`root_or_skip`], and the simulator needs FUSE as well.
fn fuse_or_skip(test: &str) -> bool {
    if !root_or_skip(test) {
        return false;
    }
    if Path::new("/dev/fuse").exists() {
        return true;
    }
    let why = "/dev/fuse is missing (gfs_kernel_sim serves sysfs through FUSE)";
    if std::env::var_os("CI").is_some() {
        panic!("{test}: {why}, and CI is set: refusing to skip");
    }
    eprintln!("SKIPPED {test}: {why}");
    false
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

    /// SIGKILL, as a crashing node: no cleanup of its own.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
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

/// The newest modification time of the files under `dir`, subdirectories included.
fn newest_mtime(dir: &Path) -> std::time::SystemTime {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|e| {
            let meta = e.metadata().ok()?;
            if meta.is_dir() {
                Some(newest_mtime(&e.path()))
            } else {
                meta.modified().ok()
            }
        })
        .max()
        .unwrap_or(std::time::UNIX_EPOCH)
}

/// `gfs_kernel_sim`, built if missing or stale: once per test run, so that no test execs the
/// binary while another one's build rewrites it.
fn sim_binary() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT.get_or_init(build_sim_binary).clone()
}

fn build_sim_binary() -> PathBuf {
    let dir = match std::env::var_os("GFS_BIN_DIR") {
        Some(d) => PathBuf::from(d),
        None => {
            let exe = std::env::current_exe().unwrap();
            // target/<profile>/deps/kernel_adapter-<hash>
            exe.parent().unwrap().parent().unwrap().to_path_buf()
        }
    };
    let bin = dir.join("gfs_kernel_sim");
    // The kernel simulator is the test kit's code and the kernel model it shares with the
    // simulator, itself built on the core.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let newest_source = ["gfs-testkit", "gfs-sim", "gfs-core"]
        .iter()
        .map(|c| newest_mtime(&root.join("crates").join(c).join("src")))
        .max()
        .unwrap_or(std::time::UNIX_EPOCH);
    let stale = match std::fs::metadata(&bin).and_then(|m| m.modified()) {
        Ok(built) => built < newest_source,
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
    assert_eq!(w.write(&t, SysfsFile::Jid, 3), Err(WriteError::Gone));

    let lm = tmp.0.join("clu:fs1/lock_module");
    std::fs::create_dir_all(&lm).unwrap();
    assert_eq!(w.write(&t, SysfsFile::Recover, 3), Err(WriteError::Gone));
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
        assert_eq!(
            w.write(&t, SysfsFile::Block, 0),
            Err(WriteError::Refused(libc::EACCES))
        );
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

/// A listener with a test socket in `dir`; the socket's path.
fn test_listener(dir: &Path) -> (UeventListener, PathBuf) {
    let path = dir.join("uevents.sock");
    (UeventListener::bind_with_test_socket(&path).unwrap(), path)
}

/// Waits `for_ms` for the listener to hand out anything (it must not).
async fn expect_nothing(l: &mut UeventListener, for_ms: u64) {
    if let Ok(got) = tokio::time::timeout(Duration::from_millis(for_ms), l.next()).await {
        panic!("expected nothing, got {got:?}");
    }
}

/// Every spoofed uevent of the robustness report (D2), sent from userspace on netlink as root
/// in the daemon's namespace: none reaches the daemon, each is logged (rate-limited) with its
/// sender. The kernel's own uevents (a dummy interface's, here) are not refused.
#[test]
fn listener_drops_netlink_uevents_not_sent_by_the_kernel() {
    if !root_or_skip("listener_drops_netlink_uevents_not_sent_by_the_kernel") {
        return;
    }
    in_netns(|| {
        let log = common::captured_log();
        runtime().block_on(async {
            let mut l = UeventListener::bind().unwrap();
            let t = "clu:fs1";
            let mut spoofs = vec![
                ev(t, KernelEventKind::Recovery { jid: 2, done: true }),
                ev(
                    t,
                    KernelEventKind::Recovery {
                        jid: 2,
                        done: false,
                    },
                ),
                ev(t, KernelEventKind::Offline),
                ev(t, KernelEventKind::Remove),
                ev(t, KernelEventKind::FirstMountDone),
            ];
            spoofs.extend((0..200).map(|i| add(&format!("clu:spoof{i}"), false, false)));
            for e in &spoofs {
                send_uevent(&format_uevent(e)).unwrap();
            }
            expect_nothing(&mut l, 1000).await;
            assert_eq!(l.refused(), spoofs.len() as u64);

            assert_eq!(l.accepted(), 0);

            // The kernel's uevents for new network devices in this namespace: port id 0 and
            // root credentials, so taken (and then skipped as not gfs2).
            let ip = Command::new("ip")
                .args([
                    "link", "add", "gfsv0", "type", "veth", "peer", "name", "gfsv1",
                ])
                .status()
                .expect("run ip");
            assert!(ip.success(), "ip link add … type veth failed");
            expect_nothing(&mut l, 500).await;
            assert_eq!(
                l.refused(),
                spoofs.len() as u64,
                "a kernel uevent was refused"
            );
            assert!(
                l.accepted() >= 2,
                "the kernel's veth uevents did not arrive"
            );
        });
        let text = log.text();
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("dropped a uevent not sent by the kernel") && l.contains("clu:"))
            .collect();
        assert!(
            !lines.is_empty(),
            "no log line for a spoofed uevent: {text}"
        );
        assert!(lines.len() <= 10, "not rate-limited: {} lines", lines.len());
        assert!(lines[0].contains("WARN"), "{}", lines[0]);
        assert!(lines[0].contains("change@/fs/gfs2/clu:fs1"), "{}", lines[0]);
        // The sender is named: its netlink port id (not 0) and credentials.
        assert!(
            lines[0].contains("port=") && !lines[0].contains("port=0 "),
            "{}",
            lines[0]
        );
        assert!(lines[0].contains("uid=0"), "{}", lines[0]);
        assert!(
            lines[0].contains(&format!("pid={}", std::process::id())),
            "{}",
            lines[0]
        );
    });
}

#[test]
fn test_socket_takes_kernel_format_uevents() {
    if !root_or_skip("test_socket_takes_kernel_format_uevents") {
        return;
    }
    in_netns(|| {
        let tmp = TempDir::new("uevsock");
        runtime().block_on(async {
            let (mut l, path) = test_listener(&tmp.0);
            let meta = std::fs::metadata(&path).unwrap();
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(meta.permissions().mode() & 0o777, 0o600);
            let want = ev("clu:fs1", KernelEventKind::Recovery { jid: 2, done: true });
            send_test_uevent(&path, &format_uevent(&want)).unwrap();
            expect_event(&mut l, &want).await;
            // The research note's literal example (no LOCKTABLE/LOCKPROTO: malformed for us).
            send_test_uevent(
                &path,
                b"change@/fs/gfs2/NAME:fs1\0ACTION=change\0DEVPATH=/fs/gfs2/NAME:fs1\0\
                  SUBSYSTEM=gfs2\0RECOVERY=Done\0JID=2\0",
            )
            .unwrap();
            assert!(matches!(
                next_event(&mut l).await,
                Err(UeventError::Malformed(_))
            ));
            assert_eq!(l.refused(), 0);
        });
        // Gone with the listener.
        assert!(!tmp.0.join("uevents.sock").exists());
    });
}

#[test]
fn listener_skips_foreign_events_and_reports_malformed_ones() {
    if !root_or_skip("listener_skips_foreign_events_and_reports_malformed_ones") {
        return;
    }
    in_netns(|| {
        let tmp = TempDir::new("uevforeign");
        runtime().block_on(async {
            let (mut l, path) = test_listener(&tmp.0);
            let send = |bytes: &[u8]| send_test_uevent(&path, bytes).unwrap();
            // Other subsystems, a lock_nolock gfs2, garbage, udev-style: skipped silently.
            send(b"add@/kernel/dlm/fs1\0ACTION=add\0DEVPATH=/kernel/dlm/fs1\0SUBSYSTEM=dlm\0");
            send(
                b"add@/fs/gfs2/a:b\0ACTION=add\0DEVPATH=/fs/gfs2/a:b\0SUBSYSTEM=gfs2\0\
                  LOCKTABLE=a:b\0LOCKPROTO=lock_nolock\0",
            );
            send(b"\xff\xfe garbage");
            send(b"libudev\0\xfe\xed\xca\xfe");
            send(
                b"add@/devices/virtual/net/lo\0ACTION=add\0DEVPATH=/devices/virtual/net/lo\0\
                  SUBSYSTEM=net\0",
            );
            // A gfs2 lock_dlm event with a bad value: inner Err.
            send(
                b"change@/fs/gfs2/a:b\0ACTION=change\0DEVPATH=/fs/gfs2/a:b\0SUBSYSTEM=gfs2\0\
                  LOCKTABLE=a:b\0LOCKPROTO=lock_dlm\0JID=1\0RECOVERY=Maybe\0",
            );
            let good = ev("a:b", KernelEventKind::Offline);
            send(&format_uevent(&good));
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
            // Sent from a second private namespace: must not even arrive here.
            in_netns(|| {
                send_uevent(&format_uevent(&ev("x:other", KernelEventKind::Remove))).unwrap();
            });
            let mine = ev("x:mine", KernelEventKind::Remove);
            send_uevent(&format_uevent(&mine)).unwrap();
            expect_nothing(&mut l, 500).await;
            assert_eq!(
                l.refused(),
                1,
                "only this namespace's (userspace) uevent arrives"
            );
        })
    });
}

#[test]
fn listener_next_is_cancel_safe() {
    if !root_or_skip("listener_next_is_cancel_safe") {
        return;
    }
    in_netns(|| {
        let tmp = TempDir::new("uevcancel");
        runtime().block_on(async {
            let (mut l, path) = test_listener(&tmp.0);
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
            // Its own thread: a unix datagram socket's queue is short and we read only below.
            let sender = UeventSender::to_test_socket(&path).unwrap();
            for e in &events {
                sender.send_raw(&format_uevent(e)).unwrap();
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
        let tmp = TempDir::new("uevoverflow");
        runtime().block_on(async {
            let (mut l, path) = test_listener(&tmp.0);
            // Far more than the (forced, 8 MiB) receive buffer holds, unread. Userspace can
            // still fill the queue, so an overflow is reported even though each is dropped.
            let flood = format_uevent(&ev("c:flood", KernelEventKind::Offline));
            for _ in 0..60_000 {
                send_uevent(&flood).unwrap();
            }
            let mut overflowed = false;
            // Drain: the overflow is reported once, the queued spoofs are refused.
            loop {
                match tokio::time::timeout(Duration::from_millis(500), l.next()).await {
                    Err(_) => break,
                    Ok(Err(KernelError::Overflow)) => overflowed = true,
                    Ok(Err(e)) => panic!("socket failed: {e}"),
                    Ok(Ok(got)) => panic!("a userspace uevent got through: {got:?}"),
                }
            }
            let refused = l.refused();
            assert!(overflowed, "no overflow reported after {refused} refusals");
            assert!(refused > 0 && refused < 60_000, "{refused}");
            // Still usable once drained.
            let marker = ev("c:marker", KernelEventKind::Remove);
            send_test_uevent(&path, &format_uevent(&marker)).unwrap();
            expect_event(&mut l, &marker).await;
        })
    });
}

// ------------------------------------------------------------------------------------------
// Simulator (gfs_kernel_sim): the Linux 6.1 kernel's sysfs, blocking and uevents

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

    /// Polls the status until `done` holds (bounded), and returns it.
    fn wait_status(
        &self,
        what: &str,
        done: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let s = self.status();
            if done(&s) {
                return s;
            }
            assert!(Instant::now() < deadline, "never saw {what}: {s:#}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for a timeline entry of `table` whose text contains `needle`; returns it.
    fn wait_timeline(&self, table: &str, needle: &str) -> serde_json::Value {
        let s = self.wait_status(needle, |s| find_entry(s, table, needle).is_some());
        find_entry(&s, table, needle).unwrap()
    }
}

fn find_entry(status: &serde_json::Value, table: &str, needle: &str) -> Option<serde_json::Value> {
    status["timeline"]
        .as_array()?
        .iter()
        .find(|e| e["table"] == table && e["what"].as_str().unwrap_or("").contains(needle))
        .cloned()
}

fn violations(status: &serde_json::Value) -> Vec<String> {
    status["violations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["what"].as_str().unwrap().to_owned())
        .collect()
}

fn table_status<'a>(status: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    status["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["table"] == name)
        .unwrap_or_else(|| panic!("{name} not in status {status:#}"))
}

/// A `gfs_kernel_sim serve` with its FUSE root and socket under `dir`; SIGTERM on drop.
struct Server {
    sim: Sim,
    root: PathBuf,
    guard: ChildGuard,
}

impl Server {
    fn start(bin: &Path, dir: &Path, args: &[&str]) -> Server {
        std::fs::create_dir_all(dir).unwrap();
        let sim = Sim {
            bin: bin.to_owned(),
            socket: dir.join("sim.sock"),
        };
        let _ = std::fs::remove_file(&sim.socket);
        let root = dir.join("sys-fs-gfs2");
        let mut guard = ChildGuard::new(
            Command::new(bin)
                .arg("serve")
                .arg("--root")
                .arg(&root)
                .arg("--socket")
                .arg(&sim.socket)
                .args(args)
                .spawn()
                .expect("spawn gfs_kernel_sim serve"),
            "gfs_kernel_sim serve",
        );
        let deadline = Instant::now() + WAIT;
        while !sim.socket.exists() {
            assert!(Instant::now() < deadline, "simulator socket never appeared");
            assert!(guard.running(), "simulator exited early");
            std::thread::sleep(Duration::from_millis(10));
        }
        Server { sim, root, guard }
    }

    fn writer(&self) -> SysfsWriter {
        SysfsWriter::new(&self.root)
    }

    /// Waits for the mount's sysfs directory (the `add` has been sent).
    fn wait_dir(&self, table: &str) {
        let deadline = Instant::now() + WAIT;
        while !self.root.join(table).join("lock_module").exists() {
            assert!(Instant::now() < deadline, "{table} never appeared");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn read(&self, table: &str, file: &str) -> String {
        std::fs::read_to_string(self.root.join(table).join(file))
            .unwrap_or_else(|e| panic!("read {table}/{file}: {e}"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.guard.terminate();
        // A killed server leaves a dead FUSE mount behind.
        let _ = nix::mount::umount2(&self.root, nix::mount::MntFlags::MNT_DETACH);
    }
}

fn add(t: &str, ro: bool, spectator: bool) -> KernelEvent {
    ev(
        t,
        KernelEventKind::Add {
            ro,
            spectator,
            kernel_managed: false,
        },
    )
}

fn online(t: &str, ro: bool, spectator: bool) -> KernelEvent {
    ev(t, KernelEventKind::Online { ro, spectator })
}

fn recovery(t: &str, jid: u32, done: bool) -> KernelEvent {
    ev(t, KernelEventKind::Recovery { jid, done })
}

#[test]
fn simulator_single_node_behaves_as_linux_6_1() {
    if !fuse_or_skip("simulator_single_node_behaves_as_linux_6_1") {
        return;
    }
    let bin = sim_binary();
    in_netns(move || {
        let tmp = TempDir::new("sim");
        runtime().block_on(async move {
            let (mut l, path) = test_listener(&tmp.0);
            let mut server = Server::start(
                &bin,
                &tmp.0,
                &[
                    "--replay-ms",
                    "50",
                    "--uevent-socket",
                    path.to_str().unwrap(),
                ],
            );
            let sim = &server.sim;
            let w = server.writer();
            let t = table("clu:fs1");

            // Mount: `add` (never JOURNALID), the files exist with 6.1's initial values.
            let mut mount = sim.spawn_mount(&["clu:fs1", "--journals", "3", "--join-ms", "400"]);
            expect_event(&mut l, &add("clu:fs1", false, false)).await;
            let read = |f: &str| server.read("clu:fs1", &format!("lock_module/{f}"));
            for (f, want) in [
                ("proto_name", "lock_dlm\n"),
                ("block", "0\n"),
                ("first", "1\n"),
                ("first_done", "0\n"),
                ("jid", "0\n"),
                ("recover_done", "0\n"),
                ("recover_status", "0\n"),
                ("withdraw", "0\n"),
            ] {
                assert_eq!(read(f), want, "{f}");
            }
            let lm = server.root.join("clu:fs1/lock_module");
            let err = |r: std::io::Result<()>| r.unwrap_err().raw_os_error();
            assert_eq!(
                err(std::fs::read(lm.join("recover")).map(drop)),
                Some(libc::EACCES),
                "recover is write-only"
            );
            assert_eq!(
                err(std::fs::write(lm.join("proto_name"), "x")),
                Some(libc::EACCES),
                "proto_name is read-only"
            );
            let status = server.read("clu:fs1", "status");
            assert!(status.contains("No Journal ID:            1\n"), "{status}");
            assert!(status.contains("Mounted RO:               0\n"), "{status}");
            assert_eq!(server.read("clu:fs1", "fsname"), "clu:fs1\n");
            assert_eq!(
                w.existing_tables()
                    .iter()
                    .map(|e| (e.name.as_str(), e.proto.as_deref(), e.jid))
                    .collect::<Vec<_>>(),
                vec![("clu:fs1", Some("lock_dlm"), Some(0))]
            );

            // `first` blocks until the DLM join is done (400 ms here).
            let started = Instant::now();
            w.write(&t, SysfsFile::First, 1).unwrap();
            assert!(
                started.elapsed() >= Duration::from_millis(250),
                "first returned after {:?}, before the DLM join",
                started.elapsed()
            );
            assert!(mount.running(), "mount returned after first, before jid");
            w.write(&t, SysfsFile::Jid, 0).unwrap();
            // The first mounter: one RECOVERY per journal, FIRSTMOUNT=Done, online.
            for j in 0..3 {
                expect_event(&mut l, &recovery("clu:fs1", j, true)).await;
            }
            expect_event(&mut l, &ev("clu:fs1", KernelEventKind::FirstMountDone)).await;
            expect_event(&mut l, &online("clu:fs1", false, false)).await;
            assert!(mount.wait(WAIT).success(), "mount client failed");
            assert_eq!(
                read("first_done"),
                "0\n",
                "first_done is never set in this mode"
            );
            assert_eq!(read("recover_done"), "2\n");
            assert_eq!(read("recover_status"), "309\n");
            assert_eq!(server.read("clu:fs1", "fsname"), "clu:fs1.0\n");
            let status = server.read("clu:fs1", "status");
            assert!(status.contains("No Journal ID:            0\n"), "{status}");
            assert!(status.contains("Journal Live:             1\n"), "{status}");

            // What the kernel refuses, the writer gets.
            assert_eq!(w.write(&t, SysfsFile::Jid, 1), Err(WriteError::Busy));
            assert_eq!(w.write(&t, SysfsFile::First, 0), Err(WriteError::Busy));
            assert_eq!(w.write(&t, SysfsFile::Recover, 0), Err(WriteError::Busy));
            assert_eq!(
                w.write(&t, SysfsFile::Recover, 3),
                Err(WriteError::NoJournal)
            );
            assert_eq!(
                w.write(&t, SysfsFile::Recover, -1),
                Err(WriteError::Refused(libc::EINVAL))
            );
            assert_eq!(
                w.write(&t, SysfsFile::Block, 2),
                Err(WriteError::Refused(libc::EINVAL))
            );
            assert_eq!(
                w.write(&t, SysfsFile::Withdraw, 0),
                Err(WriteError::Refused(libc::EINVAL))
            );

            // recover of a clean journal: Done at once; a failing one: Failed, status 308.
            w.write(&t, SysfsFile::Block, 1).unwrap();
            assert_eq!(read("block"), "1\n");
            w.write(&t, SysfsFile::Recover, 1).unwrap();
            expect_event(&mut l, &recovery("clu:fs1", 1, true)).await;
            assert_eq!(read("recover_done"), "1\n");
            assert!(sim.run(&["set", "--fail-next-replays", "1"]).success());
            w.write(&t, SysfsFile::Recover, 2).unwrap();
            expect_event(&mut l, &recovery("clu:fs1", 2, false)).await;
            assert_eq!(read("recover_status"), "308\n");
            w.write(&t, SysfsFile::Block, 0).unwrap();

            let status = sim.status();
            let v = violations(&status);
            for want in [
                "write jid=1 refused: EBUSY",
                "write first=0 refused: EBUSY",
                "write recover=0 refused: EBUSY",
                "write recover=3 refused: ENOENT",
                "write recover=-1 refused: EINVAL",
                "write block=2 refused: EINVAL",
                "write withdraw=0 refused: EINVAL",
            ] {
                assert!(
                    v.iter().any(|x| x.starts_with(want)),
                    "no {want:?} in {v:#?}"
                );
            }
            assert_eq!(v.len(), 7, "{v:#?}");
            let ts = table_status(&status, "clu:fs1");
            assert_eq!(ts["mode"], "rw");
            assert_eq!(ts["stage"], "mounted");
            assert_eq!(ts["jid"], 0);
            assert_eq!(ts["first"], 1);
            assert_eq!(ts["journals"], 3);
            assert_eq!(ts["mounted"], true);
            assert_eq!(ts["blocked"], false);
            assert_eq!(ts["replays_done"], serde_json::json!([1]));
            assert_eq!(ts["replays_failed"], serde_json::json!([2]));
            assert_eq!(
                ts["dirty"],
                serde_json::json!([0]),
                "a live rw journal is dirty"
            );
            // The timeline has every write with its result and when it returned.
            let first = find_entry(&status, "clu:fs1", "write first=1").unwrap();
            assert_eq!(first["result"], "ok");
            let waited = first["end_ms"].as_u64().unwrap() - first["t_ms"].as_u64().unwrap();
            assert!(waited >= 250, "first=1 returned after {waited} ms");
            let refused = find_entry(&status, "clu:fs1", "write jid=1").unwrap();
            assert!(
                refused["result"].as_str().unwrap().starts_with("EBUSY"),
                "{refused}"
            );
            let jid_read = find_entry(&status, "clu:fs1", "read jid").unwrap();
            assert_eq!(jid_read["result"], "0");
            assert!(status["timeline"][0]["t_ms"].as_u64().unwrap() > 1_600_000_000_000);

            // Refused mounts: a negative jid fails it with that errno; a jid beyond the
            // journals with EUSERS. Both: `remove`, the directory goes.
            let mut refused = sim.spawn_mount(&["clu:fs2", "--ro"]);
            let t2 = table("clu:fs2");
            expect_event(&mut l, &add("clu:fs2", true, false)).await;
            w.write(&t2, SysfsFile::First, 0).unwrap();
            w.write(&t2, SysfsFile::Jid, -i64::from(libc::EBADR))
                .unwrap();
            expect_event(&mut l, &ev("clu:fs2", KernelEventKind::Remove)).await;
            assert_eq!(refused.wait(WAIT).code(), Some(libc::EBADR));
            assert_eq!(w.write(&t2, SysfsFile::Jid, 1), Err(WriteError::Gone));
            let mut too_far = sim.spawn_mount(&["clu:fs6", "--journals", "2"]);
            expect_event(&mut l, &add("clu:fs6", false, false)).await;
            w.write(&table("clu:fs6"), SysfsFile::Jid, 2).unwrap();
            expect_event(&mut l, &ev("clu:fs6", KernelEventKind::Remove)).await;
            assert_eq!(too_far.wait(WAIT).code(), Some(libc::EUSERS));

            // Another mounter (first=0) checks only its own journal.
            let mut second = sim.spawn_mount(&["clu:fs3"]);
            let t3 = table("clu:fs3");
            expect_event(&mut l, &add("clu:fs3", false, false)).await;
            w.write(&t3, SysfsFile::First, 0).unwrap();
            w.write(&t3, SysfsFile::Jid, 4).unwrap();
            expect_event(&mut l, &recovery("clu:fs3", 4, true)).await;
            expect_event(&mut l, &online("clu:fs3", false, false)).await;
            assert!(second.wait(WAIT).success());

            // A spectator cannot set `first`; with every journal clean it mounts (and says
            // FIRSTMOUNT=Done itself); its `recover` of any jid recovers journal 0: Failed.
            let mut spectator = sim.spawn_mount(&["clu:fs5", "--spectator", "--journals", "4"]);
            let t5 = table("clu:fs5");
            expect_event(&mut l, &add("clu:fs5", true, true)).await;
            assert_eq!(
                w.write(&t5, SysfsFile::First, 0),
                Err(WriteError::Refused(libc::EINVAL))
            );
            w.write(&t5, SysfsFile::Jid, 0).unwrap();
            expect_event(&mut l, &ev("clu:fs5", KernelEventKind::FirstMountDone)).await;
            expect_event(&mut l, &online("clu:fs5", true, true)).await;
            assert!(spectator.wait(WAIT).success());
            w.write(&t5, SysfsFile::Recover, 3).unwrap();
            expect_event(&mut l, &recovery("clu:fs5", 0, false)).await;
            // A spectator given a jid > 0: the write is EINVAL and the mount fails with it.
            let mut bad = sim.spawn_mount(&["clu:fs7", "--spectator"]);
            expect_event(&mut l, &add("clu:fs7", true, true)).await;
            assert_eq!(
                w.write(&table("clu:fs7"), SysfsFile::Jid, 1),
                Err(WriteError::Refused(libc::EINVAL))
            );
            expect_event(&mut l, &ev("clu:fs7", KernelEventKind::Remove)).await;
            assert_eq!(bad.wait(WAIT).code(), Some(libc::EINVAL));

            // withdraw; remount (`online` carries the OLD RDONLY, `status` the new one); umount.
            assert!(sim.run(&["withdraw", "clu:fs3"]).success());
            expect_event(&mut l, &ev("clu:fs3", KernelEventKind::Offline)).await;
            w.write(&t3, SysfsFile::Withdraw, 1).unwrap();
            assert_eq!(server.read("clu:fs3", "lock_module/withdraw"), "1\n");
            assert!(sim.run(&["remount", "clu:fs1", "--ro"]).success());
            expect_event(&mut l, &online("clu:fs1", false, false)).await;
            let status = server.read("clu:fs1", "status");
            assert!(status.contains("Mounted RO:               1\n"), "{status}");
            assert!(sim.run(&["umount", "clu:fs1"]).success());
            expect_event(&mut l, &ev("clu:fs1", KernelEventKind::Remove)).await;
            assert_eq!(w.write(&t, SysfsFile::Block, 1), Err(WriteError::Gone));
            assert!(!server.root.join("clu:fs1").exists());

            // A mount nobody answers fails after --timeout-ms with EINTR.
            let mut stuck = sim.spawn_mount(&["clu:fs4", "--timeout-ms", "300"]);
            assert_eq!(stuck.wait(WAIT).code(), Some(libc::EINTR));

            // Clean shutdown on SIGTERM: the FUSE tree is detached, the socket removed.
            let st = server.guard.terminate().expect("simulator was running");
            assert!(st.success(), "simulator exit: {st}");
            assert!(!server.sim.socket.exists(), "socket left behind");
            assert!(!server.root.join("clu:fs3").exists(), "table left behind");
        });
    });
}

#[test]
fn simulator_nodes_share_mount_glock_journal_locks_and_dirty_journals() {
    if !fuse_or_skip("simulator_nodes_share_mount_glock_journal_locks_and_dirty_journals") {
        return;
    }
    let bin = sim_binary();
    in_netns(move || {
        let tmp = TempDir::new("shared");
        let disk = tmp.0.join("disk");
        let disk = disk.to_str().unwrap();
        let node = |n: &str| {
            Server::start(
                &bin,
                &tmp.0.join(n),
                &["--shared", disk, "--join-ms", "20", "--replay-ms", "100"],
            )
        };
        let (mut a, mut b, c) = (node("a"), node("b"), node("c"));
        let t = table("clu:g");
        let name = "clu:g";
        let long = ["clu:g", "--journals", "4", "--timeout-ms", "20000"];

        // The mount glock: A holds it while it waits for its jid; B waits behind A even with
        // its own jid written: a daemon that held back A's jid would deadlock them.
        let mut ma = a.sim.spawn_mount(&long);
        a.sim.wait_timeline(name, "mount glock held");
        a.wait_dir(name);
        let mut mb = b.sim.spawn_mount(&long);
        b.sim.wait_timeline(name, "waiting for the mount glock");
        b.wait_dir(name);
        b.writer().write(&t, SysfsFile::First, 0).unwrap();
        b.writer().write(&t, SysfsFile::Jid, 1).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        assert!(mb.running(), "B mounted while A held the mount glock");
        a.writer().write(&t, SysfsFile::First, 1).unwrap();
        a.writer().write(&t, SysfsFile::Jid, 0).unwrap();
        assert!(ma.wait(WAIT).success());
        assert!(mb.wait(WAIT).success());
        let a_online = a.sim.wait_timeline(name, "uevent online")["t_ms"]
            .as_u64()
            .unwrap();
        let b_glock = b.sim.wait_timeline(name, "the mount glock acquired")["t_ms"]
            .as_u64()
            .unwrap();
        assert!(
            b_glock >= a_online,
            "B got the glock at {b_glock}, A online at {a_online}"
        );
        let s = b.sim.status();
        assert_eq!(table_status(&s, name)["dirty"], serde_json::json!([0, 1]));

        // A first mounter while A and B are mounted: their journals are Busy (Failed).
        let mut mc = c.sim.spawn_mount(&["clu:g", "--journals", "4"]);
        c.wait_dir(name);
        c.writer().write(&t, SysfsFile::Jid, 2).unwrap();
        assert!(mc.wait(WAIT).success());
        let s = c.sim.status();
        for (j, result) in [(0, "Failed"), (1, "Failed"), (2, "Done"), (3, "Done")] {
            let want = format!("uevent change JID={j} RECOVERY={result}");
            assert!(find_entry(&s, name, &want).is_some(), "no {want:?}: {s:#}");
        }
        assert!(find_entry(&s, name, "FIRSTMOUNT=Done").is_some());

        // `recover` of a live node's journal: Busy, Failed. Once A dies (its lock goes, its
        // journal stays dirty), the same write replays it.
        b.writer().write(&t, SysfsFile::Recover, 0).unwrap();
        b.sim.wait_status("a Busy recovery", |s| {
            table_status(s, name)["replays_failed"] == serde_json::json!([0])
        });
        a.guard.kill();
        b.writer().write(&t, SysfsFile::Recover, 0).unwrap();
        let s = b.sim.wait_status("journal 0 replayed", |s| {
            table_status(s, name)["replays_done"] == serde_json::json!([0])
        });
        assert_eq!(
            table_status(&s, name)["journals_replayed"],
            serde_json::json!([0])
        );
        assert_eq!(table_status(&s, name)["dirty"], serde_json::json!([1, 2]));
        // A clean unmount leaves a clean journal.
        assert!(c.sim.run(&["umount", "clu:g"]).success());
        assert_eq!(
            table_status(&b.sim.status(), name)["dirty"],
            serde_json::json!([1])
        );

        // B dies too: journal 1 is dirty and nobody holds it. A node that mounts without
        // replaying it (first=0) completes with an unreplayed journal: violation S5.
        b.guard.kill();
        drop(a);
        let a2 = node("a");
        let mut m = a2.sim.spawn_mount(&long);
        a2.wait_dir(name);
        a2.writer().write(&t, SysfsFile::First, 0).unwrap();
        a2.writer().write(&t, SysfsFile::Jid, 0).unwrap();
        assert!(m.wait(WAIT).success());
        let v = violations(&a2.sim.status());
        assert!(
            v.iter().any(|x| x.starts_with("S5:") && x.contains("[1]")),
            "{v:#?}"
        );

        // A spectator that must check the journals (hostdata without first=0) refuses to
        // mount while one is dirty (EPERM); with hostdata=first=0 it mounts.
        let mut sp = c
            .sim
            .spawn_mount(&["clu:g", "--spectator", "--journals", "4"]);
        c.wait_dir(name);
        c.writer().write(&t, SysfsFile::Jid, 0).unwrap();
        assert_eq!(sp.wait(WAIT).code(), Some(libc::EPERM));
        let mut sp = c.sim.spawn_mount(&[
            "clu:g",
            "--spectator",
            "--journals",
            "4",
            "--hostdata-first0",
        ]);
        c.wait_dir(name);
        assert_eq!(c.read(name, "lock_module/first"), "0\n");
        c.writer().write(&t, SysfsFile::Jid, 0).unwrap();
        assert!(sp.wait(WAIT).success());
        drop(b);
    });
}

#[test]
fn simulator_kernel_managed_mode_mounts_by_itself_and_refuses_first_and_jid() {
    if !fuse_or_skip("simulator_kernel_managed_mode_mounts_by_itself_and_refuses_first_and_jid") {
        return;
    }
    let bin = sim_binary();
    in_netns(move || {
        let tmp = TempDir::new("managed");
        let cfg = tmp.0.join("configfs");
        let server = Server::start(
            &bin,
            &tmp.0.join("n"),
            &[
                "--configfs-root",
                cfg.to_str().unwrap(),
                "--recover-callbacks",
                "1",
                "--join-ms",
                "200",
            ],
        );
        let file = cfg.join("dlm/cluster/recover_callbacks");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "1\n");
        let t = table("clu:k");
        let mut m = server.sim.spawn_mount(&["clu:k", "--journals", "2"]);
        server.sim.wait_timeline("clu:k", "mount rw");
        // The write waits for the DLM join, then: EBUSY, and a violation.
        assert_eq!(
            server.writer().write(&t, SysfsFile::Jid, 1),
            Err(WriteError::Busy)
        );
        assert!(m.wait(WAIT).success(), "the kernel mounts by itself");
        let s = server.sim.status();
        assert!(find_entry(&s, "clu:k", "the kernel takes jid 0, first=1").is_some());
        let ts = table_status(&s, "clu:k");
        assert_eq!(ts["kernel_managed"], true);
        let v = violations(&s);
        assert!(
            v.iter().any(|x| x.contains("kernel-managed")),
            "a write to a kernel-managed filesystem is a violation: {v:#?}"
        );
        // Back to the userspace-driven mode for later mounts.
        assert!(server
            .sim
            .run(&["set", "--recover-callbacks", "0"])
            .success());
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "0\n");
        let mut m2 = server.sim.spawn_mount(&["clu:k2", "--timeout-ms", "300"]);
        assert_eq!(m2.wait(WAIT).code(), Some(libc::EINTR), "waits for a jid");
    });
}
