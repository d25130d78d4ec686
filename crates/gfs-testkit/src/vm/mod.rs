//! The real-kernel tier: a cluster of QEMU VMs running Debian's kernel with its real gfs2 and
//! dlm modules, corosync, dlm_controld and the freshly built gfs_controld, on one shared disk.
//!
//! * Each VM boots the host's kernel with a small initramfs ([`initramfs`]) that mounts the
//!   host's `/` read-only over virtio-9p and hands over to `gfs_vm_agent` ([`agent`]), so the
//!   guests run the host's `target/release` binaries; writable places are tmpfs and overlays.
//! * TCG only (`-accel tcg,tb-size=256`): this machine's KVM cannot boot a distro kernel.
//! * Networking: one namespace per run with a bridge and one tap per VM; the only host
//!   address is the fence service's, on the bridge inside the namespace. Nothing leaves.
//! * One raw disk shared by every VM (`file.locking=off`, `share-rw=on`), `/dev/vda` inside.
//! * Everything a node logs (kernel log, uevents, daemons, console) lands in its directory
//!   of the run's artifact directory on the host as it happens, so it survives a kill.
//! * Fencing is a power switch: the host service kills the victim's qemu.

pub mod agent;
pub mod conn;
pub mod evidence;
pub mod host;
pub mod initramfs;
pub mod proto;
pub mod workload;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

use crate::now_ms;
use conn::AgentConn;
use host::{FenceServer, MachineLock, PowerSwitch};
use proto::{Op, Reply};

/// Corosync's token under TCG on two loaded cores: 3000 ms held in every run of the research.
pub const TOKEN_MS: u32 = 3000;
pub const CLUSTER: &str = "vmc";
pub const FS: &str = "gfs0";
pub const MOUNTPOINT: &str = "/mnt/gfs";
pub const DEVICE: &str = "/dev/vda";

/// How gfs2 recovers journals in the VMs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DlmMode {
    /// `dlm_controld --enable_fscontrol 1`: `recover_callbacks=0`, the kernel asks userspace
    /// (gfs_controld) to block, replay and unblock.
    DaemonManaged,
    /// dlm_controld as shipped (`recover_callbacks=1`): the kernel recovers by itself.
    KernelManaged,
}

#[derive(Clone, Debug)]
pub struct VmOptions {
    pub nodes: u32,
    pub mem_mb: u32,
    pub subnet: String,
    /// Where gfs_controld, gfs_control and gfs_vm_agent are (the guests run them from here).
    pub bin_dir: PathBuf,
    /// Cache (initramfs) and artifact directories live under this.
    pub work_dir: PathBuf,
    pub dlm_mode: DlmMode,
}

impl Default for VmOptions {
    fn default() -> Self {
        let bin_dir = release_bin_dir();
        let work_dir = std::env::var_os("GFS_VM_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| bin_dir.parent().unwrap_or(&bin_dir).join("vm"));
        VmOptions {
            nodes: 3,
            mem_mb: 640,
            subnet: "10.78.0".into(),
            bin_dir,
            work_dir,
            dlm_mode: DlmMode::DaemonManaged,
        }
    }
}

/// The release binaries: `GFS_BIN_DIR`, else `target/release` next to the running
/// executable's profile directory (tests run from `target/<profile>/deps`).
pub fn release_bin_dir() -> PathBuf {
    let dir = crate::cluster::bin_dir();
    if std::env::var_os("GFS_BIN_DIR").is_some() {
        return dir;
    }
    dir.parent().map(|t| t.join("release")).unwrap_or(dir)
}

/// Skips (returns false) when the machine cannot run the VM tier, but panics under CI,
/// where a skipped test would hide that nothing was tested.
pub fn require_prerequisites(test: &str, bin_dir: &Path) -> bool {
    match host::missing_prerequisite(bin_dir) {
        None => true,
        Some(why) if std::env::var_os("CI").is_some() => {
            panic!("{test}: cannot run the VM tier under CI: {why}")
        }
        Some(why) => {
            eprintln!("{test}: skipped: {why}");
            false
        }
    }
}

/// What runs in one guest.
#[derive(Default)]
struct Node {
    conn: Option<AgentConn>,
    /// Guest service name → pid (in the guest).
    services: BTreeMap<String, u32>,
    /// host time − guest wall time, microseconds (last measured).
    clock_offset_us: i64,
    booted_at_ms: u64,
}

pub struct VmCluster {
    pub opts: VmOptions,
    pub tag: String,
    pub run_dir: PathBuf,
    pub netns: String,
    pub kver: String,
    kernel: PathBuf,
    initrd: PathBuf,
    disk: PathBuf,
    nodes: BTreeMap<u32, Node>,
    fence: Option<FenceServer>,
    pub dlm_mode: DlmMode,
    /// Seconds from the first qemu start to every agent answering (the last full boot).
    pub boot_secs: f64,
    /// Seconds from the first qemu start to a quorate cluster with every daemon synced.
    pub up_secs: f64,
    _lock: MachineLock,
}

impl VmCluster {
    /// Boots the cluster: VMs, corosync (quorate), dlm_controld, a fresh gfs2 on the shared
    /// disk, and gfs_controld synced on every node.
    pub fn start(opts: VmOptions) -> Result<VmCluster> {
        let lock = MachineLock::acquire()?;
        host::reap_abandoned();
        let (kver, kernel) = initramfs::find_kernel()?;
        let initrd = initramfs::ensure(&opts.work_dir.join("cache"), &kver)?;
        let tag = format!("{}", std::process::id());
        let stamp = Command::new("date")
            .arg("+%Y%m%d-%H%M%S")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default();
        let runs = opts.work_dir.join("runs");
        prune_runs(&runs, 8);
        let run_dir = runs.join(format!("{stamp}-{tag}"));
        fs::create_dir_all(&run_dir)?;
        host::register(&tag, &run_dir)?;
        let netns = host::netns_name(&tag);
        let disk = run_dir.join("shared.img");
        let dlm_mode = opts.dlm_mode;
        let mut c = VmCluster {
            opts,
            tag,
            run_dir,
            netns,
            kver,
            kernel,
            initrd,
            disk,
            nodes: BTreeMap::new(),
            fence: None,
            dlm_mode,
            boot_secs: 0.0,
            up_secs: 0.0,
            _lock: lock,
        };
        c.bring_up()
            .with_context(|| format!("bringing up the VM cluster\n{}", c.artifacts_note()))?;
        Ok(c)
    }

    fn bring_up(&mut self) -> Result<()> {
        let n = self.opts.nodes;
        {
            let f = fs::File::create(&self.disk)?;
            f.set_len(1 << 30)?; // sparse
        }
        host::create_network(&self.netns, n, &self.opts.subnet)?;
        let switches = (1..=n)
            .map(|id| {
                (
                    id,
                    PowerSwitch {
                        pidfile: self.pidfile(id),
                        name: host::qemu_name(&self.tag, id),
                    },
                )
            })
            .collect();
        self.fence = Some(FenceServer::start(
            &self.netns,
            &format!("{}.254", self.opts.subnet),
            switches,
            self.run_dir.join("fence-service.log"),
        )?);
        let t0 = Instant::now();
        for id in 1..=n {
            self.launch_qemu(id)?;
        }
        for id in 1..=n {
            self.connect_agent(id, Duration::from_secs(300))?;
        }
        self.boot_secs = t0.elapsed().as_secs_f64();
        for id in 1..=n {
            self.start_corosync(id)?;
        }
        self.wait_quorate(&(1..=n).collect::<Vec<_>>(), Duration::from_secs(120))?;
        for id in 1..=n {
            self.start_dlm_controld(id)?;
        }
        self.mkfs()?;
        for id in 1..=n {
            self.start_gfs_controld(id)?;
        }
        self.wait_daemons_synced(&(1..=n).collect::<Vec<_>>(), Duration::from_secs(120))?;
        self.up_secs = t0.elapsed().as_secs_f64();
        Ok(())
    }

    // ----- paths ---------------------------------------------------------------------------

    pub fn node_dir(&self, id: u32) -> PathBuf {
        self.run_dir.join(format!("node{id}"))
    }

    fn pidfile(&self, id: u32) -> PathBuf {
        self.node_dir(id).join("qemu.pid")
    }

    /// qemu's end of the agent port. Short (unix socket paths are limited to 108 bytes).
    fn ctl_socket(&self, id: u32) -> PathBuf {
        Path::new(host::REGISTRY).join(format!("{}-n{id}.sock", self.tag))
    }

    /// qemu's QMP monitor of node `id` (disk throttling).
    fn qmp_socket(&self, id: u32) -> PathBuf {
        Path::new(host::REGISTRY).join(format!("{}-n{id}.qmp", self.tag))
    }

    /// A host binary as the guests see it (through the host root: the build may live under a
    /// directory the guest covers with tmpfs, such as /tmp).
    pub fn bin(&self, name: &str) -> String {
        format!(
            "{}{}",
            agent::HOST_ROOT,
            self.opts.bin_dir.join(name).display()
        )
    }

    /// Where to look when something failed.
    pub fn artifacts_note(&self) -> String {
        format!(
            "VM artifacts (per node: console.log, kmsg.log, uevents.log, gfs_controld.log, \
             dlm_controld.log, corosync.log, fence.log): {}",
            self.run_dir.display()
        )
    }

    // ----- VMs -----------------------------------------------------------------------------

    fn launch_qemu(&mut self, id: u32) -> Result<()> {
        let dir = self.node_dir(id);
        fs::create_dir_all(&dir)?;
        let _ = fs::remove_file(self.pidfile(id));
        let _ = fs::remove_file(self.ctl_socket(id));
        let _ = fs::remove_file(self.qmp_socket(id));
        let subnet = &self.opts.subnet;
        let append = format!(
            "console=ttyS0 loglevel=4 panic=-1 rdinit=/init gfsvm.agent={} gfsvm.node={id} \
             gfsvm.nodes={} gfsvm.subnet={subnet} gfsvm.host={subnet}.254",
            // Run by the initramfs, before the agent covers anything: the host path.
            self.opts.bin_dir.join("gfs_vm_agent").display(),
            self.opts.nodes
        );
        let args: Vec<String> = vec![
            "netns".into(),
            "exec".into(),
            self.netns.clone(),
            "qemu-system-x86_64".into(),
            "-name".into(),
            host::qemu_name(&self.tag, id),
            "-machine".into(),
            "q35".into(),
            // tb-size caps TCG's translation cache: the default 1 GiB let RSS pass 1.5 GB.
            "-accel".into(),
            "tcg,tb-size=256".into(),
            "-cpu".into(),
            "max".into(),
            "-smp".into(),
            "1".into(),
            "-m".into(),
            format!("{}M", self.opts.mem_mb),
            "-nodefaults".into(),
            "-no-user-config".into(),
            "-display".into(),
            "none".into(),
            "-vga".into(),
            "none".into(),
            "-fsdev".into(),
            "local,id=root,path=/,security_model=none,readonly=on,multidevs=remap".into(),
            "-device".into(),
            "virtio-9p-pci,fsdev=root,mount_tag=hostroot".into(),
            "-fsdev".into(),
            format!(
                "local,id=logs,path={},security_model=none,multidevs=remap",
                dir.display()
            ),
            "-device".into(),
            format!("virtio-9p-pci,fsdev=logs,mount_tag={}", proto::LOG_TAG),
            "-chardev".into(),
            format!(
                "file,id=con,path={},append=on",
                dir.join("console.log").display()
            ),
            "-serial".into(),
            "chardev:con".into(),
            "-device".into(),
            "virtio-serial-pci".into(),
            "-chardev".into(),
            format!(
                "socket,id=ctl,path={},server=on,wait=off",
                self.ctl_socket(id).display()
            ),
            "-device".into(),
            format!("virtserialport,name={},chardev=ctl", proto::PORT_NAME),
            "-netdev".into(),
            format!("tap,id=n0,ifname=tap{id},script=no,downscript=no"),
            "-device".into(),
            format!("virtio-net-pci,netdev=n0,mac=52:54:00:78:00:{id:02x}"),
            "-drive".into(),
            format!(
                "file={},format=raw,if=none,id=shared,cache=none,aio=threads,file.locking=off",
                self.disk.display()
            ),
            "-device".into(),
            "virtio-blk-pci,drive=shared,share-rw=on,serial=gfsshared".into(),
            "-qmp".into(),
            format!("unix:{},server=on,wait=off", self.qmp_socket(id).display()),
            "-no-reboot".into(),
            "-kernel".into(),
            self.kernel.display().to_string(),
            "-initrd".into(),
            self.initrd.display().to_string(),
            "-append".into(),
            append,
            "-pidfile".into(),
            self.pidfile(id).display().to_string(),
            "-daemonize".into(),
        ];
        let out = Command::new("ip")
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .context("starting qemu")?;
        if !out.status.success() {
            bail!(
                "qemu for node {id} did not start: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let node = self.nodes.entry(id).or_default();
        node.conn = None;
        node.services.clear();
        node.booted_at_ms = now_ms();
        Ok(())
    }

    fn connect_agent(&mut self, id: u32, timeout: Duration) -> Result<()> {
        let socket = self.ctl_socket(id);
        let deadline = Instant::now() + timeout;
        while !socket.exists() {
            if Instant::now() > deadline {
                bail!("node {id}: no agent socket {}", socket.display());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let conn = AgentConn::connect(&socket)?;
        conn.wait_ready(deadline.saturating_duration_since(Instant::now()))
            .with_context(|| format!("node {id} did not boot"))?;
        self.nodes.entry(id).or_default().conn = Some(conn);
        self.measure_clock(id)?;
        Ok(())
    }

    /// Is node `id`'s qemu running (pid file and command line)?
    pub fn vm_alive(&self, id: u32) -> bool {
        host::verified_qemu_pid(&self.pidfile(id), &host::qemu_name(&self.tag, id)).is_some()
    }

    pub fn qemu_pid(&self, id: u32) -> Option<i32> {
        host::verified_qemu_pid(&self.pidfile(id), &host::qemu_name(&self.tag, id))
    }

    /// kill -9 node `id`'s qemu (a power failure). Returns the host time of the kill.
    pub fn kill_vm(&mut self, id: u32) -> Result<u64> {
        let at = now_ms();
        host::kill_qemu(&self.pidfile(id), &host::qemu_name(&self.tag, id))
            .ok_or_else(|| anyhow!("node {id}'s qemu is not running"))?;
        if let Some(node) = self.nodes.get_mut(&id) {
            node.conn = None;
            node.services.clear();
        }
        Ok(at)
    }

    /// Boots a killed (or fenced) node again and brings its services back: it rejoins
    /// corosync, the DLM (dlm_controld) and the daemon group.
    pub fn restart_vm(&mut self, id: u32) -> Result<()> {
        if self.vm_alive(id) {
            bail!("node {id} is still running");
        }
        self.launch_qemu(id)?;
        self.connect_agent(id, Duration::from_secs(300))?;
        self.start_corosync(id)?;
        let all = self.alive_nodes();
        self.wait_quorate(&all, Duration::from_secs(120))?;
        self.start_dlm_controld(id)?;
        self.start_gfs_controld(id)?;
        self.wait_daemons_synced(&all, Duration::from_secs(120))?;
        Ok(())
    }

    /// Power-cycles node `id`: kills its qemu, waits until the survivors have fenced it, and
    /// boots it again. Fencing is a power switch that kills whatever qemu runs as that node,
    /// so booting it before the fence lands would have the fence kill the new instance (as
    /// a real power fence would).
    pub fn power_cycle(&mut self, id: u32) -> Result<()> {
        let at = self.kill_vm(id)?;
        let fenced = self.wait_until(
            &format!("node {id} to be fenced"),
            Duration::from_secs(90),
            || {
                self.fence_records()
                    .iter()
                    .any(|f| f.nodeid == id && f.at_ms >= at)
            },
        );
        if let Err(e) = fenced {
            eprintln!("vm: {e:#}; booting node {id} again anyway");
        }
        self.restart_vm(id)
    }

    pub fn fence_records(&self) -> Vec<host::FenceRecord> {
        self.fence.as_ref().map(|f| f.records()).unwrap_or_default()
    }

    // ----- talking to guests -----------------------------------------------------------------

    fn conn(&self, id: u32) -> Result<&AgentConn> {
        self.nodes
            .get(&id)
            .and_then(|n| n.conn.as_ref())
            .ok_or_else(|| anyhow!("node {id} is not running"))
    }

    /// Runs `cmd` with bash in node `id`; its exit status and output.
    pub fn sh_rc(&self, id: u32, cmd: &str, timeout: Duration) -> Result<(i32, String)> {
        let reply = self.conn(id)?.request(
            Op::Sh {
                cmd: cmd.to_owned(),
                timeout_ms: timeout.as_millis() as u64,
            },
            timeout + Duration::from_secs(15),
        )?;
        Ok((reply.rc, reply.out))
    }

    /// Runs `cmd` in node `id` (60 s at most); fails unless it exits 0.
    pub fn sh(&self, id: u32, cmd: &str) -> Result<String> {
        self.sh_timeout(id, cmd, Duration::from_secs(60))
    }

    pub fn sh_timeout(&self, id: u32, cmd: &str, timeout: Duration) -> Result<String> {
        let (rc, out) = self.sh_rc(id, cmd, timeout)?;
        if rc != 0 {
            bail!("node {id}: `{cmd}` exited {rc}: {}", out.trim());
        }
        Ok(out)
    }

    /// Starts `cmd` in the background in node `id`, output to `log` in its log directory.
    pub fn spawn(&self, id: u32, cmd: &str, log: &str) -> Result<u32> {
        let reply: Reply = self.conn(id)?.request(
            Op::Spawn {
                cmd: cmd.to_owned(),
                log: log.to_owned(),
            },
            Duration::from_secs(30),
        )?;
        reply
            .pid
            .ok_or_else(|| anyhow!("node {id}: spawn failed: {}", reply.out))
    }

    /// Measures host time − guest wall time for node `id` (TCG guests' clocks drift).
    pub fn measure_clock(&mut self, id: u32) -> Result<i64> {
        let t0 = host_us();
        let reply = self.conn(id)?.request(Op::Clock, Duration::from_secs(20))?;
        let t1 = host_us();
        let guest = reply.wall_us.unwrap_or(0) as i64;
        let offset = (t0 as i64 + t1 as i64) / 2 - guest;
        if let Some(n) = self.nodes.get_mut(&id) {
            n.clock_offset_us = offset;
        }
        Ok(offset)
    }

    /// A guest wall-clock time (seconds, as in the logs) on the host's clock (unix ms).
    pub fn host_ms(&self, id: u32, guest_secs: f64) -> u64 {
        let offset = self.nodes.get(&id).map_or(0, |n| n.clock_offset_us);
        ((guest_secs * 1e6) as i64 + offset).max(0) as u64 / 1000
    }

    /// Node `id`'s log `name` (kmsg.log, uevents.log, gfs_controld.log, ...), read on the host.
    pub fn log(&self, id: u32, name: &str) -> String {
        fs::read_to_string(self.node_dir(id).join(name)).unwrap_or_default()
    }

    // ----- services ----------------------------------------------------------------------

    fn corosync_conf(&self) -> String {
        let mut nodes = String::new();
        for id in 1..=self.opts.nodes {
            nodes.push_str(&format!(
                "    node {{\n        ring0_addr: {}.{id}\n        nodeid: {id}\n        name: node{id}\n    }}\n",
                self.opts.subnet
            ));
        }
        format!(
            "totem {{\n    version: 2\n    cluster_name: {CLUSTER}\n    transport: knet\n    \
             crypto_cipher: none\n    crypto_hash: none\n    token: {TOKEN_MS}\n}}\n\
             quorum {{\n    provider: corosync_votequorum\n}}\n\
             logging {{\n    to_logfile: yes\n    logfile: {}/corosync.log\n    to_syslog: no\n    \
             to_stderr: no\n    timestamp: hires\n}}\n\
             nodelist {{\n{nodes}}}\n",
            proto::LOG_DIR
        )
    }

    fn start_corosync(&mut self, id: u32) -> Result<()> {
        let conf = self.corosync_conf();
        self.sh(
            id,
            &format!(
                "mkdir -p /etc/corosync /var/lib/corosync /var/log/corosync && cat > /etc/corosync/corosync.conf <<'EOF'\n{conf}EOF"
            ),
        )?;
        let pid = self.spawn(id, "exec corosync -f", "corosync.out")?;
        self.nodes
            .entry(id)
            .or_default()
            .services
            .insert("corosync".into(), pid);
        self.sh_timeout(
            id,
            "for i in $(seq 1 150); do corosync-cfgtool -s >/dev/null 2>&1 && exit 0; sleep 0.2; done; exit 1",
            Duration::from_secs(60),
        )
        .context("corosync did not start")?;
        Ok(())
    }

    fn wait_quorate(&self, ids: &[u32], timeout: Duration) -> Result<()> {
        let n = ids.len();
        self.wait_until("corosync quorate with every running node", timeout, || {
            ids.iter().all(|&id| {
                self.sh(id, "corosync-quorumtool -s")
                    .map(|out| {
                        out.lines()
                            .any(|l| l.starts_with("Quorate:") && l.contains("Yes"))
                            && out.lines().any(|l| {
                                l.starts_with("Nodes:") && l.trim().ends_with(&n.to_string())
                            })
                    })
                    .unwrap_or(false)
            })
        })
    }

    /// dlm_controld in the cluster's current [`DlmMode`]. Its fencing is off
    /// (`--enable_fencing 0`): gfs_controld's fence program is the cluster's only fencing, so
    /// nothing but gfs_controld (and, with fscontrol, its registration) orders DLM recovery
    /// after the survivors' `block=1`.
    fn start_dlm_controld(&mut self, id: u32) -> Result<()> {
        let mut cmd = String::from(
            "exec dlm_controld --foreground 1 --daemon_debug 1 --enable_fencing 0 --protocol tcp",
        );
        let want = match self.dlm_mode {
            DlmMode::DaemonManaged => {
                cmd.push_str(" --enable_fscontrol 1");
                "0"
            }
            DlmMode::KernelManaged => "1",
        };
        let pid = self.spawn(id, &cmd, "dlm_controld.log")?;
        self.nodes
            .entry(id)
            .or_default()
            .services
            .insert("dlm_controld".into(), pid);
        let rc = "/sys/kernel/config/dlm/cluster/recover_callbacks";
        self.sh_timeout(
            id,
            &format!(
                "for i in $(seq 1 150); do dlm_tool status >/dev/null 2>&1 && [ \"$(cat {rc} 2>/dev/null)\" = {want} ] && exit 0; sleep 0.2; done; \
                 echo \"recover_callbacks=$(cat {rc} 2>&1)\"; exit 1"
            ),
            Duration::from_secs(60),
        )
        .context("dlm_controld did not start")?;
        Ok(())
    }

    fn start_gfs_controld(&mut self, id: u32) -> Result<()> {
        self.sh(
            id,
            "printf '# VM test cluster: settings on the command line\\n' > /etc/gfsvm/gfs_controld.conf",
        )?;
        let cmd = format!(
            "exec {} --foreground --log_level=debug --fencing=/etc/gfsvm/fence --fence_retry=1s \
             --config=/etc/gfsvm/gfs_controld.conf",
            self.bin("gfs_controld")
        );
        let pid = self.spawn(id, &cmd, "gfs_controld.log")?;
        self.nodes
            .entry(id)
            .or_default()
            .services
            .insert("gfs_controld".into(), pid);
        Ok(())
    }

    /// The pid (in the guest) of a service the harness started.
    pub fn service_pid(&self, id: u32, name: &str) -> Option<u32> {
        self.nodes.get(&id)?.services.get(name).copied()
    }

    /// Sends `signal` (a name: STOP, CONT, TERM, KILL) to a service the harness started.
    pub fn signal_service(&self, id: u32, name: &str, signal: &str) -> Result<()> {
        let pid = self
            .service_pid(id, name)
            .ok_or_else(|| anyhow!("node {id} runs no {name}"))?;
        // The pid is checked against the program's name in the guest first.
        self.sh(
            id,
            &format!("grep -q {name} /proc/{pid}/cmdline && kill -{signal} {pid}"),
        )?;
        Ok(())
    }

    /// Stops a service and waits until it is gone.
    pub fn stop_service(&mut self, id: u32, name: &str) -> Result<()> {
        let Some(pid) = self.service_pid(id, name) else {
            return Ok(());
        };
        self.sh(
            id,
            &format!(
                "grep -q {name} /proc/{pid}/cmdline 2>/dev/null || exit 0; kill -TERM {pid}; \
                 for i in $(seq 1 100); do [ -d /proc/{pid} ] || exit 0; sleep 0.1; done; kill -KILL {pid}"
            ),
        )?;
        if let Some(n) = self.nodes.get_mut(&id) {
            n.services.remove(name);
        }
        Ok(())
    }

    /// Restarts dlm_controld and gfs_controld everywhere in `mode` (nothing may be mounted).
    pub fn set_dlm_mode(&mut self, mode: DlmMode) -> Result<()> {
        let ids: Vec<u32> = (1..=self.opts.nodes).collect();
        for &id in &ids {
            self.stop_service(id, "gfs_controld")?;
            self.stop_service(id, "dlm_controld")?;
        }
        self.dlm_mode = mode;
        for &id in &ids {
            self.start_dlm_controld(id)?;
        }
        for &id in &ids {
            self.start_gfs_controld(id)?;
        }
        self.wait_daemons_synced(&ids, Duration::from_secs(120))
    }

    /// `gfs_control --json ARGS` in node `id`.
    pub fn control(&self, id: u32, args: &str) -> Result<Value> {
        let out = self.sh(id, &format!("{} --json {args}", self.bin("gfs_control")))?;
        serde_json::from_str(&out).with_context(|| format!("gfs_control {args}: {out}"))
    }

    /// `gfs_control ARGS` in node `id`, as text.
    pub fn control_text(&self, id: u32, args: &str) -> Result<String> {
        self.sh(id, &format!("{} {args}", self.bin("gfs_control")))
    }

    pub fn wait_daemons_synced(&self, ids: &[u32], timeout: Duration) -> Result<()> {
        self.wait_until(
            "every gfs_controld synced with every member",
            timeout,
            || {
                ids.iter().all(|&id| {
                    self.control(id, "status")
                        .map(|s| {
                            s["synced"] == true
                                && s["members"].as_array().map(|m| m.len()) == Some(ids.len())
                        })
                        .unwrap_or(false)
                })
            },
        )
    }

    /// A fresh gfs2 on the shared disk, one journal per node.
    pub fn mkfs(&self) -> Result<()> {
        self.sh_timeout(
            1,
            &format!(
                "mkfs.gfs2 -O -p lock_dlm -t {CLUSTER}:{FS} -j {} -J 16 {DEVICE}",
                self.opts.nodes
            ),
            Duration::from_secs(120),
        )?;
        Ok(())
    }

    pub fn table(&self) -> String {
        format!("{CLUSTER}:{FS}")
    }

    /// `/sys/fs/gfs2/<table>`.
    pub fn sysfs(&self) -> String {
        format!("/sys/fs/gfs2/{}", self.table())
    }

    /// Mounts the filesystem on node `id` with `options` (`-o`), waiting up to `timeout`.
    pub fn mount(&self, id: u32, options: &str, timeout: Duration) -> Result<()> {
        let o = if options.is_empty() {
            String::new()
        } else {
            format!("-o {options}")
        };
        let secs = timeout.as_secs().max(1);
        self.sh_timeout(
            id,
            &format!(
                "mkdir -p {MOUNTPOINT} && timeout {secs} mount -t gfs2 {o} {DEVICE} {MOUNTPOINT}"
            ),
            timeout + Duration::from_secs(10),
        )
        .map(|_| ())
    }

    pub fn umount(&self, id: u32) -> Result<()> {
        self.sh_timeout(
            id,
            &format!("timeout 100 umount {MOUNTPOINT}"),
            Duration::from_secs(110),
        )
        .map(|_| ())
    }

    /// From /proc/mounts, which never touches the filesystem (a withdrawn or blocked one
    /// would hang `mountpoint`).
    pub fn is_mounted(&self, id: u32) -> bool {
        self.sh(id, &format!("grep -q ' {MOUNTPOINT} gfs2 ' /proc/mounts"))
            .is_ok()
    }

    /// `cat` of a lock_module file (block, jid, first, recover_done, recover_status, ...).
    pub fn lock_module(&self, id: u32, file: &str) -> Result<String> {
        Ok(self
            .sh(id, &format!("cat {}/lock_module/{file}", self.sysfs()))?
            .trim()
            .to_owned())
    }

    /// Polls `done` every 500 ms until it holds or `timeout` passes.
    pub fn wait_until(
        &self,
        what: &str,
        timeout: Duration,
        mut done: impl FnMut() -> bool,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if done() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("timed out after {timeout:?} waiting for {what}");
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Mounts read-write, one node after the other, wherever it is not mounted yet.
    pub fn mount_all(&self) -> Result<()> {
        for id in 1..=self.opts.nodes {
            if !self.is_mounted(id) {
                self.mount(id, "", Duration::from_secs(120))
                    .with_context(|| format!("mounting on node {id}"))?;
            }
        }
        Ok(())
    }

    /// Back to a known state after a scenario: every VM running with its services, nothing
    /// mounted. A node that cannot unmount (a hung mount or recovery) is killed and booted
    /// again.
    pub fn reset(&mut self) -> Result<()> {
        for id in 1..=self.opts.nodes {
            if !self.vm_alive(id) {
                self.nodes.entry(id).or_default().conn = None;
                self.restart_vm(id)?;
            }
        }
        // Only now, with every node back: corosync refuses to take a vote away while that
        // would leave the cluster inquorate (CS_ERR_INVALID_PARAM).
        self.restore_votes()?;
        for id in 1..=self.opts.nodes {
            // A scenario may have left a daemon stopped or a disk throttled.
            let _ = self.signal_service(id, "gfs_controld", "CONT");
            let _ = self.throttle_disk(id, None);
        }
        for id in 1..=self.opts.nodes {
            if self.is_mounted(id) && self.umount(id).is_err() {
                eprintln!("vm: node {id} cannot unmount: restarting it");
                self.power_cycle(id)?;
            }
        }
        Ok(())
    }

    /// Gives node `id` `votes` corosync votes (`corosync-quorumtool -v`): what an operator
    /// (or a quorum device) does to keep a shrinking cluster quorate.
    pub fn set_votes(&self, id: u32, votes: u32) -> Result<()> {
        self.sh(id, &format!("corosync-quorumtool -n {id} -v {votes}"))?;
        Ok(())
    }

    /// Back to one vote per node and as many expected votes as nodes, so that any single
    /// failure keeps the cluster quorate again. A node given more votes raised the
    /// cluster's expected votes, which taking the votes back does not lower.
    pub fn restore_votes(&self) -> Result<()> {
        let n = self.opts.nodes;
        let Some(&any) = self.alive_nodes().first() else {
            return Ok(());
        };
        let status = self.sh(any, "corosync-quorumtool -s")?;
        let field = |name: &str| -> Option<u32> {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split(':').nth(1))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
        };
        if field("Expected votes") == Some(n) && field("Total votes") == Some(n) {
            return Ok(());
        }
        for id in self.alive_nodes() {
            self.set_votes(id, 1)
                .with_context(|| format!("restoring node {id}'s vote"))?;
        }
        self.sh(any, &format!("corosync-quorumtool -e {n}"))
            .context("restoring the expected votes")?;
        Ok(())
    }

    /// Throttles node `id`'s shared disk through qemu's monitor (`block_set_io_throttle`):
    /// `Some((iops, bytes per second))`, or `None` to lift it.
    pub fn throttle_disk(&self, id: u32, limit: Option<(u64, u64)>) -> Result<()> {
        use std::io::{BufRead, BufReader, Write};
        let (iops, bps) = limit.unwrap_or((0, 0));
        let stream = std::os::unix::net::UnixStream::connect(self.qmp_socket(id))
            .with_context(|| format!("node {id}: qemu's monitor"))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut reader = BufReader::new(stream.try_clone()?);
        let mut writer = stream;
        // Skips the greeting and asynchronous events up to the command's own answer.
        let mut answer = || -> Result<Value> {
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line)? == 0 {
                    bail!("node {id}: qemu's monitor closed");
                }
                let v: Value = serde_json::from_str(&line)?;
                if v.get("return").is_some() {
                    return Ok(v);
                }
                if let Some(e) = v.get("error") {
                    bail!("node {id}: qemu's monitor: {e}");
                }
            }
        };
        writeln!(writer, r#"{{"execute":"qmp_capabilities"}}"#)?;
        answer()?;
        let cmd = serde_json::json!({
            "execute": "block_set_io_throttle",
            "arguments": {
                "device": "shared",
                "bps": bps, "bps_rd": 0, "bps_wr": 0,
                "iops": iops, "iops_rd": 0, "iops_wr": 0,
            }
        });
        writeln!(writer, "{cmd}")?;
        answer()?;
        Ok(())
    }

    /// `fsck.gfs2 -n` on node `id` (nothing may be mounted anywhere): exit status and output.
    pub fn fsck(&self, id: u32) -> Result<(i32, String)> {
        // Also kept in the node's log directory (fsck.log, appended per run).
        self.sh_rc(
            id,
            &format!(
                "fsck.gfs2 -n {DEVICE} > /tmp/fsck.out 2>&1; rc=$?; \
                 {{ echo \"== $(date +%s.%N) fsck.gfs2 -n: exit $rc\"; cat /tmp/fsck.out; }} >> {}/fsck.log; \
                 cat /tmp/fsck.out; exit $rc",
                proto::LOG_DIR
            ),
            Duration::from_secs(300),
        )
    }

    pub fn alive_nodes(&self) -> Vec<u32> {
        (1..=self.opts.nodes)
            .filter(|&id| self.vm_alive(id))
            .collect()
    }
}

fn host_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Keeps the newest `keep` run directories (their logs); older ones go.
fn prune_runs(runs: &Path, keep: usize) {
    let mut dirs: Vec<PathBuf> = fs::read_dir(runs)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    while dirs.len() >= keep {
        let old = dirs.remove(0);
        let _ = fs::remove_dir_all(old);
    }
}

impl Drop for VmCluster {
    fn drop(&mut self) {
        for id in 1..=self.opts.nodes {
            if let Some(n) = self.nodes.get_mut(&id) {
                n.conn = None;
            }
            host::kill_qemu(&self.pidfile(id), &host::qemu_name(&self.tag, id));
            let _ = fs::remove_file(self.ctl_socket(id));
            let _ = fs::remove_file(self.qmp_socket(id));
        }
        self.fence = None;
        host::delete_network(&self.netns);
        host::unregister(&self.tag);
        // The disk image is large and worthless once the run is over; the logs stay.
        if std::env::var_os("GFS_VM_KEEP_DISK").is_none() {
            let _ = fs::remove_file(&self.disk);
        }
    }
}
