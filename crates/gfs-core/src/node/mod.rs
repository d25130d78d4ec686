//! One daemon's protocol engine: the replicated state plus what only this node knows
//! (its kernel mounts, fencing knowledge, quorum), turning inputs into outputs.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::io::{Input, Level, LogRecord, Output};
use crate::state::Replicated;
use crate::time::Time;
use crate::types::{NodeId, Peer, SysfsFile, Table, DAEMON_GROUP};
use crate::wire::{self, Header, Message};

mod actions;
mod fencing;
mod membership;
mod messages;
mod mounts;
mod sabotage;
mod timeline;
mod timers;
mod views;

use fencing::FenceRecord;
use membership::Membership;
use mounts::{Announcements, LocalFs, Phase};
#[cfg(feature = "sabotage")]
pub use sabotage::Sabotage;
use timeline::Timelines;

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
    #[cfg(feature = "sabotage")]
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
            #[cfg(feature = "sabotage")]
            sabotage: Sabotage::default(),
        }
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
    sync: Membership,
    rep: Replicated,
    local: BTreeMap<Table, LocalFs>,
    fence: BTreeMap<NodeId, FenceRecord>,
    /// Our STOPPED is in flight: wait for it before judging whether another is needed.
    stopped_in_flight: bool,
    outputs: VecDeque<Output>,
    timelines: Timelines,
    /// Our MOUNT messages, numbered per table.
    announcements: Announcements,
    /// Replaying buffered history after adopting a snapshot: the group already acted on it.
    replaying: bool,
    /// The filesystems the current input may have changed: all that `drive` looks at.
    scope: Scope,
    /// Failed nodes to take as fenced at their failure once this input's drive is done
    /// (`require_fencing` off), in the order they would have been asked of a backend.
    assume_fenced: Vec<(NodeId, Time)>,
}

impl Node {
    /// A node that is about to join the daemon group (the first output is the join).
    pub fn new(cfg: NodeConfig, now: Time) -> Node {
        let timelines = Timelines::new(cfg.timeline_keep);
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
            sync: Membership::Unsynced {
                attempt: 0,
                buffer: Vec::new(),
                hello_pos: BTreeMap::new(),
            },
            rep: Replicated::default(),
            local: BTreeMap::new(),
            fence: BTreeMap::new(),
            stopped_in_flight: false,
            outputs: VecDeque::new(),
            timelines,
            announcements: Announcements::default(),
            replaying: false,
            scope: Scope::All,
            assume_fenced: Vec::new(),
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

    pub fn is_synced(&self) -> bool {
        self.sync == Membership::Synced
    }

    pub fn is_stale(&self) -> bool {
        self.sync == Membership::Stale
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
        self.scope = Scope::of(&input);
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
            Input::FenceFailed { nodeid, reason } => self.on_fence_failed(nodeid, reason),
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
            Input::Timeout => self.on_timeout(),
        }
        self.drive();
        self.warn_slow_fencing();
        self.answer_unfenced();
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
        self.outputs.push_back(Output::Mcast {
            group: DAEMON_GROUP.to_owned(),
            payload: wire::encode(&header, &msg),
        });
    }

    fn write(&mut self, table: &Table, file: SysfsFile, value: i64) {
        self.outputs.push_back(Output::Write {
            table: table.clone(),
            file,
            value,
        });
    }

    fn lowest_active(&self) -> Option<NodeId> {
        self.rep
            .members
            .iter()
            .find(|(id, m)| m.synced && !m.stale && self.config_members.contains(id))
            .map(|(id, _)| *id)
    }

    fn quorum_ok(&self) -> bool {
        self.quorate || !self.cfg.require_quorum || self.sabotage().ignore_quorum
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

    fn drive(&mut self) {
        if !self.is_synced() {
            return;
        }
        let tables: Vec<Table> = match std::mem::take(&mut self.scope) {
            Scope::Tables(t) => t
                .into_iter()
                .filter(|t| self.local.contains_key(t))
                .collect(),
            Scope::All => self.local.keys().cloned().collect(),
        };
        for table in &tables {
            self.drive_mount(table);
            self.drive_block(table);
            self.drive_dlm(table);
            self.drive_recovery(table);
            self.drive_withdraw(table);
        }
        self.send_stopped();
        self.request_fencing();
    }

    fn log(&mut self, level: Level, fs: Option<&Table>, message: String) {
        let record = LogRecord::new(level, message);
        self.emit(match fs {
            Some(fs) => record.fs(fs),
            None => record,
        });
    }

    fn log_node(&mut self, level: Level, nodeid: NodeId, message: String) {
        self.emit(LogRecord::new(level, message).node(nodeid));
    }

    /// Logs `record` with the failure epoch it belongs to:
    /// `self.emit(LogRecord::new(Level::Warn, text).fs(&table).node(n).jid(j))`.
    fn emit(&mut self, record: LogRecord) {
        self.outputs.push_back(Output::Log(LogRecord {
            change: (self.rep.epoch > 0).then_some(self.rep.epoch),
            ..record
        }));
    }
}

/// The filesystems an input may have changed. An input about one filesystem (a uevent, a sysfs
/// result, dlm_controld's answer) changes only that one; a delivered message grows the scope by
/// the filesystem it names; anything else (a configuration change, quorum, fencing, a timer, a
/// message about the whole group) may change every filesystem.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
enum Scope {
    #[default]
    All,
    Tables(BTreeSet<Table>),
}

impl Scope {
    fn of(input: &Input) -> Scope {
        match input {
            Input::Kernel(ev) => Scope::Tables(BTreeSet::from([ev.table.clone()])),
            Input::WriteDone { table, .. }
            | Input::ReadDone { table, .. }
            | Input::DlmRegistered { table, .. }
            | Input::DlmNotified { table, .. }
            | Input::MountMode { table, .. } => Scope::Tables(BTreeSet::from([table.clone()])),
            Input::Deliver { .. } => Scope::Tables(BTreeSet::new()),
            _ => Scope::All,
        }
    }

    /// The input changed `table` too.
    fn include(&mut self, table: Table) {
        if let Scope::Tables(tables) = self {
            tables.insert(table);
        }
    }

    /// The input may have changed every filesystem.
    fn widen(&mut self) {
        *self = Scope::All;
    }
}
