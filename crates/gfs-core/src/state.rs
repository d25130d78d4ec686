//! The replicated state: a pure function of the daemon group's agreed stream.
//!
//! Every synced member applies the same deliveries and configuration changes in the same order,
//! so every synced member holds an identical `Replicated` value at the same stream position
//! (S6). Nothing local (kernel progress, fencing knowledge, quorum, clock) lives here.

use std::collections::{BTreeMap, BTreeSet};

use crate::types::{Jid, MountMode, NodeId, Table};

#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Replicated {
    /// The protocol version the group runs: the lowest `proto_max` among known members.
    pub version: u16,
    /// Counts failures that dirtied journals; barrier messages name it.
    pub epoch: u64,
    /// Daemon-group configuration changes applied to this state: orders joins and syncs, so that
    /// a merge is judged on the sides as they stood when it began.
    pub confchgs: u64,
    pub members: BTreeMap<NodeId, Member>,
    /// Nodes that may hold a mount the group does not know of: cluster nodes absent when the
    /// group formed (startup fencing, as dlm_controld does) and members that left uncleanly (a
    /// partitioned side can keep mounting). No `jid` is written until each is fenced or has
    /// rejoined with no state, so no journal is handed out or replayed behind their back.
    pub must_fence: BTreeSet<NodeId>,
    /// For each node of `must_fence` that failed as a member: the configuration change that
    /// reported it (absent: since the group formed, change 0). A fence report answering an
    /// earlier change is stale.
    pub must_fence_since: BTreeMap<NodeId, u64>,
    /// Nodes of `must_fence` whose fencing the group agreed on (a current FENCED or FENCE_ACK
    /// in the group's order), kept until they rejoin or fail again: a member that syncs later
    /// (and becomes the fencer) must not fence them again, nor wait for a fence it never saw.
    pub fenced: BTreeSet<NodeId>,
    /// Keyed by lock table text.
    pub fs: BTreeMap<Table, FsState>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Member {
    /// The process corosync reported when this node's daemon joined the group: the one
    /// instance whose messages and leave count for the node (another process on the node that
    /// joins the group is not its daemon).
    pub pid: u32,
    /// 0 until the member's HELLO is delivered.
    pub proto_min: u16,
    pub proto_max: u16,
    /// Holds the group's state (bootstrapped with it, or received a STATE).
    pub synced: bool,
    /// Came back from a partition with state of its own; ignored until corosync removes it (S7).
    pub stale: bool,
    /// A daemon that got its state from a member of the other side of an unresolved merge: it
    /// belongs to that side, and shares its fate when the merge is resolved.
    pub synced_by: Option<NodeId>,
    /// `confchgs` when it joined the group, and when it became synced.
    pub joined_at: u64,
    pub synced_at: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct FsState {
    pub mounters: BTreeMap<NodeId, Mounter>,
    pub dirty: BTreeMap<Jid, Dirty>,
    /// The failure epoch that last dirtied a journal here: the barrier's target.
    pub dirty_epoch: u64,
    /// Ready mounters that confirmed they blocked this filesystem.
    pub stopped: BTreeSet<NodeId>,
    /// Members that failed while their kernel held this filesystem but had no journal to replay
    /// (spectators): a first mounter still waits for them to be fenced.
    pub fence_before_first: BTreeSet<NodeId>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Mounter {
    pub jid: Option<Jid>,
    pub mode: MountMode,
    pub state: MState,
    /// Its kernel finished its journal work of the mount (`FIRSTMOUNT=Done` for a first mounter,
    /// the check of its own journal otherwise): from here a `recover` write does not wait for the
    /// mount, and blocking it cannot stop the mount before it could replay.
    pub ready: bool,
}

/// Where a mounter is, as the whole group sees it.
///
/// The kernel serialises mounts with a cluster-wide mount lock that a mounting kernel holds
/// from before it waits for `jid` until its mount ends. So the group never holds back a `jid`
/// on anything that needs another mount to progress (S5): only on fencing and quorum, or while
/// recovery runs and a ready member can replay without the mount lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MState {
    /// Its kernel waits for `jid`; the group holds it back (fencing, or recovery running).
    Waiting,
    /// Mounts with `first=1`: no mount had completed when it was admitted, so its kernel replays
    /// every journal it can lock (journals of live nodes are skipped). Several may be first at
    /// once; the mount lock runs them one after the other.
    First,
    /// Mounts with `first=0`: its kernel may hold locks from here on.
    Admitted,
    /// Its mount completed (`online`).
    Mounted,
    /// No free journal: it writes a negative jid and its mount fails.
    Rejected,
    /// Read-only or spectator mount while journals of failed nodes wait for a read-write member
    /// that could replay them: refused, so it cannot hold the mount lock that such a member needs.
    NeedsRw,
}

impl MState {
    pub fn as_str(self) -> &'static str {
        match self {
            MState::Waiting => "waiting",
            MState::First => "first-mounting",
            MState::Admitted => "mounting",
            MState::Mounted => "mounted",
            MState::Rejected => "rejected",
            MState::NeedsRw => "refused",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Dirty {
    /// The node whose journal this is.
    pub owner: NodeId,
    /// Nodes that must be fenced after they failed before anyone replays it: the owner, and any
    /// replayer that failed while it might still be replaying (S1, S2). Empty for a withdraw.
    pub fence: BTreeSet<NodeId>,
    pub replayer: Option<NodeId>,
    pub attempts: u32,
    pub last_failed_by: Option<NodeId>,
}

impl Dirty {
    /// `owner`'s journal, to be replayed once every node of `fence` is fenced.
    pub fn new(owner: NodeId, fence: BTreeSet<NodeId>) -> Dirty {
        Dirty {
            owner,
            fence,
            replayer: None,
            attempts: 0,
            last_failed_by: None,
        }
    }
}

impl Mounter {
    /// Its kernel may hold locks (its `jid` is written or about to be).
    pub fn kernel_active(&self) -> bool {
        matches!(
            self.state,
            MState::First | MState::Admitted | MState::Mounted
        )
    }

    /// Kernel-active with its journal work done: from here a `recover` write does not wait for
    /// the mount, so (read-write) it may replay others' journals.
    pub fn is_ready(&self) -> bool {
        self.state == MState::Mounted || (self.kernel_active() && self.ready)
    }
}

impl FsState {
    fn lowest_free_jid(&self, max_journals: u32) -> Option<Jid> {
        let used: BTreeSet<Jid> = self
            .mounters
            .values()
            .filter_map(|m| m.jid)
            .chain(self.dirty.keys().copied())
            .collect();
        (0..max_journals).find(|j| !used.contains(j))
    }

    /// Every participant confirmed it is blocked.
    pub fn barrier_complete(&self, members: &BTreeMap<NodeId, Member>) -> bool {
        self.unstopped(members).is_empty()
    }

    /// Participants that have not confirmed they blocked.
    pub fn unstopped(&self, members: &BTreeMap<NodeId, Member>) -> Vec<NodeId> {
        if self.dirty.is_empty() {
            return Vec::new();
        }
        let replayer = !self.replayers(members).is_empty();
        self.mounters
            .iter()
            .filter(|(id, m)| Self::blocks(m, replayer) && !self.stopped.contains(id))
            .map(|(id, _)| *id)
            .collect()
    }

    /// Must block while failed journals wait for replay: every kernel-active mounter, except
    /// that while no ready read-write member can replay, mounters still mounting are left to
    /// finish their mount (`block=1` stops a mount that still needs normal locks, holding the
    /// cluster-wide mount lock, so the replayer-to-be would never become one).
    pub fn is_participant(&self, node: NodeId, members: &BTreeMap<NodeId, Member>) -> bool {
        !self.dirty.is_empty()
            && self
                .mounters
                .get(&node)
                .is_some_and(|m| Self::blocks(m, !self.replayers(members).is_empty()))
    }

    fn blocks(m: &Mounter, replayer_exists: bool) -> bool {
        m.kernel_active() && (replayer_exists || m.state == MState::Mounted)
    }

    /// Members that may replay a journal: ready, read-write, in the group.
    pub fn replayers(&self, members: &BTreeMap<NodeId, Member>) -> Vec<NodeId> {
        self.mounters
            .iter()
            .filter(|(id, m)| {
                m.is_ready()
                    && m.mode.can_replay()
                    && members.get(id).is_some_and(|mm| mm.synced && !mm.stale)
            })
            .map(|(id, _)| *id)
            .collect()
    }

    /// Mounters admitted with `first=1` whose journal work is not done yet.
    pub fn first_mounters(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.mounters
            .iter()
            .filter(|(_, m)| m.state == MState::First && !m.ready)
            .map(|(id, _)| *id)
    }
}

/// What a change did, for logs and timelines.
#[derive(Debug, Default)]
pub struct Effects {
    pub dirtied: Vec<(Table, Jid, NodeId)>,
}

impl Replicated {
    pub fn bootstrap(
        members: &BTreeMap<NodeId, (u32, u16, u16)>,
        must_fence: BTreeSet<NodeId>,
    ) -> Self {
        let mut s = Replicated {
            must_fence,
            ..Default::default()
        };
        for (id, (pid, min, max)) in members {
            s.members.insert(
                *id,
                Member {
                    pid: *pid,
                    proto_min: *min,
                    proto_max: *max,
                    synced: true,
                    stale: false,
                    synced_by: None,
                    joined_at: 0,
                    synced_at: 0,
                },
            );
        }
        s.renegotiate();
        s
    }

    /// The group runs the newest version every member speaks, so a newer daemon talks the older
    /// version in a mixed cluster and upgrades once the last old daemon has left.
    pub fn renegotiate(&mut self) {
        if let Some(v) = self
            .members
            .values()
            .filter(|m| m.proto_max > 0 && !m.stale)
            .map(|m| m.proto_max)
            .min()
        {
            self.version = v;
        }
    }

    /// The group agreed that `node` was fenced, for the failure reported at configuration change
    /// `failure`: it counts when that is the node's latest failure.
    pub fn fence_agreed(&mut self, node: NodeId, failure: u64) {
        let since = self.must_fence_since.get(&node).copied().unwrap_or(0);
        if self.must_fence.contains(&node) && failure >= since {
            self.fenced.insert(node);
        }
    }

    /// `node` rejoined with no state: nothing of it is left to fence.
    pub fn forget_failure(&mut self, node: NodeId) {
        self.must_fence.remove(&node);
        self.must_fence_since.remove(&node);
        self.fenced.remove(&node);
    }

    pub fn active_member(&self, id: NodeId) -> bool {
        self.members.get(&id).is_some_and(|m| m.synced && !m.stale)
    }

    /// A member left the group. A failure (or a leave while it still held mounts, which a clean
    /// daemon never does) dirties the journals it may have been writing.
    pub fn remove_member(&mut self, node: NodeId, unclean: bool) -> Effects {
        self.members.remove(&node);
        if unclean {
            self.must_fence.insert(node);
            self.must_fence_since.insert(node, self.confchgs + 1);
            self.fenced.remove(&node);
        }
        let mut fx = Effects::default();
        let mut dirtied_any = false;
        for (table, fs) in self.fs.iter_mut() {
            let mut dirtied = false;
            if let Some(m) = fs.mounters.remove(&node) {
                if m.kernel_active() {
                    fs.fence_before_first.insert(node);
                }
                if m.kernel_active() {
                    if let Some(jid) = m.jid {
                        fs.dirty
                            .insert(jid, Dirty::new(node, BTreeSet::from([node])));
                        fx.dirtied.push((table.clone(), jid, node));
                        dirtied = true;
                    }
                }
            }
            for d in fs.dirty.values_mut() {
                if d.replayer == Some(node) {
                    // It may still be replaying: nobody else may start until it is fenced (S2).
                    d.replayer = None;
                    d.fence.insert(node);
                    dirtied = true;
                }
            }
            fs.stopped.remove(&node);
            if dirtied {
                dirtied_any = true;
                fs.dirty_epoch = self.epoch + 1;
            }
        }
        if dirtied_any {
            self.epoch += 1;
        }
        self.renegotiate();
        let tables: Vec<Table> = self.fs.keys().cloned().collect();
        for t in tables {
            self.prune_stopped(&t);
        }
        fx
    }

    /// With no ready read-write member left, mounters still mounting stop being participants and
    /// unblock (see [`FsState::is_participant`]): their earlier STOPPED no longer holds.
    pub fn prune_stopped(&mut self, table: &Table) {
        let members = &self.members;
        if let Some(fs) = self.fs.get_mut(table) {
            if fs.replayers(members).is_empty() {
                let FsState {
                    stopped, mounters, ..
                } = fs;
                stopped.retain(|id| mounters.get(id).is_some_and(|m| m.state == MState::Mounted));
            }
        }
    }

    /// A mount is withdrawn: its journal needs replay by others, but the node is alive and its
    /// kernel has stopped writing, so no fencing is needed.
    pub fn withdraw(&mut self, table: &Table, node: NodeId) -> bool {
        let Some(fs) = self.fs.get_mut(table) else {
            return false;
        };
        let Some(m) = fs.mounters.remove(&node) else {
            return false;
        };
        let mut dirtied = false;
        if m.kernel_active() {
            if let Some(jid) = m.jid {
                fs.dirty.insert(jid, Dirty::new(node, BTreeSet::new()));
                dirtied = true;
            }
        }
        for d in fs.dirty.values_mut() {
            if d.replayer == Some(node) {
                // A withdraw stops the kernel's replay with everything else: no fencing needed.
                d.replayer = None;
            }
        }
        fs.stopped.remove(&node);
        if dirtied {
            self.epoch += 1;
            fs.dirty_epoch = self.epoch;
        }
        self.prune_stopped(table);
        dirtied
    }

    /// A clean unmount (or a failed mount): its journal is clean.
    pub fn unmount(&mut self, table: &Table, node: NodeId) -> bool {
        let Some(fs) = self.fs.get_mut(table) else {
            return false;
        };
        if fs.mounters.remove(&node).is_none() {
            return false;
        }
        for d in fs.dirty.values_mut() {
            if d.replayer == Some(node) {
                d.replayer = None;
            }
        }
        fs.stopped.remove(&node);
        self.prune_stopped(table);
        true
    }

    pub fn add_mounter(
        &mut self,
        table: &Table,
        node: NodeId,
        mode: MountMode,
        max_journals: u32,
        sabotage_duplicate_jid: bool,
    ) -> Option<&Mounter> {
        let fs = self.fs.entry(table.to_owned()).or_default();
        if fs.mounters.contains_key(&node) {
            return None;
        }
        let (jid, state) = match mode {
            MountMode::Spectator => (None, MState::Waiting),
            _ => {
                let jid = if sabotage_duplicate_jid {
                    Some(
                        fs.mounters
                            .values()
                            .filter_map(|m| m.jid)
                            .min()
                            .unwrap_or(0),
                    )
                } else {
                    fs.lowest_free_jid(max_journals)
                };
                match jid {
                    Some(j) => (Some(j), MState::Waiting),
                    None => (None, MState::Rejected),
                }
            }
        };
        fs.mounters.insert(
            node,
            Mounter {
                jid,
                mode,
                state,
                ready: false,
            },
        );
        fs.mounters.get(&node)
    }

    /// Let waiting mounters go, deciding `first`. Never holds a mounter on something that needs
    /// another mount to progress (the kernel's mount lock would deadlock both, S5):
    /// - no failed journal: first (`first=1`) while no mount has completed, else `first=0`;
    /// - failed journals and a ready read-write member to replay them: wait (that member needs
    ///   no mount lock), so the mount starts on clean journals;
    /// - failed journals and nobody to replay them: a read-write mounter goes ahead, to become
    ///   that replayer once its journal is ready; read-only and spectator mounts are refused.
    ///
    /// Returns `(node, state)` for each mounter whose state changed.
    pub fn admit(&mut self, table: &Table) -> Vec<(NodeId, MState)> {
        let members = &self.members;
        let Some(fs) = self.fs.get_mut(table) else {
            return Vec::new();
        };
        let mut admitted = Vec::new();
        // A completed mount that went through first-mounter replay (or came after one); a
        // spectator's mount replays nothing.
        let any_mounted = fs
            .mounters
            .values()
            .any(|m| m.state == MState::Mounted && m.mode != MountMode::Spectator);
        let dirty = !fs.dirty.is_empty();
        let can_replay = !fs.replayers(members).is_empty();
        for (id, m) in fs.mounters.iter_mut() {
            if m.state != MState::Waiting {
                continue;
            }
            let next = match (dirty, can_replay, m.mode) {
                (true, true, _) => continue,
                (true, false, MountMode::Ro | MountMode::Spectator) => MState::NeedsRw,
                (_, _, MountMode::Spectator) => MState::Admitted,
                _ if any_mounted => MState::Admitted,
                _ => MState::First,
            };
            m.state = next;
            admitted.push((*id, next));
        }
        admitted
    }

    /// After the barrier, give each unassigned dirty journal to one eligible member, spreading
    /// journals over members and moving away from a member that just failed to replay it.
    pub fn assign_replayers(
        &mut self,
        table: &Table,
        sabotage_skip_barrier: bool,
    ) -> Vec<(Jid, NodeId)> {
        let members = &self.members;
        let Some(fs) = self.fs.get_mut(table) else {
            return Vec::new();
        };
        if fs.dirty.is_empty() {
            return Vec::new();
        }
        if !sabotage_skip_barrier && !fs.barrier_complete(members) {
            return Vec::new();
        }
        let eligible = fs.replayers(members);
        if eligible.is_empty() {
            return Vec::new();
        }
        let mut assigned = Vec::new();
        for (i, (jid, d)) in fs
            .dirty
            .iter_mut()
            .filter(|(_, d)| d.replayer.is_none())
            .enumerate()
        {
            let mut pick = eligible[(i + d.attempts as usize) % eligible.len()];
            if eligible.len() > 1 && Some(pick) == d.last_failed_by {
                pick = eligible[(i + d.attempts as usize + 1) % eligible.len()];
            }
            d.replayer = Some(pick);
            assigned.push((*jid, pick));
        }
        assigned
    }

    /// A mounter's kernel finished its journal work (see [`Mounter::ready`]). A first mounter's
    /// kernel has then replayed every journal it could lock, so nodes that failed with no
    /// journal no longer matter to later first mounters.
    pub fn journal_ready(&mut self, table: &Table, node: NodeId) -> bool {
        let Some(fs) = self.fs.get_mut(table) else {
            return false;
        };
        let Some(m) = fs.mounters.get_mut(&node) else {
            return false;
        };
        if !m.kernel_active() || m.ready {
            return false;
        }
        m.ready = true;
        if m.state == MState::First {
            fs.fence_before_first.clear();
        }
        true
    }

    /// Drop a filesystem nobody holds any more (its journals are all clean).
    pub fn forget_if_empty(&mut self, table: &Table) {
        if self.fs.get(table).is_some_and(|fs| {
            fs.mounters.is_empty() && fs.dirty.is_empty() && fs.fence_before_first.is_empty()
        }) {
            self.fs.remove(table);
        }
    }

    /// A deterministic digest for the agreement checker (S6).
    pub fn digest(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        // SipHash with fixed keys: the same on every node and every run.
        #[allow(deprecated)]
        let mut h = std::hash::SipHasher::new();
        self.hash(&mut h);
        h.finish()
    }
}
