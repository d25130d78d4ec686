//! The `Scenario` test API: a scripted cluster with no random faults or workload, in which a
//! test mounts, crashes, partitions and asserts.

use gfs_core::{Input, MountMode, Node, NodeId, Time};

use super::mount::MountStep;
use super::trace::{ReplayRecord, WriteRecord};
use super::{SimConfig, Violation, World};

/// A scripted cluster for named scenario tests: no random faults or workload; the test mounts,
/// crashes, partitions and asserts. Delays (delivery, replay, fencing) still come from the seed,
/// and every safety checker runs after every step as in the sweeps.
pub struct Scenario {
    w: World,
}

impl Scenario {
    /// `nodes` daemons that have formed their group, and `filesystems` tables `sim:fs1`...
    pub fn new(nodes: u32, filesystems: u32, seed: u64) -> Scenario {
        let mut cfg = SimConfig::new(seed, nodes, filesystems);
        cfg.faults = false;
        cfg.workload = false;
        cfg.trace = true;
        Scenario::with_config(cfg)
    }

    pub fn with_config(cfg: SimConfig) -> Scenario {
        let mut w = World::new(cfg);
        w.faults_on = false;
        w.profile.fence_delay = (50, 200);
        w.profile.replay_ms = (100, 300);
        let mut s = Scenario { w };
        s.run_for(2000);
        s
    }

    pub fn table(&self, fs: u32) -> String {
        self.w.tables[fs as usize - 1].to_string()
    }

    pub fn now(&self) -> Time {
        self.w.now
    }

    pub fn run_for(&mut self, ms: u64) {
        let end = self.w.now.after(ms);
        self.w.run_until(end);
    }

    pub fn mount(&mut self, node: NodeId, fs: u32, mode: MountMode) {
        let t = self.w.tables[fs as usize - 1].clone();
        self.w.mount(node, &t, mode, true);
    }

    /// A spectator mount without `hostdata=first=0`: its kernel keeps `first=1`.
    pub fn mount_spectator_keeping_first(&mut self, node: NodeId, fs: u32) {
        let t = self.w.tables[fs as usize - 1].clone();
        self.w.mount(node, &t, MountMode::Spectator, false);
    }

    pub fn umount(&mut self, node: NodeId, fs: u32) {
        let key = self.table(fs);
        self.w.unmount(node, &key);
    }

    pub fn remount(&mut self, node: NodeId, fs: u32, mode: MountMode) {
        let key = self.table(fs);
        self.w.remount(node, &key, mode);
    }

    /// The DLM on `node` offers recovery callbacks: its mounts are kernel-managed.
    pub fn kernel_managed(&mut self, node: NodeId, on: bool) {
        if on {
            self.w.kernel_managed_nodes.insert(node);
        } else {
            self.w.kernel_managed_nodes.remove(&node);
        }
    }

    /// `recover_callbacks` changes between the `add` uevent and the DLM join on `node`, so the
    /// daemon's reading at `add` is wrong.
    pub fn recover_callbacks_flip(&mut self, node: NodeId, on: bool) {
        if on {
            self.w.recover_callbacks_flips.insert(node);
        } else {
            self.w.recover_callbacks_flips.remove(&node);
        }
    }

    /// dlm_controld on every node runs without `enable_fscontrol=1`.
    pub fn dlm_without_fscontrol(&mut self) {
        self.w.dlm.fscontrol = false;
    }

    /// Every registered (node, fs) of dlm_controld, and DLM recoveries still waiting.
    pub fn dlm_pending_recoveries(&self) -> usize {
        self.w.dlm.recoveries.len()
    }

    pub fn withdraw(&mut self, node: NodeId, fs: u32) {
        let key = self.table(fs);
        self.w.withdraw(node, &key);
    }

    /// Power loss: corosync, daemon and kernel die; the node reboots later.
    pub fn crash(&mut self, node: NodeId) {
        self.w.failures_injected += 1;
        self.w.log(format!("SCENARIO crash n{node}"));
        self.w.crash(node, false);
    }

    /// Only gfs_controld dies; corosync and the kernel mounts live on.
    pub fn daemon_crash(&mut self, node: NodeId) {
        self.w.failures_injected += 1;
        self.w.log(format!("SCENARIO daemon crash n{node}"));
        self.w.daemon_crash(node);
    }

    /// corosync dies (and the daemon with it); the kernel mounts live on until fenced.
    pub fn corosync_crash(&mut self, node: NodeId) {
        self.w.failures_injected += 1;
        self.w.log(format!("SCENARIO corosync crash n{node}"));
        self.w.kill_corosync(node);
    }

    pub fn partition(&mut self, sides: &[&[NodeId]]) {
        self.w.failures_injected += 1;
        self.w.log(format!("SCENARIO partition {sides:?}"));
        let sides = sides.iter().map(|s| s.iter().copied().collect()).collect();
        self.w.reform(sides);
    }

    pub fn heal(&mut self) {
        self.w.reboot(0);
    }

    pub fn fail_next_replay(&mut self, node: NodeId) {
        self.w.fail_next_replay.insert(node);
    }

    pub fn fail_next_fences(&mut self, count: u32) {
        self.w.fencing.failures_left = count;
    }

    /// The fencing backend never fences: only `fence_ack` gets a failed node's journal replayed.
    pub fn manual_fencing(&mut self, on: bool) {
        self.w.fencing.manual = on;
    }

    pub fn fence_ack(&mut self, by: NodeId, target: NodeId) {
        self.w.fencing.last_acked.insert(target, self.w.now);
        let req = self.w.step;
        self.w.feed(
            by,
            Input::FenceAck {
                request: req,
                nodeid: target,
            },
        );
    }

    pub fn writes(&self) -> &[WriteRecord] {
        &self.w.writes
    }

    pub fn replays(&self) -> &[ReplayRecord] {
        &self.w.replays
    }

    pub fn messages(&self) -> u64 {
        self.w.messages
    }

    pub fn violation(&self) -> Option<&Violation> {
        self.w.violation.as_ref()
    }

    pub fn trace(&self) -> &[String] {
        &self.w.trace.lines
    }

    pub fn node(&self, node: NodeId) -> Option<&Node> {
        self.w
            .nodes
            .get(&node)
            .and_then(|x| x.daemon.as_ref())
            .map(|d| &d.core)
    }

    /// What the kernel model on `node` holds for filesystem `fs`.
    pub fn kernel(&self, node: NodeId, fs: u32) -> Option<KernelView> {
        let key = self.table(fs);
        self.w
            .nodes
            .get(&node)
            .and_then(|x| x.mounts.get(&key))
            .map(|m| KernelView {
                jid: m.kernel.jid,
                first: m.kernel.first && m.first_written,
                online: m.state == MountStep::Online,
                withdrawn: m.state == MountStep::Withdrawn,
                blocked: m.kernel.blocked,
                withdraw_acked: m.kernel.withdraw_acked,
            })
    }

    /// Run the liveness check (L1) now.
    pub fn check_liveness(&mut self) -> Option<&Violation> {
        self.w.check_liveness();
        self.w.violation.as_ref()
    }
}

/// The kernel side of one mount, for assertions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelView {
    pub jid: Option<i64>,
    pub first: bool,
    pub online: bool,
    pub withdrawn: bool,
    pub blocked: bool,
    pub withdraw_acked: bool,
}
