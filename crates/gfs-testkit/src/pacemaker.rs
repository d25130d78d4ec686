//! A real pacemaker cluster in network namespaces, running gfs_controld as the OCF clone with
//! `fencing=pacemaker`: the pacemaker tier of `make check` (`tests/pacemaker.rs`).
//!
//! Each node is a *holder* process that owns the node's network, mount and UTS namespaces:
//! private `/run`, `/dev/shm`, `/var/lib/{corosync,pacemaker}`, the node's log directory bound
//! over `/var/log/pacemaker`, the cluster's `/etc/corosync` and `/etc/hosts`, and a killall
//! that only sees the node. Every process of the node (corosync, pacemakerd and its daemons,
//! the kernel simulator, the dlm_controld double, and through pacemaker the resource agents and
//! gfs_controld) enters those namespaces with nsenter, without CAP_SYS_BOOT in its bounding
//! set: pacemaker's panic path calls reboot(2), which from the host's PID namespace would
//! reboot the shared machine.
//!
//! Fencing is pacemaker's: a stonith device whose agent (`pacemaker/fence_netns`, installed
//! as `/usr/sbin/fence_gfstest_<tag>`) kills every process in the victim's network namespace,
//! found by namespace identity only. The OCF agent is `packaging/ocf/gfs_controld`, installed
//! under the provider `gfs-controld-<tag>` so that runs never share (or remove) another's.
//! Both are removed on drop, and a later run removes what a killed run left behind.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

use crate::cluster::{bin_dir, corosync_conf, create_network, run};

const FENCE_AGENT: &str = include_str!("../pacemaker/fence_netns");
const KILLALL: &str = include_str!("../pacemaker/killall_netns");
const OCF_AGENT: &str = include_str!("../../../packaging/ocf/gfs_controld");

/// The clone's primitive and clone ids.
pub const RESOURCE: &str = "gfs";
pub const CLONE: &str = "gfs-clone";

/// Where a node's kernel simulator serves its sysfs tree, inside the node's private `/run`:
/// it vanishes with the node when the node is fenced, as `/sys/fs/gfs2` does.
const NODE_SYSFS: &str = "/run/gfs2";
const NODE_CONFIGFS: &str = "/run/gfs2-configfs";
/// The daemon's test-only `uevent_test_socket`, in each node's private /run (one clone
/// parameter serves every node): the daemon takes netlink uevents only from the kernel, and the
/// kernel simulator is a process.
const NODE_UEVENT_SOCKET: &str = "/run/gfs_controld-uevents.sock";

/// Runs of this tier in use: one file per tag holding the owner's PID (see [`reap_abandoned`]).
const REGISTRY: &str = "/run/gfs-testkit-pacemaker";

/// Every process of a node runs with this prefix: no CAP_SYS_BOOT, so no reboot(2).
const SAFE: [&str; 3] = ["--bounding-set", "-sys_boot", "--"];

#[derive(Clone, Debug)]
pub struct PacemakerOptions {
    pub nodes: u32,
    pub cluster_name: String,
    /// How long one journal replay takes in the kernel simulators.
    pub replay_ms: u64,
    /// Pacemaker's stop timeout for the clone (what a stop with mounts waits for).
    pub stop_timeout_s: u32,
}

impl Default for PacemakerOptions {
    fn default() -> Self {
        PacemakerOptions {
            nodes: 3,
            cluster_name: "pcmktest".into(),
            replay_ms: 300,
            stop_timeout_s: 20,
        }
    }
}

/// Why this machine cannot run the tier, if it cannot.
pub fn missing_prerequisite() -> Option<String> {
    if let Some(why) = crate::cluster::missing_prerequisite() {
        return Some(why);
    }
    for tool in [
        "pacemakerd",
        "cibadmin",
        "crm_attribute",
        "crm_mon",
        "crm_resource",
        "stonith_admin",
        "setpriv",
    ] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            return Some(format!(
                "{tool} is not installed (apt-get install pacemaker pacemaker-cli-utils)"
            ));
        }
    }
    let hacluster = Command::new("id")
        .arg("hacluster")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !hacluster {
        return Some("user hacluster is missing (the pacemaker package creates it)".into());
    }
    None
}

/// Skips (returns false) when the machine cannot run the tier, but panics under CI, where a
/// skipped test would hide that nothing was tested.
pub fn require_prerequisites(test: &str) -> bool {
    match missing_prerequisite() {
        None => true,
        Some(why) if std::env::var_os("CI").is_some() => {
            panic!("{test}: cannot run the pacemaker tier under CI: {why}")
        }
        Some(why) => {
            eprintln!("{test}: skipped: {why}");
            false
        }
    }
}

/// One line of the fence agent's log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FenceRecord {
    pub at_ms: u64,
    /// The node whose fencer ran the agent.
    pub host: String,
    pub action: String,
    pub target: String,
    /// `ok killed=N`, `failed-on-purpose remaining=N`, `error ...`
    pub result: String,
}

impl FenceRecord {
    pub fn ok(&self) -> bool {
        self.result.starts_with("ok")
    }

    /// How many processes the agent killed (0 when the node was already off).
    pub fn killed(&self) -> u32 {
        self.result
            .split_whitespace()
            .find_map(|w| w.strip_prefix("killed=")?.parse().ok())
            .unwrap_or(0)
    }
}

pub struct PacemakerCluster {
    pub opts: PacemakerOptions,
    tag: String,
    pub dir: PathBuf,
    /// Every process this harness started (holders, corosync, pacemakerd, simulators), reaped
    /// on drop; fencing kills them by namespace, not through these handles.
    children: Vec<Child>,
    holders: BTreeMap<u32, u32>,
    fence_agent: PathBuf,
    ocf_dir: PathBuf,
    started: Instant,
    /// Keep the run's directory when dropped (a failed start).
    keep_logs: bool,
}

static RUNS: AtomicU32 = AtomicU32::new(0);

impl PacemakerCluster {
    /// Brings up the namespaces, corosync and pacemaker with the fence device, starts the
    /// kernel simulators, creates the gfs_controld clone and waits until every daemon sees
    /// every other.
    pub fn start(opts: PacemakerOptions) -> Result<PacemakerCluster> {
        reap_abandoned();
        let n = RUNS.fetch_add(1, Ordering::SeqCst);
        let tag = format!("p{}{}", std::process::id() % 10000, n);
        let dir = std::env::temp_dir().join(format!("gfs-pacemaker-{tag}"));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("fence/nodes"))?;
        fs::create_dir_all(REGISTRY)?;
        fs::write(
            Path::new(REGISTRY).join(&tag),
            format!("{}\n{}\n", std::process::id(), dir.display()),
        )?;
        let mut c = PacemakerCluster {
            fence_agent: PathBuf::from(format!("/usr/sbin/fence_gfstest_{tag}")),
            ocf_dir: PathBuf::from(format!("/usr/lib/ocf/resource.d/gfs-controld-{tag}")),
            opts,
            tag,
            dir,
            children: Vec::new(),
            holders: BTreeMap::new(),
            started: Instant::now(),
            keep_logs: false,
        };
        match c.bring_up() {
            Ok(()) => Ok(c),
            Err(e) => {
                // A start that fails under load is rare: keep what it left to read.
                c.keep_logs = true;
                Err(e.context(format!(
                    "what the resource agent and the fence agent wrote:\n{}",
                    c.agent_output()
                )))
            }
        }
    }

    fn bring_up(&mut self) -> Result<()> {
        let c = self;
        c.install_agents()?;
        c.write_configuration()?;
        create_network(&c.tag, c.opts.nodes)?;
        let ids: Vec<u32> = c.ids();
        for &id in &ids {
            c.boot(id)?;
            c.start_simulators(id)?;
            c.start_corosync(id)?;
        }
        c.wait_for("every node quorate", Duration::from_secs(60), |c| {
            ids.iter().all(|&id| {
                c.node_output(id, &["corosync-quorumtool", "-s"])
                    .map(|o| o.contains("Quorate:          Yes"))
                    .unwrap_or(false)
            })
        })?;
        for &id in &ids {
            c.start_pacemaker(id)?;
        }
        c.wait_for(
            "pacemaker online with a DC on every node",
            Duration::from_secs(120),
            |c| ids.iter().all(|&id| c.pacemaker_online(id, &ids)),
        )?;
        c.create_clone()?;
        c.wait_clone_started(&ids)?;
        c.wait_synced(&ids)
    }

    /// The agents' output lines that pacemaker logged on every node (the OCF agent's errors
    /// and warnings, the fence agent's), last 40.
    fn agent_output(&self) -> String {
        let mut lines: Vec<String> = self
            .ids()
            .into_iter()
            .flat_map(|id| {
                fs::read_to_string(self.pacemaker_log(id))
                    .unwrap_or_default()
                    .lines()
                    .filter(|l| l.contains("(log_op_output)") || l.contains("gfs_controld("))
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .collect();
        lines.sort();
        let skip = lines.len().saturating_sub(40);
        lines.split_off(skip).join("\n")
    }

    pub fn ids(&self) -> Vec<u32> {
        (1..=self.opts.nodes).collect()
    }

    pub fn netns(&self, id: u32) -> String {
        format!("{}n{id}", self.tag)
    }

    pub fn node_dir(&self, id: u32) -> PathBuf {
        self.dir.join(format!("n{id}"))
    }

    /// The node's pacemaker log (`/var/log/pacemaker/pacemaker.log` inside the node).
    pub fn pacemaker_log(&self, id: u32) -> PathBuf {
        self.node_dir(id).join("log/pacemaker.log")
    }

    /// gfs_controld's log on node `id` (the agent's `logfile`), across the node's restarts.
    pub fn daemon_log(&self, id: u32) -> PathBuf {
        self.node_dir(id).join("log/gfs_controld.log")
    }

    fn kernel_socket(&self, id: u32) -> PathBuf {
        self.node_dir(id).join("kernel.sock")
    }

    pub fn shared_disk(&self) -> PathBuf {
        self.dir.join("shared-disk")
    }

    fn fence_dir(&self) -> PathBuf {
        self.dir.join("fence")
    }

    /// Milliseconds since the cluster was started, for timelines.
    pub fn elapsed_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn install_agents(&self) -> Result<()> {
        let install = |path: &Path, text: &str| -> Result<()> {
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent)?;
            }
            // Written under a temporary name and renamed: pacemaker may list the directory.
            let tmp = path.with_extension("new");
            fs::write(&tmp, text)?;
            fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755))?;
            fs::rename(&tmp, path).with_context(|| format!("installing {}", path.display()))
        };
        install(&self.fence_agent, FENCE_AGENT)?;
        install(&self.ocf_dir.join("gfs_controld"), OCF_AGENT)?;
        let killall = self.dir.join("killall");
        fs::write(&killall, KILLALL)?;
        fs::set_permissions(&killall, fs::Permissions::from_mode(0o755))?;
        Ok(())
    }

    fn fence_device_xml(&self) -> String {
        let hosts: Vec<String> = self.ids().iter().map(|id| format!("node{id}")).collect();
        format!(
            r#"<primitive id="fence-netns" class="stonith" type="{agent}">
  <instance_attributes id="fence-netns-ia">
    <nvpair id="fence-netns-state_dir" name="state_dir" value="{state}"/>
    <nvpair id="fence-netns-hosts" name="pcmk_host_list" value="{hosts}"/>
  </instance_attributes>
  <operations><op id="fence-netns-monitor" name="monitor" interval="60s"/></operations>
</primitive>"#,
            agent = self
                .fence_agent
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            state = self.fence_dir().display(),
            hosts = hosts.join(" "),
        )
    }

    /// corosync.conf, /etc/hosts, and the first CIB every node boots with: without
    /// `dc-deadtime` the first DC election waits 20 s; every node reads the host's load
    /// average, so without `load-threshold` pacemaker throttles to one action at a time on a
    /// busy machine. No option that makes pacemaker panic (fence-reaction=panic,
    /// no-quorum-policy=suicide, watchdog fencing) is set.
    fn write_configuration(&self) -> Result<()> {
        let etc = self.dir.join("etc/corosync");
        fs::create_dir_all(etc.join("uidgid.d"))?;
        let mut conf = corosync_conf(&self.opts.cluster_name, self.opts.nodes);
        conf = conf.replace("to_logfile: no\n", "to_logfile: no\n    timestamp: hires\n");
        fs::write(etc.join("corosync.conf"), conf)?;
        let mut hosts = String::from("127.0.0.1 localhost\n");
        for id in self.ids() {
            hosts.push_str(&format!("10.77.0.{id} node{id}\n"));
        }
        fs::write(self.dir.join("etc/hosts"), hosts)?;

        let seed = self.dir.join("cib-seed.xml");
        let out = Command::new("cibadmin").arg("--empty").output()?;
        if !out.status.success() {
            bail!("cibadmin --empty: {}", String::from_utf8_lossy(&out.stderr));
        }
        fs::write(&seed, &out.stdout)?;
        for (name, value) in [
            ("dc-deadtime", "2s"),
            ("load-threshold", "1000%"),
            ("stonith-enabled", "true"),
            ("no-quorum-policy", "freeze"),
        ] {
            run_host(Command::new("crm_attribute").env("CIB_file", &seed).args([
                "--type",
                "crm_config",
                "--name",
                name,
                "--update",
                value,
            ]))?;
        }
        run_host(
            Command::new("cibadmin")
                .env("CIB_file", &seed)
                .args(["--create", "--scope", "resources", "--xml-text"])
                .arg(self.fence_device_xml()),
        )?;
        Ok(())
    }

    /// The holder: `ip netns exec` enters the node's network namespace, `unshare` makes the
    /// private mount and UTS namespaces, the shell sets them up and becomes `sleep`.
    pub fn boot(&mut self, id: u32) -> Result<()> {
        let d = self.node_dir(id);
        fs::create_dir_all(d.join("log"))?;
        // pacemaker's daemons log as hacluster into the node's /var/log/pacemaker.
        run(&format!(
            "chown hacluster:haclient {0} && chmod 0770 {0}",
            d.join("log").display()
        ))?;
        let dir = self.dir.display();
        let script = format!(
            "set -e
             hostname node{id}
             if [ -e /proc/sysrq-trigger ]; then mount --bind /dev/null /proc/sysrq-trigger; fi
             mount -t tmpfs -o mode=0755 pcmk-run /run
             mkdir -p /run/lock /run/crm /run/resource-agents /run/gfs_controld
             chown hacluster:haclient /run/crm
             mount -t tmpfs -o mode=1777 pcmk-shm /dev/shm
             mount -t tmpfs -o mode=0755 pcmk-corosync /var/lib/corosync
             mount -t tmpfs -o mode=0755 pcmk-pacemaker /var/lib/pacemaker
             for s in cib pengine blackbox cores; do
               mkdir -m 0750 /var/lib/pacemaker/$s; chown hacluster:haclient /var/lib/pacemaker/$s
             done
             if [ -d /var/lib/heartbeat ]; then mount -t tmpfs -o mode=0755 pcmk-hb /var/lib/heartbeat; fi
             install -o hacluster -g haclient -m 0600 {dir}/cib-seed.xml /var/lib/pacemaker/cib/cib.xml
             mount --bind {log} /var/log/pacemaker
             mount --bind {dir}/etc/corosync /etc/corosync
             mount --bind {dir}/etc/hosts /etc/hosts
             if [ -e /usr/bin/killall ]; then mount --bind {dir}/killall /usr/bin/killall; fi
             exec sleep infinity",
            log = d.join("log").display(),
        );
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.netns(id), "setpriv"])
            .args(SAFE)
            .args([
                "unshare",
                "-m",
                "-u",
                "--propagation",
                "private",
                "sh",
                "-c",
            ])
            .arg(script);
        let child = self.spawn(id, "holder", cmd)?;
        let pid = child.id();
        self.children.push(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default() != "sleep\n" {
            if Instant::now() > deadline {
                bail!(
                    "node {id}: the holder did not come up: {}",
                    fs::read_to_string(d.join("holder.log")).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let netns = fs::read_link(format!("/proc/{pid}/ns/net"))?
            .to_string_lossy()
            .into_owned();
        fs::write(
            self.fence_dir().join(format!("nodes/node{id}.netns")),
            &netns,
        )?;
        self.holders.insert(id, pid);
        Ok(())
    }

    /// The node's network namespace identity, `net:[inode]`.
    fn netns_id(&self, id: u32) -> Option<String> {
        fs::read_to_string(self.fence_dir().join(format!("nodes/node{id}.netns"))).ok()
    }

    /// A command run on node `id`: its namespaces, without CAP_SYS_BOOT.
    pub fn node_command(&self, id: u32, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let holder = self.holders.get(&id).copied().unwrap_or(0);
        let mut cmd = Command::new("nsenter");
        cmd.args(["-t", &holder.to_string(), "-n", "-m", "-u", "--wd=/"])
            .arg("setpriv")
            .args(SAFE)
            .arg(program);
        cmd
    }

    /// Runs `args` on node `id`; its stdout if it succeeded.
    pub fn node_output(&self, id: u32, args: &[&str]) -> Result<String> {
        let out = self
            .node_command(id, args[0])
            .args(&args[1..])
            .stdin(Stdio::null())
            .output()?;
        if !out.status.success() {
            bail!(
                "node {id}: {args:?} failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout).trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn spawn(&self, id: u32, what: &str, mut cmd: Command) -> Result<Child> {
        let log = || {
            fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.node_dir(id).join(format!("{what}.log")))
        };
        cmd.stdin(Stdio::null()).stdout(log()?).stderr(log()?);
        cmd.spawn()
            .with_context(|| format!("starting {what} on node {id}"))
    }

    /// The kernel simulator (sysfs at /run/gfs2 inside the node, on the cluster's shared disk)
    /// and the dlm_controld double on the node's `@dlmc_sock`.
    fn start_simulators(&mut self, id: u32) -> Result<()> {
        let socket = self.kernel_socket(id);
        let _ = fs::remove_file(&socket);
        let mut cmd = self.node_command(id, bin_dir().join("gfs_kernel_sim"));
        cmd.args(["serve", "--root", NODE_SYSFS, "--socket"])
            .arg(&socket)
            .arg("--replay-ms")
            .arg(self.opts.replay_ms.to_string())
            .arg("--shared")
            .arg(self.shared_disk())
            .args(["--configfs-root", NODE_CONFIGFS])
            .args(["--uevent-socket", NODE_UEVENT_SOCKET]);
        let child = self.spawn(id, "kernel", cmd)?;
        self.children.push(child);
        let mut cmd = self.node_command(id, bin_dir().join("gfs_dlm_sim"));
        cmd.arg("--socket=@dlmc_sock")
            .arg("--log")
            .arg(self.node_dir(id).join("dlm.jsonl"));
        let child = self.spawn(id, "dlm", cmd)?;
        self.children.push(child);
        self.wait_for("kernel simulator socket", Duration::from_secs(20), |c| {
            c.kernel_socket(id).exists()
        })?;
        self.wait_for("dlm_controld double", Duration::from_secs(20), |c| {
            c.node_output(id, &["grep", "-q", "@dlmc_sock", "/proc/net/unix"])
                .is_ok()
        })
    }

    fn start_corosync(&mut self, id: u32) -> Result<()> {
        let mut cmd = self.node_command(id, "corosync");
        cmd.arg("-f");
        let child = self.spawn(id, "corosync", cmd)?;
        self.children.push(child);
        Ok(())
    }

    fn start_pacemaker(&mut self, id: u32) -> Result<()> {
        // No syslog here: pacemaker logs to the node's file only. PCMK_fail_fast stays unset
        // (it panics).
        let mut cmd = self.node_command(id, "env");
        cmd.args([
            "PCMK_logfile=/var/log/pacemaker/pacemaker.log",
            "PCMK_logfacility=none",
            "PCMK_logpriority=info",
            "pacemakerd",
        ]);
        let child = self.spawn(id, "pacemakerd", cmd)?;
        self.children.push(child);
        Ok(())
    }

    /// `crm_mon -1` on node `id` shows a DC and every node of `ids` online.
    fn pacemaker_online(&self, id: u32, ids: &[u32]) -> bool {
        let Ok(out) = self.node_output(id, &["crm_mon", "-1"]) else {
            return false;
        };
        out.contains("Current DC: node")
            && ids
                .iter()
                .all(|n| online_list(&out).contains(&format!("node{n}")))
    }

    fn create_clone(&self) -> Result<()> {
        let bin = bin_dir();
        let args = format!(
            "--sysfs_root={NODE_SYSFS} --configfs_root={NODE_CONFIGFS} --fencing=pacemaker \
             --uevent_test_socket={NODE_UEVENT_SOCKET} --fence_retry=1s --fence_timeout=60s --log_level=debug"
        );
        let provider = self
            .ocf_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let xml = format!(
            r#"<clone id="{CLONE}">
  <meta_attributes id="{CLONE}-meta"><nvpair id="{CLONE}-interleave" name="interleave" value="true"/></meta_attributes>
  <primitive id="{RESOURCE}" class="ocf" provider="{provider}" type="gfs_controld">
    <instance_attributes id="{RESOURCE}-ia">
      <nvpair id="{RESOURCE}-daemon" name="daemon" value="{daemon}"/>
      <nvpair id="{RESOURCE}-gfs_control" name="gfs_control" value="{control}"/>
      <nvpair id="{RESOURCE}-logfile" name="logfile" value="/var/log/pacemaker/gfs_controld.log"/>
      <nvpair id="{RESOURCE}-args" name="args" value="{args}"/>
    </instance_attributes>
    <operations>
      <op id="{RESOURCE}-start" name="start" interval="0s" timeout="90s"/>
      <op id="{RESOURCE}-monitor" name="monitor" interval="10s" timeout="20s"/>
      <op id="{RESOURCE}-stop" name="stop" interval="0s" timeout="{stop}s"/>
    </operations>
  </primitive>
</clone>"#,
            daemon = bin.join("gfs_controld").display(),
            control = bin.join("gfs_control").display(),
            stop = self.opts.stop_timeout_s,
        );
        self.node_output(
            1,
            &[
                "cibadmin",
                "--create",
                "--scope",
                "resources",
                "--xml-text",
                &xml,
            ],
        )
        .map(|_| ())
    }

    /// The nodes `crm_mon` (asked on `on`) shows the clone started on.
    pub fn clone_started_on(&self, on: u32) -> Vec<String> {
        let Ok(out) = self.node_output(on, &["crm_mon", "-1"]) else {
            return Vec::new();
        };
        let mut lines = out
            .lines()
            .skip_while(|l| !l.contains(&format!("Clone Set: {CLONE}")));
        lines.next();
        lines
            .take_while(|l| l.starts_with("    "))
            .find_map(|l| l.trim().strip_prefix("* Started: ["))
            .map(|rest| {
                rest.trim_end_matches(']')
                    .split_whitespace()
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn wait_clone_started(&mut self, ids: &[u32]) -> Result<()> {
        let on = ids[0];
        self.wait_for(
            &format!("the clone started on nodes {ids:?}"),
            Duration::from_secs(120),
            |c| {
                let started = c.clone_started_on(on);
                ids.iter().all(|n| started.contains(&format!("node{n}")))
            },
        )
    }

    /// Every daemon of `ids` is synced and sees exactly `ids` as members.
    pub fn wait_synced(&mut self, ids: &[u32]) -> Result<()> {
        let want: Vec<u64> = ids.iter().map(|&i| u64::from(i)).collect();
        self.wait_for("every daemon synced", Duration::from_secs(60), |c| {
            ids.iter().all(|&id| {
                c.status(id).is_ok_and(|s| {
                    s["synced"] == true
                        && s["members"]
                            .as_array()
                            .map(|m| m.iter().filter_map(Value::as_u64).collect::<Vec<_>>())
                            == Some(want.clone())
                })
            })
        })
    }

    /// `gfs_control --json <args>` on node `id` (the agent's default control socket, in the
    /// node's private /run).
    pub fn control(&self, id: u32, args: &[&str]) -> Result<Value> {
        let bin = bin_dir().join("gfs_control");
        let bin = bin.to_string_lossy();
        let mut all = vec![bin.as_ref(), "--json"];
        all.extend_from_slice(args);
        Ok(serde_json::from_str(&self.node_output(id, &all)?)?)
    }

    pub fn status(&self, id: u32) -> Result<Value> {
        self.control(id, &["status"])
    }

    /// `gfs_kernel_sim <args> --socket S` against node `id`'s simulator.
    pub fn kernel(&self, id: u32, args: &[&str]) -> Result<String> {
        crate::cluster::kernel_sim(&self.kernel_socket(id), id, args)
    }

    pub fn kernel_status(&self, id: u32) -> Result<Value> {
        Ok(serde_json::from_str(
            &self.kernel(id, &["status", "--json"])?,
        )?)
    }

    pub fn table(&self, fs: &str) -> String {
        format!("{}:{fs}", self.opts.cluster_name)
    }

    pub fn mount(&self, id: u32, fs: &str) -> Result<()> {
        self.kernel(id, &["mount", &self.table(fs), "--timeout-ms", "30000"])
            .map(|_| ())
    }

    pub fn umount(&self, id: u32, fs: &str) -> Result<()> {
        self.kernel(id, &["umount", &self.table(fs)]).map(|_| ())
    }

    /// The kernel simulator's view of `fs` on node `id`.
    pub fn kernel_table(&self, id: u32, fs: &str) -> Result<Value> {
        let status = self.kernel_status(id)?;
        let table = self.table(fs);
        status["tables"]
            .as_array()
            .and_then(|t| t.iter().find(|t| t["table"] == table.as_str()).cloned())
            .ok_or_else(|| anyhow!("node {id} does not hold {table}: {status}"))
    }

    /// Every process in node `id`'s network namespace.
    pub fn pids(&self, id: u32) -> Vec<u32> {
        self.netns_id(id)
            .map(|ns| pids_in_netns(&ns))
            .unwrap_or_default()
    }

    /// The PID of node `id`'s gfs_controld (started by the OCF agent), if it runs.
    pub fn daemon_pid(&self, id: u32) -> Option<u32> {
        self.pids(id)
            .into_iter()
            .find(|&pid| program_name(pid).as_deref() == Some("gfs_controld"))
    }

    /// The node dies as far as the cluster can tell: its corosync is killed with SIGKILL. The
    /// rest of the node (its kernel simulator with the filesystem mounted, its daemon) keeps
    /// running until it is fenced.
    pub fn crash(&self, id: u32) -> Result<()> {
        let pid = self
            .pids(id)
            .into_iter()
            .find(|&pid| program_name(pid).as_deref() == Some("corosync"))
            .ok_or_else(|| anyhow!("node {id} has no corosync"))?;
        // SAFETY: kill(2) on a PID just found in node `id`'s network namespace.
        if unsafe { libc::kill(pid as i32, libc::SIGKILL) } != 0 {
            bail!("kill {pid}: {}", std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Powers node `id` off (what the fence agent does), boots it again with its simulators,
    /// corosync and pacemaker, and waits until pacemaker has started the clone there and every
    /// daemon is synced with all nodes.
    pub fn restart(&mut self, id: u32) -> Result<()> {
        kill_netns(&self.netns_id(id).unwrap_or_default());
        self.reap_children();
        self.boot(id)?;
        self.start_simulators(id)?;
        self.start_corosync(id)?;
        self.start_pacemaker(id)?;
        let ids = self.ids();
        self.wait_for("the restarted node online", Duration::from_secs(120), |c| {
            c.pacemaker_online(ids[0], &ids)
        })?;
        self.wait_clone_started(&ids)?;
        self.wait_synced(&ids)
    }

    /// Makes the fence agent fail its next `n` off/reboot runs.
    pub fn set_fence_failures(&self, n: u32) -> Result<()> {
        fs::write(self.fence_dir().join("fail_count"), n.to_string())?;
        Ok(())
    }

    /// Every run of the fence agent so far.
    pub fn fence_log(&self) -> Vec<FenceRecord> {
        fs::read_to_string(self.fence_dir().join("fence.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let mut w = l.splitn(5, ' ');
                Some(FenceRecord {
                    at_ms: w.next()?.parse().ok()?,
                    host: w.next()?.to_owned(),
                    action: w.next()?.to_owned(),
                    target: w.next()?.to_owned(),
                    result: w.next().unwrap_or("").to_owned(),
                })
            })
            .collect()
    }

    /// Processes of the nodes that still have CAP_SYS_BOOT in their bounding set (must be none).
    pub fn processes_with_sys_boot(&self) -> Vec<String> {
        const CAP_SYS_BOOT: u32 = 22;
        let mut found = Vec::new();
        for id in self.ids() {
            for pid in self.pids(id) {
                let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
                let bounding = status
                    .lines()
                    .find_map(|l| l.strip_prefix("CapBnd:"))
                    .and_then(|v| u64::from_str_radix(v.trim(), 16).ok());
                if bounding.is_some_and(|b| b & (1 << CAP_SYS_BOOT) != 0) {
                    let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                    found.push(format!("node{id} pid {pid} {}", comm.trim()));
                }
            }
        }
        found
    }

    /// Reaps children that have exited (fenced nodes' processes), so they do not linger as
    /// zombies.
    fn reap_children(&mut self) {
        self.children
            .retain_mut(|c| matches!(c.try_wait(), Ok(None)));
    }

    /// Polls `done` every 100 ms until it holds or `timeout` passes.
    pub fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        mut done: impl FnMut(&mut PacemakerCluster) -> bool,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if done(self) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "timed out after {timeout:?} waiting for {what}\n{}",
                    self.diagnostics()
                );
            }
            self.reap_children();
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The last lines of every node's logs, for failure messages.
    pub fn diagnostics(&self) -> String {
        let mut text = String::new();
        for id in self.ids() {
            for path in [
                self.daemon_log(id),
                self.node_dir(id).join("kernel.log"),
                self.node_dir(id).join("corosync.log"),
                self.pacemaker_log(id),
            ] {
                let log = fs::read_to_string(&path).unwrap_or_default();
                let lines: Vec<&str> = log
                    .lines()
                    .filter(|l| !l.contains(" DEBUG ") && !l.contains("(debug)"))
                    .collect();
                let tail = &lines[lines.len().saturating_sub(20)..];
                text.push_str(&format!(
                    "--- node {id} {} (last {} lines)\n{}\n",
                    path.display(),
                    tail.len(),
                    tail.join("\n")
                ));
            }
        }
        text.push_str(&format!(
            "--- fence log\n{}\n",
            fs::read_to_string(self.fence_dir().join("fence.log")).unwrap_or_default()
        ));
        text
    }
}

/// The node names in `crm_mon -1`'s `Online: [ ... ]` line.
fn online_list(crm_mon: &str) -> Vec<String> {
    crm_mon
        .lines()
        .find_map(|l| l.trim().strip_prefix("* Online: ["))
        .map(|rest| {
            rest.trim_end_matches(']')
                .split_whitespace()
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

fn run_host(cmd: &mut Command) -> Result<()> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Every process whose network namespace is `netns` (`net:[inode]`). A namespace's inode is
/// not reused while any process is in it, so this never matches a process outside the node.
/// The file name of the program process `pid` runs (`/proc/PID/exe`), or `None` once it is gone.
/// Not `comm`: a script's `comm` is the script's name, and the OCF agent is a script named
/// `gfs_controld`, so its monitor runs would pass for the daemon.
pub fn program_name(pid: u32) -> Option<String> {
    let exe = fs::read_link(format!("/proc/{pid}/exe")).ok()?;
    // A binary replaced on disk while it runs reads back as "NAME (deleted)".
    let name = exe.file_name()?.to_string_lossy().into_owned();
    Some(name.trim_end_matches(" (deleted)").to_owned())
}

fn pids_in_netns(netns: &str) -> Vec<u32> {
    if !netns.starts_with("net:[") {
        return Vec::new();
    }
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            fs::read_link(format!("/proc/{pid}/ns/net")).is_ok_and(|l| l.to_string_lossy() == netns)
        })
        .collect()
}

/// SIGKILLs every process of a node until none is left (a power cut).
fn kill_netns(netns: &str) {
    for _ in 0..100 {
        let pids = pids_in_netns(netns);
        if pids.is_empty() {
            return;
        }
        for pid in pids {
            // SAFETY: kill(2) on a PID found in the node's network namespace just now.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Tears down what a run with this tag left: its nodes' processes (by namespace identity),
/// its namespaces, its installed agents and (unless kept) its directory.
fn teardown(tag: &str, dir: &Path, keep_dir: bool) {
    for entry in fs::read_dir(dir.join("fence/nodes"))
        .into_iter()
        .flatten()
        .flatten()
    {
        if let Ok(netns) = fs::read_to_string(entry.path()) {
            kill_netns(netns.trim());
        }
    }
    let namespaces = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    for ns in namespaces
        .lines()
        .filter_map(|l| l.split_whitespace().next())
    {
        let ours = ns.strip_prefix(tag).is_some_and(|rest| {
            rest == "w"
                || rest
                    .strip_prefix('n')
                    .is_some_and(|id| !id.is_empty() && id.chars().all(|c| c.is_ascii_digit()))
        });
        if ours {
            let _ = run(&format!("ip netns del {ns}"));
        }
    }
    let _ = fs::remove_file(format!("/usr/sbin/fence_gfstest_{tag}"));
    let _ = fs::remove_dir_all(format!("/usr/lib/ocf/resource.d/gfs-controld-{tag}"));
    if !keep_dir {
        let _ = fs::remove_dir_all(dir);
    }
    let _ = fs::remove_file(Path::new(REGISTRY).join(tag));
}

/// Tears down runs whose owning process is gone (a test killed before its drop).
fn reap_abandoned() {
    for entry in fs::read_dir(REGISTRY).into_iter().flatten().flatten() {
        let tag = entry.file_name().to_string_lossy().into_owned();
        let text = fs::read_to_string(entry.path()).unwrap_or_default();
        let mut lines = text.lines();
        let owner: Option<i32> = lines.next().and_then(|p| p.trim().parse().ok());
        // SAFETY: kill with signal 0 only checks that the process exists.
        if owner.is_some_and(|pid| unsafe { libc::kill(pid, 0) } == 0) {
            continue;
        }
        let Some(dir) = lines.next().map(PathBuf::from) else {
            let _ = fs::remove_file(entry.path());
            continue;
        };
        teardown(&tag, &dir, false);
    }
}

impl Drop for PacemakerCluster {
    fn drop(&mut self) {
        let keep = self.keep_logs
            || std::env::var_os("GFS_KEEP_CLUSTER_DIR").is_some()
            || std::thread::panicking();
        teardown(&self.tag, &self.dir, keep);
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        if keep {
            eprintln!("pacemaker tier: logs kept in {}", self.dir.display());
        }
    }
}
