//! The simulated cluster: an event heap of timed events, their dispatch, and `run`. Each part
//! of the cluster is its own model: corosync CPG and quorum ([`cpg`]), the daemons' drive loop
//! ([`driver`]), each node's GFS2 kernel ([`kernel`], on the shared [`crate::kernel_model`]), the
//! DLM and dlm_controld ([`dlm`]), the sysfs executor ([`sysfs`]), the fencing oracle
//! ([`fencing`]), faults and node lifecycle ([`faults`]), the workload ([`workload`]), the safety
//! rules ([`checker`]) and the run's record ([`trace`]); [`scenario`] is the scripted test API.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use gfs_core::{Input, KernelEvent, LeaveReason, Node, NodeId, Peer, Sabotage, Table, Time};

use crate::rng::Rng;

mod checker;
mod cpg;
mod dlm;
mod driver;
mod faults;
mod fencing;
mod journal;
mod kernel;
mod mount;
mod scenario;
mod sysfs;
mod trace;
mod workload;

pub use checker::{Rule, Violation};
pub use scenario::{KernelView, Scenario};
pub use trace::{ReplayRecord, WriteRecord};

use cpg::{CpgModel, NodeProcesses, Processes};
use dlm::DlmModel;
use faults::Profile;
use fencing::FencingOracle;
use journal::JournalTruth;
use mount::Mount;
use sysfs::SysfsQueues;
use trace::Trace;

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
    /// The daemons fence failed nodes (`enable_fencing=1`); off, they take a failed node as
    /// fenced when it failed, which is safe only when it really died (a crash, not a partition).
    pub fencing: bool,
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
            fencing: true,
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
        incarnation: u64,
    },
    Uevent {
        node: NodeId,
        event: KernelEvent,
        boot: u64,
    },
    /// A sysfs or dlm_controld result reaches the daemon incarnation `incarnation`.
    IoDone {
        node: NodeId,
        incarnation: u64,
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
    /// This daemon process among all of the cluster's (results addressed to an earlier one are dropped).
    incarnation: u64,
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
    daemon_starts: u64,
    reboot_pending: bool,
    /// Every node this kernel incarnation shared a corosync membership with: each of them sees
    /// it leave at some point (a partition or its death), and dlm_controld there then waits.
    seen_with: BTreeSet<NodeId>,
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
    fencing: FencingOracle,
    faults_on: bool,
    step: u64,
    trace: Trace,
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
    /// The mount lock of each filesystem: (holder, kernel instance, holder alive).
    glock: BTreeMap<String, (NodeId, u64, bool)>,
    glock_waiters: BTreeMap<String, VecDeque<NodeId>>,
    dlm: DlmModel,
    sysfs: SysfsQueues,
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
        trace: std::mem::take(&mut w.trace.lines),
        trace_hash: w.trace.hash,
        stalled_without_rw: stalled,
    }
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
        let keep_trace = cfg.trace;
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
            fencing: FencingOracle::default(),
            faults_on: true,
            step: 0,
            trace: Trace::new(keep_trace),
            violation: None,
            failures_injected: 0,
            journals_replayed: 0,
            messages: 0,
            agreement: BTreeMap::new(),
            state_from: None,
            writes: Vec::new(),
            replays: Vec::new(),
            fail_next_replay: BTreeSet::new(),
            glock: BTreeMap::new(),
            glock_waiters: BTreeMap::new(),
            dlm: DlmModel::default(),
            sysfs: SysfsQueues::default(),
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
        w.dlm.fscontrol = w.cfg.dlm_fscontrol;
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
                    daemon_starts: 0,
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
        self.trace.log(self.now, line);
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
                incarnation,
            } => {
                if self.nodes[&node]
                    .daemon
                    .as_ref()
                    .is_some_and(|d| d.incarnation == incarnation)
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
            Event::IoDone {
                node,
                incarnation,
                input,
            } => {
                if self.nodes[&node]
                    .daemon
                    .as_ref()
                    .is_some_and(|d| d.incarnation == incarnation)
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

    /// S7, after every step.
    fn check_agreement_views(&mut self) {
        if let Some(v) = checker::readmission(&self.nodes) {
            self.violate(v);
        }
    }

    fn check_liveness(&mut self) {
        let dlm_waits = self.dlm.waits();
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
