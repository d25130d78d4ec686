//! `gfs_kernel_sim`: the GFS2 kernel of one node for tests, as Linux 6.1 behaves with lock_dlm
//! in the userspace-controlled mode (`recover_callbacks=0`), and the DLM-ops mode where the
//! kernel manages recovery itself. Not packaged. Sources of every behaviour below:
//! `shared/research/real-kernel.md` §2–§4 and §6 (confirmed on a real kernel in
//! `vm-cluster.md` §5).
//!
//! ```text
//! gfs_kernel_sim serve --root DIR --socket PATH [--replay-ms N] [--join-ms N] [--shared DIR]
//!                      [--configfs-root DIR] [--recover-callbacks 0|1] [--uevent-socket PATH]
//!                      [--record FILE]
//! gfs_kernel_sim [--socket PATH] mount <table> [--spectator] [--ro] [--timeout-ms N]
//!                      [--journals N] [--join-ms N] [--hostdata-first0]
//! gfs_kernel_sim [--socket PATH] umount <table>
//! gfs_kernel_sim [--socket PATH] withdraw <table>
//! gfs_kernel_sim [--socket PATH] remount <table> --ro|--rw
//! gfs_kernel_sim [--socket PATH] set [--replay-ms N] [--fail-next-replays K] [--join-ms N]
//!                      [--recover-callbacks 0|1]
//! gfs_kernel_sim [--socket PATH] status [--json]
//! ```
//! (`--socket` may also be given after the subcommand; default `$GFS_KERNEL_SIM_SOCKET`.)
//!
//! # The server
//!
//! `serve` mounts a FUSE filesystem on `DIR` (the daemon's stand-in for `/sys/fs/gfs2`; fuser
//! mounts with mount(2), so it needs root and `/dev/fuse`, and neither libfuse nor fusermount).
//! The mount is made in the server's mount namespace: start it without a private one (e.g.
//! `nsenter --net=/run/netns/N`, not `ip netns exec`) so the daemon and the test see it. Uevents
//! go to `NETLINK_KOBJECT_UEVENT` group 1 of the server's network namespace (CAP_NET_ADMIN
//! there), or with `--uevent-socket PATH` to that unix datagram socket: gfs_controld takes
//! netlink uevents only from the kernel, and from a simulator only on its `uevent_test_socket`
//! (a uevent sent while nobody listens there is lost, as the kernel's are). Clients talk to it on the unix socket `PATH` (one JSON request line, one JSON reply
//! line: `gfs_testkit::proto`). SIGTERM/SIGINT: every table goes (no uevents: power-off),
//! the FUSE filesystem is detached, the socket removed; exit 0. A server that is killed leaves
//! a dead FUSE mount (ENOTCONN): the next `serve` on `DIR` detaches it.
//!
//! `--shared DIR` is the cluster's shared disk, one directory for every node of a test cluster
//! (default: a private one): the mount glock, the journal locks and a dirty flag per journal
//! live there (see `disk.rs`). Locks are released by the OS when a server dies.
//!
//! `--configfs-root DIR` creates `DIR/dlm/cluster/recover_callbacks` holding
//! `--recover-callbacks` (default 0), which the daemon reads at `add`. Each mount reads that
//! file when its DLM join starts (as the DLM reads `ci_recover_callbacks` when it creates the
//! lockspace): 1 makes the mount kernel-managed.
//!
//! # A filesystem's files
//!
//! `DIR/<table>/`: `id`, `fsname`, `uuid`, `status` (the 6.1 `status_show` layout; the daemon
//! reads `Mounted RO:`), `withdraw` (writing 1 withdraws), and `lock_module/` with
//! `proto_name` (`lock_dlm`), `block`, `first`, `first_done`, `jid`, `recover` (0600,
//! write-only), `recover_done`, `recover_status`, `withdraw`. Reads give what 6.1 gives: `jid`,
//! `recover_done`, `recover_status`, `block` read `0` at first; `first` reads `1` (`0` with
//! `--hostdata-first0`); `first_done` is always `0` in this mode. Opening `recover` for
//! reading, or a read-only file for writing, is EACCES.
//!
//! Writes (each `write(2)` is seen once, with its own result) fail as the kernel's do:
//! * `block`: 0 or 1 (`kstrtoint`), else EINVAL (ERANGE when out of range).
//! * `first`: 0 or 1 (`%u`), else EINVAL; then **blocks until the DLM join is done**; then
//!   EBUSY once the jid is known (after a `jid` write, or kernel-managed), EINVAL on a spectator.
//! * `jid`: a number (`%d`), else EINVAL; **blocks until the DLM join is done**; EBUSY if the jid
//!   is already known (a second write, or kernel-managed); a spectator's value > 0 is stored as
//!   -EINVAL (the mount fails) and the write gets EINVAL; negatives are stored and fail the mount
//!   with that errno.
//! * `recover`: a number (`%u`: `-1` is EINVAL); ESHUTDOWN while unmounting; then **blocks until
//!   this node's own journal is checked**; EBUSY for its own jid or a journal already
//!   recovering on this node; ENOENT beyond the journal count. A spectator's `recover` of any
//!   jid succeeds and recovers journal 0, which reports Failed. The write returns at once; the
//!   recovery runs on: withdrawn or spectator → Failed; journal lock held by a live node (TRY)
//!   → Failed ("Busy"); dirty → replayed (`--replay-ms`; a read-only mount cannot: Failed) →
//!   Done; clean → Done. Then `recover_done`/`recover_status` (309 Done, 308 Failed) and
//!   `change JID=<n> RECOVERY=Done|Failed`.
//! * `lock_module/withdraw`: 1 acknowledges a withdraw (reads 1 afterwards), else EINVAL.
//!
//! Every refused write (other than ENODEV for a filesystem that is gone) is also recorded as a
//! violation, and so is every write to a kernel-managed filesystem. A blocked write never
//! holds up another file: the writer is answered from a task when the kernel would wake it.
//! One difference: the kernel's wait in `first`/`jid` is killable, but fuser does not handle
//! FUSE_INTERRUPT, so a writer killed while blocked there goes only when the DLM join ends or
//! the mount goes (`recover`'s wait is uninterruptible in the kernel too).
//!
//! # A mount (6.1 `gfs2_fill_super`)
//!
//! 1. The directory appears; `add RDONLY= SPECTATOR=` (never JOURNALID).
//! 2. The DLM join takes `--join-ms` (server default 50; `mount --join-ms` overrides it for one
//!    filesystem); then blocked `first`/`jid` writes go on.
//! 3. The cluster-wide **mount glock** is taken (EX, waiting while another node mounts) and held
//!    until the mount ends, **including the wait for `jid`**: a daemon that withholds `jid` from
//!    the glock holder while another node waits for the glock deadlocks them both (a mount with
//!    `--timeout-ms` fails with EINTR when it expires, in either wait).
//!    Kernel-managed: the kernel picks the lowest journal nobody holds and is first if nobody
//!    holds any; `first`/`jid` writes get EBUSY.
//! 4. A negative jid fails the mount with that errno (`remove`, with `JOURNALID=0`); a jid
//!    beyond the journal count (`--journals`, default 256) fails it with EUSERS.
//! 5. Its own journal lock is taken (a spectator takes none; a jid another live node holds
//!    makes the mount wait for it: recorded as a violation).
//! 6. `first` = 1 (the default!): every journal in turn: its own checked, each other taken with
//!    TRY (held → `change JID=j RECOVERY=Failed`), replayed if dirty → `RECOVERY=Done`; then
//!    `change FIRSTMOUNT=Done`. A spectator with `first` = 1 instead requires every journal
//!    clean and unheld (a live node's journal is dirty): otherwise the mount fails with EPERM.
//!    `first` = 0: its own journal checked (replayed if dirty) → `change JID=<own>
//!    RECOVERY=Done`; a spectator checks nothing.
//! 7. The journal is ready (`recover` writes go on); a read-write mount's journal becomes
//!    dirty (live). If any journal is then dirty and held by no live node, the mount completes
//!    with an unreplayed journal: violation (S5).
//! 8. The mount glock is released; `online RDONLY= SPECTATOR=`; the client returns.
//!
//! Every uevent carries, after the caller's variables, `LOCKTABLE`, `LOCKPROTO`, `JOURNALID`
//! (once the jid is known), `UUID` and `SEQNUM`, as the kernel's do.
//!
//! # Other requests
//!
//! * `umount`: a mount in progress fails (EINTR). Otherwise: `recover` writes get ESHUTDOWN,
//!   running recoveries finish, a read-write journal is marked clean, its lock released,
//!   `remove`, the directory goes. A killed server leaves its rw journals dirty.
//! * `withdraw` (or writing 1 to `<table>/withdraw`): its journal lock is released (the journal
//!   stays dirty) and `offline` is sent. Simplified: 6.1 has the peers' kernels replay the
//!   journal before `offline`; here the daemon's `recover` does it.
//! * `remount`: `online` carrying the OLD `RDONLY` (as 6.1 does); `status` shows the new state
//!   at once. rw→ro marks the journal clean, ro→rw dirty.
//! * `set`: replay duration; the next K `recover` recoveries fail; default join time;
//!   `recover_callbacks` (rewrites the configfs file).
//! * `status [--json]`: tables, violations, timeline (`gfs_testkit::proto::Status`): every
//!   write (with its result and when it returned), read (with what it read), uevent, replay and
//!   mount step, with wall-clock milliseconds.
//!
//! Client exit status: 0 on success; on failure the errno the simulated kernel gave (a `mount`
//! refused by a `jid=-22` write exits 22, EINTR=4 when `--timeout-ms` expires), or 1 for other
//! errors (no server, bad reply).

mod disk;
mod fuse;
mod model;
mod mount;
mod server;
mod sysfs;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use gfs_testkit::client;
use gfs_testkit::proto::{Request, Status};

use server::{serve, ServeOptions};

#[derive(Parser, Debug)]
#[command(
    name = "gfs_kernel_sim",
    about = "Simulated GFS2 kernel (Linux 6.1, lock_dlm) for tests"
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
        /// Where to mount the sysfs tree (stands for /sys/fs/gfs2).
        #[arg(long)]
        root: PathBuf,
        /// Duration of one journal replay.
        #[arg(long, default_value_t = 100)]
        replay_ms: u64,
        /// Duration of a mount's DLM lockspace join.
        #[arg(long, default_value_t = 50)]
        join_ms: u64,
        /// The cluster's shared disk: one directory for all nodes (default: a private one).
        #[arg(long)]
        shared: Option<PathBuf>,
        /// Create DIR/dlm/cluster/recover_callbacks (stands for /sys/kernel/config).
        #[arg(long)]
        configfs_root: Option<PathBuf>,
        /// The DLM's recover_callbacks: 1 = the kernel manages recovery (DLM-ops mode).
        #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=1))]
        recover_callbacks: u32,
        /// Send uevents to this unix datagram socket (gfs_controld's `uevent_test_socket`)
        /// instead of netlink, where gfs_controld takes only the kernel's own.
        #[arg(long)]
        uevent_socket: Option<PathBuf>,
        /// Append every timeline entry and violation to FILE as JSON lines when it happens
        /// (`gfs_testkit::proto::Entry`; a write's end is a second line with its result), so
        /// the record survives this process.
        #[arg(long)]
        record: Option<PathBuf>,
    },
    /// Mount a filesystem; returns when `online` was sent, or fails with the mount's errno.
    Mount {
        table: String,
        #[arg(long)]
        spectator: bool,
        #[arg(long)]
        ro: bool,
        /// Fail the mount with EINTR if it still waits (mount glock, `jid`) after this long.
        #[arg(long)]
        timeout_ms: Option<u64>,
        /// Journals on the filesystem (default 256).
        #[arg(long)]
        journals: Option<u32>,
        /// This filesystem's DLM join time (default: the server's).
        #[arg(long)]
        join_ms: Option<u64>,
        /// As `-o hostdata=first=0`.
        #[arg(long)]
        hostdata_first0: bool,
    },
    /// Unmount: `remove`, and the sysfs directory goes away.
    Umount { table: String },
    /// Withdraw: `offline`.
    Withdraw { table: String },
    /// Remount read-only or read-write: `online` with the old RDONLY.
    Remount {
        table: String,
        #[arg(long, conflicts_with = "rw", required_unless_present = "rw")]
        ro: bool,
        #[arg(long)]
        rw: bool,
    },
    /// Change the replay duration or join time, make the next K `recover` replays fail, or set
    /// recover_callbacks for later mounts.
    Set {
        #[arg(long)]
        replay_ms: Option<u64>,
        #[arg(long)]
        fail_next_replays: Option<u32>,
        #[arg(long)]
        join_ms: Option<u64>,
        #[arg(long, value_parser = clap::value_parser!(u32).range(0..=1))]
        recover_callbacks: Option<u32>,
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
        Cmd::Serve {
            root,
            replay_ms,
            join_ms,
            shared,
            configfs_root,
            recover_callbacks,
            uevent_socket,
            record,
        } => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(serve(ServeOptions {
                root,
                socket: socket?,
                replay_ms,
                join_ms,
                shared,
                configfs_root,
                recover_callbacks,
                uevent_socket,
                record,
            }))?;
            return Ok(0);
        }
        Cmd::Mount {
            table,
            spectator,
            ro,
            timeout_ms,
            journals,
            join_ms,
            hostdata_first0,
        } => Request::Mount {
            table,
            spectator,
            ro,
            timeout_ms,
            journals,
            join_ms,
            hostdata_first0,
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
            join_ms,
            recover_callbacks,
        } => Request::Set {
            replay_ms,
            fail_next_replays,
            join_ms,
            recover_callbacks,
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
    // A mount waits as long as the kernel makes it; an unmount waits for running replays.
    let timeout = match req {
        Request::Mount { .. } => None,
        Request::Umount { .. } => Some(Duration::from_secs(180)),
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
        "replay_ms {}  fail_next_replays {}  join_ms {}  recover_callbacks {}",
        s.replay_ms, s.fail_next_replays, s.join_ms, s.recover_callbacks
    );
    for t in &s.tables {
        println!(
            "{} mode={} stage={} jid={} first={} blocked={} mounted={} withdrawn={} \
             kernel_managed={} journals={} dirty={:?} done={:?} failed={:?} replaying={:?}",
            t.table,
            t.mode,
            t.stage,
            t.jid.map(|j| j.to_string()).unwrap_or_else(|| "-".into()),
            t.first,
            t.blocked,
            t.mounted,
            t.withdrawn,
            t.kernel_managed,
            t.journals,
            t.dirty,
            t.replays_done,
            t.replays_failed,
            t.replaying
        );
    }
    for v in &s.violations {
        println!("VIOLATION {} {} {}", v.t_ms, v.table, v.what);
    }
    for e in &s.timeline {
        match (&e.result, e.end_ms) {
            (Some(r), Some(end)) => {
                println!(
                    "{} {} {} -> {r} (+{} ms)",
                    e.t_ms,
                    e.table,
                    e.what,
                    end - e.t_ms
                )
            }
            (Some(r), None) => println!("{} {} {} -> {r}", e.t_ms, e.table, e.what),
            _ => println!("{} {} {}", e.t_ms, e.table, e.what),
        }
    }
}
