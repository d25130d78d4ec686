//! One daemon's protocol engine: the replicated state plus what only this node knows
//! (its kernel mounts, fencing knowledge, quorum), turning inputs into outputs.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::io::{Input, Level, LogRecord, Output, WriteError};
use crate::state::{MState, Replicated};
use crate::time::Time;
use crate::types::{Jid, LeaveReason, MountMode, NodeId, Peer, SysfsFile, Table, DAEMON_GROUP};
use crate::uevent::{KernelEvent, KernelEventKind};
use crate::view::{
    FenceWaitView, FsView, JournalView, LocalMountView, MemberView, RecoveryTimeline, StatusView,
    TimelineEntry,
};
use crate::wire::{self, Header, Message};

use crate::errno::{EAGAIN, EBADR, ENOTCONN, EOPNOTSUPP, EPERM, EUCLEAN, EUSERS};

/// Test-only switches that break one safety gate each, so tests can prove the simulator's
/// checkers catch the breach. The daemon never sets them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sabotage {
    /// Replay without waiting for the failed node to be fenced (breaks S1).
    pub skip_fencing: bool,
    /// Replay without quorum (breaks S1).
    pub ignore_quorum: bool,
    /// Give every mounter the lowest jid in use (breaks S4).
    pub duplicate_jid: bool,
    /// Unblock as soon as a replayer is chosen, before the replay finished (breaks S3).
    pub early_unblock: bool,
    /// Assign replayers before every member confirmed it blocked.
    pub skip_barrier: bool,
    /// Readmit members that return from a partition with state (breaks S7).
    pub accept_stale_merge: bool,
    /// Give every mounter `first=0`, even when no mount has completed (breaks S5).
    pub skip_first_wait: bool,
    /// Tell dlm_controld a failed node may be recovered as soon as it fails, before this node has
    /// blocked or the node is fenced (breaks S8).
    pub early_dlm_notify: bool,
}

#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub nodeid: NodeId,
    /// This daemon's process id as corosync reports it in the daemon group (the driver's
    /// `getpid()`): our own leave is the one of this instance, not of any process on the node.
    pub pid: u32,
    pub cluster_name: String,
    /// The cluster's configured nodes (corosync nodelist), for startup fencing; empty disables it.
    pub cluster_nodes: Vec<NodeId>,
    pub proto_min: u16,
    pub proto_max: u16,
    pub max_journals: u32,
    /// Wait before retrying a journal this node failed to replay.
    pub recover_retry_ms: u64,
    /// Wait before asking again after the fencing backend failed.
    pub fence_retry_ms: u64,
    /// No journal replay and no first mount without quorum (SPEC S1). Off only for tests.
    pub require_quorum: bool,
    /// Fence failed nodes before their journals are replayed (SPEC S1). Off (the daemon's
    /// `enable_fencing=0`), a failed node counts as fenced at the moment it failed: safe only
    /// where nodes never hang, and never asked of the fencing backend.
    pub require_fencing: bool,
    /// Like dlm_controld's post_join_delay: a node absent when the group formed gets this long to
    /// start its daemon before a first mounter asks for it to be fenced.
    pub startup_fence_delay_ms: u64,
    /// After quorum returns, wait this long for the membership change that brought it (a
    /// partition merge must be resolved before anyone replays: S2, S7).
    pub merge_wait_ms: u64,
    /// Waiting longer than this for a failed node's fencing (or, while inquorate, for quorum)
    /// logs an error, repeated at this interval; 0 never warns.
    pub fence_warn_ms: u64,
    pub timeline_keep: usize,
    pub sabotage: Sabotage,
}

impl NodeConfig {
    pub fn new(nodeid: NodeId, cluster_name: &str) -> Self {
        NodeConfig {
            nodeid,
            pid: 0,
            cluster_name: cluster_name.to_owned(),
            cluster_nodes: Vec::new(),
            proto_min: wire::PROTOCOL_MIN,
            proto_max: wire::PROTOCOL_MAX,
            max_journals: crate::MAX_JOURNALS,
            recover_retry_ms: 1000,
            fence_retry_ms: 5000,
            require_quorum: true,
            require_fencing: true,
            merge_wait_ms: 5000,
            startup_fence_delay_ms: 10_000,
            fence_warn_ms: 60_000,
            timeline_keep: 16,
            sabotage: Sabotage::default(),
        }
    }
}

/// Where this daemon stands with the group's state.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Sync {
    /// Waiting for a STATE answering one of our HELLOs. From our first HELLO's delivery on,
    /// everything delivered (configuration changes included) is kept, so that a snapshot taken
    /// right after any of our HELLOs can be brought up to date by replaying what followed it.
    Unsynced {
        attempt: u32,
        buffer: Vec<Buffered>,
        /// Buffer index right after each of our HELLOs was delivered.
        hello_pos: BTreeMap<u32, usize>,
    },
    Synced,
    /// We lost a partition merge (or cannot speak the group's protocol): we act on nothing
    /// until corosync removes us (S7).
    Stale,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Buffered {
    Msg(Peer, Message),
    ConfChg {
        joined: Vec<Peer>,
        left: Vec<(Peer, LeaveReason)>,
    },
}

/// How far this node's own kernel mount has come.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// `add` seen; waiting for dlm_controld to accept the lockspace registration.
    Registering,
    /// Registered; waiting to be synced before announcing the mount.
    Pending,
    /// MOUNT sent; waiting for the group to admit us.
    Announced,
    /// A spectator admitted by the group: `first` was written only to wait for the DLM join
    /// (a spectator's kernel refuses it), and is read back to learn the mount's own `first`.
    Probing,
    /// `first`/`jid` written; waiting for `online`.
    JidWritten,
    Online,
    Withdrawn,
    /// We refused the mount (negative jid written); waiting for `remove`.
    Refused,
    /// The kernel coordinates recovery itself: hands off.
    KernelManaged,
}

#[derive(Clone, Debug)]
struct LocalFs {
    table: Table,
    mode: MountMode,
    phase: Phase,
    /// Which of our MOUNTs for this table is this mount's; it acts only once that one has been
    /// delivered (an earlier mount's admission may still be in the group's state).
    mount_seq: u64,
    mount_seen: bool,
    /// A `block=1` write was issued and not undone.
    block_requested: bool,
    /// The kernel accepted `block=1` (or the filesystem is gone).
    block_confirmed: bool,
    /// JOURNAL_READY sent for this mount.
    ready_sent: bool,
    /// dlm_controld accepted (or is being asked for) the lockspace registration.
    dlm_registered: bool,
    /// Failed nodes dlm_controld waits to hear about before it recovers their DLM locks (S8).
    dlm_pending: BTreeSet<NodeId>,
    /// Notifications dlm_controld was not ready for (-EAGAIN), asked again at these times.
    dlm_retry: BTreeMap<NodeId, Time>,
    withdraw_acked: bool,
    recovering: BTreeSet<Jid>,
    /// Replays whose result we multicast, with the attempt count it answered: the group has
    /// applied it once the journal is clean or its attempt count moved on.
    reported: BTreeMap<Jid, u32>,
    retry_at: BTreeMap<Jid, Time>,
}

#[derive(Clone, Debug)]
struct FenceRecord {
    failed_at: Time,
    /// The configuration change (`Replicated::confchgs`) that reported the failure, when this
    /// daemon saw it; a FENCED or FENCE_ACK about an earlier failure is stale.
    failed_change: Option<u64>,
    fenced_at: Option<Time>,
    requested: bool,
    retry_at: Option<Time>,
    last_error: Option<String>,
    /// When the slow-fencing warning was last logged for this wait.
    warned_at: Option<Time>,
}

impl FenceRecord {
    fn done(&self) -> bool {
        self.fenced_at.is_some_and(|t| t >= self.failed_at)
    }
}

pub struct Node {
    cfg: NodeConfig,
    now: Time,
    quorate: bool,
    /// When quorum last changed: fencing (and so a wait for it) starts only in a quorate
    /// partition, and a wait for quorum starts when it is lost.
    quorum_changed_at: Time,
    /// Quorum came back and the membership change that brought it is not processed yet.
    quorum_hold_until: Option<Time>,
    /// When this daemon got the group state (startup fencing waits from here).
    synced_at: Time,
    config_members: Vec<NodeId>,
    /// The processes in the daemon group (node ids in `config_members` may be there because
    /// of a process that is not the node's daemon).
    cpg_members: Vec<Peer>,
    /// Messages and membership events ignored per node because they came from a process other
    /// than the node's admitted daemon (the log is rate-limited on this count).
    foreign_seen: BTreeMap<NodeId, u64>,
    /// The corosync membership last reported (daemons or not).
    cluster_members: BTreeSet<NodeId>,
    /// HELLOs seen since the last configuration change: (pid, synced, proto_min, proto_max).
    hellos: BTreeMap<NodeId, (u32, bool, u16, u16)>,
    sync: Sync,
    rep: Replicated,
    local: BTreeMap<String, LocalFs>,
    fence: BTreeMap<NodeId, FenceRecord>,
    /// Our STOPPED is in flight: wait for it before judging whether another is needed.
    stopped_in_flight: bool,
    outputs: VecDeque<Output>,
    timelines: VecDeque<RecoveryTimeline>,
    /// Per table: MOUNTs we sent, and how many of them came back.
    mounts_sent: BTreeMap<String, u64>,
    mounts_delivered: BTreeMap<String, u64>,
    /// Replaying buffered history after adopting a snapshot: the group already acted on it.
    replaying: bool,
    /// Filesystems the current input may have changed (`None`: all of them).
    touched: Option<BTreeSet<String>>,
    /// Failed nodes to take as fenced at their failure once this input's drive is done
    /// (`require_fencing` off), in the order they would have been asked of a backend.
    assume_fenced: Vec<(NodeId, Time)>,
    /// Count of daemon-group messages this node sent (benchmarks).
    pub sent_messages: u64,
}

impl Node {
    /// A node that is about to join the daemon group (the first output is the join).
    pub fn new(cfg: NodeConfig, now: Time) -> Node {
        let mut node = Node {
            cfg,
            now,
            quorate: false,
            quorum_changed_at: now,
            quorum_hold_until: None,
            synced_at: now,
            config_members: Vec::new(),
            cpg_members: Vec::new(),
            foreign_seen: BTreeMap::new(),
            cluster_members: BTreeSet::new(),
            hellos: BTreeMap::new(),
            sync: Sync::Unsynced {
                attempt: 0,
                buffer: Vec::new(),
                hello_pos: BTreeMap::new(),
            },
            rep: Replicated::default(),
            local: BTreeMap::new(),
            fence: BTreeMap::new(),
            stopped_in_flight: false,
            outputs: VecDeque::new(),
            timelines: VecDeque::new(),
            mounts_sent: BTreeMap::new(),
            mounts_delivered: BTreeMap::new(),
            replaying: false,
            touched: None,
            assume_fenced: Vec::new(),
            sent_messages: 0,
        };
        node.outputs.push_back(Output::JoinGroup {
            group: DAEMON_GROUP.to_owned(),
        });
        node
    }

    pub fn nodeid(&self) -> NodeId {
        self.cfg.nodeid
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// The earliest moment this node wants `Input::Timeout`.
    pub fn poll_timeout(&self) -> Option<Time> {
        let retries = self.local.values().flat_map(|l| {
            l.retry_at
                .values()
                .copied()
                .chain(l.dlm_retry.values().copied())
        });
        let fences = self.fence.values().filter_map(|f| f.retry_at);
        let startup = (!self.rep.must_fence.is_empty() && self.is_synced())
            .then(|| self.synced_at.after(self.cfg.startup_fence_delay_ms))
            .filter(|t| *t > self.now);
        let warnings = self
            .fence_waits()
            .into_iter()
            .filter_map(|(_, f)| self.fence_warn_due(f));
        retries
            .chain(fences)
            .chain(self.quorum_hold_until)
            .chain(startup)
            .chain(warnings)
            .min()
    }

    pub fn is_synced(&self) -> bool {
        self.sync == Sync::Synced
    }

    pub fn is_stale(&self) -> bool {
        self.sync == Sync::Stale
    }

    /// No filesystem is mounted here: the daemon may exit cleanly.
    pub fn can_shutdown(&self) -> bool {
        self.local.values().all(|l| l.phase == Phase::KernelManaged)
    }

    /// The lock tables this daemon keeps registered with dlm_controld.
    pub fn dlm_registrations(&self) -> Vec<Table> {
        self.local
            .values()
            .filter(|l| l.dlm_registered)
            .map(|l| l.table.clone())
            .collect()
    }

    /// The digest of the replicated state, for the agreement checker (None when not synced).
    pub fn replicated_digest(&self) -> Option<u64> {
        self.is_synced().then(|| self.rep.digest())
    }

    /// Synced, and every member has said HELLO (no merge can be pending): from here on two such
    /// members of the same configuration must hold identical replicated state (S6).
    pub fn settled_digest(&self) -> Option<u64> {
        (self.is_synced() && self.membership_settled_ignoring_quorum()).then(|| self.rep.digest())
    }

    pub fn replicated(&self) -> &Replicated {
        &self.rep
    }

    pub fn handle(&mut self, now: Time, input: Input) {
        self.now = now.max(self.now);
        let first_output = self.outputs.len();
        self.touched = match &input {
            Input::Kernel(ev) => Some(BTreeSet::from([ev.table.to_string()])),
            Input::WriteDone { table, .. }
            | Input::ReadDone { table, .. }
            | Input::DlmRegistered { table, .. }
            | Input::DlmNotified { table, .. }
            | Input::MountMode { table, .. } => Some(BTreeSet::from([table.to_string()])),
            Input::Deliver { .. } => Some(BTreeSet::new()),
            _ => None,
        };
        match input {
            Input::ConfChg { change, quorate } => {
                self.on_quorum(quorate);
                if change.group == DAEMON_GROUP {
                    self.on_confchg(change.members, change.joined, change.left);
                }
            }
            Input::Deliver {
                group,
                sender,
                payload,
            } => {
                if group == DAEMON_GROUP {
                    self.on_deliver(sender, &payload);
                }
            }
            Input::Quorum { quorate } => self.on_quorum(quorate),
            Input::Membership { members } => self.on_membership(members),
            Input::Kernel(ev) => self.on_kernel(ev),
            Input::WriteDone {
                table,
                file,
                value,
                result,
            } => self.on_write_done(table, file, value, result),
            Input::Fenced { nodeid, at } => self.on_fenced(nodeid, at),
            Input::FenceFailed { nodeid, reason } => {
                let retry = self.now.after(self.cfg.fence_retry_ms);
                if let Some(f) = self.fence.get_mut(&nodeid) {
                    f.requested = false;
                    f.retry_at = Some(retry);
                    f.last_error = Some(reason.clone());
                }
                self.log_node(
                    Level::Warn,
                    nodeid,
                    format!("fencing failed: {reason}; retrying"),
                );
            }
            Input::FenceAck { request, nodeid } => self.on_fence_ack_request(request, nodeid),
            Input::ReadDone {
                table,
                file,
                result,
            } => self.on_read_done(table, file, result),
            Input::DlmRegistered { table, result } => self.on_dlm_registered(table, result),
            Input::DlmNotified {
                table,
                nodeid,
                result,
            } => self.on_dlm_notified(table, nodeid, result),
            Input::MountMode { table, ro } => self.on_mount_mode(table, ro),
            Input::Timeout => {
                let now = self.now;
                for l in self.local.values_mut() {
                    l.retry_at.retain(|_, t| *t > now);
                    let due: Vec<NodeId> = l
                        .dlm_retry
                        .iter()
                        .filter(|(_, t)| **t <= now)
                        .map(|(n, _)| *n)
                        .collect();
                    for n in due {
                        l.dlm_retry.remove(&n);
                        l.dlm_pending.insert(n);
                    }
                }
                for f in self.fence.values_mut() {
                    if f.retry_at.is_some_and(|t| t <= now) {
                        f.retry_at = None;
                    }
                }
                if self.quorum_hold_until.is_some_and(|t| t <= now) {
                    self.quorum_hold_until = None;
                }
            }
        }
        self.drive();
        self.warn_slow_fencing();
        // With fencing off, a fencing request is answered at once, as a backend's answer would
        // be: after everything this input led to.
        while !self.assume_fenced.is_empty() {
            for (nodeid, failed_at) in std::mem::take(&mut self.assume_fenced) {
                self.log_node(
                    Level::Warn,
                    nodeid,
                    "fencing is off (enable_fencing=0): taking the node as fenced when it failed"
                        .into(),
                );
                self.touched = None;
                self.on_fenced(nodeid, failed_at);
                self.drive();
                self.warn_slow_fencing();
            }
        }
        self.fencing_first(first_output);
    }

    /// Fencing is the longest step of a recovery and depends on nothing else asked for with it:
    /// this input's fencing requests go out before its log lines, messages and writes.
    fn fencing_first(&mut self, from: usize) {
        let new = self.outputs.split_off(from);
        let (fences, rest): (Vec<Output>, Vec<Output>) = new
            .into_iter()
            .partition(|o| matches!(o, Output::Fence { .. }));
        self.outputs.extend(fences);
        self.outputs.extend(rest);
    }

    fn on_quorum(&mut self, quorate: bool) {
        if quorate != self.quorate {
            self.log(
                Level::Info,
                None,
                format!("quorum {}", if quorate { "regained" } else { "lost" }),
            );
            if quorate {
                self.quorum_hold_until = Some(self.now.after(self.cfg.merge_wait_ms));
            }
            self.quorum_changed_at = self.now;
        }
        self.quorate = quorate;
    }

    // ----- daemon group -------------------------------------------------------------------

    fn on_confchg(
        &mut self,
        members: Vec<Peer>,
        joined: Vec<Peer>,
        left: Vec<(Peer, LeaveReason)>,
    ) {
        let me = self.me();
        if left.iter().any(|(p, _)| *p == me) {
            return; // our own leave: the daemon is exiting
        }
        let mut members = members;
        members.sort_unstable();
        members.dedup();
        let mut nodes: Vec<NodeId> = members.iter().map(|p| p.nodeid).collect();
        nodes.dedup();
        self.cpg_members = members;
        self.config_members = nodes;
        self.hellos.clear();
        // From here the HELLO gate covers any merge this change brought.
        self.quorum_hold_until = None;
        match &mut self.sync {
            Sync::Stale => {}
            Sync::Unsynced {
                attempt,
                buffer,
                hello_pos,
            } => {
                if !hello_pos.is_empty() {
                    buffer.push(Buffered::ConfChg {
                        joined: joined.clone(),
                        left: left.clone(),
                    });
                }
                // Whoever was to answer us may have left: ask again.
                *attempt += 1;
                let a = *attempt;
                self.send_hello(a);
            }
            Sync::Synced => self.apply_confchg(&joined, &left),
        }
    }

    /// Applies a configuration change to the replicated state. Each node has one admitted daemon
    /// instance: the process that joined while the node had none (or, if that one never said
    /// HELLO, the process of the node that does). Joins and leaves of any other process change
    /// nothing, so a foreign process in the group can neither fake a failure nor a member.
    fn apply_confchg(&mut self, joined: &[Peer], left: &[(Peer, LeaveReason)]) {
        let change = self.rep.confchgs + 1;
        let mut changed = false;
        for (p, reason) in left {
            let Some(m) = self.rep.members.get_mut(&p.nodeid) else {
                self.ignore_foreign(*p, format!("leave ({reason:?})"));
                continue;
            };
            if m.pid != p.pid {
                self.ignore_foreign(*p, format!("leave ({reason:?})"));
                continue;
            }
            changed = true;
            // The instance admitted at its join never spoke: if another process of the node is
            // still in the group, that one may be the daemon (it is judged by its HELLO).
            let heir = (m.proto_max == 0)
                .then(|| self.cpg_members.iter().find(|q| q.nodeid == p.nodeid))
                .flatten();
            if let Some(q) = heir {
                m.pid = q.pid;
                continue;
            }
            self.member_left(p.nodeid, *reason, change);
        }
        let mut admitted = false;
        for p in joined {
            if self.rep.members.contains_key(&p.nodeid) {
                self.ignore_foreign(*p, "join".into());
                continue;
            }
            self.rep.members.insert(
                p.nodeid,
                crate::state::Member {
                    pid: p.pid,
                    joined_at: change,
                    ..Default::default()
                },
            );
            admitted = true;
        }
        if !(changed || admitted) {
            return; // only processes other than daemons came or went
        }
        self.rep.confchgs = change;
        if admitted {
            self.send_hello(0);
        }
        self.settle_all();
    }

    /// This daemon as corosync reports it in the group.
    fn me(&self) -> Peer {
        Peer::new(self.cfg.nodeid, self.cfg.pid)
    }

    /// `node`'s admitted daemon is in the group. Before we hold the group's state, any process
    /// of the node counts (the admitted instances are not known yet).
    fn daemon_in_group(&self, node: NodeId) -> bool {
        if !self.is_synced() {
            return self.config_members.contains(&node);
        }
        self.rep
            .members
            .get(&node)
            .is_some_and(|m| self.cpg_members.contains(&Peer::new(node, m.pid)))
    }

    /// A membership event or message of a process that is not its node's daemon: ignored, and
    /// logged for the first one per node and every 100th after (deterministic rate limit).
    fn ignore_foreign(&mut self, peer: Peer, what: String) {
        let n = self.foreign_seen.entry(peer.nodeid).or_default();
        *n += 1;
        let n = *n;
        if n == 1 || n.is_multiple_of(100) {
            self.log_node(
                Level::Warn,
                peer.nodeid,
                format!(
                    "ignored {what} of process {} on node {}: not the node's gfs_controld ({n} ignored from this node)",
                    peer.pid, peer.nodeid
                ),
            );
        }
    }

    /// A process in the daemon group holding mounts (or a mount in progress) in the group's
    /// state. Only such a node needs fencing when its daemon dies.
    fn holds_mounts(&self, node: NodeId) -> bool {
        self.rep
            .fs
            .values()
            .any(|fs| fs.mounters.contains_key(&node))
    }

    fn member_left(&mut self, node: NodeId, reason: LeaveReason, change: u64) {
        let was_stale = self.rep.members.get(&node).is_some_and(|m| m.stale);
        // A daemon that died on a node holding nothing leaves no journal and no lock behind: the
        // node stays in the cluster and its daemon may simply start again.
        let reason = if reason == LeaveReason::ProcDown && !self.holds_mounts(node) {
            self.log_node(
                Level::Warn,
                node,
                "gfs_controld died on a node that holds no gfs2 mount: nothing to fence".into(),
            );
            LeaveReason::Leave
        } else {
            reason
        };
        let fx = self.rep.remove_member(node, reason.is_failure());
        let failure = reason.is_failure() || !fx.dirtied.is_empty();
        if reason.is_failure() {
            // dlm_controld holds DLM recovery of the node's locks in every registered lockspace
            // until this node says it has blocked against it.
            for l in self.local.values_mut().filter(|l| l.dlm_registered) {
                if self.cfg.sabotage.early_dlm_notify {
                    self.outputs.push_back(Output::DlmNotify {
                        table: l.table.clone(),
                        nodeid: node,
                    });
                } else {
                    l.dlm_pending.insert(node);
                }
            }
        }
        if failure && !was_stale {
            let rec = self.fence.entry(node).or_insert(FenceRecord {
                failed_at: self.now,
                failed_change: Some(change),
                fenced_at: None,
                requested: false,
                retry_at: None,
                last_error: None,
                warned_at: None,
            });
            rec.failed_at = self.now;
            rec.failed_change = Some(change);
            rec.fenced_at = None;
            rec.requested = false;
            rec.retry_at = None;
        }
        // A daemon that died under live mounts (PROCDOWN) is fenced like a failed node: its node
        // stays in corosync until the fencing backend acts. Asking corosync to remove it as well
        // would stall the ring (and pacemaker's fencer with it) for a token timeout.
        if !fx.dirtied.is_empty() {
            let epoch = self.rep.epoch;
            let tables: BTreeSet<String> = fx.dirtied.iter().map(|(t, _, _)| t.clone()).collect();
            self.timeline_start(epoch, node, &tables);
            for (table, jid, owner) in &fx.dirtied {
                self.log_full(
                    Level::Warn,
                    Some(table),
                    Some(*owner),
                    Some(*jid),
                    format!("member failed ({reason:?}): journal needs replay"),
                );
            }
        }
    }

    fn send_hello(&mut self, attempt: u32) {
        let side = self
            .rep
            .members
            .iter()
            .filter(|(_, m)| m.synced && !m.stale)
            .map(|(id, _)| *id)
            .collect();
        let msg = Message::Hello {
            proto_min: self.cfg.proto_min,
            proto_max: self.cfg.proto_max,
            attempt,
            synced: self.is_synced(),
            side: if self.is_synced() { side } else { Vec::new() },
            config: self.config_members.clone(),
        };
        self.send(msg);
    }

    fn send(&mut self, msg: Message) {
        if self.replaying {
            return;
        }
        // HELLO and STATE must be readable by any daemon: they always use the base version.
        let version = match msg {
            Message::Hello { .. } | Message::State { .. } => wire::PROTOCOL_MIN,
            _ if self.rep.version > 0 => self.rep.version,
            _ => wire::PROTOCOL_MIN,
        };
        let header = Header {
            version,
            sender: self.cfg.nodeid,
            change: self.rep.epoch,
        };
        self.sent_messages += 1;
        self.outputs.push_back(Output::Mcast {
            group: DAEMON_GROUP.to_owned(),
            payload: wire::encode(&header, &msg),
        });
    }

    fn on_deliver(&mut self, peer: Peer, payload: &[u8]) {
        let sender = peer.nodeid;
        let (header, msg) = match wire::decode_up_to(payload, self.cfg.proto_max) {
            Ok(x) => x,
            Err(e) => {
                self.log_node(
                    Level::Warn,
                    sender,
                    format!("dropped a malformed message from process {}: {e}", peer.pid),
                );
                return;
            }
        };
        if header.sender != sender {
            self.log_node(
                Level::Warn,
                sender,
                format!(
                    "dropped a message claiming to come from node {} (process {})",
                    header.sender, peer.pid
                ),
            );
            return;
        }
        if let Message::Hello {
            synced,
            proto_min,
            proto_max,
            config,
            ..
        } = &msg
        {
            if *config == self.config_members {
                // The first HELLO of a node counts: that process is the one the group forms with.
                self.hellos
                    .entry(sender)
                    .or_insert((peer.pid, *synced, *proto_min, *proto_max));
            }
        }
        let me = self.me();
        match &mut self.sync {
            Sync::Stale => {}
            Sync::Synced => self.apply_from(peer, msg),
            Sync::Unsynced {
                attempt,
                buffer,
                hello_pos,
            } => {
                match msg {
                    Message::Hello { attempt: a, .. } if peer == me && a <= *attempt => {
                        hello_pos.insert(a, buffer.len());
                    }
                    Message::State {
                        recipient,
                        attempt: a,
                        snapshot,
                    } if recipient == me.nodeid => match hello_pos.get(&a) {
                        Some(pos) => {
                            let replay = buffer.split_off(*pos);
                            self.adopt(snapshot, replay, sender);
                            return;
                        }
                        None => self.log_node(
                            Level::Error,
                            sender,
                            format!("a STATE answers a HELLO ({a}) we never saw delivered"),
                        ),
                    },
                    other => {
                        if !hello_pos.is_empty() {
                            buffer.push(Buffered::Msg(peer, other));
                        }
                    }
                }
                self.maybe_bootstrap();
            }
        }
    }

    /// Everyone in the configuration said HELLO and nobody holds state: the group starts here,
    /// at the same stream position on every member.
    fn maybe_bootstrap(&mut self) {
        if !matches!(&self.sync, Sync::Unsynced { hello_pos, .. } if !hello_pos.is_empty()) {
            return;
        }
        let all_said_hello = self
            .config_members
            .iter()
            .all(|n| self.hellos.contains_key(n));
        if !all_said_hello || self.hellos.values().any(|(_, synced, _, _)| *synced) {
            return;
        }
        let ranges: BTreeMap<NodeId, (u32, u16, u16)> = self
            .config_members
            .iter()
            .filter_map(|n| {
                self.hellos
                    .get(n)
                    .map(|(pid, _, min, max)| (*n, (*pid, *min, *max)))
            })
            .collect();
        let must_fence: BTreeSet<NodeId> = self
            .cfg
            .cluster_nodes
            .iter()
            .copied()
            .filter(|n| !ranges.contains_key(n))
            .collect();
        self.rep = Replicated::bootstrap(&ranges, must_fence.clone());
        self.sync = Sync::Synced;
        for n in &must_fence {
            self.fence.entry(*n).or_insert(FenceRecord {
                failed_at: self.now,
                // Absent since before the group formed: any fence report counts.
                failed_change: Some(0),
                fenced_at: None,
                requested: false,
                retry_at: None,
                last_error: None,
                warned_at: None,
            });
        }
        self.log(
            Level::Info,
            None,
            format!(
                "formed the group with members {:?} (protocol {}); absent nodes to fence before a first mount: {:?}",
                self.config_members, self.rep.version, must_fence
            ),
        );
        self.after_sync();
    }

    fn adopt(&mut self, snapshot: Replicated, replay: Vec<Buffered>, from: NodeId) {
        self.rep = snapshot;
        self.sync = Sync::Synced;
        self.replaying = true;
        for entry in replay {
            match entry {
                Buffered::Msg(sender, msg) => self.apply_from(sender, msg),
                Buffered::ConfChg { joined, left } => self.apply_confchg(&joined, &left),
            }
        }
        self.replaying = false;
        if self.is_stale() {
            // The replay judged a merge that the sender's side lost: we hold its state and
            // leave with it (stale_merge asked corosync to remove us).
            return;
        }
        // The STATE's own delivery marks us synced everywhere.
        let now = self.rep.confchgs;
        if let Some(m) = self.rep.members.get_mut(&self.cfg.nodeid) {
            if !m.synced {
                m.synced = true;
                m.synced_at = now;
            }
        }
        self.log(
            Level::Info,
            None,
            format!(
                "received the group state from node {from}: {} filesystems, protocol {}",
                self.rep.fs.len(),
                self.rep.version
            ),
        );
        self.after_sync();
    }

    fn after_sync(&mut self) {
        self.synced_at = self.now;
        self.touched = None;
        if self.rep.version < self.cfg.proto_min {
            self.log(
                Level::Error,
                None,
                format!(
                    "the group runs protocol {} but this daemon needs at least {}: not taking part",
                    self.rep.version, self.cfg.proto_min
                ),
            );
            self.sync = Sync::Stale;
            return;
        }
        // Any failure the state records happened before we knew of it: fencing is judged from now.
        let needs: Vec<NodeId> = self.fence_needs().into_iter().collect();
        for n in needs {
            self.fence.entry(n).or_insert(FenceRecord {
                failed_at: self.now,
                failed_change: None,
                fenced_at: None,
                requested: false,
                retry_at: None,
                last_error: None,
                warned_at: None,
            });
        }
        self.seed_dlm_pending();
        let pending: Vec<String> = self
            .local
            .iter()
            .filter(|(_, l)| l.phase == Phase::Pending)
            .map(|(t, _)| t.clone())
            .collect();
        for table in pending {
            self.announce_mount(&table);
        }
        self.settle_all();
    }

    fn lowest_active(&self) -> Option<NodeId> {
        self.rep
            .members
            .iter()
            .find(|(id, m)| m.synced && !m.stale && self.config_members.contains(id))
            .map(|(id, _)| *id)
    }

    /// Apply a message if it comes from its node's admitted daemon (synced nodes only).
    fn apply_from(&mut self, peer: Peer, msg: Message) {
        match self.rep.members.get_mut(&peer.nodeid) {
            Some(m) if m.pid == peer.pid => {}
            Some(m) if m.proto_max == 0 && matches!(msg, Message::Hello { .. }) => {
                // The process admitted at its join never said HELLO; this one of the same node
                // does: it is the daemon (the other one is ignored from now on).
                let old = std::mem::replace(&mut m.pid, peer.pid);
                self.log_node(
                    Level::Info,
                    peer.nodeid,
                    format!(
                        "process {} is the node's gfs_controld, not process {old}",
                        peer.pid
                    ),
                );
            }
            // A STATE from outside the state: see `apply`.
            None if matches!(msg, Message::State { .. }) => {}
            _ => {
                self.ignore_foreign(peer, msg.name().into());
                return;
            }
        }
        self.apply(peer.nodeid, msg);
    }

    /// Apply one delivered message to the replicated state (synced nodes only).
    fn apply(&mut self, sender: NodeId, msg: Message) {
        let me = self.cfg.nodeid;
        // A message about one filesystem can only change what is decided for that one.
        let scope = match &msg {
            Message::Mount { table, .. }
            | Message::Mounted { table }
            | Message::JournalReady { table }
            | Message::Unmount { table }
            | Message::Withdraw { table }
            | Message::Remount { table, .. }
            | Message::Recovered { table, .. } => Some(table.clone()),
            _ => None,
        };
        match msg {
            Message::Hello {
                proto_min,
                proto_max,
                attempt,
                synced,
                side,
                config,
            } => {
                let Some(member) = self.rep.members.get_mut(&sender) else {
                    return;
                };
                member.proto_min = proto_min;
                member.proto_max = proto_max;
                if member.synced || sender == me {
                    self.rep.renegotiate();
                    return;
                }
                if member.stale {
                    // Judged already; corosync is removing it.
                    return;
                }
                if !synced && member.synced_by.is_some() {
                    // Sent before the STATE from the other side of a merge reached it: it now
                    // holds that side's state and is judged with it.
                    return;
                }
                if !synced {
                    // A daemon with no state holds no gfs2 mounts (it refuses to start with
                    // them): whatever kernel wrote that node's journals is gone, which is what
                    // fencing would have ensured.
                    self.rep.forget_failure(sender);
                    for fs in self.rep.fs.values_mut() {
                        fs.fence_before_first.remove(&sender);
                        for d in fs.dirty.values_mut() {
                            d.fence.remove(&sender);
                        }
                    }
                    self.rep.renegotiate();
                    if self.lowest_active() == Some(me) {
                        let snapshot = self.rep.clone();
                        self.send(Message::State {
                            recipient: sender,
                            attempt,
                            snapshot,
                        });
                    }
                    return;
                }
                // Virtual synchrony: the sender is a member (it is in `rep.members`) of the
                // configuration this HELLO was delivered in, so it is from its current
                // incarnation. Not `config_members`: a joiner replaying its buffered history
                // holds the latest configuration, which the sender may have left since.
                let _ = config;
                self.stale_merge(sender, side);
            }
            Message::State { recipient, .. } => {
                // The first STATE addressed to a member syncs it: it can apply a STATE answering
                // any of its HELLOs. A STATE from outside our side (the other side of a merge
                // not yet resolved, or a stale member) puts the recipient on the sender's side.
                let sender_stale = self.rep.members.get(&sender).is_some_and(|m| m.stale);
                // A sender no longer in the state left before this delivery; corosync delivers a
                // member's messages before its leave, so in practice this is our own side's.
                let ours =
                    self.rep.active_member(sender) || !self.rep.members.contains_key(&sender);
                let mut kill = false;
                let now = self.rep.confchgs;
                if let Some(m) = self.rep.members.get_mut(&recipient) {
                    if m.synced || m.stale || m.synced_by.is_some() {
                        // Already judged: only its first STATE counts.
                    } else if ours {
                        m.synced = true;
                        m.synced_at = now;
                    } else if sender_stale {
                        m.stale = true;
                        kill = true;
                    } else {
                        m.synced_by = Some(sender);
                    }
                }
                if kill {
                    self.remove_stale(recipient, "adopted the state of a stale member");
                }
            }
            _ if !self.rep.active_member(sender) => {
                self.log_node(
                    Level::Debug,
                    sender,
                    format!("ignored {} from a member without state", msg.name()),
                );
            }
            Message::Mount { table, mode } => {
                if sender == me {
                    let n = self.mounts_delivered.entry(table.clone()).or_default();
                    *n += 1;
                    let n = *n;
                    if let Some(l) = self.local.get_mut(&table) {
                        if l.mount_seq == n {
                            l.mount_seen = true;
                        }
                    }
                }
                let max = self.cfg.max_journals;
                let dup = self.cfg.sabotage.duplicate_jid;
                match self
                    .rep
                    .add_mounter(&table, sender, mode, max, dup)
                    .cloned()
                {
                    Some(m) if m.state == MState::Rejected => self.log_full(
                        Level::Error,
                        Some(&table),
                        Some(sender),
                        None,
                        format!("no free journal among {max}: mount refused"),
                    ),
                    Some(m) => self.log_full(
                        Level::Info,
                        Some(&table),
                        Some(sender),
                        m.jid,
                        format!("mounting {}", mode.as_str()),
                    ),
                    None => self.log_full(
                        Level::Warn,
                        Some(&table),
                        Some(sender),
                        None,
                        "duplicate mount ignored".into(),
                    ),
                }
            }
            Message::Mounted { table } => {
                if let Some(m) = self
                    .rep
                    .fs
                    .get_mut(&table)
                    .and_then(|fs| fs.mounters.get_mut(&sender))
                {
                    if matches!(m.state, MState::First | MState::Admitted) {
                        m.state = MState::Mounted;
                        m.ready = true;
                    }
                }
            }
            Message::JournalReady { table } => {
                let first = self
                    .rep
                    .fs
                    .get(&table)
                    .and_then(|fs| fs.mounters.get(&sender))
                    .is_some_and(|m| m.state == MState::First);
                if self.rep.journal_ready(&table, sender) {
                    self.log_full(
                        Level::Info,
                        Some(&table),
                        Some(sender),
                        None,
                        if first {
                            "first mounter replayed every journal it could lock".into()
                        } else {
                            "journal ready".into()
                        },
                    );
                }
            }
            Message::Unmount { table } => {
                self.rep.unmount(&table, sender);
                self.rep.forget_if_empty(&table);
            }
            Message::Withdraw { table } => {
                if self.rep.withdraw(&table, sender) {
                    let epoch = self.rep.epoch;
                    self.timeline_start(epoch, sender, &BTreeSet::from([table.clone()]));
                    self.log_full(
                        Level::Warn,
                        Some(&table),
                        Some(sender),
                        None,
                        "member withdrew: its journal needs replay".into(),
                    );
                }
            }
            Message::Remount { table, mode } => {
                // A journal stays with its replayer: a replay it already started reports as
                // usual, and it hands back the ones it has not started (S2).
                if let Some(m) = self
                    .rep
                    .fs
                    .get_mut(&table)
                    .and_then(|fs| fs.mounters.get_mut(&sender))
                {
                    if m.mode != MountMode::Spectator && mode != MountMode::Spectator {
                        m.mode = mode;
                    }
                }
                self.rep.prune_stopped(&table);
            }
            Message::Stopped { epoch, tables } => {
                if sender == me {
                    self.stopped_in_flight = false;
                }
                // Only the filesystems the sender had blocked when it sent this: it may have
                // become a participant of another one while the message was in flight.
                let members = self.rep.members.clone();
                for table in &tables {
                    if let Some(fs) = self.rep.fs.get_mut(table) {
                        if fs.is_participant(sender, &members) && fs.dirty_epoch <= epoch {
                            fs.stopped.insert(sender);
                        }
                    }
                }
            }
            Message::Recovered {
                table,
                jid,
                done,
                attempt,
            } => self.on_recovered(&table, jid, done, attempt, sender),
            Message::FenceAck { nodeid, failure } => {
                if self.agree_fenced(nodeid, failure)
                    && self.fenced_by_message(nodeid, failure, "FENCE_ACK", sender)
                {
                    self.log_node(
                        Level::Warn,
                        nodeid,
                        format!("fencing acknowledged by an operator on node {sender}"),
                    );
                    self.timeline_note(nodeid, format!("node {nodeid} fence-acked by operator"));
                }
            }
            Message::Fenced { nodeid, failure } => {
                // Only the member that runs the fencing backend reports fencing.
                let fencer = self.lowest_active();
                if fencer != Some(sender) {
                    self.log_node(
                        Level::Warn,
                        nodeid,
                        format!("ignored FENCED from node {sender}: node {fencer:?} runs the fencing backend"),
                    );
                } else if !self.agree_fenced(nodeid, failure) || sender == me {
                    // Our own report: the backend's answer was taken when it came.
                } else if self.fenced_by_message(nodeid, failure, "FENCED", sender) {
                    self.log_node(
                        Level::Info,
                        nodeid,
                        format!("fenced (reported by node {sender})"),
                    );
                    self.timeline_note(nodeid, format!("node {nodeid} fenced (by node {sender})"));
                }
            }
        }
        match scope {
            Some(table) => {
                self.settle(&table);
                if let Some(t) = self.touched.as_mut() {
                    t.insert(table);
                }
            }
            None => {
                self.settle_all();
                self.touched = None;
            }
        }
    }

    fn stale_merge(&mut self, other: NodeId, their_side: Vec<NodeId>) {
        let me = self.cfg.nodeid;
        if self.cfg.sabotage.accept_stale_merge {
            if let Some(m) = self.rep.members.get_mut(&other) {
                m.synced = true;
            }
            return;
        }
        // Sides are judged as they stood when the merge began (the configuration change that
        // brought `other` in), in every member's view alike: a daemon synced since then counts
        // for neither side and shares the fate of the side that synced it.
        let merged_at = self.rep.members.get(&other).map_or(0, |m| m.joined_at);
        let adopted: Vec<NodeId> = self
            .rep
            .members
            .iter()
            .filter(|(_, m)| {
                m.synced_by
                    .is_some_and(|by| by == other || their_side.contains(&by))
            })
            .map(|(id, _)| *id)
            .collect();
        let my_side: Vec<NodeId> = self
            .rep
            .members
            .iter()
            .filter(|(_, m)| m.synced && !m.stale && m.synced_at < merged_at)
            .map(|(id, _)| *id)
            .collect();
        // The bigger side keeps its state; on a tie, the side holding the lowest nodeid.
        let key = |side: &[NodeId]| {
            (
                std::cmp::Reverse(side.len()),
                side.iter().min().copied().unwrap_or(u32::MAX),
            )
        };
        if key(&my_side) <= key(&their_side) {
            self.log_node(
                Level::Error,
                other,
                format!("node came back from a partition with stale state (its side {their_side:?}, ours {my_side:?}): removing it"),
            );
            self.remove_stale(other, "rejoined after a partition with stale state");
            for node in adopted {
                self.remove_stale(
                    node,
                    "took its state from the losing side of a partition merge",
                );
            }
        } else {
            self.log(
                Level::Error,
                None,
                format!("our side {my_side:?} lost a partition merge to {their_side:?}: leaving the cluster to be fenced"),
            );
            self.sync = Sync::Stale;
            // The winners remove us too; this also covers winners that have gone meanwhile.
            self.outputs.push_back(Output::KillNode {
                nodeid: me,
                reason: "lost a partition merge: its state is stale".into(),
            });
        }
    }

    /// Marks `node` stale (ignored from now on) and has the lowest active member ask corosync
    /// to remove it.
    fn remove_stale(&mut self, node: NodeId, reason: &str) {
        let me = self.cfg.nodeid;
        let newly = match self.rep.members.get_mut(&node) {
            Some(m) if !m.stale => {
                m.stale = true;
                true
            }
            _ => false,
        };
        if newly && self.lowest_active() == Some(me) && !self.replaying {
            self.outputs.push_back(Output::KillNode {
                nodeid: node,
                reason: reason.into(),
            });
        }
    }

    fn on_recovered(&mut self, table: &str, jid: Jid, done: bool, attempt: u32, sender: NodeId) {
        let Some(fs) = self.rep.fs.get_mut(table) else {
            return;
        };
        let Some(d) = fs.dirty.get_mut(&jid) else {
            return;
        };
        if d.replayer == Some(sender) && d.attempts != attempt {
            let current = d.attempts;
            self.log_full(
                Level::Warn,
                Some(table),
                Some(sender),
                Some(jid),
                format!("ignored a stale replay result (attempt {attempt}, the journal is at attempt {current})"),
            );
            return;
        }
        if d.replayer != Some(sender) {
            self.log_full(
                Level::Debug,
                Some(table),
                Some(sender),
                Some(jid),
                "ignored a replay result from a node not assigned".into(),
            );
            return;
        }
        let owner = d.owner;
        if done {
            fs.dirty.remove(&jid);
            if fs.dirty.is_empty() {
                fs.stopped.clear();
            }
            self.log_full(
                Level::Info,
                Some(table),
                Some(sender),
                Some(jid),
                format!("journal of node {owner} replayed"),
            );
            self.timeline_note(
                owner,
                format!("replay of jid {jid} ({table}) done by node {sender}"),
            );
        } else {
            d.attempts = d.attempts.saturating_add(1);
            d.last_failed_by = Some(sender);
            d.replayer = None;
            self.log_full(
                Level::Warn,
                Some(table),
                Some(sender),
                Some(jid),
                "journal replay failed: handing it on".into(),
            );
            self.timeline_note(
                owner,
                format!("replay of jid {jid} ({table}) failed on node {sender}"),
            );
        }
    }

    /// Re-run admission and replayer choice everywhere (deterministic: same on every member).
    fn settle_all(&mut self) {
        let tables: Vec<String> = self.rep.fs.keys().cloned().collect();
        for table in tables {
            self.settle(&table);
        }
    }

    fn settle(&mut self, table: &str) {
        let skip_barrier = self.cfg.sabotage.skip_barrier;
        for (node, state) in self.rep.admit(table) {
            let (level, what) = match state {
                MState::First => (Level::Info, "may mount as a first mounter (first=1)"),
                MState::NeedsRw => (
                    Level::Error,
                    "mount refused: journals of failed nodes need a read-write mounter to replay them",
                ),
                _ => (Level::Info, "may mount"),
            };
            self.log_full(level, Some(table), Some(node), None, what.into());
        }
        for (jid, node) in self.rep.assign_replayers(table, skip_barrier) {
            let owner = self.rep.fs[table].dirty[&jid].owner;
            self.log_full(
                Level::Info,
                Some(table),
                Some(node),
                Some(jid),
                format!("assigned to replay the journal of node {owner}"),
            );
            self.timeline_note(
                owner,
                format!("replay of jid {jid} ({table}) assigned to node {node}"),
            );
        }
    }

    // ----- local kernel ------------------------------------------------------------------

    fn on_kernel(&mut self, ev: KernelEvent) {
        let key = ev.table.to_string();
        if self.is_stale() {
            self.log(
                Level::Warn,
                Some(&key),
                format!("ignoring {:?}: this daemon lost a partition merge", ev.kind),
            );
            return;
        }
        match ev.kind {
            KernelEventKind::Add {
                ro,
                spectator,
                kernel_managed,
            } => {
                if self.local.contains_key(&key) {
                    self.log(
                        Level::Warn,
                        Some(&key),
                        "duplicate add uevent ignored".into(),
                    );
                    return;
                }
                let mode = MountMode::from_flags(ro, spectator);
                let mut l = LocalFs {
                    table: ev.table.clone(),
                    mode,
                    phase: Phase::Registering,
                    mount_seq: 0,
                    mount_seen: false,
                    block_requested: false,
                    block_confirmed: false,
                    ready_sent: false,
                    dlm_registered: false,
                    dlm_pending: BTreeSet::new(),
                    dlm_retry: BTreeMap::new(),
                    withdraw_acked: false,
                    recovering: BTreeSet::new(),
                    reported: BTreeMap::new(),
                    retry_at: BTreeMap::new(),
                };
                if kernel_managed {
                    l.phase = Phase::KernelManaged;
                    self.local.insert(key.clone(), l);
                    self.log(
                        Level::Info,
                        Some(&key),
                        "kernel-managed: the DLM offers recovery callbacks (recover_callbacks=1), so the kernel picks journals and recovers by itself; leaving it alone".into(),
                    );
                    return;
                }
                if ev.table.cluster() != self.cfg.cluster_name {
                    l.phase = Phase::Refused;
                    self.local.insert(key.clone(), l);
                    self.log(
                        Level::Error,
                        Some(&key),
                        format!("refusing the mount: the filesystem belongs to cluster {:?}, this is {:?}", ev.table.cluster(), self.cfg.cluster_name),
                    );
                    self.write(&ev.table, SysfsFile::Jid, -(EBADR as i64));
                    return;
                }
                // Registered before any jid is written, so that dlm_controld holds DLM recovery
                // of a failed node's locks until this node has blocked (S8).
                l.dlm_registered = true;
                self.local.insert(key.clone(), l);
                self.seed_dlm_pending();
                self.outputs
                    .push_back(Output::DlmRegister { table: ev.table });
            }
            KernelEventKind::Online { ro, spectator } => {
                let Some(l) = self.local.get_mut(&key) else {
                    return;
                };
                match l.phase {
                    Phase::JidWritten => {
                        l.phase = Phase::Online;
                        self.send(Message::Mounted { table: key });
                    }
                    Phase::Online => {
                        // After a remount the kernel reports the mode from before it; the
                        // driver's `MountMode` brings the new one. A differing value here can
                        // only be newer than ours.
                        self.set_mode(&key, MountMode::from_flags(ro, spectator));
                    }
                    _ => {}
                }
            }
            KernelEventKind::FirstMountDone => {
                // A first mounter's kernel tried every journal: its own is ready.
                if self
                    .own_mounter(&key)
                    .is_some_and(|m| m.state == MState::First)
                {
                    self.journal_ready(&key);
                }
            }
            KernelEventKind::Recovery { jid, done } => {
                if self.local.get(&key).map(|l| l.phase) == Some(Phase::KernelManaged) {
                    // Observed only: the kernel recovers a kernel-managed filesystem by itself.
                    let what = if done { "replayed" } else { "could not replay" };
                    self.log_full(
                        Level::Info,
                        Some(&key),
                        None,
                        Some(jid),
                        format!("the kernel {what} a journal (kernel-managed)"),
                    );
                    return;
                }
                let retry = self.now.after(self.cfg.recover_retry_ms);
                let attempts = self.journal_attempts(&key, jid);
                let own = self.own_mounter(&key).cloned();
                if own
                    .as_ref()
                    .is_some_and(|m| m.jid == Some(jid) && m.state == MState::Admitted)
                {
                    // A `first=0` mount checked its own journal: it is ready.
                    self.journal_ready(&key);
                    return;
                }
                let Some(l) = self.local.get_mut(&key) else {
                    return;
                };
                if !l.recovering.remove(&jid) {
                    // A first mounter's journal checks, or peers' kernels after a withdraw:
                    // not a replay this daemon asked for.
                    return;
                }
                l.reported.insert(jid, attempts);
                if !done {
                    l.retry_at.insert(jid, retry);
                }
                self.send(Message::Recovered {
                    table: key,
                    jid,
                    done,
                    attempt: attempts,
                });
            }
            KernelEventKind::Offline => {
                let Some(l) = self.local.get_mut(&key) else {
                    return;
                };
                if matches!(l.phase, Phase::JidWritten | Phase::Online) {
                    l.phase = Phase::Withdrawn;
                    l.recovering.clear();
                    self.log(
                        Level::Warn,
                        Some(&key),
                        "filesystem withdrew: others will replay its journal".into(),
                    );
                    self.send(Message::Withdraw { table: key });
                }
            }
            KernelEventKind::Remove => self.mount_gone(&key, "unmounted"),
        }
    }

    /// This node's mount of `key` ended (`remove`, or its sysfs directory is gone): the group
    /// drops it, so no node keeps a filesystem nobody holds.
    fn mount_gone(&mut self, key: &str, why: &str) {
        {
            {
                let Some(l) = self.local.remove(key) else {
                    return;
                };
                // The group must hear of it if it heard of the mount (a mount refused for the
                // wrong cluster never reached it).
                let in_group = self
                    .rep
                    .fs
                    .get(key)
                    .is_some_and(|fs| fs.mounters.contains_key(&self.cfg.nodeid));
                let announced = match l.phase {
                    Phase::Announced | Phase::Probing | Phase::JidWritten | Phase::Online => true,
                    Phase::Refused => in_group,
                    _ => false,
                };
                if l.dlm_registered {
                    self.outputs.push_back(Output::DlmUnregister {
                        table: l.table.clone(),
                    });
                }
                if announced {
                    self.send(Message::Unmount {
                        table: key.to_owned(),
                    });
                }
                self.log(Level::Info, Some(key), why.into());
            }
        }
    }

    fn journal_attempts(&self, table: &str, jid: Jid) -> u32 {
        self.rep
            .fs
            .get(table)
            .and_then(|fs| fs.dirty.get(&jid))
            .map_or(0, |d| d.attempts)
    }

    /// A node that failed earlier may still be in a lockspace (its daemon died but its kernel
    /// lives until fenced): dlm_controld will wait for every registered mount to confirm it
    /// too once it sees the node go, so each registered mount owes it a notification.
    fn seed_dlm_pending(&mut self) {
        let failed: BTreeSet<NodeId> = self
            .rep
            .must_fence
            .iter()
            .copied()
            .chain(
                self.fence
                    .iter()
                    .filter(|(_, f)| !f.done())
                    .map(|(n, _)| *n),
            )
            .filter(|n| !self.daemon_in_group(*n))
            .collect();
        for l in self.local.values_mut().filter(|l| l.dlm_registered) {
            l.dlm_pending.extend(failed.iter().copied());
        }
    }

    fn own_mounter(&self, table: &str) -> Option<&crate::state::Mounter> {
        self.rep
            .fs
            .get(table)
            .and_then(|fs| fs.mounters.get(&self.cfg.nodeid))
    }

    /// Tell the group once that this mount's journal work is done (see `Mounter::ready`).
    fn journal_ready(&mut self, table: &str) {
        let Some(l) = self.local.get_mut(table) else {
            return;
        };
        if l.ready_sent || l.phase != Phase::JidWritten {
            return;
        }
        l.ready_sent = true;
        self.send(Message::JournalReady {
            table: table.to_owned(),
        });
    }

    fn set_mode(&mut self, table: &str, mode: MountMode) {
        let Some(l) = self.local.get_mut(table) else {
            return;
        };
        if l.phase != Phase::Online || mode == l.mode || l.mode == MountMode::Spectator {
            return;
        }
        l.mode = mode;
        self.log(
            Level::Info,
            Some(table),
            format!("remounted {}", mode.as_str()),
        );
        self.send(Message::Remount {
            table: table.to_owned(),
            mode,
        });
    }

    fn on_mount_mode(&mut self, table: Table, ro: bool) {
        let key = table.to_string();
        let mode = if ro { MountMode::Ro } else { MountMode::Rw };
        self.set_mode(&key, mode);
    }

    fn on_dlm_registered(&mut self, table: Table, result: Result<(), i32>) {
        let key = table.to_string();
        let Some(l) = self.local.get_mut(&key) else {
            return;
        };
        if l.phase != Phase::Registering {
            return;
        }
        match result {
            Ok(()) => {
                l.phase = Phase::Pending;
                if self.is_synced() {
                    self.announce_mount(&key);
                } else {
                    self.log(
                        Level::Info,
                        Some(&key),
                        "mount waits until this daemon has the group state".into(),
                    );
                }
            }
            Err(errno) => {
                l.phase = Phase::Refused;
                l.dlm_registered = false;
                l.dlm_pending.clear();
                l.dlm_retry.clear();
                let why = match errno {
                    EOPNOTSUPP => "dlm_controld runs without enable_fscontrol=1, so it would not wait for this daemon before recovering a failed node's locks; set enable_fscontrol=1 in /etc/dlm/dlm.conf on every node and restart dlm_controld (or leave recovery to the kernel: dlm_controld's default recover_callbacks=1)".to_owned(),
                    ENOTCONN => "dlm_controld is not running (its socket dlmc_sock does not answer)".to_owned(),
                    e => format!("dlm_controld refused to register the lockspace (errno {e})"),
                };
                self.log(
                    Level::Error,
                    Some(&key),
                    format!("refusing the mount: {why}"),
                );
                self.write(&table, SysfsFile::Jid, -i64::from(errno));
            }
        }
    }

    fn on_membership(&mut self, members: Vec<NodeId>) {
        let members: BTreeSet<NodeId> = members.into_iter().collect();
        let left: Vec<NodeId> = self
            .cluster_members
            .difference(&members)
            .copied()
            .filter(|n| !self.daemon_in_group(*n))
            .collect();
        self.cluster_members = members;
        // Members of the group are notified when the group sees them fail (after fencing);
        // others never got a journal, so nothing of theirs needs blocking or fencing first.
        for l in self.local.values_mut().filter(|l| l.dlm_registered) {
            l.dlm_pending.extend(left.iter().copied());
        }
    }

    fn on_dlm_notified(&mut self, table: Table, nodeid: NodeId, result: Result<(), i32>) {
        let key = table.to_string();
        let retry = self.now.after(500);
        let back = self.daemon_in_group(nodeid);
        let Some(l) = self.local.get_mut(&key) else {
            return;
        };
        match result {
            Ok(()) => {}
            // dlm_controld has not seen the failure yet. Once the node is back in the group,
            // dlm_controld has long processed (and finished) that failure: asking again would
            // count for the node's next failure, which is notified on its own.
            Err(EAGAIN) if l.dlm_registered && !back => {
                l.dlm_retry.insert(nodeid, retry);
            }
            Err(EAGAIN) => {}
            Err(errno) => self.log_full(
                Level::Warn,
                Some(&key),
                Some(nodeid),
                None,
                format!("dlm_controld refused the notification (errno {errno})"),
            ),
        }
    }

    fn on_read_done(&mut self, table: Table, file: SysfsFile, result: Result<i64, i32>) {
        let key = table.to_string();
        if file != SysfsFile::First || self.local.get(&key).map(|l| l.phase) != Some(Phase::Probing)
        {
            return;
        }
        // A spectator that keeps the kernel's default `first=1` checks that every journal is
        // clean and fails with EPERM if one is not, which a live node's journal never is.
        let others = self.rep.fs.get(&key).is_some_and(|fs| {
            fs.mounters
                .iter()
                .any(|(id, m)| *id != self.cfg.nodeid && m.kernel_active())
        });
        if let Some(l) = self.local.get_mut(&key) {
            l.phase = Phase::JidWritten;
        }
        if result == Ok(1) && others {
            self.log(
                Level::Error,
                Some(&key),
                "refusing the spectator mount: the filesystem is mounted elsewhere, and a spectator needs -o spectator,hostdata=first=0 to skip the kernel's check that every journal is clean".into(),
            );
            self.refuse(&key, EPERM);
            return;
        }
        self.write(&table, SysfsFile::Jid, 0);
    }

    /// Fail the mount (the kernel returns `errno` from mount(2)) and leave the group's mount at
    /// once: the kernel ends it only when it reaches its wait for `jid`, which can be after
    /// other mounts, and until then the group must not count it.
    fn refuse(&mut self, table: &str, errno: i32) {
        let Some(l) = self.local.get_mut(table) else {
            return;
        };
        l.phase = Phase::Refused;
        let t = l.table.clone();
        self.write(&t, SysfsFile::Jid, -i64::from(errno));
        if self
            .rep
            .fs
            .get(table)
            .is_some_and(|fs| fs.mounters.contains_key(&self.cfg.nodeid))
        {
            self.send(Message::Unmount {
                table: table.to_owned(),
            });
        }
    }

    fn announce_mount(&mut self, table: &str) {
        let Some(l) = self.local.get_mut(table) else {
            return;
        };
        l.phase = Phase::Announced;
        let seq = self.mounts_sent.entry(table.to_owned()).or_default();
        *seq += 1;
        l.mount_seq = *seq;
        let mode = l.mode;
        self.send(Message::Mount {
            table: table.to_owned(),
            mode,
        });
    }

    fn write(&mut self, table: &Table, file: SysfsFile, value: i64) {
        self.outputs.push_back(Output::Write {
            table: table.clone(),
            file,
            value,
        });
    }

    fn on_write_done(
        &mut self,
        table: Table,
        file: SysfsFile,
        value: i64,
        result: Result<(), WriteError>,
    ) {
        let key = table.to_string();
        let Err(error) = result else {
            if file == SysfsFile::Block && value == 1 {
                if let Some(l) = self.local.get_mut(&key) {
                    l.block_confirmed = l.block_requested;
                }
            }
            return;
        };
        let phase = self.local.get(&key).map(|l| l.phase);
        if matches!(file, SysfsFile::First | SysfsFile::Jid)
            && error == WriteError::Busy
            && matches!(
                phase,
                Some(Phase::JidWritten | Phase::Probing | Phase::Online)
            )
        {
            self.became_kernel_managed(&key);
            return;
        }
        if file == SysfsFile::First && phase == Some(Phase::Probing) {
            return; // a spectator's kernel refuses `first`: the write only waited for the DLM join
        }
        // ENODEV: the filesystem's sysfs directory is gone, so the mount is (its `remove` uevent
        // was lost, or the `add` was no real mount). Left in the group it would stay there for
        // good, and a first mounter that never finishes holds every later mount. A mount still
        // registering or announced has written nothing, so the result is an earlier mount's.
        if error == WriteError::Gone
            && phase.is_some_and(|p| {
                !matches!(p, Phase::Registering | Phase::Pending | Phase::Announced)
            })
        {
            self.mount_gone(
                &key,
                &format!(
                    "the filesystem's sysfs directory is gone ({}={value}: {error}): treating \
                     it as unmounted",
                    file.name()
                ),
            );
            return;
        }
        self.log(
            Level::Error,
            Some(&key),
            format!("the kernel refused {}={}: {error}", file.name(), value),
        );
        match file {
            SysfsFile::Block if value == 1 => {
                if let Some(l) = self.local.get_mut(&key) {
                    if error == WriteError::Gone {
                        l.block_confirmed = l.block_requested; // the filesystem is gone: nothing to block
                    } else {
                        l.block_requested = false; // write it again on the next pass
                    }
                }
            }
            SysfsFile::Recover => {
                let retry = self.now.after(self.cfg.recover_retry_ms);
                let attempts = self.journal_attempts(&key, value as Jid);
                if let Some(l) = self.local.get_mut(&key) {
                    if error == WriteError::Busy {
                        return; // already replaying it: the uevent will come
                    }
                    if error == WriteError::NoJournal && l.recovering.remove(&(value as Jid)) {
                        // No such journal (a mount that failed for want of journals, then its
                        // node died): there is nothing to replay. The historical daemon hung here.
                        l.reported.insert(value as Jid, attempts);
                        self.send(Message::Recovered {
                            table: key,
                            jid: value as Jid,
                            done: true,
                            attempt: attempts,
                        });
                        return;
                    }
                    if l.recovering.remove(&(value as Jid)) {
                        l.retry_at.insert(value as Jid, retry);
                        l.reported.insert(value as Jid, attempts);
                        // Never hang on a refused write (the historical daemon did): hand it on.
                        self.send(Message::Recovered {
                            table: key,
                            jid: value as Jid,
                            done: false,
                            attempt: attempts,
                        });
                    }
                }
            }
            _ => {}
        }
    }

    /// `first`/`jid` answered EBUSY: the kernel picked its journal itself (the DLM offered
    /// recovery callbacks when the lockspace was created). Leave the group's mount cleanly.
    fn became_kernel_managed(&mut self, table: &str) {
        let Some(l) = self.local.get_mut(table) else {
            return;
        };
        l.phase = Phase::KernelManaged;
        l.recovering.clear();
        l.block_requested = false;
        l.dlm_pending.clear();
        l.dlm_retry.clear();
        let t = l.table.clone();
        let registered = std::mem::replace(&mut l.dlm_registered, false);
        self.log(
            Level::Warn,
            Some(table),
            "kernel-managed: the kernel refused first/jid (EBUSY), so it coordinates recovery itself; leaving it alone (set recover_callbacks the same on every node)".into(),
        );
        if registered {
            self.outputs
                .push_back(Output::DlmUnregister { table: t.clone() });
        }
        self.send(Message::Unmount {
            table: table.to_owned(),
        });
    }

    // ----- fencing -----------------------------------------------------------------------

    fn on_fenced(&mut self, nodeid: NodeId, at: Time) {
        let Some(f) = self.fence.get_mut(&nodeid) else {
            return;
        };
        if f.fenced_at.is_none_or(|t| at > t) {
            f.fenced_at = Some(at);
        }
        let asked = std::mem::replace(&mut f.requested, false);
        let answered = f.failed_change;
        if f.done() {
            f.last_error = None;
            self.log_node(Level::Info, nodeid, "fenced".into());
            self.timeline_note(nodeid, format!("node {nodeid} fenced"));
            // The others did not ask their backends: tell them, naming the failure it answers.
            if asked && self.is_synced() {
                let failure = answered.unwrap_or(self.rep.confchgs);
                self.send(Message::Fenced { nodeid, failure });
            }
        }
    }

    /// A fence report delivered in the group's stream: it counts for the failures up to the
    /// configuration change it names, so a report about an earlier failure of a node that
    /// failed again since is stale. A current member is never taken as fenced.
    fn fenced_by_message(
        &mut self,
        nodeid: NodeId,
        failure: u64,
        what: &str,
        from: NodeId,
    ) -> bool {
        if self.daemon_in_group(nodeid) {
            return false;
        }
        if let Some(latest) = self.fence.get(&nodeid).and_then(|f| f.failed_change) {
            if latest > failure {
                self.log_full(
                    Level::Warn,
                    None,
                    Some(nodeid),
                    None,
                    format!("ignored a stale {what} from node {from}: it answers the failure at change {failure}, the node failed again at change {latest}"),
                );
                return false;
            }
        }
        let now = self.now;
        let rec = self.fence.entry(nodeid).or_insert(FenceRecord {
            failed_at: now,
            failed_change: None,
            fenced_at: None,
            requested: false,
            retry_at: None,
            last_error: None,
            warned_at: None,
        });
        rec.fenced_at = Some(now);
        rec.last_error = None;
        true
    }

    /// A fence report in the group's order: the replicated state takes it for the node's latest
    /// failure (so a member that syncs later neither fences the node again nor waits for it).
    /// Always true but for a current member, which is never taken as fenced.
    fn agree_fenced(&mut self, nodeid: NodeId, failure: u64) -> bool {
        if self.daemon_in_group(nodeid) {
            return false;
        }
        self.rep.fence_agreed(nodeid, failure);
        true
    }

    /// Failed nodes some decision here waits to see fenced, and their records.
    fn fence_waits(&self) -> Vec<(NodeId, &FenceRecord)> {
        self.fence_needs()
            .into_iter()
            .filter_map(|n| self.fence.get(&n).filter(|f| !f.done()).map(|f| (n, f)))
            .collect()
    }

    /// Since when this wait is for fencing (quorate) or for quorum (inquorate): an inquorate
    /// partition fences nothing, so the time without quorum is not a fencing delay.
    fn wait_since(&self, f: &FenceRecord) -> Time {
        if self.cfg.require_quorum {
            f.failed_at.max(self.quorum_changed_at)
        } else {
            f.failed_at
        }
    }

    /// When the slow-fencing warning for this wait is due next (first after `fence_warn`, then
    /// every `fence_warn`); `None` when warnings are off.
    fn fence_warn_due(&self, f: &FenceRecord) -> Option<Time> {
        if self.cfg.fence_warn_ms == 0 {
            return None;
        }
        let since = self.wait_since(f);
        let base = f.warned_at.filter(|w| *w >= since).unwrap_or(since);
        Some(base.after(self.cfg.fence_warn_ms))
    }

    /// Logs every fence wait that has lasted `fence_warn` since it began or was last reported.
    /// Driven by `poll_timeout`, so it fires on time even when nothing else happens.
    fn warn_slow_fencing(&mut self) {
        let now = self.now;
        let due: Vec<(NodeId, u64, Option<String>)> = self
            .fence_waits()
            .into_iter()
            .filter(|(_, f)| self.fence_warn_due(f).is_some_and(|t| t <= now))
            .map(|(n, f)| (n, now.since(self.wait_since(f)), f.last_error.clone()))
            .collect();
        for (n, waited_ms, last_error) in due {
            if let Some(f) = self.fence.get_mut(&n) {
                f.warned_at = Some(now);
            }
            let waited_s = waited_ms / 1000;
            let message = if self.quorum_ok() {
                format!(
                    "journal recovery has waited {waited_s}s for node {n} to be fenced (last \
                     fencing error: {}); filesystems stay blocked. Check the fencing backend; if \
                     the node is certainly down, run `gfs_control fence-ack {n}`",
                    last_error.as_deref().unwrap_or("none")
                )
            } else {
                format!(
                    "journal recovery has waited {waited_s}s for quorum: this partition is \
                     inquorate, so node {n} is not fenced and no journal is replayed until it \
                     regains quorum; filesystems stay blocked"
                )
            };
            self.log_node(Level::Error, n, message);
        }
    }

    fn on_fence_ack_request(&mut self, request: u64, nodeid: NodeId) {
        let result = if !self.is_synced() {
            Err("this daemon has not joined the group yet".to_owned())
        } else if self.daemon_in_group(nodeid) {
            Err(format!("node {nodeid} is a member of the daemon group: refusing to acknowledge it as fenced"))
        } else {
            let failure = self.rep.confchgs;
            self.send(Message::FenceAck { nodeid, failure });
            Ok(format!(
                "fence acknowledgement for node {nodeid} sent to the group"
            ))
        };
        self.outputs.push_back(Output::Reply { request, result });
    }

    /// Nodes whose fencing some decision waits for: this member's own decisions, or, on the
    /// member that runs the fencing backend, every member's (read from the replicated state,
    /// since the others' local mount progress is not known here).
    fn fence_needs(&self) -> BTreeSet<NodeId> {
        let me = self.cfg.nodeid;
        let everyone = self.lowest_active() == Some(me);
        let mut needs = BTreeSet::new();
        for fs in self.rep.fs.values() {
            if fs.first_mounters().any(|f| everyone || f == me) {
                needs.extend(fs.fence_before_first.iter().copied());
            }
            for d in fs.dirty.values() {
                needs.extend(d.fence.iter().copied());
            }
        }
        // Nodes that may hold unknown mounts matter once a jid is to be written or a journal
        // replayed, after a grace period for nodes that may just be slow to start their daemon.
        let own_jid_pending = self.local.iter().any(|(t, l)| {
            l.phase == Phase::Announced
                && self
                    .rep
                    .fs
                    .get(t)
                    .and_then(|fs| fs.mounters.get(&me))
                    .is_some_and(|m| {
                        matches!(m.state, MState::First | MState::Admitted | MState::Mounted)
                    })
        });
        let any_jid_pending = everyone
            && self.rep.fs.values().any(|fs| {
                fs.mounters
                    .values()
                    .any(|m| matches!(m.state, MState::First | MState::Admitted))
            });
        let replay_pending = self.rep.fs.values().any(|fs| {
            fs.dirty
                .values()
                .any(|d| d.replayer.is_some_and(|r| everyone || r == me))
        });
        // A failed node may hold DLM locks in any mounted filesystem's lockspace, which the
        // DLM recovers only once it is fenced (this daemon tells dlm_controld no sooner).
        let own_dlm_pending = self.local.values().any(|l| !l.dlm_pending.is_empty());
        let any_mounted = everyone
            && self
                .rep
                .fs
                .values()
                .any(|fs| fs.mounters.values().any(|m| m.kernel_active()));
        if (own_jid_pending || any_jid_pending || replay_pending || own_dlm_pending || any_mounted)
            && self.now >= self.synced_at.after(self.cfg.startup_fence_delay_ms)
        {
            needs.extend(self.rep.must_fence.iter().copied());
        }
        // The group agreed these were fenced (possibly before this member synced).
        needs.retain(|n| !self.rep.fenced.contains(n));
        needs
    }

    fn fenced(&self, node: NodeId) -> bool {
        self.cfg.sabotage.skip_fencing
            || self.rep.fenced.contains(&node)
            || self.fence.get(&node).is_some_and(FenceRecord::done)
    }

    fn quorum_ok(&self) -> bool {
        self.quorate || !self.cfg.require_quorum || self.cfg.sabotage.ignore_quorum
    }

    /// Every member of the configuration has said HELLO since it joined, so a stale merge would
    /// already have been found, and quorum is not fresh from a change we have not seen yet.
    fn membership_settled(&self) -> bool {
        self.quorum_hold_until.is_none() && self.membership_settled_ignoring_quorum()
    }

    fn membership_settled_ignoring_quorum(&self) -> bool {
        // Every node's admitted daemon in the group; other processes are not waited for.
        self.config_members
            .iter()
            .filter(|n| !self.is_synced() || self.daemon_in_group(**n))
            .all(|n| self.rep.members.get(n).is_some_and(|m| m.proto_max > 0))
    }

    // ----- the local side of the protocol, re-evaluated after every input ------------------

    fn drive(&mut self) {
        if !self.is_synced() {
            return;
        }
        let me = self.cfg.nodeid;
        let tables: Vec<String> = match self.touched.take() {
            Some(t) => t
                .into_iter()
                .filter(|t| self.local.contains_key(t))
                .collect(),
            None => self.local.keys().cloned().collect(),
        };
        for table in &tables {
            self.drive_mount(table);
            self.drive_block(table);
            self.drive_dlm(table);
            self.drive_recovery(table);
            self.drive_withdraw(table);
        }
        // One STOPPED covers every filesystem this node blocked: N messages per failure, not N·F.
        // Another one only when this node became part of a barrier after its last one (a mount
        // became ready during recovery).
        if !self.stopped_in_flight && !self.replaying {
            let waiting: Vec<String> = self
                .rep
                .fs
                .iter()
                .filter(|(_, fs)| {
                    fs.is_participant(me, &self.rep.members) && !fs.stopped.contains(&me)
                })
                .map(|(t, _)| t.clone())
                .collect();
            let all_blocked = waiting
                .iter()
                .all(|t| self.local.get(t).is_none_or(|l| l.block_confirmed));
            if !waiting.is_empty() && all_blocked {
                self.stopped_in_flight = true;
                let epoch = self.rep.epoch;
                self.send(Message::Stopped {
                    epoch,
                    tables: waiting,
                });
            }
        }
        if self.quorum_ok() {
            // One member runs the fencing backend (as dlm_controld's lowest nodeid does) and
            // shares the result; the others wait for its FENCED. It fences for everyone.
            let fencer = self.lowest_active() == Some(self.cfg.nodeid);
            let needs = self.fence_needs();
            for n in needs {
                if self.daemon_in_group(n) {
                    continue;
                }
                let now = self.now;
                let f = self.fence.entry(n).or_insert(FenceRecord {
                    failed_at: now,
                    failed_change: None,
                    fenced_at: None,
                    requested: false,
                    retry_at: None,
                    last_error: None,
                    warned_at: None,
                });
                if fencer && !f.done() && !f.requested && f.retry_at.is_none() {
                    f.requested = true;
                    let failed_at = f.failed_at;
                    if !self.cfg.require_fencing {
                        self.assume_fenced.push((n, failed_at));
                        continue;
                    }
                    self.outputs.push_back(Output::Fence {
                        nodeid: n,
                        failed_at,
                    });
                    self.log_node(Level::Info, n, "fencing requested".into());
                }
            }
        }
    }

    fn drive_mount(&mut self, table: &str) {
        let me = self.cfg.nodeid;
        let Some(l) = self.local.get(table) else {
            return;
        };
        if l.phase != Phase::Announced || !l.mount_seen {
            return;
        }
        let Some(fs) = self.rep.fs.get(table) else {
            return;
        };
        let Some(m) = fs.mounters.get(&me) else {
            return;
        };
        let (t, mode, jid) = (l.table.clone(), l.mode, m.jid);
        let state = if self.cfg.sabotage.skip_first_wait && m.state == MState::First {
            MState::Admitted
        } else {
            m.state
        };
        let phase = match state {
            MState::Waiting => return,
            MState::Rejected | MState::NeedsRw => {
                let errno = if state == MState::Rejected {
                    EUSERS
                } else {
                    EUCLEAN
                };
                self.refuse(table, errno);
                return;
            }
            MState::First => {
                // First-mounter replay touches every journal: it needs what a replay needs (S1).
                let dirty_fenced = fs
                    .dirty
                    .values()
                    .all(|d| d.fence.iter().all(|n| self.fenced(*n)));
                let startup_fenced = self
                    .rep
                    .must_fence
                    .iter()
                    .chain(fs.fence_before_first.iter())
                    .all(|n| self.fenced(*n));
                if !(self.quorum_ok()
                    && self.membership_settled()
                    && dirty_fenced
                    && startup_fenced)
                {
                    return;
                }
                self.write(&t, SysfsFile::First, 1);
                self.write(&t, SysfsFile::Jid, jid.map_or(0, i64::from));
                self.log_full(
                    Level::Info,
                    Some(table),
                    None,
                    jid,
                    "mounting as a first mounter".into(),
                );
                Phase::JidWritten
            }
            MState::Admitted | MState::Mounted => {
                // A node that left uncleanly may have mounted behind the group's back (S4, S1).
                if !self.rep.must_fence.iter().all(|n| self.fenced(*n)) {
                    return;
                }
                if mode == MountMode::Spectator {
                    // The kernel refuses `first` for a spectator only once its DLM join is done,
                    // after which `first` shows what the mount options said.
                    self.write(&t, SysfsFile::First, 0);
                    self.outputs.push_back(Output::Read {
                        table: t.clone(),
                        file: SysfsFile::First,
                    });
                    Phase::Probing
                } else {
                    self.write(&t, SysfsFile::First, 0);
                    self.write(&t, SysfsFile::Jid, jid.map_or(0, i64::from));
                    Phase::JidWritten
                }
            }
        };
        if let Some(l) = self.local.get_mut(table) {
            l.phase = phase;
        }
    }

    /// Tell dlm_controld, per failed node, that DLM recovery of its locks may go ahead here:
    /// once this node has blocked the filesystem (if it must: S8), and once the node is fenced
    /// (its kernel could still hold and use locks; and a mounting kernel replays journals as
    /// soon as their locks are free, so the DLM is what keeps S1 for those replays), as
    /// dlm_controld's own fencing would.
    fn drive_dlm(&mut self, table: &str) {
        let me = self.cfg.nodeid;
        let Some(l) = self.local.get(table) else {
            return;
        };
        if !l.dlm_registered || l.dlm_pending.is_empty() {
            return;
        }
        let fs = self.rep.fs.get(table);
        let must_block = fs.is_some_and(|fs| fs.is_participant(me, &self.rep.members))
            && !matches!(l.phase, Phase::Withdrawn | Phase::Refused);
        let blocked = l.block_confirmed;
        if must_block && !blocked {
            return;
        }
        // A failed node back in the group rebooted: its old kernel is gone.
        let ready: Vec<NodeId> = l
            .dlm_pending
            .iter()
            .copied()
            .filter(|n| {
                self.fenced(*n)
                    || self.daemon_in_group(*n)
                    || (!self.rep.must_fence.contains(n)
                        && self.fence.get(n).is_none_or(FenceRecord::done))
            })
            .collect();
        let t = l.table.clone();
        for n in ready {
            if let Some(l) = self.local.get_mut(table) {
                l.dlm_pending.remove(&n);
            }
            self.outputs.push_back(Output::DlmNotify {
                table: t.clone(),
                nodeid: n,
            });
            self.log_full(
                Level::Info,
                Some(table),
                Some(n),
                None,
                "dlm_controld may recover the failed node's locks".into(),
            );
        }
    }

    fn drive_block(&mut self, table: &str) {
        let me = self.cfg.nodeid;
        let early = self.cfg.sabotage.early_unblock;
        let (participant, clean, replayers_chosen) = match self.rep.fs.get(table) {
            Some(fs) => (
                fs.is_participant(me, &self.rep.members),
                fs.dirty.is_empty(),
                !fs.dirty.is_empty() && fs.dirty.values().all(|d| d.replayer.is_some()),
            ),
            None => (false, true, false),
        };
        let Some(l) = self.local.get_mut(table) else {
            return;
        };
        let t = l.table.clone();
        if l.phase == Phase::Refused && l.block_requested {
            // A refused mount ends only when its kernel reads the negative jid, after the parts
            // of the mount that `block=1` would freeze.
            l.block_requested = false;
            l.block_confirmed = false;
            self.write(&t, SysfsFile::Block, 0);
            return;
        }
        if matches!(
            l.phase,
            Phase::Withdrawn
                | Phase::Refused
                | Phase::KernelManaged
                | Phase::Pending
                | Phase::Registering
        ) {
            return;
        }
        if participant && !l.block_requested && !(early && replayers_chosen) {
            l.block_requested = true;
            l.block_confirmed = false;
            self.write(&t, SysfsFile::Block, 1);
            let epoch = self.rep.epoch;
            self.log_full(
                Level::Info,
                Some(table),
                None,
                None,
                format!("blocked for recovery (change {epoch})"),
            );
            self.timeline_fs_note(table, "blocked".into());
        } else if l.block_requested && (clean || !participant || (early && replayers_chosen)) {
            l.block_requested = false;
            l.block_confirmed = false;
            self.write(&t, SysfsFile::Block, 0);
            let what = if clean || early {
                "every failed journal replayed: unblocked"
            } else {
                "no ready read-write member can replay: unblocked so this mount can finish its journal work and replay"
            };
            self.log_full(Level::Info, Some(table), None, None, what.into());
            self.timeline_fs_note(table, "unblocked".into());
        }
    }

    fn drive_recovery(&mut self, table: &str) {
        let me = self.cfg.nodeid;
        let Some(fs) = self.rep.fs.get(table) else {
            return;
        };
        let Some(l) = self.local.get(table) else {
            return;
        };
        // A mounting node replays once its journal is ready (`recover` waits for that).
        let ready = fs.mounters.get(&me).is_some_and(|m| m.is_ready());
        if !ready || !matches!(l.phase, Phase::Online | Phase::JidWritten) {
            return;
        }
        // A result we sent is applied once the journal is clean or handed to someone else.
        let settled: Vec<Jid> = l
            .reported
            .iter()
            .filter(|(j, a)| {
                fs.dirty
                    .get(j)
                    .is_none_or(|d| d.replayer != Some(me) || d.attempts != **a)
            })
            .map(|(j, _)| *j)
            .collect();
        let read_only = l.mode != MountMode::Rw;
        let quorum_ok = self.quorum_ok() && self.membership_settled();
        // Every node that left uncleanly must be dead first, not only the journal's owner: a
        // failed member's kernel is not blocked and could see the journal's blocks (S1, S3).
        let others_fenced = self.rep.must_fence.iter().all(|n| self.fenced(*n));
        let replay_fenced =
            |d: &crate::state::Dirty| others_fenced && d.fence.iter().all(|n| self.fenced(*n));
        let ready: Vec<(Jid, NodeId)> = fs
            .dirty
            .iter()
            .filter(|(jid, d)| {
                d.replayer == Some(me)
                    && !l.recovering.contains(jid)
                    && !l.reported.contains_key(jid)
                    && (read_only
                        || (!l.retry_at.contains_key(jid) && quorum_ok && replay_fenced(d)))
            })
            .map(|(jid, d)| (*jid, d.owner))
            .collect();
        let t = l.table.clone();
        if let Some(l) = self.local.get_mut(table) {
            for j in settled {
                l.reported.remove(&j);
            }
        }
        if read_only {
            // Remounted read-only: hand back what we have not started.
            for (jid, _) in ready {
                let attempts = self.journal_attempts(table, jid);
                if let Some(l) = self.local.get_mut(table) {
                    l.reported.insert(jid, attempts);
                }
                self.send(Message::Recovered {
                    table: table.to_owned(),
                    jid,
                    done: false,
                    attempt: attempts,
                });
            }
            return;
        }
        for (jid, owner) in ready {
            if let Some(l) = self.local.get_mut(table) {
                l.recovering.insert(jid);
            }
            self.write(&t, SysfsFile::Recover, i64::from(jid));
            self.log_full(
                Level::Info,
                Some(table),
                Some(owner),
                Some(jid),
                "replaying the journal of a failed member".into(),
            );
            self.timeline_note(
                owner,
                format!("replay of jid {jid} ({table}) started on node {me}"),
            );
        }
    }

    fn drive_withdraw(&mut self, table: &str) {
        let me = self.cfg.nodeid;
        let Some(l) = self.local.get(table) else {
            return;
        };
        if l.phase != Phase::Withdrawn || l.withdraw_acked {
            return;
        }
        // Our WITHDRAW was delivered and every remaining member blocked: the others have taken
        // over our journal, so the kernel may release its locks.
        let ready = match self.rep.fs.get(table) {
            None => true,
            Some(fs) => !fs.mounters.contains_key(&me) && fs.barrier_complete(&self.rep.members),
        };
        if ready {
            let t = l.table.clone();
            if let Some(l) = self.local.get_mut(table) {
                l.withdraw_acked = true;
            }
            self.write(&t, SysfsFile::Withdraw, 1);
            self.log(
                Level::Info,
                Some(table),
                "withdraw acknowledged by the group".into(),
            );
        }
    }

    // ----- logs and timelines ---------------------------------------------------------------

    fn log(&mut self, level: Level, fs: Option<&str>, message: String) {
        self.log_full(level, fs, None, None, message);
    }

    fn log_node(&mut self, level: Level, nodeid: NodeId, message: String) {
        self.log_full(level, None, Some(nodeid), None, message);
    }

    fn log_full(
        &mut self,
        level: Level,
        fs: Option<&str>,
        nodeid: Option<NodeId>,
        jid: Option<Jid>,
        message: String,
    ) {
        self.outputs.push_back(Output::Log(LogRecord {
            level,
            fs: fs.map(str::to_owned),
            nodeid,
            jid,
            change: (self.rep.epoch > 0).then_some(self.rep.epoch),
            message,
        }));
    }

    fn timeline_start(&mut self, change: u64, failed: NodeId, tables: &BTreeSet<String>) {
        let now = self.now.millis();
        if let Some(t) = self.timelines.iter_mut().find(|t| t.finished_ms.is_none()) {
            // Failures during a recovery fold into it.
            if !t.failed.contains(&failed) {
                t.failed.push(failed);
            }
            for fs in tables {
                if !t.filesystems.contains(fs) {
                    t.filesystems.push(fs.clone());
                }
            }
            t.events.push(TimelineEntry {
                at_ms: now,
                what: format!("node {failed} failed (change {change})"),
            });
            return;
        }
        self.timelines.push_back(RecoveryTimeline {
            change,
            failed: vec![failed],
            filesystems: tables.iter().cloned().collect(),
            started_ms: now,
            finished_ms: None,
            events: vec![TimelineEntry {
                at_ms: now,
                what: format!("node {failed} failed (change {change})"),
            }],
        });
        while self.timelines.len() > self.cfg.timeline_keep.max(1) {
            self.timelines.pop_front();
        }
    }

    fn timeline_note(&mut self, _about: NodeId, what: String) {
        let now = self.now.millis();
        if let Some(t) = self
            .timelines
            .iter_mut()
            .rev()
            .find(|t| t.finished_ms.is_none())
        {
            t.events.push(TimelineEntry { at_ms: now, what });
        }
        self.timeline_maybe_finish();
    }

    fn timeline_fs_note(&mut self, table: &str, what: String) {
        self.timeline_note(0, format!("{what} {table}"));
    }

    fn timeline_maybe_finish(&mut self) {
        let all_clean = self.rep.fs.values().all(|fs| fs.dirty.is_empty());
        let all_unblocked = self.local.values().all(|l| !l.block_requested);
        if all_clean && all_unblocked {
            let now = self.now.millis();
            for t in self
                .timelines
                .iter_mut()
                .filter(|t| t.finished_ms.is_none())
            {
                t.finished_ms = Some(now);
                t.events.push(TimelineEntry {
                    at_ms: now,
                    what: "recovery complete".into(),
                });
            }
        }
    }

    // ----- views ---------------------------------------------------------------------------

    /// The status as of `now` (the driver's current time: the core's own clock moves only with
    /// inputs, and a wait must show as long as it really is).
    pub fn status(&self, now: Time) -> StatusView {
        let now = now.max(self.now);
        let quorum_ok = self.quorum_ok();
        let waits = self.fence_waits();
        StatusView {
            nodeid: self.cfg.nodeid,
            cluster_name: self.cfg.cluster_name.clone(),
            protocol_version: if self.is_synced() {
                self.rep.version
            } else {
                0
            },
            protocol_max: self.cfg.proto_max,
            synced: self.is_synced(),
            quorate: self.quorate,
            // Nodes whose daemon is in the group: another process of a node whose daemon is
            // gone keeps the node in the CPG group, not among the members.
            members: self
                .config_members
                .iter()
                .copied()
                .filter(|&n| self.daemon_in_group(n))
                .collect(),
            stale_members: self
                .rep
                .members
                .iter()
                .filter(|(_, m)| m.stale)
                .map(|(id, _)| *id)
                .collect(),
            // Inquorate, nothing is fenced: those nodes wait for quorum, not for fencing.
            fence_waits: waits
                .iter()
                .filter(|_| quorum_ok)
                .map(|(n, f)| FenceWaitView {
                    nodeid: *n,
                    failed_at_ms: f.failed_at.millis(),
                    waiting_ms: now.since(self.wait_since(f)),
                    requested: f.requested,
                    last_error: f.last_error.clone(),
                })
                .collect(),
            quorum_waits: waits
                .iter()
                .filter(|_| !quorum_ok)
                .map(|(n, _)| *n)
                .collect(),
            filesystems: self.local.len(),
            recoveries: self.timelines.iter().cloned().collect(),
        }
    }

    pub fn filesystems(&self) -> Vec<FsView> {
        let me = self.cfg.nodeid;
        let mut tables: BTreeSet<&String> = self.local.keys().collect();
        tables.extend(self.rep.fs.keys());
        tables
            .into_iter()
            .map(|table| {
                let fs = self.rep.fs.get(table);
                let l = self.local.get(table);
                let members = fs
                    .map(|fs| {
                        fs.mounters
                            .iter()
                            .map(|(id, m)| MemberView {
                                nodeid: *id,
                                jid: m.jid,
                                mode: m.mode,
                                state: m.state.as_str().into(),
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                let dirty_journals = fs
                    .map(|fs| {
                        fs.dirty
                            .iter()
                            .map(|(jid, d)| JournalView {
                                jid: *jid,
                                owner: d.owner,
                                replayer: d.replayer,
                                attempts: d.attempts,
                                waiting_for: self.journal_wait(fs, d),
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                FsView {
                    table: table.clone(),
                    name: table
                        .split_once(':')
                        .map_or(table.as_str(), |(_, f)| f)
                        .to_owned(),
                    kernel_managed: l.is_some_and(|l| l.phase == Phase::KernelManaged),
                    state: self.fs_state_line(table),
                    local: l.map(|l| LocalMountView {
                        jid: fs.and_then(|fs| fs.mounters.get(&me)).and_then(|m| m.jid),
                        mode: l.mode,
                        blocked: l.block_requested,
                        kernel_state: format!("{:?}", l.phase).to_lowercase(),
                    }),
                    members,
                    dirty_journals,
                    first_mounter: fs.and_then(|fs| fs.first_mounters().next()),
                }
            })
            .collect()
    }

    fn journal_wait(&self, fs: &crate::state::FsState, d: &crate::state::Dirty) -> String {
        let missing = fs.unstopped(&self.rep.members);
        if !missing.is_empty() {
            return format!("members to block: {missing:?}");
        }
        // Inquorate, nothing is fenced or replayed: the operator must look at quorum, not at
        // the fencing backend or fence-ack.
        if !self.quorum_ok() {
            return "quorum".into();
        }
        if let Some(n) = d.fence.iter().find(|n| !self.fenced(**n)) {
            return format!("fencing of node {n}");
        }
        match d.replayer {
            Some(r) => format!("replay on node {r}"),
            None => "a read-write member to replay it".into(),
        }
    }

    fn fs_state_line(&self, table: &str) -> String {
        let me = self.cfg.nodeid;
        let l = self.local.get(table);
        if l.is_some_and(|l| l.phase == Phase::KernelManaged) {
            return "kernel-managed".into();
        }
        if !self.is_synced() {
            return "waiting for the group state".into();
        }
        let Some(fs) = self.rep.fs.get(table) else {
            return "unknown".into();
        };
        if let Some((jid, d)) = fs.dirty.iter().next() {
            return format!(
                "recovering jid {jid}: waiting for {}",
                self.journal_wait(fs, d)
            );
        }
        match fs.mounters.get(&me).map(|m| m.state) {
            Some(MState::Waiting) => "mounting: waiting for recovery to finish".into(),
            Some(MState::Admitted) => "mounting".into(),
            Some(MState::Mounted) => "mounted".into(),
            Some(MState::Rejected) => "mount refused: no free journal".into(),
            Some(MState::NeedsRw) => {
                "mount refused: failed journals need a read-write mounter".into()
            }
            Some(MState::First) => "mounting as a first mounter".into(),
            None => match l.map(|l| l.phase) {
                Some(Phase::Withdrawn) => "withdrawn".into(),
                Some(Phase::Registering) => "registering with dlm_controld".into(),
                Some(Phase::Pending) | Some(Phase::Announced) => "joining".into(),
                _ => "mounted elsewhere".into(),
            },
        }
    }
}
