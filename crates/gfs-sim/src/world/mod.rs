//! The simulated cluster: CPG, quorum, fencing, kernels, faults and the safety checkers.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use gfs_core::{
    wire, Input, KernelEvent, LeaveReason, MountMode, Node, NodeConfig, NodeId, Output, Peer,
    Sabotage, SysfsFile, Table, Time, DAEMON_GROUP,
};

use crate::rng::Rng;

mod checker;
mod cpg;
mod driver;
mod journal;
mod kernel;
mod mount;

pub use checker::{Rule, Violation};
use cpg::{CpgModel, Entry, NodeProcesses, Processes};
use journal::JournalTruth;
use mount::{Mount, MountStep};

use kernel::{DlmRecovery, IoOp};

const CLUSTER: &str = "sim";
/// No workload in the last stretch of a run (L1 judges operations that had time to finish):
/// far more than a mount storm of every node on one filesystem takes, serialised by the mount
/// lock, at 16 nodes.
pub const WORKLOAD_QUIET_MS: u64 = 30_000;
/// Processes that join the daemon group without being gfs_controld get pids from here on
/// (daemons' pids stay below), so the checkers can tell them apart.
const FOREIGN_PID_BASE: u32 = 1_000_000;

#[derive(Clone, Debug)]
pub struct SimConfig {
    pub seed: u64,
    pub nodes: u32,
    pub filesystems: u32,
    /// How long faults are injected; then the cluster must settle (L1).
    pub fault_ms: u64,
    pub settle_ms: u64,
    pub faults: bool,
    /// Random mounts, unmounts and remounts (off for scripted scenarios).
    pub workload: bool,
    /// The daemons' journal-id limit (the core's `max_journals`).
    pub max_journals: u32,
    pub sabotage: Sabotage,
    pub trace: bool,
    /// Log every multicast with its message name (for debugging a seed).
    pub log_multicasts: bool,
    /// dlm_controld runs with `enable_fscontrol=1` (it accepts registrations).
    pub dlm_fscontrol: bool,
}

impl SimConfig {
    pub fn new(seed: u64, nodes: u32, filesystems: u32) -> SimConfig {
        SimConfig {
            seed,
            nodes,
            filesystems,
            fault_ms: 40_000,
            settle_ms: 90_000,
            faults: true,
            workload: true,
            max_journals: gfs_core::MAX_JOURNALS,
            sabotage: Sabotage::default(),
            trace: false,
            log_multicasts: false,
            dlm_fscontrol: true,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Outcome {
    pub seed: u64,
    pub steps: u64,
    pub failures_injected: u64,
    pub journals_replayed: u64,
    pub messages: u64,
    pub violation: Option<Violation>,
    pub trace: Vec<String>,
    pub trace_hash: u64,
    /// Filesystems left with dirty journals because only read-only/spectator mounters hold them.
    pub stalled_without_rw: u64,
}

/// How rough this seed is (swarm testing: every seed draws its own mix).
#[derive(Clone, Debug)]
struct Profile {
    crash: f64,
    daemon_crash: f64,
    partition: f64,
    withdraw: f64,
    recover_fail: f64,
    fence_fail: f64,
    fence_ack: f64,
    fence_delay: (u64, u64),
    replay_ms: (u64, u64),
    mount: f64,
    unmount: f64,
    remount: f64,
    ro_share: f64,
    spectator_share: f64,
    /// Every node mounts one filesystem at the same moment (the kernel's mount lock decides).
    storm: f64,
}

impl Profile {
    fn draw(rng: &mut Rng) -> Profile {
        let mut p = |hi: f64| {
            if rng.chance(0.25) {
                0.0
            } else {
                hi * (rng.range(1, 100) as f64 / 100.0)
            }
        };
        Profile {
            crash: p(0.02),
            daemon_crash: p(0.008),
            partition: p(0.01),
            withdraw: p(0.01),
            recover_fail: p(0.3),
            fence_fail: p(0.3),
            fence_ack: p(0.3),
            fence_delay: (50, 3000),
            replay_ms: (20, 1500),
            mount: 0.05 + p(0.2),
            unmount: p(0.03),
            remount: p(0.01),
            ro_share: p(0.15),
            spectator_share: p(0.08),
            storm: p(0.02),
        }
    }
}

#[derive(Clone, Debug)]
enum Event {
    Deliver(NodeId),
    Commit(u64),
    NodeTimer(NodeId),
    KernelMountStep {
        node: NodeId,
        table: String,
        boot: u64,
    },
    ReplayDone {
        node: NodeId,
        table: String,
        jid: u32,
        boot: u64,
    },
    FenceDone(NodeId),
    FenceNotify {
        node: NodeId,
        target: NodeId,
        at: Time,
        dinc: u64,
    },
    Uevent {
        node: NodeId,
        event: KernelEvent,
        boot: u64,
    },
    /// A sysfs or dlm_controld result reaches the daemon incarnation `dinc`.
    IoDone {
        node: NodeId,
        dinc: u64,
        input: Input,
    },
    /// The daemon reads a remounted filesystem's mode back.
    ModeRead {
        node: NodeId,
        table: String,
        boot: u64,
    },
    Reboot(NodeId),
    DaemonStart(NodeId),
    /// A foreign process in the daemon group sends a forged message.
    ForeignSend(Peer),
    /// A foreign process leaves the daemon group (cleanly, or by exiting).
    ForeignGo {
        peer: Peer,
        clean: bool,
    },
    FaultTick,
    WorkTick,
    EndFaults,
    OperatorRescue,
}

struct Daemon {
    core: Node,
    inc: u64,
    pid: u32,
    joined: bool,
    timer: Option<Time>,
}

struct SimNode {
    id: NodeId,
    corosync: bool,
    daemon: Option<Daemon>,
    /// A process in the daemon group that is not gfs_controld (fault: foreign joiner).
    foreign: Option<u32>,
    /// Kernel instance counter: bumps on every boot.
    boot: u64,
    kernel_dead_at: Option<Time>,
    kernel_killed_by_fence: bool,
    mounts: BTreeMap<String, Mount>,
    /// Failures of daemon incarnations this node's lineage saw, with the stream entry that told.
    saw_fail: BTreeMap<(NodeId, u64), u64>,
    /// The last stream entry this daemon processed (entries are numbered in commit order).
    last_entry: u64,
    daemon_inc_counter: u64,
    reboot_pending: bool,
    /// Every node this kernel incarnation shared a corosync membership with: each of them sees
    /// it leave at some point (a partition or its death), and dlm_controld there then waits.
    seen_with: BTreeSet<NodeId>,
}

struct FenceOp {
    requested_at: Time,
}

struct World {
    cfg: SimConfig,
    rng: Rng,
    profile: Profile,
    now: Time,
    seq: u64,
    events: BTreeMap<(Time, u64), Event>,
    nodes: BTreeMap<NodeId, SimNode>,
    cpg: CpgModel,
    tables: Vec<Table>,
    journals_per_fs: u32,
    journals: BTreeMap<(String, u32), JournalTruth>,
    fence_ops: BTreeMap<NodeId, FenceOp>,
    last_fenced: BTreeMap<NodeId, Time>,
    last_acked: BTreeMap<NodeId, Time>,
    faults_on: bool,
    step: u64,
    trace: Vec<String>,
    trace_hash: u64,
    violation: Option<Violation>,
    failures_injected: u64,
    journals_replayed: u64,
    messages: u64,
    agreement: BTreeMap<(u64, u64), (u64, NodeId)>,
    /// The sender of the STATE being delivered, for the S7 checker's memory inheritance.
    /// (sender, stream entry id of the STATE message).
    state_from: Option<(NodeId, u64)>,
    /// Every sysfs write, for scenario assertions.
    writes: Vec<WriteRecord>,
    replays: Vec<ReplayRecord>,
    fail_next_replay: BTreeSet<NodeId>,
    fence_failures_left: u32,
    manual_fencing: bool,
    /// The mount lock of each filesystem: (holder, kernel instance, holder alive).
    glock: BTreeMap<String, (NodeId, u64, bool)>,
    glock_waiters: BTreeMap<String, VecDeque<NodeId>>,
    /// Kernels joined to each filesystem's DLM lockspace.
    lockspaces: BTreeMap<String, BTreeSet<NodeId>>,
    /// (node, table) registrations dlm_controld holds (they outlive the daemon, not the node).
    dlm_registered: BTreeSet<(NodeId, String)>,
    dlm_recoveries: Vec<DlmRecovery>,
    dlm_fscontrol: bool,
    io: BTreeMap<(NodeId, String), VecDeque<IoOp>>,
    io_last: BTreeMap<(NodeId, String), Time>,
    busy_replays: BTreeSet<(NodeId, String, u32)>,
    /// Nodes whose DLM offers recovery callbacks (kernel-managed mounts).
    kernel_managed_nodes: BTreeSet<NodeId>,
    /// Nodes whose daemon reads recover_callbacks wrong at `add` (changed in between).
    recover_callbacks_flips: BTreeSet<NodeId>,
    /// Foreign joiners: their own generator, so that seeds without them run as before.
    foreign_rng: Rng,
    foreign_chance: f64,
    next_foreign_pid: u32,
}

/// One sysfs write a daemon made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteRecord {
    pub time: Time,
    pub node: NodeId,
    pub table: String,
    pub file: SysfsFile,
    pub value: i64,
    pub result: Result<(), i32>,
}

/// One journal replay a kernel ran for a `recover` write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplayRecord {
    pub node: NodeId,
    pub table: String,
    pub jid: u32,
    pub started: Time,
    pub done: Option<bool>,
}

pub fn run(cfg: SimConfig) -> Outcome {
    let mut w = World::new(cfg);
    w.run();
    let stalled = w.stalled_without_rw();
    Outcome {
        seed: w.cfg.seed,
        steps: w.step,
        failures_injected: w.failures_injected,
        journals_replayed: w.journals_replayed,
        messages: w.messages,
        violation: w.violation.clone(),
        trace: std::mem::take(&mut w.trace),
        trace_hash: w.trace_hash,
        stalled_without_rw: stalled,
    }
}

fn fnv(h: u64, s: &str) -> u64 {
    s.bytes().fold(h ^ 0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

impl World {
    fn new(cfg: SimConfig) -> World {
        let mut rng = Rng::new(cfg.seed);
        let profile = if cfg.faults {
            Profile::draw(&mut rng)
        } else {
            let mut p = Profile::draw(&mut rng);
            p.crash = 0.0;
            p.daemon_crash = 0.0;
            p.partition = 0.0;
            p.withdraw = 0.0;
            p.recover_fail = 0.0;
            p.fence_fail = 0.0;
            p.fence_ack = 0.0;
            p
        };
        let mut profile = profile;
        if !cfg.workload {
            profile.mount = 0.0;
            profile.unmount = 0.0;
            profile.remount = 0.0;
        }
        let tables = (1..=cfg.filesystems)
            .map(|i| Table::parse(&format!("{CLUSTER}:fs{i}")).expect("valid table"))
            .collect();
        let journals_per_fs = cfg.nodes + rng.range(0, 2) as u32;
        let seed_foreign = cfg.seed ^ 0x0f0e_1d2c_3b4a_5968;
        let nodes = cfg.nodes;
        let mut w = World {
            cfg,
            rng,
            profile,
            now: Time::ZERO,
            seq: 0,
            events: BTreeMap::new(),
            nodes: BTreeMap::new(),
            cpg: CpgModel::new(1..=nodes, nodes),
            tables,
            journals_per_fs,
            journals: BTreeMap::new(),
            fence_ops: BTreeMap::new(),
            last_fenced: BTreeMap::new(),
            last_acked: BTreeMap::new(),
            faults_on: true,
            step: 0,
            trace: Vec::new(),
            trace_hash: 0,
            violation: None,
            failures_injected: 0,
            journals_replayed: 0,
            messages: 0,
            agreement: BTreeMap::new(),
            state_from: None,
            writes: Vec::new(),
            replays: Vec::new(),
            fail_next_replay: BTreeSet::new(),
            fence_failures_left: 0,
            manual_fencing: false,
            glock: BTreeMap::new(),
            glock_waiters: BTreeMap::new(),
            lockspaces: BTreeMap::new(),
            dlm_registered: BTreeSet::new(),
            dlm_recoveries: Vec::new(),
            dlm_fscontrol: true,
            io: BTreeMap::new(),
            io_last: BTreeMap::new(),
            busy_replays: BTreeSet::new(),
            kernel_managed_nodes: BTreeSet::new(),
            recover_callbacks_flips: BTreeSet::new(),
            foreign_rng: Rng::new(seed_foreign),
            foreign_chance: 0.0,
            next_foreign_pid: FOREIGN_PID_BASE,
        };
        if w.cfg.faults && w.foreign_rng.chance(0.5) {
            w.foreign_chance = w.foreign_rng.range(1, 100) as f64 / 100.0 * 0.01;
        }
        w.dlm_fscontrol = w.cfg.dlm_fscontrol;
        for id in 1..=w.cfg.nodes {
            w.nodes.insert(
                id,
                SimNode {
                    id,
                    corosync: true,
                    daemon: None,
                    foreign: None,
                    boot: 1,
                    kernel_dead_at: None,
                    kernel_killed_by_fence: false,
                    mounts: BTreeMap::new(),
                    saw_fail: BTreeMap::new(),
                    last_entry: 0,
                    daemon_inc_counter: 0,
                    reboot_pending: false,
                    seen_with: BTreeSet::new(),
                },
            );
        }
        let all: BTreeSet<NodeId> = w.nodes.keys().copied().collect();
        w.reform(vec![all]);
        for id in 1..=w.cfg.nodes {
            let d = w.rng.range(0, 300);
            w.schedule(d, Event::DaemonStart(id));
        }
        if w.cfg.faults {
            w.schedule(100, Event::FaultTick);
        }
        if w.cfg.workload {
            w.schedule(50, Event::WorkTick);
            let end = w.cfg.fault_ms;
            w.schedule(end, Event::EndFaults);
        }
        w
    }

    fn schedule(&mut self, delay: u64, ev: Event) {
        self.seq += 1;
        self.events.insert((self.now.after(delay), self.seq), ev);
    }

    fn log(&mut self, line: String) {
        let line = format!("{:>9} {line}", self.now.to_string());
        self.trace_hash = fnv(self.trace_hash, &line);
        if self.cfg.trace || self.trace.len() < 400_000 {
            self.trace.push(line);
        }
    }

    /// Records the first violation, stamped with the time and step it happened at.
    fn violate(&mut self, v: Violation) {
        if self.violation.is_none() {
            self.log(format!("VIOLATION {}: {}", v.rule, v.detail));
            self.violation = Some(Violation {
                time: self.now,
                step: self.step,
                ..v
            });
        }
    }

    fn run(&mut self) {
        let end = Time(self.cfg.fault_ms + self.cfg.settle_ms);
        self.run_until(end);
        if self.violation.is_none() {
            self.check_liveness();
        }
    }

    fn run_until(&mut self, end: Time) {
        while let Some((&(t, s), _)) = self.events.iter().next() {
            if t > end || self.violation.is_some() {
                break;
            }
            let ev = self.events.remove(&(t, s)).expect("present");
            self.now = t;
            self.step += 1;
            self.handle(ev);
        }
        if self.violation.is_none() {
            self.now = self.now.max(end);
        }
    }

    // ----- membership ----------------------------------------------------------------------

    /// The processes in the daemon group on each node, for the CPG model.
    fn processes(&self) -> Processes {
        self.nodes
            .values()
            .map(|x| {
                let procs = NodeProcesses {
                    corosync: x.corosync,
                    daemon: x.daemon.as_ref().filter(|d| d.joined).map(|d| d.pid),
                    foreign: x.foreign,
                };
                (x.id, procs)
            })
            .collect()
    }

    fn wake(&mut self, wakeups: impl IntoIterator<Item = cpg::Wakeup>) {
        for (delay, event) in wakeups {
            self.schedule(delay, event);
        }
    }

    /// Corosync's membership becomes `sides`: configuration changes for every daemon, the new
    /// memberships to the quorum service, and the DLM's view of who is together.
    fn reform(&mut self, sides: Vec<BTreeSet<NodeId>>) {
        let procs = self.processes();
        let wakeups = self.cpg.reform(sides, &procs, &mut self.rng);
        for (n, node) in self.nodes.iter_mut() {
            node.seen_with.extend(self.cpg.members_with(*n));
        }
        self.wake(wakeups);
        self.feed_memberships();
        // dlm_controld recovers lockspaces only with quorum and its members together.
        self.dlm_check();
    }

    fn group_change(&mut self, comp: u64, gone: Option<(Peer, LeaveReason)>) {
        let procs = self.processes();
        let wakeups = self.cpg.group_change(comp, gone, &procs, &mut self.rng);
        self.wake(wakeups);
    }

    fn kick_delivery(&mut self, n: NodeId) {
        let wakeup = self.cpg.kick_delivery(n, &mut self.rng);
        self.wake(wakeup);
    }

    // ----- event handling ------------------------------------------------------------------

    fn handle(&mut self, ev: Event) {
        match ev {
            Event::Deliver(n) => self.deliver(n),
            Event::Commit(comp) => {
                let procs = self.processes();
                let wakeups = self.cpg.commit(comp, &procs, &mut self.rng);
                self.wake(wakeups);
            }
            Event::NodeTimer(n) => {
                let due = self.nodes[&n]
                    .daemon
                    .as_ref()
                    .and_then(|d| d.core.poll_timeout())
                    .is_some_and(|t| t <= self.now);
                if let Some(d) = self.nodes.get_mut(&n).and_then(|x| x.daemon.as_mut()) {
                    d.timer = None;
                }
                if due {
                    self.feed(n, Input::Timeout);
                } else {
                    self.arm_timer(n);
                }
            }
            Event::KernelMountStep { node, table, boot } => {
                self.kernel_mount_step(node, &table, boot)
            }
            Event::ReplayDone {
                node,
                table,
                jid,
                boot,
            } => self.replay_done(node, &table, jid, boot),
            Event::FenceDone(target) => self.fence_done(target),
            Event::FenceNotify {
                node,
                target,
                at,
                dinc,
            } => {
                if self.nodes[&node]
                    .daemon
                    .as_ref()
                    .is_some_and(|d| d.inc == dinc)
                {
                    self.feed(node, Input::Fenced { nodeid: target, at });
                }
            }
            Event::Uevent { node, event, boot } => {
                if self.nodes[&node].boot == boot && self.nodes[&node].daemon.is_some() {
                    self.log(format!("n{node} uevent {} {:?}", event.table, event.kind));
                    self.feed(node, Input::Kernel(event));
                }
            }
            Event::IoDone { node, dinc, input } => {
                if self.nodes[&node]
                    .daemon
                    .as_ref()
                    .is_some_and(|d| d.inc == dinc)
                {
                    self.feed(node, input);
                }
            }
            Event::ModeRead { node, table, boot } => self.mode_read(node, &table, boot),
            Event::Reboot(n) => self.reboot(n),
            Event::DaemonStart(n) => self.daemon_start(n),
            Event::ForeignSend(peer) => self.foreign_send(peer),
            Event::ForeignGo { peer, clean } => self.foreign_go(peer, clean),
            Event::FaultTick => {
                if self.faults_on {
                    self.inject_fault();
                    self.schedule(100, Event::FaultTick);
                }
            }
            Event::WorkTick => {
                // The liveness check judges what was started: no new operations in the run's
                // last stretch, so each one has time to finish.
                let end = self.cfg.fault_ms + self.cfg.settle_ms;
                if self.now.millis() + WORKLOAD_QUIET_MS < end {
                    self.workload();
                    self.schedule(100, Event::WorkTick);
                }
            }
            Event::EndFaults => self.end_faults(),
            Event::OperatorRescue => self.operator_rescue(),
        }
        if self.violation.is_none() {
            self.check_agreement_views();
        }
    }

    // ----- faults and workload ---------------------------------------------------------------

    /// A process that is not gfs_controld joins the daemon group on a node (any process corosync
    /// lets use its IPC can): it may send a forged message, then leaves or exits. The daemons
    /// must change nothing for it.
    fn foreign_join(&mut self) {
        let up: Vec<NodeId> = self
            .up_nodes()
            .into_iter()
            .filter(|n| self.nodes[n].foreign.is_none())
            .collect();
        let Some(n) = self.foreign_rng.pick(&up) else {
            return;
        };
        let pid = self.next_foreign_pid;
        self.next_foreign_pid += 1;
        let peer = Peer::new(n, pid);
        self.log(format!(
            "FAULT foreign process {peer} joins the daemon group"
        ));
        self.nodes.get_mut(&n).expect("node").foreign = Some(pid);
        if let Some(c) = self.cpg.component_of(n) {
            self.group_change(c, None);
        }
        if self.foreign_rng.chance(0.7) {
            let d = self.foreign_rng.range(10, 2000);
            self.schedule(d, Event::ForeignSend(peer));
        }
        let d = self.foreign_rng.range(100, 5000);
        let clean = self.foreign_rng.chance(0.5);
        self.schedule(d, Event::ForeignGo { peer, clean });
    }

    /// A forged message in the name of the foreign process's node: a FENCED for a node that
    /// is down (claiming every failure), a FENCE_ACK, or a replay result.
    fn foreign_send(&mut self, peer: Peer) {
        if self.nodes[&peer.nodeid].foreign != Some(peer.pid) {
            return;
        }
        let down: Vec<NodeId> = self
            .nodes
            .values()
            .filter(|x| !x.corosync)
            .map(|x| x.id)
            .collect();
        let target = self.foreign_rng.pick(&down).unwrap_or(peer.nodeid);
        let table = self.tables[0].to_string();
        let msg = match self.foreign_rng.range(0, 2) {
            0 => wire::Message::Fenced {
                nodeid: target,
                failure: u64::MAX,
            },
            1 => wire::Message::FenceAck {
                nodeid: target,
                failure: u64::MAX,
            },
            _ => wire::Message::Recovered {
                table,
                jid: self.foreign_rng.range(0, 3) as u32,
                done: true,
                attempt: 0,
            },
        };
        self.log(format!("FAULT foreign process {peer} sends {}", msg.name()));
        let header = wire::Header {
            version: wire::PROTOCOL_MIN,
            sender: peer.nodeid,
            change: 0,
        };
        let payload = wire::encode(&header, &msg);
        let wakeups = self
            .cpg
            .multicast(peer.nodeid, peer, payload, &mut self.rng);
        self.wake(wakeups);
    }

    fn foreign_go(&mut self, peer: Peer, clean: bool) {
        let node = self.nodes.get_mut(&peer.nodeid).expect("node");
        if node.foreign != Some(peer.pid) {
            return;
        }
        node.foreign = None;
        let reason = if clean {
            LeaveReason::Leave
        } else {
            LeaveReason::ProcDown
        };
        self.log(format!("FAULT foreign process {peer} leaves ({reason:?})"));
        if let Some(c) = self.cpg.component_of(peer.nodeid) {
            self.group_change(c, Some((peer, reason)));
        }
    }

    fn up_nodes(&self) -> Vec<NodeId> {
        self.nodes
            .values()
            .filter(|x| x.corosync)
            .map(|x| x.id)
            .collect()
    }

    fn inject_fault(&mut self) {
        let p = self.profile.clone();
        if self.foreign_chance > 0.0 && self.foreign_rng.chance(self.foreign_chance) {
            self.foreign_join();
        }
        let up = self.up_nodes();
        if self.rng.chance(p.crash) && up.len() > 1 {
            if let Some(n) = self.rng.pick(&up) {
                self.failures_injected += 1;
                self.log(format!("FAULT crash n{n}"));
                self.crash(n, false);
            }
        }
        if self.rng.chance(p.daemon_crash) {
            let with_daemon: Vec<NodeId> = up
                .iter()
                .copied()
                .filter(|n| self.nodes[n].daemon.is_some())
                .collect();
            if let Some(n) = self.rng.pick(&with_daemon) {
                self.failures_injected += 1;
                self.log(format!("FAULT daemon crash n{n}"));
                self.daemon_crash(n);
            }
        }
        if self.rng.chance(p.partition) && up.len() > 1 {
            let mut a = BTreeSet::new();
            let mut b = BTreeSet::new();
            for n in &up {
                if self.rng.chance(0.5) {
                    a.insert(*n);
                } else {
                    b.insert(*n);
                }
            }
            if !a.is_empty() && !b.is_empty() {
                self.failures_injected += 1;
                self.log(format!("FAULT partition {a:?} | {b:?}"));
                self.reform(vec![a, b]);
                let heal = self.rng.range(500, 8000);
                self.schedule(heal, Event::Reboot(0));
            }
        }
        if self.rng.chance(p.withdraw) {
            let online: Vec<(NodeId, String)> = self
                .nodes
                .values()
                .flat_map(|x| {
                    x.mounts
                        .iter()
                        .filter(|(_, m)| m.state == MountStep::Online)
                        .map(move |(t, _)| (x.id, t.clone()))
                })
                .collect();
            if !online.is_empty() {
                let i = self.rng.range(0, online.len() as u64 - 1) as usize;
                let (n, t) = online[i].clone();
                self.failures_injected += 1;
                self.log(format!("FAULT withdraw {t} on n{n}"));
                self.withdraw(n, &t);
            }
        }
        if self.rng.chance(p.fence_ack) {
            // An operator acknowledges a node that is really down (corosync and kernel dead).
            let dead: Vec<NodeId> = self
                .nodes
                .values()
                .filter(|x| !x.corosync && x.kernel_dead_at.is_some())
                .map(|x| x.id)
                .collect();
            let acker: Vec<NodeId> = up
                .iter()
                .copied()
                .filter(|n| {
                    self.nodes[n]
                        .daemon
                        .as_ref()
                        .is_some_and(|d| d.core.is_synced())
                })
                .collect();
            if let (Some(t), Some(a)) = (self.rng.pick(&dead), self.rng.pick(&acker)) {
                self.last_acked.insert(t, self.now);
                self.log(format!("OPERATOR fence-ack n{t} on n{a}"));
                let req = self.step;
                self.feed(
                    a,
                    Input::FenceAck {
                        request: req,
                        nodeid: t,
                    },
                );
            }
        }
    }

    fn workload(&mut self) {
        let p = self.profile.clone();
        let tables = self.tables.clone();
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for n in ids {
            let node = &self.nodes[&n];
            if node.daemon.is_none() || !node.corosync || node.kernel_dead_at.is_some() {
                continue;
            }
            for t in &tables {
                let key = t.to_string();
                let state = self.nodes[&n]
                    .mounts
                    .get(&key)
                    .map(|m| (m.state, m.kernel.mode, m.kernel.recovering.is_empty()));
                match state {
                    None if self.rng.chance(p.mount / tables.len() as f64) => {
                        let mode = if self.rng.chance(p.spectator_share) {
                            MountMode::Spectator
                        } else if self.rng.chance(p.ro_share) {
                            MountMode::Ro
                        } else {
                            MountMode::Rw
                        };
                        let hostdata = self.rng.chance(0.7);
                        self.mount(n, t, mode, hostdata);
                    }
                    Some((MountStep::Online, _, _)) | Some((MountStep::Withdrawn, _, _))
                        if self.faults_on && self.rng.chance(p.unmount / tables.len() as f64) =>
                    {
                        self.log(format!("WORK umount {key} on n{n}"));
                        self.nodes
                            .get_mut(&n)
                            .expect("node")
                            .mounts
                            .get_mut(&key)
                            .expect("mount")
                            .kernel
                            .unmounting = true;
                        self.maybe_finish_unmount(n, &key);
                    }
                    Some((MountStep::Online, mode, true))
                        if mode != MountMode::Spectator
                            && self.rng.chance(p.remount / tables.len() as f64) =>
                    {
                        let new = if mode == MountMode::Rw {
                            MountMode::Ro
                        } else {
                            MountMode::Rw
                        };
                        self.log(format!("WORK remount {key} {} on n{n}", new.as_str()));
                        self.remount(n, &key, new);
                    }
                    _ => {}
                }
            }
        }
        if self.rng.chance(p.storm) {
            // Every node that can mounts one filesystem at the same moment.
            let t = tables[self.rng.range(0, tables.len() as u64 - 1) as usize].clone();
            let key = t.to_string();
            let ready: Vec<NodeId> = self
                .nodes
                .values()
                .filter(|x| {
                    x.daemon.is_some()
                        && x.corosync
                        && x.kernel_dead_at.is_none()
                        && !x.mounts.contains_key(&key)
                })
                .map(|x| x.id)
                .collect();
            if !ready.is_empty() {
                self.log(format!("WORK mount storm {key} on {ready:?}"));
            }
            for n in ready {
                let mode = if self.rng.chance(p.ro_share) {
                    MountMode::Ro
                } else {
                    MountMode::Rw
                };
                self.mount(n, &t, mode, false);
            }
        }
    }

    /// A daemon's knowledge of failures dies with it.
    fn forget_daemon(&mut self, n: NodeId) {
        for j in self.journals.values_mut() {
            j.known_by.remove(&n);
        }
    }

    fn crash(&mut self, n: NodeId, by_fence: bool) {
        self.kernel_dies(n, by_fence);
        self.forget_daemon(n);
        let node = self.nodes.get_mut(&n).expect("node");
        node.daemon = None;
        node.foreign = None;
        self.cpg.reset_endpoint(n);
        let was_up = node.corosync;
        node.corosync = false;
        if was_up {
            self.leave_component(n);
        }
        if !self.nodes[&n].reboot_pending {
            self.nodes.get_mut(&n).expect("node").reboot_pending = true;
            let d = if by_fence {
                self.rng.range(2000, 6000)
            } else {
                self.rng.range(8000, 20000)
            };
            self.schedule(d, Event::Reboot(n));
        }
    }

    fn leave_component(&mut self, n: NodeId) {
        let mut sides = self.cpg.sides();
        for s in sides.iter_mut() {
            s.remove(&n);
        }
        self.reform(sides);
    }

    fn daemon_crash(&mut self, n: NodeId) {
        self.forget_daemon(n);
        // Its queued sysfs operations die with it (dlm_controld keeps its registrations).
        self.io.retain(|(x, _), _| *x != n);
        let node = self.nodes.get_mut(&n).expect("node");
        let pid = node.daemon.take().map_or(0, |d| d.pid);
        self.cpg.reset_endpoint(n);
        if let Some(c) = self.cpg.component_of(n) {
            self.group_change(c, Some((Peer::new(n, pid), LeaveReason::ProcDown)));
        }
        let d = self.rng.range(500, 5000);
        self.schedule(d, Event::DaemonStart(n));
    }

    fn kill_corosync(&mut self, n: NodeId) {
        if !self.nodes[&n].corosync {
            return;
        }
        self.forget_daemon(n);
        let node = self.nodes.get_mut(&n).expect("node");
        node.corosync = false;
        node.daemon = None;
        node.foreign = None;
        self.cpg.reset_endpoint(n);
        self.leave_component(n);
        // Its kernel lives on until it is fenced; with nothing mounted it simply restarts.
        if self.nodes[&n].mounts.is_empty() && !self.nodes[&n].reboot_pending {
            self.nodes.get_mut(&n).expect("node").reboot_pending = true;
            let d = self.rng.range(3000, 8000);
            self.schedule(d, Event::Reboot(n));
        } else if !self.fence_ops.contains_key(&n) && !self.manual_fencing {
            // Pacemaker fences a node that left the membership uncleanly.
            self.start_fence(n);
        }
    }

    /// The fencing device starts powering `target` off; it is done after the profile's delay.
    fn start_fence(&mut self, target: NodeId) {
        self.fence_ops.insert(
            target,
            FenceOp {
                requested_at: self.now,
            },
        );
        let d = self
            .rng
            .range(self.profile.fence_delay.0, self.profile.fence_delay.1);
        self.schedule(d, Event::FenceDone(target));
    }

    fn reboot(&mut self, n: NodeId) {
        if n == 0 {
            // Heal every partition: all corosync-up nodes merge.
            let up: BTreeSet<NodeId> = self.up_nodes().into_iter().collect();
            if self.cpg.component_count() > 1 {
                self.log("FAULT heal partitions".into());
                self.reform(vec![up]);
            }
            return;
        }
        let node = self.nodes.get_mut(&n).expect("node");
        node.reboot_pending = false;
        if node.corosync {
            return;
        }
        if node.kernel_dead_at.is_some() {
            node.boot += 1;
            node.seen_with.clear();
            node.kernel_dead_at = None;
            node.kernel_killed_by_fence = false;
        } else if !node.mounts.is_empty() {
            return; // cannot come back with live mounts: it waits to be fenced
        }
        node.corosync = true;
        self.log(format!("n{n} boots"));
        // It joins whichever component the largest number of nodes are in (links are up).
        let mut sides = self.cpg.sides();
        match self.cpg.largest_side() {
            Some(i) => {
                sides[i].insert(n);
            }
            None => sides.push(BTreeSet::from([n])),
        }
        self.reform(sides);
        let d = self.rng.range(100, 1000);
        self.schedule(d, Event::DaemonStart(n));
    }

    fn daemon_start(&mut self, n: NodeId) {
        let node = self.nodes.get_mut(&n).expect("node");
        if node.daemon.is_some() || !node.corosync {
            return;
        }
        if !node.mounts.is_empty() {
            // SPEC §3: never start with gfs2 mounts the group no longer tracks.
            // It removes its node from the cluster so that the node is fenced and rebooted.
            self.log(format!("n{n} gfs_controld refuses to start: gfs2 filesystems are mounted; leaving the cluster"));
            self.kill_corosync(n);
            return;
        }
        node.daemon_inc_counter += 1;
        node.saw_fail.clear();
        let mut cfg = NodeConfig::new(n, CLUSTER);
        cfg.cluster_nodes = (1..=self.cfg.nodes).collect();
        cfg.sabotage = self.cfg.sabotage;
        cfg.max_journals = self.cfg.max_journals;
        let inc = (n as u64) << 32 | node.daemon_inc_counter;
        // Each incarnation is a new process.
        let pid = 100 + node.daemon_inc_counter as u32;
        cfg.pid = pid;
        node.daemon = Some(Daemon {
            core: Node::new(cfg, self.now),
            inc,
            pid,
            joined: false,
            timer: None,
        });
        let q = self.cpg.partition_quorate(n);
        self.log(format!("n{n} gfs_controld starts"));
        self.feed(n, Input::Quorum { quorate: q });
        let members = self.cpg.members_with(n);
        self.feed(n, Input::Membership { members });
    }

    // ----- fencing oracle --------------------------------------------------------------------

    fn fence_request(&mut self, requester: NodeId, target: NodeId, failed_at: Time) {
        let comp_quorate = self.cpg.partition_quorate(requester);
        if let Some(t) = self
            .last_fenced
            .get(&target)
            .copied()
            .filter(|t| *t >= failed_at)
        {
            let dinc = self.nodes[&requester].daemon.as_ref().map_or(0, |d| d.inc);
            self.schedule(
                1,
                Event::FenceNotify {
                    node: requester,
                    target,
                    at: t,
                    dinc,
                },
            );
            return;
        }
        if !comp_quorate {
            self.log(format!(
                "fencer: n{requester} is inquorate, refusing to fence n{target}"
            ));
            self.feed(
                requester,
                Input::FenceFailed {
                    nodeid: target,
                    reason: "no quorum".into(),
                },
            );
            return;
        }
        if self.fence_ops.contains_key(&target) || self.manual_fencing {
            return;
        }
        let forced = self.fence_failures_left > 0;
        if forced {
            self.fence_failures_left -= 1;
        }
        if forced || (self.faults_on && self.rng.chance(self.profile.fence_fail)) {
            self.log(format!("fencer: fencing n{target} failed"));
            self.feed(
                requester,
                Input::FenceFailed {
                    nodeid: target,
                    reason: "fence agent failed".into(),
                },
            );
            return;
        }
        self.start_fence(target);
    }

    fn fence_done(&mut self, target: NodeId) {
        let Some(op) = self.fence_ops.remove(&target) else {
            return;
        };
        self.log(format!(
            "fencer: n{target} fenced (requested at {})",
            op.requested_at
        ));
        self.crash(target, true);
        self.last_fenced.insert(target, self.now);
        let at = self.now;
        let listeners: Vec<(NodeId, u64)> = self
            .nodes
            .values()
            .filter_map(|x| x.daemon.as_ref().map(|d| (x.id, d.inc)))
            .collect();
        for (n, dinc) in listeners {
            let d = self.rng.range(0, 300);
            self.schedule(
                d,
                Event::FenceNotify {
                    node: n,
                    target,
                    at,
                    dinc,
                },
            );
        }
    }

    fn end_faults(&mut self) {
        self.faults_on = false;
        self.log("faults stop: healing, restarting, fencing always works".into());
        self.reboot(0);
        let down: Vec<NodeId> = self
            .nodes
            .values()
            .filter(|x| !x.corosync && !x.reboot_pending)
            .map(|x| x.id)
            .collect();
        for n in down {
            self.schedule(10, Event::Reboot(n));
        }
        let no_daemon: Vec<NodeId> = self
            .nodes
            .values()
            .filter(|x| x.corosync && x.daemon.is_none())
            .map(|x| x.id)
            .collect();
        for n in no_daemon {
            self.schedule(10, Event::DaemonStart(n));
        }
        self.profile.recover_fail = 0.0;
        self.schedule(20_000, Event::OperatorRescue);
    }

    /// When only read-only or spectator mounts hold a filesystem with dirty journals nobody can
    /// replay them (SPEC §5): the documented way out is to unmount them, so that a read-write
    /// mounter becomes first mounter and replays every journal.
    fn operator_rescue(&mut self) {
        for key in self
            .tables
            .iter()
            .map(|t| t.to_string())
            .collect::<Vec<_>>()
        {
            if !self.stalled(&key) {
                continue;
            }
            let holders: Vec<NodeId> = self
                .nodes
                .values()
                .filter(|x| {
                    x.mounts.get(&key).is_some_and(|m| {
                        m.kernel.mode != MountMode::Rw && m.state != MountStep::WaitJid
                    })
                })
                .map(|x| x.id)
                .collect();
            for n in holders {
                self.log(format!("OPERATOR umount {key} on n{n}: only read-only members hold it and journals need replay"));
                self.nodes
                    .get_mut(&n)
                    .expect("node")
                    .mounts
                    .get_mut(&key)
                    .expect("mount")
                    .kernel
                    .unmounting = true;
                self.maybe_finish_unmount(n, &key);
            }
        }
    }

    /// Dirty journals, no read-write member mounted to replay them, and read-only or spectator
    /// members holding the filesystem.
    fn stalled(&self, key: &str) -> bool {
        // What an operator sees in `gfs_control ls`, or what the disk holds.
        let said_dirty = self
            .nodes
            .values()
            .filter_map(|x| x.daemon.as_ref())
            .any(|d| {
                d.core.is_synced()
                    && d.core
                        .replicated()
                        .fs
                        .get(key)
                        .is_some_and(|fs| !fs.dirty.is_empty())
            });
        let dirty = said_dirty || self.journals.iter().any(|((k, _), j)| k == key && j.dirty);
        let mounts: Vec<&Mount> = self
            .nodes
            .values()
            .filter_map(|x| x.mounts.get(key))
            .collect();
        let rw_online = mounts
            .iter()
            .any(|m| m.kernel.mode == MountMode::Rw && m.state == MountStep::Online);
        let ro_active = mounts.iter().any(|m| {
            m.kernel.mode != MountMode::Rw
                && !matches!(m.state, MountStep::WaitJid | MountStep::Withdrawn)
        });
        dirty && !rw_online && ro_active
    }

    // ----- checkers --------------------------------------------------------------------------

    /// S7, after every step.
    fn check_agreement_views(&mut self) {
        if let Some(v) = checker::readmission(&self.nodes) {
            self.violate(v);
        }
    }

    fn stalled_without_rw(&self) -> u64 {
        self.tables
            .iter()
            .filter(|t| self.stalled(&t.to_string()))
            .count() as u64
    }

    fn check_liveness(&mut self) {
        let dlm_waits = self
            .dlm_recoveries
            .iter()
            .map(|r| {
                let members = self.lockspaces.get(&r.table).cloned().unwrap_or_default();
                let waiting: Vec<NodeId> = r
                    .waiting
                    .iter()
                    .copied()
                    .filter(|s| members.contains(s) && !r.notified.contains(s))
                    .collect();
                format!(
                    "DLM recovery of n{} on {} waits (for notifications from {waiting:?}; lockspace {members:?})",
                    r.failed, r.table
                )
            })
            .collect();
        let Some(v) = checker::liveness(&self.nodes, &self.journals, dlm_waits) else {
            return;
        };
        // What each daemon says it waits for: the first thing to read in a liveness failure.
        let views: Vec<String> =
            self.nodes
                .values()
                .filter_map(|x| x.daemon.as_ref().map(|d| (x.id, d)))
                .flat_map(|(id, d)| {
                    let status = d.core.status(self.now);
                    let fence = status
                        .fence_waits
                        .iter()
                        .map(|f| f.nodeid)
                        .collect::<Vec<_>>();
                    d.core.filesystems().into_iter().map(move |f| {
                        format!("n{id} {}: {} (fence waits {fence:?})", f.table, f.state)
                    })
                })
                .collect();
        for v in views {
            self.log(format!("STATE {v}"));
        }
        let reps: Vec<String> = self
            .nodes
            .values()
            .filter_map(|x| x.daemon.as_ref().map(|d| (x.id, d)))
            .map(|(id, d)| format!("REPLICATED n{id} {:?}", d.core.replicated().fs))
            .collect();
        for r in reps {
            self.log(r);
        }
        self.violate(v);
    }
}

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
        if let Some(m) = self
            .w
            .nodes
            .get_mut(&node)
            .and_then(|x| x.mounts.get_mut(&key))
        {
            m.kernel.unmounting = true;
        }
        self.w.maybe_finish_unmount(node, &key);
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
        self.w.dlm_fscontrol = false;
    }

    /// Every registered (node, fs) of dlm_controld, and DLM recoveries still waiting.
    pub fn dlm_pending_recoveries(&self) -> usize {
        self.w.dlm_recoveries.len()
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
        self.w.fence_failures_left = count;
    }

    /// The fencing backend never fences: only `fence_ack` gets a failed node's journal replayed.
    pub fn manual_fencing(&mut self, on: bool) {
        self.w.manual_fencing = on;
    }

    pub fn fence_ack(&mut self, by: NodeId, target: NodeId) {
        self.w.last_acked.insert(target, self.w.now);
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
        &self.w.trace
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
