//! Host-side pieces of the VM cluster: prerequisites and packages, the private network (one
//! namespace holding a bridge and the VMs' taps), qemu processes (found again by pid file and
//! command line, never by name alone), the fence service, and the reaping of what a killed
//! run left behind.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::proto::FENCE_PORT;
use crate::now_ms;

/// Every VM run registers here (`vm-<tag>`: owner pid, run directory), as the netns
/// cluster tier does in its own directory (whose reaper takes every entry for one of its
/// clusters), so that the next run can reap what a killed one left. The agents' sockets and
/// the machine lock live here too.
pub const REGISTRY: &str = "/run/gfs-testkit-vm";
/// Prefix of our network namespaces and of qemu's `-name`.
pub const PREFIX: &str = "gfsvm";

/// Debian packages the tier needs, and a command each provides.
pub const PACKAGES: &[(&str, &str)] = &[
    ("qemu-system-x86", "qemu-system-x86_64"),
    ("linux-image-amd64", "/boot"),
    ("gfs2-utils", "mkfs.gfs2"),
    ("dlm-controld", "dlm_controld"),
    ("corosync", "corosync"),
    ("busybox-static", "/bin/busybox"),
    ("iproute2", "ip"),
];

pub fn run(cmd: &str) -> Result<String> {
    let out = Command::new("sh")
        .args(["-c", cmd])
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd}"))?;
    if !out.status.success() {
        bail!(
            "`{cmd}` failed: {}{}",
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn have(cmd: &str) -> bool {
    if cmd.starts_with('/') {
        return Path::new(cmd).exists();
    }
    run(&format!("command -v {cmd}")).is_ok()
}

/// Debian packages that are missing (by dpkg, and by the command they provide).
pub fn missing_packages() -> Vec<&'static str> {
    PACKAGES
        .iter()
        .filter(|(pkg, cmd)| {
            let installed = run(&format!(
                "dpkg-query -W -f='${{Status}}' {pkg} 2>/dev/null | grep -q 'install ok installed'"
            ))
            .is_ok();
            !installed || !have(cmd)
        })
        .map(|(pkg, _)| *pkg)
        .collect()
}

/// The apt command that installs `pkgs`. qemu-system-x86 comes from bookworm (7.2); a newer
/// qemu-utils from backports conflicts with it, so qemu-utils is pinned to the same version
/// (`--allow-downgrades`).
pub fn install_command(pkgs: &[&str]) -> String {
    let mut cmd = String::from(
        "apt-get update -qq && v=$(apt-cache policy qemu-system-x86 | awk '/Candidate:/{print $2}') && \
         DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends --allow-downgrades",
    );
    for p in pkgs {
        cmd.push(' ');
        cmd.push_str(p);
    }
    if pkgs.contains(&"qemu-system-x86") {
        cmd.push_str(" \"qemu-utils=$v\"");
    }
    cmd
}

/// Installs the missing packages with apt (as root).
pub fn install_packages() -> Result<()> {
    let missing = missing_packages();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("vm: installing {}", missing.join(" "));
    run(&format!("{} >/dev/null", install_command(&missing)))?;
    Ok(())
}

/// Why this machine cannot run the VM tier, if it cannot.
pub fn missing_prerequisite(bin_dir: &Path) -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root (network namespaces and taps need it)".into());
    }
    if !Path::new("/dev/net/tun").exists() {
        return Some("no /dev/net/tun".into());
    }
    let missing = missing_packages();
    if !missing.is_empty() {
        return Some(format!(
            "packages missing: {} (install: {})",
            missing.join(" "),
            install_command(&missing)
        ));
    }
    if let Err(e) = super::initramfs::find_kernel() {
        return Some(format!("{e:#}"));
    }
    for bin in ["gfs_controld", "gfs_control", "gfs_vm_agent"] {
        if !bin_dir.join(bin).exists() {
            return Some(format!(
                "{} is missing (run `cargo build --release --workspace --bins` first)",
                bin_dir.join(bin).display()
            ));
        }
    }
    None
}

// ----- one VM cluster at a time on this machine ------------------------------------------

/// An exclusive lock on the machine's VM tier (released when dropped): two runs of three
/// TCG VMs each would not fit on two cores.
pub struct MachineLock {
    _file: fs::File,
}

impl MachineLock {
    pub fn acquire() -> Result<MachineLock> {
        fs::create_dir_all(REGISTRY)?;
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(Path::new(REGISTRY).join("vm.lock"))?;
        // SAFETY: flock on a file descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            eprintln!("vm: another VM cluster is running on this machine; waiting for it");
            // SAFETY: as above, blocking this time.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
                bail!("flock: {}", std::io::Error::last_os_error());
            }
        }
        Ok(MachineLock { _file: file })
    }
}

pub fn register(tag: &str, run_dir: &Path) -> Result<()> {
    fs::create_dir_all(REGISTRY)?;
    fs::write(
        Path::new(REGISTRY).join(format!("vm-{tag}")),
        format!("{}\n{}\n", std::process::id(), run_dir.display()),
    )?;
    Ok(())
}

pub fn unregister(tag: &str) {
    let _ = fs::remove_file(Path::new(REGISTRY).join(format!("vm-{tag}")));
}

pub fn netns_name(tag: &str) -> String {
    format!("{PREFIX}-{tag}")
}

/// `-name` of node `id`'s qemu: what its command line is recognised by.
pub fn qemu_name(tag: &str, id: u32) -> String {
    format!("{PREFIX}-{tag}-node{id}")
}

fn cmdline(pid: i32) -> Vec<String> {
    fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap_or_default()
        .split(|b| *b == 0)
        .filter(|p| !p.is_empty())
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect()
}

/// The pid in `pidfile` if it is a live qemu whose `-name` is `name`.
pub fn verified_qemu_pid(pidfile: &Path, name: &str) -> Option<i32> {
    let pid: i32 = fs::read_to_string(pidfile).ok()?.trim().parse().ok()?;
    let args = cmdline(pid);
    let is_qemu = args
        .first()
        .is_some_and(|a| a.ends_with("qemu-system-x86_64"));
    let named = args
        .windows(2)
        .any(|w| w[0] == "-name" && (w[1] == name || w[1].starts_with(&format!("{name},"))));
    (is_qemu && named).then_some(pid)
}

/// SIGKILLs the qemu of `pidfile`/`name` (if it runs) and waits until it is gone. Returns
/// the pid killed.
pub fn kill_qemu(pidfile: &Path, name: &str) -> Option<i32> {
    let pid = verified_qemu_pid(pidfile, name)?;
    // SAFETY: kill(2) on a process verified above to be our qemu.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    for _ in 0..200 {
        if verified_qemu_pid(pidfile, name).is_none() {
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    Some(pid)
}

/// Kills every qemu of every registered run whose owner is gone, and deletes its namespace.
/// Also deletes our namespaces and qemus that no live run claims (a run killed before it
/// registered them).
pub fn reap_abandoned() {
    let mut live_tags = Vec::new();
    for entry in fs::read_dir(REGISTRY).into_iter().flatten().flatten() {
        let file = entry.file_name().to_string_lossy().into_owned();
        let Some(tag) = file.strip_prefix("vm-") else {
            continue;
        };
        let text = fs::read_to_string(entry.path()).unwrap_or_default();
        let owner: Option<i32> = text.lines().next().and_then(|l| l.trim().parse().ok());
        // SAFETY: signal 0 only checks that the process exists.
        let alive = owner.is_some_and(|pid| unsafe { libc::kill(pid, 0) } == 0)
            && owner != Some(std::process::id() as i32);
        if alive {
            live_tags.push(tag.to_owned());
            continue;
        }
        eprintln!("vm: reaping the VM cluster {tag} left by a killed run");
        let _ = fs::remove_file(entry.path());
    }
    // qemus: by command line (`-name gfsvm-<tag>-node<i>`), for tags no live run owns.
    for proc_entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = proc_entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let args = cmdline(pid);
        if !args
            .first()
            .is_some_and(|a| a.ends_with("qemu-system-x86_64"))
        {
            continue;
        }
        let Some(name) = args
            .windows(2)
            .find(|w| w[0] == "-name")
            .map(|w| w[1].split(',').next().unwrap_or("").to_owned())
        else {
            continue;
        };
        let Some(rest) = name.strip_prefix(&format!("{PREFIX}-")) else {
            continue;
        };
        let tag = rest.rsplit_once("-node").map(|(t, _)| t).unwrap_or("");
        if !tag.is_empty() && !live_tags.iter().any(|t| t == tag) {
            eprintln!("vm: killing abandoned qemu {pid} ({name})");
            // SAFETY: a qemu recognised by its command line as one of ours.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    let namespaces = run("ip netns list").unwrap_or_default();
    for ns in namespaces
        .lines()
        .filter_map(|l| l.split_whitespace().next())
    {
        if let Some(tag) = ns.strip_prefix(&format!("{PREFIX}-")) {
            if !live_tags.iter().any(|t| t == tag) {
                eprintln!("vm: deleting abandoned network namespace {ns}");
                let _ = run(&format!("ip netns del {ns}"));
            }
        }
    }
}

// ----- network --------------------------------------------------------------------------

/// The namespace with bridge br0 and one tap per node; the host's end (the fence service's
/// address) is `<subnet>.254` on the bridge, inside the namespace only.
pub fn create_network(ns: &str, nodes: u32, subnet: &str) -> Result<()> {
    run(&format!("ip netns add {ns}"))?;
    run(&format!(
        "ip -n {ns} link set lo up && ip -n {ns} link add br0 type bridge && \
         ip -n {ns} link set br0 type bridge stp_state 0 forward_delay 0 && \
         ip -n {ns} addr add {subnet}.254/24 dev br0 && ip -n {ns} link set br0 up"
    ))?;
    for id in 1..=nodes {
        run(&format!(
            "ip -n {ns} tuntap add dev tap{id} mode tap && ip -n {ns} link set tap{id} master br0 && \
             ip -n {ns} link set tap{id} up"
        ))?;
    }
    Ok(())
}

pub fn delete_network(ns: &str) {
    let _ = run(&format!("ip netns del {ns}"));
}

// ----- the fence service ------------------------------------------------------------------

/// One node's power switch: its qemu's pid file and name.
#[derive(Clone, Debug)]
pub struct PowerSwitch {
    pub pidfile: PathBuf,
    pub name: String,
}

/// A fencing the service carried out: when (host unix ms), which node, and what it did.
#[derive(Clone, Debug)]
pub struct FenceRecord {
    pub at_ms: u64,
    pub nodeid: u32,
    pub from: String,
    pub killed_pid: Option<i32>,
}

/// The cluster's power switch, listening on `<subnet>.254:7777` inside the namespace: a
/// client sends `NODEID\n`; the service makes sure that node's qemu is dead (SIGKILL if it
/// still runs: power off) and answers `OK dead NODEID`.
pub struct FenceServer {
    stop: Arc<AtomicBool>,
    pub records: Arc<Mutex<Vec<FenceRecord>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FenceServer {
    pub fn start(
        ns: &str,
        addr: &str,
        switches: Vec<(u32, PowerSwitch)>,
        log: PathBuf,
    ) -> Result<FenceServer> {
        let stop = Arc::new(AtomicBool::new(false));
        let records = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<()>>();
        let ns_path = PathBuf::from(format!("/run/netns/{ns}"));
        let addr = format!("{addr}:{FENCE_PORT}");
        let (stop_t, records_t) = (Arc::clone(&stop), Arc::clone(&records));
        let thread = std::thread::spawn(move || {
            // setns(CLONE_NEWNET) moves only this thread into the namespace.
            let listener = (|| -> Result<TcpListener> {
                let f = fs::File::open(&ns_path)?;
                // SAFETY: setns on an open namespace file descriptor.
                if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    bail!("setns: {}", std::io::Error::last_os_error());
                }
                let l = TcpListener::bind(&addr).with_context(|| format!("binding {addr}"))?;
                l.set_nonblocking(true)?;
                Ok(l)
            })();
            let listener = match listener {
                Ok(l) => {
                    let _ = ready_tx.send(Ok(()));
                    l
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let mut logf = fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)
                .ok();
            while !stop_t.load(Ordering::SeqCst) {
                let (stream, peer) = match listener.accept() {
                    Ok(c) => c,
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(50));
                        continue;
                    }
                };
                let _ = stream.set_nonblocking(false);
                let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
                let mut line = String::new();
                let _ = BufReader::new(&stream).read_line(&mut line);
                let reply = match line.trim().parse::<u32>() {
                    Ok(id) => match switches.iter().find(|(n, _)| *n == id) {
                        Some((_, sw)) => {
                            let killed = kill_qemu(&sw.pidfile, &sw.name);
                            let at_ms = now_ms();
                            if let Some(f) = logf.as_mut() {
                                let _ = writeln!(
                                    f,
                                    "{at_ms} fence node {id} asked by {}: {}",
                                    peer.ip(),
                                    match killed {
                                        Some(pid) => format!("qemu {pid} killed"),
                                        None => "qemu already dead".into(),
                                    }
                                );
                            }
                            records_t
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .push(FenceRecord {
                                    at_ms,
                                    nodeid: id,
                                    from: peer.ip().to_string(),
                                    killed_pid: killed,
                                });
                            if verified_qemu_pid(&sw.pidfile, &sw.name).is_none() {
                                format!("OK dead {id}")
                            } else {
                                format!("ERR node {id} still alive")
                            }
                        }
                        None => format!("ERR no node {id}"),
                    },
                    Err(_) => "ERR bad request".to_owned(),
                };
                let mut stream = stream;
                let _ = stream.write_all(format!("{reply}\n").as_bytes());
            }
        });
        ready_rx
            .recv()
            .context("fence service thread died")?
            .context("starting the fence service")?;
        Ok(FenceServer {
            stop,
            records,
            thread: Some(thread),
        })
    }

    pub fn records(&self) -> Vec<FenceRecord> {
        self.records
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Drop for FenceServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
