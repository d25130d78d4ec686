//! `gfs_kernel_sim`: the GFS2 kernel of SPEC §2 ("era B", userspace-driven lock_dlm) on one
//! node, for tests. Not packaged.
//!
//! ```text
//! gfs_kernel_sim serve --root DIR --socket PATH [--replay-ms N]
//! gfs_kernel_sim [--socket PATH] mount <table> [--spectator] [--ro] [--timeout-ms N]
//! gfs_kernel_sim [--socket PATH] umount <table>
//! gfs_kernel_sim [--socket PATH] withdraw <table>
//! gfs_kernel_sim [--socket PATH] remount <table> --ro|--rw
//! gfs_kernel_sim [--socket PATH] set [--replay-ms N] [--fail-next-replays K]
//! gfs_kernel_sim [--socket PATH] status [--json]
//! ```
//! (`--socket` may also be given after the subcommand; default `$GFS_KERNEL_SIM_SOCKET`.)
//!
//! `serve` runs the simulated kernel; run it inside the node's network namespace (uevents go to
//! `NETLINK_KOBJECT_UEVENT` group 1 of that namespace, which needs CAP_NET_ADMIN there) and with
//! the node's view of `DIR` (the daemon's sysfs root). It serves the clients on the unix socket
//! `PATH` (one JSON request line, one JSON reply line: `gfs_testkit::proto`). SIGTERM/SIGINT:
//! deletes every table directory and the socket, exits 0.
//!
//! The other subcommands are clients. Exit status 0 on success; on failure the errno the
//! simulated kernel gave (e.g. `mount` refused by a `jid=-22` write exits 22, EINTR=4 when
//! `--timeout-ms` expires before a `jid` write), or 1 for other errors (no server, bad reply).
//!
//! * `mount`: creates `DIR/<table>/lock_module/{proto_name=lock_dlm, block=0, first=1, jid
//!   (empty), recover, recover_done, recover_status, first_done=0, withdraw=0}`, sends `add`
//!   (RDONLY, SPECTATOR), waits for the `jid` write (a `first` write before it sets first; the
//!   kernel default is 1). Negative jid: `remove`, the directory is deleted, the client exits with
//!   that errno. Then: first=1 replays every journal (replay-ms), sets first_done=1 and sends
//!   `change FIRSTMOUNT=Done`; first=0 replays its own journal and sends `change JID=<own>
//!   RECOVERY=Done`; a spectator replays nothing (the modern kernel only checks that journals are
//!   clean). Then `online`; the client returns. Every uevent after the `jid` write carries
//!   `JOURNALID=` as the kernel's does.
//! * `umount`: `remove`, the directory is deleted (a mount still waiting for `jid` fails).
//! * `withdraw`: `offline`. `remount`: `online` with the new RDONLY.
//! * `set`: replay duration; the next K `recover` replays answer RECOVERY=Failed (status 308).
//! * `status [--json]`: tables, violations, timeline (`gfs_testkit::proto::Status`).
//!
//! Sysfs writes are seen with inotify IN_CLOSE_WRITE (one per open/write/close, so the same
//! value written twice is seen twice) and read back from the file. `recover` is a FIFO that the
//! simulator keeps open: every value written to it is read exactly once, in order, even when
//! writes come faster than the simulator reacts (write each value with a trailing newline, as
//! the daemon and `echo` do; open it O_NONBLOCK to get ENXIO instead of hanging if the
//! simulator is gone). Regular files cannot refuse a
//! write, so every write the real kernel would refuse (with its errno), or that breaks safety, is
//! recorded as a violation and otherwise ignored: `first` after `jid` (EBUSY), `first` on a
//! spectator (EINVAL), `jid` twice (EBUSY), `jid` > 0 on a spectator (EINVAL: the mount fails),
//! `recover` on a spectator (ESHUTDOWN), of the own jid (EBUSY), of a jid already replaying
//! (EBUSY), of a jid out of range (ENOENT), values that are not numbers or flags (EINVAL).
//! `recover` replays run concurrently for different jids, then `recover_done`/`recover_status`
//! (309 Done, 308 Failed) are written and `change JID=<n> RECOVERY=Done|Failed` is sent.
//! `block` is recorded; `block=0` while a replay of this node runs is noted in the timeline.
//! Limitation (regular files: block, first, jid, withdraw): two writes of one file closer
//! together than the simulator can read it are both seen, but both may read the later value (an empty read, caught between the next
//! writer's `O_TRUNC` open and its write, is retried for up to 100 ms).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use gfs_core::{KernelEvent, KernelEventKind, MountMode, Table, MAX_JOURNALS};
use gfs_testkit::proto::{Entry, Request, Response, Status, TableStatus};
use gfs_testkit::uevent::UeventSender;
use gfs_testkit::{client, now_ms};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Interest};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::oneshot;

const STATUS_DONE: u32 = 309;
const STATUS_FAILED: u32 = 308;

#[derive(Parser, Debug)]
#[command(
    name = "gfs_kernel_sim",
    about = "Simulated GFS2 kernel (SPEC §2) for tests"
)]
struct Cli {
    /// The server's unix socket (clients).
    #[arg(long, global = true)]
    socket: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run the simulated kernel.
    Serve {
        /// The sysfs root the daemon is given (stands for /sys/fs/gfs2).
        #[arg(long)]
        root: PathBuf,
        /// Duration of one journal replay.
        #[arg(long, default_value_t = 100)]
        replay_ms: u64,
    },
    /// Mount a filesystem; returns when `online` was sent, or fails with the mount's errno.
    Mount {
        table: String,
        #[arg(long)]
        spectator: bool,
        #[arg(long)]
        ro: bool,
        /// Fail the mount with EINTR if no `jid` is written within this time.
        #[arg(long)]
        timeout_ms: Option<u64>,
    },
    /// Unmount: `remove`, and the sysfs directory goes away.
    Umount { table: String },
    /// Withdraw: `offline`.
    Withdraw { table: String },
    /// Remount read-only or read-write: `online` with RDONLY.
    Remount {
        table: String,
        #[arg(long, conflicts_with = "rw", required_unless_present = "rw")]
        ro: bool,
        #[arg(long)]
        rw: bool,
    },
    /// Change the replay duration, or make the next K `recover` replays fail.
    Set {
        #[arg(long)]
        replay_ms: Option<u64>,
        #[arg(long)]
        fail_next_replays: Option<u32>,
    },
    /// Show tables, violations and timeline.
    Status {
        #[arg(long)]
        json: bool,
    },
}

fn main() {
    let cli = Cli::parse();
    let code = match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("gfs_kernel_sim: {e:#}");
            1
        }
    };
    std::process::exit(code);
}

fn run(cli: Cli) -> anyhow::Result<i32> {
    let socket = cli
        .socket
        .or_else(|| std::env::var_os("GFS_KERNEL_SIM_SOCKET").map(PathBuf::from))
        .context("--socket PATH (or GFS_KERNEL_SIM_SOCKET) is required");
    let req = match cli.cmd {
        Cmd::Serve { root, replay_ms } => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(serve(root, socket?, replay_ms))?;
            return Ok(0);
        }
        Cmd::Mount {
            table,
            spectator,
            ro,
            timeout_ms,
        } => Request::Mount {
            table,
            spectator,
            ro,
            timeout_ms,
        },
        Cmd::Umount { table } => Request::Umount { table },
        Cmd::Withdraw { table } => Request::Withdraw { table },
        Cmd::Remount { table, ro, rw } => Request::Remount {
            table,
            ro: ro && !rw,
        },
        Cmd::Set {
            replay_ms,
            fail_next_replays,
        } => Request::Set {
            replay_ms,
            fail_next_replays,
        },
        Cmd::Status { json } => {
            let resp = client::request(&socket?, &Request::Status, Some(Duration::from_secs(30)))?;
            let status = resp.status.unwrap_or_default();
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print_status(&status);
            }
            return Ok(0);
        }
    };
    let timeout = match req {
        Request::Mount { .. } => None,
        _ => Some(Duration::from_secs(30)),
    };
    let resp = client::request(&socket?, &req, timeout)?;
    if resp.ok {
        if !resp.message.is_empty() {
            println!("{}", resp.message);
        }
        Ok(0)
    } else {
        eprintln!("gfs_kernel_sim: {}", resp.message);
        Ok(resp.errno.filter(|e| (1..=255).contains(e)).unwrap_or(1))
    }
}

fn print_status(s: &Status) {
    println!(
        "replay_ms {}  fail_next_replays {}",
        s.replay_ms, s.fail_next_replays
    );
    for t in &s.tables {
        println!(
            "{} mode={} jid={} first={} blocked={} mounted={} withdrawn={} done={:?} failed={:?} replaying={:?}",
            t.table,
            t.mode,
            t.jid.map(|j| j.to_string()).unwrap_or_else(|| "-".into()),
            t.first,
            t.blocked,
            t.mounted,
            t.withdrawn,
            t.replays_done,
            t.replays_failed,
            t.replaying
        );
    }
    for v in &s.violations {
        println!("VIOLATION {} {} {}", v.t_ms, v.table, v.what);
    }
    for e in &s.timeline {
        println!("{} {} {}", e.t_ms, e.table, e.what);
    }
}

// ---------------------------------------------------------------------------------------------
// Server

struct InotifyFd(Inotify);

impl AsRawFd for InotifyFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

struct TableSim {
    table: Table,
    /// Distinguishes a remount of the same table from the one a replay task started on.
    generation: u64,
    dir: PathBuf,
    wd: Option<WatchDescriptor>,
    /// `lock_module/recover` (a FIFO) and the bytes read from it not yet consumed.
    recover_fifo: std::fs::File,
    recover_buf: Vec<u8>,
    ro: bool,
    spectator: bool,
    first: i64,
    jid: Option<i64>,
    blocked: bool,
    mounted: bool,
    withdrawn: bool,
    replays_done: Vec<u32>,
    replays_failed: Vec<u32>,
    replaying: BTreeSet<u32>,
    /// The mount waiting for the `jid` write.
    jid_waiter: Option<oneshot::Sender<i64>>,
}

impl TableSim {
    fn mode(&self) -> MountMode {
        MountMode::from_flags(self.ro, self.spectator)
    }

    /// JOURNALID= rides on every uevent once the jid is known.
    fn journal_id(&self) -> Option<i64> {
        self.jid.filter(|j| *j >= 0)
    }
}

struct Sim {
    root: PathBuf,
    tables: BTreeMap<String, TableSim>,
    by_wd: HashMap<WatchDescriptor, String>,
    violations: Vec<Entry>,
    timeline: Vec<Entry>,
    replay_ms: u64,
    fail_next_replays: u32,
    next_generation: u64,
    sender: UeventSender,
}

type Shared = Arc<Mutex<Sim>>;

fn lock(sim: &Shared) -> std::sync::MutexGuard<'_, Sim> {
    sim.lock().unwrap_or_else(|p| p.into_inner())
}

impl Sim {
    fn note(&mut self, table: &str, what: impl Into<String>) {
        let what = what.into();
        eprintln!("gfs_kernel_sim: {table} {what}");
        self.timeline.push(Entry {
            t_ms: now_ms(),
            table: table.to_owned(),
            what,
        });
    }

    fn violation(&mut self, table: &str, what: impl Into<String>) {
        let what = what.into();
        self.note(table, format!("VIOLATION: {what}"));
        self.violations.push(Entry {
            t_ms: now_ms(),
            table: table.to_owned(),
            what,
        });
    }

    /// Sends a uevent for `name` and records it.
    fn send(&mut self, name: &str, kind: KernelEventKind) {
        let Some(t) = self.tables.get(name) else {
            return;
        };
        let event = KernelEvent {
            table: t.table.clone(),
            kind,
        };
        let jid = match event.kind {
            KernelEventKind::Add { .. } => None,
            _ => t.journal_id(),
        };
        let what = describe(&event.kind);
        match self.sender.send(&event, jid) {
            Ok(()) => self.note(name, format!("uevent {what}")),
            Err(e) => self.note(name, format!("uevent {what} NOT SENT: {e}")),
        }
    }

    fn status(&self) -> Status {
        Status {
            tables: self
                .tables
                .values()
                .map(|t| TableStatus {
                    table: t.table.to_string(),
                    mode: t.mode().as_str().to_owned(),
                    jid: t.jid,
                    first: t.first,
                    blocked: t.blocked,
                    mounted: t.mounted,
                    withdrawn: t.withdrawn,
                    replays_done: t.replays_done.clone(),
                    replays_failed: t.replays_failed.clone(),
                    replaying: t.replaying.iter().copied().collect(),
                })
                .collect(),
            violations: self.violations.clone(),
            timeline: self.timeline.clone(),
            replay_ms: self.replay_ms,
            fail_next_replays: self.fail_next_replays,
        }
    }

    /// Removes the table (after `remove` was sent): directory, watch, state.
    fn drop_table(&mut self, name: &str, inotify: &Inotify) {
        if let Some(t) = self.tables.remove(name) {
            if let Some(wd) = t.wd {
                self.by_wd.remove(&wd);
                let _ = inotify.rm_watch(wd);
            }
            if let Some(parent) = t.dir.parent() {
                let _ = std::fs::remove_dir_all(parent);
            }
        }
    }
}

fn describe(kind: &KernelEventKind) -> String {
    match kind {
        KernelEventKind::Add { ro, spectator, .. } => {
            format!("add RDONLY={} SPECTATOR={}", *ro as u8, *spectator as u8)
        }
        KernelEventKind::Online { ro, spectator } => {
            format!("online RDONLY={} SPECTATOR={}", *ro as u8, *spectator as u8)
        }
        KernelEventKind::FirstMountDone => "change FIRSTMOUNT=Done".into(),
        KernelEventKind::Recovery { jid, done } => format!(
            "change JID={jid} RECOVERY={}",
            if *done { "Done" } else { "Failed" }
        ),
        KernelEventKind::Offline => "offline".into(),
        KernelEventKind::Remove => "remove".into(),
    }
}

async fn serve(root: PathBuf, socket: PathBuf, replay_ms: u64) -> anyhow::Result<()> {
    std::fs::create_dir_all(&root).with_context(|| format!("create {}", root.display()))?;
    let sender = UeventSender::new().context("NETLINK_KOBJECT_UEVENT sender socket")?;
    let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
    // SAFETY: the inotify fd is owned by `InotifyFd` for the AsyncFd's whole life and never
    // replaced; it is closed only when the AsyncFd is dropped.
    let inotify = Arc::new(
        unsafe { AsyncFd::register_with_interest(InotifyFd(inotify), Interest::READABLE) }
            .map_err(|e| e.into_parts().1)?,
    );
    let _ = std::fs::remove_file(&socket);
    let listener =
        UnixListener::bind(&socket).with_context(|| format!("bind {}", socket.display()))?;
    let sim: Shared = Arc::new(Mutex::new(Sim {
        root,
        tables: BTreeMap::new(),
        by_wd: HashMap::new(),
        violations: Vec::new(),
        timeline: Vec::new(),
        replay_ms,
        fail_next_replays: 0,
        next_generation: 1,
        sender,
    }));
    lock(&sim).note("", format!("serving on {}", socket.display()));

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let watcher = tokio::spawn(watch_files(sim.clone(), inotify.clone()));
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    tokio::spawn(handle_client(sim.clone(), inotify.clone(), stream));
                }
                Err(e) => eprintln!("gfs_kernel_sim: accept: {e}"),
            },
        }
    }
    watcher.abort();
    let mut s = lock(&sim);
    s.note("", "shutting down");
    let names: Vec<String> = s.tables.keys().cloned().collect();
    for name in names {
        s.drop_table(&name, &inotify.get_ref().0);
    }
    let _ = std::fs::remove_file(&socket);
    Ok(())
}

async fn handle_client(sim: Shared, inotify: Arc<AsyncFd<InotifyFd>>, stream: UnixStream) {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let resp = match BufReader::new(read).read_line(&mut line).await {
        Ok(0) => return,
        Ok(_) => match serde_json::from_str::<Request>(&line) {
            Ok(req) => handle(&sim, &inotify, req).await,
            Err(e) => Response::err(libc::EINVAL, format!("bad request: {e}")),
        },
        Err(e) => Response::err(libc::EIO, format!("reading request: {e}")),
    };
    let mut out = serde_json::to_string(&resp).unwrap_or_else(|_| "{\"ok\":false}".into());
    out.push('\n');
    let _ = write.write_all(out.as_bytes()).await;
}

async fn handle(sim: &Shared, inotify: &Arc<AsyncFd<InotifyFd>>, req: Request) -> Response {
    let ino = &inotify.get_ref().0;
    match req {
        Request::Mount {
            table,
            spectator,
            ro,
            timeout_ms,
        } => mount(sim, inotify, table, spectator, ro, timeout_ms).await,
        Request::Umount { table } => {
            let mut s = lock(sim);
            if !s.tables.contains_key(&table) {
                return Response::err(libc::EINVAL, format!("{table} is not mounted"));
            }
            s.note(&table, "umount");
            s.send(&table, KernelEventKind::Remove);
            s.drop_table(&table, ino);
            Response::ok(format!("{table} unmounted"))
        }
        Request::Withdraw { table } => {
            let mut s = lock(sim);
            let Some(t) = s.tables.get_mut(&table) else {
                return Response::err(libc::EINVAL, format!("{table} is not mounted"));
            };
            t.withdrawn = true;
            s.note(&table, "withdraw");
            s.send(&table, KernelEventKind::Offline);
            Response::ok(format!("{table} withdrawn"))
        }
        Request::Remount { table, ro } => {
            let mut s = lock(sim);
            let Some(t) = s.tables.get_mut(&table) else {
                return Response::err(libc::EINVAL, format!("{table} is not mounted"));
            };
            if !t.mounted {
                return Response::err(libc::EBUSY, format!("{table} is still mounting"));
            }
            t.ro = ro;
            let spectator = t.spectator;
            s.note(&table, format!("remount {}", if ro { "ro" } else { "rw" }));
            s.send(&table, KernelEventKind::Online { ro, spectator });
            Response::ok(format!("{table} remounted"))
        }
        Request::Set {
            replay_ms,
            fail_next_replays,
        } => {
            let mut s = lock(sim);
            if let Some(ms) = replay_ms {
                s.replay_ms = ms;
            }
            if let Some(k) = fail_next_replays {
                s.fail_next_replays = k;
            }
            let what = format!(
                "set replay_ms={} fail_next_replays={}",
                s.replay_ms, s.fail_next_replays
            );
            s.note("", what.clone());
            Response::ok(what)
        }
        Request::Status => {
            let s = lock(sim);
            let mut r = Response::ok("");
            r.status = Some(s.status());
            r
        }
    }
}

const LOCK_MODULE_FILES: &[(&str, &str)] = &[
    ("proto_name", "lock_dlm\n"),
    ("block", "0\n"),
    ("first", "1\n"),
    ("jid", ""),
    ("recover_done", ""),
    ("recover_status", ""),
    ("first_done", "0\n"),
    ("withdraw", "0\n"),
];

/// Creates the `lock_module/` files. `recover` is a FIFO held open (read+write, nonblocking) by
/// the simulator: every write lands in it whole and in order, so back-to-back writes of
/// different jids are never merged (a regular file would keep only the last). Returns the FIFO.
fn create_table_dir(lm: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(lm)?;
    for (name, content) in LOCK_MODULE_FILES {
        std::fs::write(lm.join(name), content)?;
    }
    let fifo = lm.join("recover");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600))?;
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&fifo)
}

async fn mount(
    sim: &Shared,
    inotify: &Arc<AsyncFd<InotifyFd>>,
    name: String,
    spectator: bool,
    ro: bool,
    timeout_ms: Option<u64>,
) -> Response {
    let ino = &inotify.get_ref().0;
    let table = match Table::parse(&name) {
        Ok(t) => t,
        Err(e) => return Response::err(libc::EINVAL, format!("bad lock table {name}: {e}")),
    };
    let ro = ro || spectator;
    let (tx, rx) = oneshot::channel();
    let generation;
    {
        let mut s = lock(sim);
        if s.tables.contains_key(&name) {
            return Response::err(libc::EBUSY, format!("{name} is already mounted"));
        }
        let lm = s.root.join(&name).join("lock_module");
        let recover_fifo = match create_table_dir(&lm) {
            Ok(f) => f,
            Err(e) => {
                let _ = std::fs::remove_dir_all(lm.parent().unwrap_or(&lm));
                return Response::err(
                    e.raw_os_error().unwrap_or(libc::EIO),
                    format!("create {}: {e}", lm.display()),
                );
            }
        };
        let wd = match ino.add_watch(&lm, AddWatchFlags::IN_CLOSE_WRITE) {
            Ok(wd) => wd,
            Err(e) => {
                let _ = std::fs::remove_dir_all(lm.parent().unwrap_or(&lm));
                return Response::err(e as i32, format!("inotify watch: {e}"));
            }
        };
        generation = s.next_generation;
        s.next_generation += 1;
        s.by_wd.insert(wd, name.clone());
        s.tables.insert(
            name.clone(),
            TableSim {
                table,
                generation,
                dir: lm,
                wd: Some(wd),
                recover_fifo,
                recover_buf: Vec::new(),
                ro,
                spectator,
                first: 1,
                jid: None,
                blocked: false,
                mounted: false,
                withdrawn: false,
                replays_done: Vec::new(),
                replays_failed: Vec::new(),
                replaying: BTreeSet::new(),
                jid_waiter: Some(tx),
            },
        );
        s.note(
            &name,
            format!(
                "mount {} (waiting for jid)",
                MountMode::from_flags(ro, spectator).as_str()
            ),
        );
        s.send(
            &name,
            KernelEventKind::Add {
                ro,
                spectator,
                kernel_managed: false,
            },
        );
    }

    let waited = match timeout_ms {
        Some(ms) => tokio::time::timeout(Duration::from_millis(ms), rx).await,
        None => Ok(rx.await),
    };
    let jid = match waited {
        Ok(Ok(jid)) => jid,
        Ok(Err(_)) => {
            return Response::err(libc::EINTR, format!("{name} unmounted while mounting"));
        }
        Err(_) => {
            let mut s = lock(sim);
            if !same_generation(&s, &name, generation) {
                return Response::err(libc::EINTR, format!("{name} unmounted while mounting"));
            }
            s.note(&name, "mount timed out waiting for jid: fails with EINTR");
            s.send(&name, KernelEventKind::Remove);
            s.drop_table(&name, ino);
            return Response::err(libc::EINTR, format!("{name}: no jid written in time"));
        }
    };
    if jid < 0 {
        let mut s = lock(sim);
        s.note(&name, format!("mount refused with errno {}", -jid));
        if same_generation(&s, &name, generation) {
            s.send(&name, KernelEventKind::Remove);
            s.drop_table(&name, ino);
        }
        let errno = i32::try_from(-jid).unwrap_or(libc::EINVAL);
        return Response::err(errno, format!("{name}: mount refused, errno {errno}"));
    }
    if jid >= i64::from(MAX_JOURNALS) {
        let mut s = lock(sim);
        s.violation(
            &name,
            format!("jid={jid} has no journal (mount fails: EUSERS)"),
        );
        if same_generation(&s, &name, generation) {
            s.send(&name, KernelEventKind::Remove);
            s.drop_table(&name, ino);
        }
        return Response::err(libc::EUSERS, format!("{name}: no journal {jid}"));
    }
    let jid = jid as u32;

    // Mount-time replay.
    let (first, replay_ms) = {
        let s = lock(sim);
        let first = s.tables.get(&name).map(|t| t.first).unwrap_or(1);
        (first, s.replay_ms)
    };
    if !spectator {
        {
            let mut s = lock(sim);
            if first == 1 {
                s.note(&name, "replay start: all journals (first mounter)");
            } else {
                s.note(&name, format!("replay start jid={jid} (own journal)"));
                if let Some(t) = s.tables.get_mut(&name) {
                    t.replaying.insert(jid);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(replay_ms)).await;
        let mut s = lock(sim);
        if !same_generation(&s, &name, generation) {
            return Response::err(libc::EINTR, format!("{name} unmounted while mounting"));
        }
        if first == 1 {
            s.note(&name, "replay end: all journals");
            if let Some(t) = s.tables.get(&name) {
                let _ = std::fs::write(t.dir.join("first_done"), "1\n");
            }
            s.send(&name, KernelEventKind::FirstMountDone);
        } else {
            s.note(&name, format!("replay end jid={jid} Done"));
            if let Some(t) = s.tables.get_mut(&name) {
                t.replaying.remove(&jid);
                t.replays_done.push(jid);
                let _ = std::fs::write(t.dir.join("recover_done"), format!("{jid}\n"));
                let _ = std::fs::write(t.dir.join("recover_status"), format!("{STATUS_DONE}\n"));
            }
            s.send(&name, KernelEventKind::Recovery { jid, done: true });
        }
    }
    let mut s = lock(sim);
    if !same_generation(&s, &name, generation) {
        return Response::err(libc::EINTR, format!("{name} unmounted while mounting"));
    }
    if let Some(t) = s.tables.get_mut(&name) {
        t.mounted = true;
    }
    s.send(&name, KernelEventKind::Online { ro, spectator });
    Response::ok(format!("{name} mounted with jid {jid}"))
}

fn same_generation(s: &Sim, name: &str, generation: u64) -> bool {
    s.tables
        .get(name)
        .is_some_and(|t| t.generation == generation)
}

/// Reads IN_CLOSE_WRITE events and applies each write.
async fn watch_files(sim: Shared, inotify: Arc<AsyncFd<InotifyFd>>) {
    loop {
        let mut guard = match inotify.readable().await {
            Ok(g) => g,
            Err(e) => {
                eprintln!("gfs_kernel_sim: inotify: {e}");
                return;
            }
        };
        let events = match guard.try_io(|fd| fd.get_ref().0.read_events().map_err(Into::into)) {
            Err(_would_block) => continue,
            Ok(Ok(events)) => events,
            Ok(Err(e)) => {
                eprintln!("gfs_kernel_sim: inotify read: {e}");
                continue;
            }
        };
        for ev in events {
            if !ev.mask.contains(AddWatchFlags::IN_CLOSE_WRITE) {
                continue;
            }
            let Some(file) = ev.name.and_then(|n| n.into_string().ok()) else {
                continue;
            };
            if !matches!(
                file.as_str(),
                "block" | "first" | "jid" | "recover" | "withdraw"
            ) {
                continue;
            }
            let (name, path, recovers) = {
                let mut s = lock(&sim);
                let Some(name) = s.by_wd.get(&ev.wd).cloned() else {
                    continue;
                };
                let Some(t) = s.tables.get_mut(&name) else {
                    continue;
                };
                let recovers = (file == "recover").then(|| drain_recover(t));
                (name, t.dir.join(&file), recovers)
            };
            if let Some(values) = recovers {
                // Several writes may have landed before this close was seen: one value each.
                for v in values {
                    on_write(&sim, &name, &file, v.trim());
                }
                continue;
            }
            let text = read_settled(&path).await;
            on_write(&sim, &name, &file, text.trim());
        }
    }
}

/// Everything written to the `recover` FIFO so far, one value per line; a last value without a
/// newline counts too (its writer closed the file).
fn drain_recover(t: &mut TableSim) -> Vec<String> {
    use std::io::Read;
    let mut chunk = [0u8; 4096];
    loop {
        match t.recover_fifo.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => t.recover_buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break, // WouldBlock: drained
        }
    }
    let text = String::from_utf8_lossy(&t.recover_buf).into_owned();
    t.recover_buf.clear();
    text.split('\n')
        .filter(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect()
}

/// Reads a file just closed by a writer. An empty read means the next writer's `O_TRUNC` open
/// came before its `write(2)`: wait (bounded) for the value to land.
async fn read_settled(path: &Path) -> String {
    let mut text = String::new();
    for _ in 0..50 {
        text = std::fs::read_to_string(path).unwrap_or_default();
        if !text.trim().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    text
}

fn on_write(sim: &Shared, name: &str, file: &str, text: &str) {
    let mut s = lock(sim);
    s.note(name, format!("write {file}={text}"));
    let Ok(value) = text.parse::<i64>() else {
        s.violation(name, format!("{file}={text:?} is not a number (EINVAL)"));
        return;
    };
    let Some(t) = s.tables.get_mut(name) else {
        return;
    };
    match file {
        "first" => {
            if t.spectator {
                s.violation(name, "first written on a spectator mount (EINVAL)");
            } else if t.jid.is_some() {
                s.violation(name, format!("first={value} written after jid (EBUSY)"));
            } else if !(0..=1).contains(&value) {
                s.violation(name, format!("first={value} is not 0 or 1 (EINVAL)"));
            } else {
                t.first = value;
            }
        }
        "jid" => {
            if let Some(old) = t.jid {
                s.violation(
                    name,
                    format!("jid={value} written twice (already {old}) (EBUSY)"),
                );
                return;
            }
            let value = if t.spectator && value > 0 {
                let what = format!("jid={value} on a spectator mount (EINVAL: the mount fails)");
                s.violation(name, what);
                -i64::from(libc::EINVAL)
            } else {
                value
            };
            let Some(t) = s.tables.get_mut(name) else {
                return;
            };
            t.jid = Some(value);
            if let Some(waiter) = t.jid_waiter.take() {
                let _ = waiter.send(value);
            }
        }
        "recover" => {
            let own = t.jid;
            let spectator = t.spectator;
            let busy = u32::try_from(value).is_ok_and(|j| t.replaying.contains(&j));
            if spectator {
                s.violation(name, format!("recover={value} on a spectator (ESHUTDOWN)"));
            } else if !(0..i64::from(MAX_JOURNALS)).contains(&value) {
                s.violation(name, format!("recover={value}: no such journal (ENOENT)"));
            } else if own == Some(value) {
                s.violation(name, format!("recover={value} of its own journal (EBUSY)"));
            } else if busy {
                s.violation(name, format!("recover={value} already replaying (EBUSY)"));
            } else {
                start_replay(sim.clone(), &mut s, name, value as u32);
            }
        }
        "block" => match value {
            1 => {
                t.blocked = true;
            }
            0 => {
                t.blocked = false;
                if !t.replaying.is_empty() {
                    let what = format!("block=0 while replaying {:?}", t.replaying);
                    s.note(name, what);
                }
            }
            _ => s.violation(name, format!("block={value} is not 0 or 1 (EINVAL)")),
        },
        "withdraw" if value != 1 && value != 0 => {
            s.violation(name, format!("withdraw={value} is not 0 or 1 (EINVAL)"));
        }
        _ => {}
    }
}

fn start_replay(sim: Shared, s: &mut Sim, name: &str, jid: u32) {
    let fail = s.fail_next_replays > 0;
    if fail {
        s.fail_next_replays -= 1;
    }
    let replay_ms = s.replay_ms;
    let Some(t) = s.tables.get_mut(name) else {
        return;
    };
    t.replaying.insert(jid);
    let generation = t.generation;
    s.note(
        name,
        format!(
            "replay start jid={jid}{}",
            if fail { " (will fail)" } else { "" }
        ),
    );
    let name = name.to_owned();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(replay_ms)).await;
        let mut s = lock(&sim);
        if !same_generation(&s, &name, generation) {
            return;
        }
        let Some(t) = s.tables.get_mut(&name) else {
            return;
        };
        t.replaying.remove(&jid);
        if fail {
            t.replays_failed.push(jid);
        } else {
            t.replays_done.push(jid);
        }
        let status = if fail { STATUS_FAILED } else { STATUS_DONE };
        let _ = std::fs::write(t.dir.join("recover_done"), format!("{jid}\n"));
        let _ = std::fs::write(t.dir.join("recover_status"), format!("{status}\n"));
        s.note(
            &name,
            format!(
                "replay end jid={jid} {}",
                if fail { "Failed" } else { "Done" }
            ),
        );
        s.send(&name, KernelEventKind::Recovery { jid, done: !fail });
    });
}
