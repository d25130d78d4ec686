//! The guest side: `gfs_vm_agent init` is the VM's PID 1 once the initramfs has mounted the
//! host's `/` (read-only, 9p) and switched to it. It makes the guest writable where daemons
//! need it (tmpfs and overlays), loads the modules, configures the node's address, keeps the
//! kernel log and the gfs2/dlm uevents in the host-visible log directory, reaps every process,
//! and serves the host's requests ([`super::proto`]) on the virtio-serial port.
//!
//! `gfs_vm_agent fence NODEID [NAME]` is gfs_controld's fence program inside the guest: it asks
//! the host's fence service on the bridge to power the node off.

use std::collections::HashMap;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::proto::{Op, Reply, Request, FENCE_PORT, LOG_DIR, LOG_TAG, PORT_NAME};

const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Modules loaded from the host's /lib/modules once the root is up (the initramfs loaded
/// only what mounting the root needs).
const MODULES: &[&str] = &[
    "virtio_net",
    "virtio_blk",
    "virtio_console",
    "overlay",
    "configfs",
    "dlm",
    "gfs2",
];
/// Where a guest sees the host's whole root (its own /tmp, /run and /mnt are tmpfs).
pub const HOST_ROOT: &str = "/run/host";

/// Directories daemons write to: a tmpfs overlay on the read-only host directory.
const OVERLAYS: &[&str] = &["/etc", "/var", "/root"];

/// `key=value` settings of the kernel command line that start with `gfsvm.`.
pub fn boot_settings() -> HashMap<String, String> {
    fs::read_to_string("/proc/cmdline")
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("gfsvm."))
        .filter_map(|w| w.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// Microseconds of CLOCK_REALTIME and CLOCK_MONOTONIC, read back to back.
pub fn clocks_us() -> (u64, u64) {
    fn read(clock: libc::clockid_t) -> u64 {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes into the timespec we pass.
        unsafe { libc::clock_gettime(clock, &mut ts) };
        ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1000
    }
    (read(libc::CLOCK_REALTIME), read(libc::CLOCK_MONOTONIC))
}

/// `1764240541.123456`: the time stamp every guest log line starts with (guest wall clock).
pub fn stamp(wall_us: u64) -> String {
    format!("{}.{:06}", wall_us / 1_000_000, wall_us % 1_000_000)
}

fn sh_setup(cmd: &str) -> Result<()> {
    let out = Command::new("/bin/sh")
        .args(["-c", cmd])
        .env("PATH", PATH)
        .output()
        .with_context(|| format!("running {cmd}"))?;
    if !out.status.success() {
        bail!(
            "`{cmd}` failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// PID 1: set the guest up, then serve the host until the VM is killed.
pub fn init(agent_path: &Path) -> ! {
    if let Err(e) = setup(agent_path) {
        // The console (ttyS0) is the host's console.log.
        eprintln!("gfs_vm_agent: setup failed: {e:#}");
    }
    std::thread::spawn(reap_forever);
    std::thread::spawn(|| log_errors("kmsg", follow_kmsg()));
    std::thread::spawn(|| log_errors("uevents", follow_uevents()));
    loop {
        log_errors("port", serve_port());
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn log_errors(what: &str, result: Result<()>) {
    if let Err(e) = result {
        eprintln!("gfs_vm_agent: {what}: {e:#}");
    }
}

fn setup(agent_path: &Path) -> Result<()> {
    let settings = boot_settings();
    let node = settings.get("node").cloned().unwrap_or_else(|| "1".into());
    let subnet = settings
        .get("subnet")
        .cloned()
        .unwrap_or_else(|| "10.78.0".into());
    std::env::set_var("PATH", PATH);
    std::env::set_var("HOME", "/root");
    std::env::set_var("LANG", "C");
    // /proc, /sys and /dev come mounted from the initramfs.
    // The host's / stays reachable at HOST_ROOT before tmpfs covers /tmp and /mnt: the host's
    // binaries may live there (a CI checkout under /tmp).
    sh_setup(&format!(
        "mount -t tmpfs -o mode=0755 run /run && mkdir -p {HOST_ROOT} && mount --bind / {HOST_ROOT}"
    ))?;
    sh_setup("mount -t tmpfs -o mode=1777 tmp /tmp && mount -t tmpfs mnt /mnt && mkdir -p /dev/shm /dev/pts && mount -t tmpfs -o mode=1777 shm /dev/shm && mount -t devpts devpts /dev/pts")?;
    for module in MODULES {
        sh_setup(&format!("modprobe {module}"))?;
    }
    for (n, dir) in OVERLAYS.iter().enumerate() {
        sh_setup(&format!(
            "mkdir -p /run/ovl/{n}/upper /run/ovl/{n}/work && \
             mount -t overlay overlay -o lowerdir={dir},upperdir=/run/ovl/{n}/upper,workdir=/run/ovl/{n}/work {dir}"
        ))?;
    }
    sh_setup(&format!(
        "mkdir -p {LOG_DIR} && mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 {LOG_TAG} {LOG_DIR}"
    ))?;
    sh_setup("mountpoint -q /sys/kernel/config || mount -t configfs configfs /sys/kernel/config")?;
    // What udev and systemd would make: bash's <(...) needs /dev/fd; dlm_controld opens
    // /dev/misc/dlm-* (51-dlm.rules).
    sh_setup("ln -sf /proc/self/fd /dev/fd && ln -sf /proc/self/fd/0 /dev/stdin && ln -sf /proc/self/fd/1 /dev/stdout && ln -sf /proc/self/fd/2 /dev/stderr")?;
    sh_setup("mkdir -p /dev/misc && for d in dlm-control dlm-monitor dlm_plock; do ln -sf ../$d /dev/misc/$d; done")?;
    let name = format!("node{node}");
    fs::write("/etc/hostname", format!("{name}\n"))?;
    sh_setup(&format!("hostname {name}"))?;
    let nodes: u32 = settings
        .get("nodes")
        .and_then(|n| n.parse().ok())
        .unwrap_or(3);
    let mut hosts = String::from("127.0.0.1 localhost\n");
    for i in 1..=nodes {
        hosts.push_str(&format!("{subnet}.{i} node{i}\n"));
    }
    fs::write("/etc/hosts", hosts)?;
    sh_setup(&format!(
        "ip link set lo up && ip link set eth0 up && ip addr add {subnet}.{node}/24 dev eth0"
    ))?;
    // gfs_controld's fence program: absolute path, called with NODEID NAME.
    fs::create_dir_all("/etc/gfsvm")?;
    let fence = format!(
        "#!/bin/sh\nexec {HOST_ROOT}{} fence \"$@\"\n",
        agent_path.display()
    );
    fs::write("/etc/gfsvm/fence", fence)?;
    sh_setup("chmod 0755 /etc/gfsvm/fence")?;
    Ok(())
}

// ----- reaping: as PID 1 every orphan becomes ours; one thread waits for all of them -------

struct Exits {
    status: Mutex<HashMap<i32, i32>>,
    changed: Condvar,
}

fn exits() -> &'static Exits {
    static EXITS: OnceLock<Exits> = OnceLock::new();
    EXITS.get_or_init(|| Exits {
        status: Mutex::new(HashMap::new()),
        changed: Condvar::new(),
    })
}

fn reap_forever() {
    loop {
        let mut status = 0;
        // SAFETY: waitpid writes the status into our variable.
        let pid = unsafe { libc::waitpid(-1, &mut status, 0) };
        if pid <= 0 {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        }
        let code = if libc::WIFEXITED(status) {
            libc::WEXITSTATUS(status)
        } else {
            128 + libc::WTERMSIG(status)
        };
        let e = exits();
        let mut map = e.status.lock().unwrap_or_else(|p| p.into_inner());
        map.insert(pid, code);
        // Daemons nobody waits for: keep the map small.
        if map.len() > 4096 {
            map.clear();
        }
        e.changed.notify_all();
    }
}

/// The exit status of `pid` (a child we spawned and never wait for through std), or None
/// after `timeout`.
fn wait_exit(pid: i32, timeout: Duration) -> Option<i32> {
    let e = exits();
    let deadline = Instant::now() + timeout;
    let mut map = e.status.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        if let Some(code) = map.remove(&pid) {
            return Some(code);
        }
        let left = deadline.checked_duration_since(Instant::now())?;
        map = e
            .changed
            .wait_timeout(map, left)
            .unwrap_or_else(|p| p.into_inner())
            .0;
    }
}

// ----- requests ----------------------------------------------------------------------------

fn bash(cmd: &str) -> Command {
    let mut c = Command::new("/bin/bash");
    c.arg("-c").arg(cmd).stdin(Stdio::null()).process_group(0);
    c
}

fn run_sh(id: u64, cmd: &str, timeout_ms: u64) -> Reply {
    let path = PathBuf::from(format!("/tmp/.gfsvm-out-{id}"));
    let result = (|| -> Result<(i32, String)> {
        let file = fs::File::create(&path)?;
        let child = bash(cmd)
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .context("spawning bash")?;
        let pid = child.id() as i32;
        drop(child); // never waited for through std: the reaper owns every exit
        let rc = match wait_exit(pid, Duration::from_millis(timeout_ms)) {
            Some(rc) => rc,
            None => {
                // SAFETY: the process group we created for this command.
                unsafe { libc::kill(-pid, libc::SIGKILL) };
                wait_exit(pid, Duration::from_secs(10));
                124
            }
        };
        let mut out = String::new();
        fs::File::open(&path)?.read_to_string(&mut out).ok();
        Ok((rc, out))
    })();
    let _ = fs::remove_file(&path);
    match result {
        Ok((rc, out)) => Reply {
            id,
            rc,
            out,
            ..Reply::default()
        },
        Err(e) => Reply {
            id,
            rc: 125,
            out: format!("agent: {e:#}"),
            ..Reply::default()
        },
    }
}

fn run_spawn(id: u64, cmd: &str, log: &str) -> Reply {
    let result = (|| -> Result<u32> {
        let file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(Path::new(LOG_DIR).join(log))?;
        let child = bash(cmd).stdout(file.try_clone()?).stderr(file).spawn()?;
        Ok(child.id())
    })();
    match result {
        Ok(pid) => Reply {
            id,
            pid: Some(pid),
            ..Reply::default()
        },
        Err(e) => Reply {
            id,
            rc: 125,
            out: format!("agent: {e:#}"),
            ..Reply::default()
        },
    }
}

fn handle(req: Request) -> Reply {
    match req.op {
        Op::Sh { cmd, timeout_ms } => run_sh(req.id, &cmd, timeout_ms),
        Op::Spawn { cmd, log } => run_spawn(req.id, &cmd, &log),
        Op::Clock => {
            let (wall, mono) = clocks_us();
            Reply {
                id: req.id,
                wall_us: Some(wall),
                mono_us: Some(mono),
                ..Reply::default()
            }
        }
    }
}

fn find_port() -> Option<PathBuf> {
    for entry in fs::read_dir("/sys/class/virtio-ports").ok()?.flatten() {
        let name = fs::read_to_string(entry.path().join("name")).unwrap_or_default();
        if name.trim() == PORT_NAME {
            return Some(Path::new("/dev").join(entry.file_name()));
        }
    }
    None
}

fn serve_port() -> Result<()> {
    let path = loop {
        match find_port() {
            Some(p) if p.exists() => break p,
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    let port = fs::OpenOptions::new().read(true).write(true).open(&path)?;
    let writer = Arc::new(Mutex::new(port.try_clone()?));
    let mut reader = BufReader::new(port);
    let mut line = String::new();
    loop {
        line.clear();
        // 0 bytes: no host connected at the moment; the host reconnects when it needs us.
        if reader.read_line(&mut line)? == 0 {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        }
        let Ok(req) = serde_json::from_str::<Request>(line.trim()) else {
            continue;
        };
        let writer = Arc::clone(&writer);
        std::thread::spawn(move || {
            let reply = handle(req);
            if let Ok(mut text) = serde_json::to_string(&reply) {
                text.push('\n');
                let mut w = writer.lock().unwrap_or_else(|p| p.into_inner());
                let _ = w.write_all(text.as_bytes());
            }
        });
    }
}

// ----- evidence that survives a kill: the kernel log and the uevents, stamped -------------

fn append(name: &str) -> Result<fs::File> {
    Ok(fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(Path::new(LOG_DIR).join(name))?)
}

/// Every kernel log record as `<guest wall time> [<seconds since boot>] <message>`; the wall
/// time is computed from the record's own monotonic stamp, not from when it was read.
fn follow_kmsg() -> Result<()> {
    let mut kmsg = fs::File::open("/dev/kmsg")?;
    let mut out = append("kmsg.log")?;
    let mut buf = vec![0u8; 16384];
    loop {
        let n = match kmsg.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue, // overwritten records
            Err(e) => return Err(e.into()),
        };
        let record = String::from_utf8_lossy(&buf[..n]);
        let Some((head, message)) = record.split_once(';') else {
            continue;
        };
        let ts_us: u64 = head
            .split(',')
            .nth(2)
            .and_then(|t| t.parse().ok())
            .unwrap_or(0);
        let message = message.lines().next().unwrap_or("");
        let (wall, mono) = clocks_us();
        let at = wall.saturating_sub(mono.saturating_sub(ts_us));
        writeln!(
            out,
            "{} [{:>5}.{:06}] {message}",
            stamp(at),
            ts_us / 1_000_000,
            ts_us % 1_000_000
        )?;
    }
}

/// Kernel uevents of gfs2 and dlm as `<guest wall time> ACTION@DEVPATH KEY=VALUE ...`. Like
/// gfs2-utils' udev rule on Debian, an `offline` (withdraw) runs its helper, which
/// acknowledges the withdraw at once.
fn follow_uevents() -> Result<()> {
    // SAFETY: plain socket(2)/bind(2) on a netlink address we fill in.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::NETLINK_KOBJECT_UEVENT,
        )
    };
    if fd < 0 {
        bail!("netlink socket: {}", std::io::Error::last_os_error());
    }
    // SAFETY: sockaddr_nl is plain data; zeroed is a valid value.
    let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as u16;
    addr.nl_groups = 1;
    // SAFETY: addr is a valid sockaddr_nl of the size given.
    let rc = unsafe {
        libc::bind(
            fd,
            &addr as *const libc::sockaddr_nl as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_nl>() as u32,
        )
    };
    if rc != 0 {
        bail!("netlink bind: {}", std::io::Error::last_os_error());
    }
    let mut out = append("uevents.log")?;
    let mut buf = vec![0u8; 65536];
    loop {
        // SAFETY: recv into our buffer of the given length.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n <= 0 {
            continue;
        }
        let parts: Vec<String> = buf[..n as usize]
            .split(|b| *b == 0)
            .filter(|p| !p.is_empty())
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .collect();
        let Some(head) = parts.first() else { continue };
        let env: Vec<(&str, &str)> = parts[1..]
            .iter()
            .filter_map(|p| p.split_once('='))
            .collect();
        let get = |k: &str| env.iter().find(|(key, _)| *key == k).map(|(_, v)| *v);
        let subsystem = get("SUBSYSTEM").unwrap_or("");
        if subsystem != "gfs2" && subsystem != "dlm" {
            continue;
        }
        let vars: Vec<String> = env
            .iter()
            .filter(|(k, _)| !matches!(*k, "ACTION" | "DEVPATH" | "SEQNUM"))
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        writeln!(out, "{} {head} {}", stamp(clocks_us().0), vars.join(" "))?;
        if subsystem == "gfs2" && get("ACTION") == Some("offline") {
            let helper = "/lib/udev/gfs2_withdraw_helper";
            if Path::new(helper).exists() {
                let mut cmd = Command::new("/bin/sh");
                cmd.arg(helper).stdin(Stdio::null()).process_group(0);
                for (k, v) in &env {
                    cmd.env(k, v);
                }
                if let Ok(child) = cmd.spawn() {
                    writeln!(
                        out,
                        "{} helper {helper} started (pid {})",
                        stamp(clocks_us().0),
                        child.id()
                    )?;
                }
            }
        }
    }
}

// ----- the fence program --------------------------------------------------------------------

/// `fence NODEID [NAME]`: exit status 0 when the host says the node's VM is dead.
pub fn fence(args: &[String]) -> i32 {
    let Some(nodeid) = args.first().and_then(|a| a.parse::<u32>().ok()) else {
        eprintln!("usage: gfs_vm_agent fence NODEID [NAME]");
        return 2;
    };
    let host = boot_settings()
        .get("host")
        .cloned()
        .unwrap_or_else(|| "10.78.0.254".into());
    let result = (|| -> Result<String> {
        let addr: std::net::SocketAddr = format!("{host}:{FENCE_PORT}").parse()?;
        let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
        stream.set_read_timeout(Some(Duration::from_secs(60)))?;
        writeln!(stream, "{nodeid}")?;
        let mut reply = String::new();
        BufReader::new(stream).read_line(&mut reply)?;
        Ok(reply.trim().to_owned())
    })();
    let (rc, text) = match result {
        Ok(reply) if reply == format!("OK dead {nodeid}") => (0, reply),
        Ok(reply) => (1, reply),
        Err(e) => (1, format!("error: {e:#}")),
    };
    let line = format!(
        "{} fence {nodeid} {}: {text}",
        stamp(clocks_us().0),
        args.get(1).map(String::as_str).unwrap_or("")
    );
    eprintln!("{line}");
    if let Ok(mut f) = append("fence.log") {
        let _ = writeln!(f, "{line}");
    }
    rc
}
