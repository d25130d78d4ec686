//! Who is in the daemon group (dlm_controld's daemon_cpg.c): configuration changes, HELLO and
//! the state transfer that brings a new member up to date, stale merges, and corosync's
//! membership. The messages the synced members apply are in `messages.rs`.

use std::collections::{BTreeMap, BTreeSet};

use super::{FenceRecord, Node, Phase};
use crate::io::{Level, LogRecord, Output};
use crate::state::Replicated;
use crate::types::{LeaveReason, NodeId, Peer, Table};
use crate::wire::{self, Message};

/// Where this daemon stands with the group's state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Membership {
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
pub(super) enum Buffered {
    Msg(Peer, Message),
    ConfChg {
        joined: Vec<Peer>,
        left: Vec<(Peer, LeaveReason)>,
    },
}

impl Node {
    pub(super) fn on_quorum(&mut self, quorate: bool) {
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

    pub(super) fn on_confchg(
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
            Membership::Stale => {}
            Membership::Unsynced {
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
            Membership::Synced => self.apply_confchg(&joined, &left),
        }
    }

    /// Applies a configuration change to the replicated state. Each node has one admitted daemon
    /// instance: the process that joined while the node had none (or, if that one never said
    /// HELLO, the process of the node that does). Joins and leaves of any other process change
    /// nothing, so a foreign process in the group can neither fake a failure nor a member.
    pub(super) fn apply_confchg(&mut self, joined: &[Peer], left: &[(Peer, LeaveReason)]) {
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

    /// A membership event or message of a process that is not its node's daemon: ignored, and
    /// logged for the first one per node and every 100th after (deterministic rate limit).
    pub(super) fn ignore_foreign(&mut self, peer: Peer, what: String) {
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
    pub(super) fn holds_mounts(&self, node: NodeId) -> bool {
        self.rep
            .fs
            .values()
            .any(|fs| fs.mounters.contains_key(&node))
    }

    pub(super) fn member_left(&mut self, node: NodeId, reason: LeaveReason, change: u64) {
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
            let early_dlm_notify = self.sabotage().early_dlm_notify;
            for l in self.local.values_mut().filter(|l| l.dlm_registered) {
                if early_dlm_notify {
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
            let now = self.now;
            self.fence
                .entry(node)
                .and_modify(|rec| rec.failed_again(now, change))
                .or_insert_with(|| FenceRecord::new(now, Some(change)));
        }
        // A daemon that died under live mounts (PROCDOWN) is fenced like a failed node: its node
        // stays in corosync until the fencing backend acts. Asking corosync to remove it as well
        // would stall the ring (and pacemaker's fencer with it) for a token timeout.
        if !fx.dirtied.is_empty() {
            let epoch = self.rep.epoch;
            let tables: BTreeSet<Table> = fx.dirtied.iter().map(|(t, _, _)| t.clone()).collect();
            self.timeline_start(epoch, node, &tables);
            for (table, jid, owner) in &fx.dirtied {
                self.emit(
                    LogRecord::new(
                        Level::Warn,
                        format!("member failed ({reason:?}): journal needs replay"),
                    )
                    .fs(table)
                    .node(*owner)
                    .jid(*jid),
                );
            }
        }
    }

    pub(super) fn send_hello(&mut self, attempt: u32) {
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

    pub(super) fn on_deliver(&mut self, peer: Peer, payload: &[u8]) {
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
            Membership::Stale => {}
            Membership::Synced => self.apply_from(peer, msg),
            Membership::Unsynced {
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
    pub(super) fn maybe_bootstrap(&mut self) {
        if !matches!(&self.sync, Membership::Unsynced { hello_pos, .. } if !hello_pos.is_empty()) {
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
        self.sync = Membership::Synced;
        let now = self.now;
        for n in &must_fence {
            // Absent since before the group formed: any fence report counts.
            self.fence
                .entry(*n)
                .or_insert_with(|| FenceRecord::new(now, Some(0)));
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

    pub(super) fn adopt(&mut self, snapshot: Replicated, replay: Vec<Buffered>, from: NodeId) {
        self.rep = snapshot;
        self.sync = Membership::Synced;
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

    pub(super) fn after_sync(&mut self) {
        self.synced_at = self.now;
        self.scope.widen();
        if self.rep.version < self.cfg.proto_min {
            self.log(
                Level::Error,
                None,
                format!(
                    "the group runs protocol {} but this daemon needs at least {}: not taking part",
                    self.rep.version, self.cfg.proto_min
                ),
            );
            self.sync = Membership::Stale;
            return;
        }
        // Any failure the state records happened before we knew of it: fencing is judged from now.
        let needs: Vec<NodeId> = self.fence_needs().into_iter().collect();
        for n in needs {
            let now = self.now;
            self.fence
                .entry(n)
                .or_insert_with(|| FenceRecord::new(now, None));
        }
        self.seed_dlm_pending();
        let pending: Vec<Table> = self
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

    pub(super) fn stale_merge(&mut self, other: NodeId, their_side: Vec<NodeId>) {
        let me = self.cfg.nodeid;
        if self.sabotage().accept_stale_merge {
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
            self.sync = Membership::Stale;
            // The winners remove us too; this also covers winners that have gone meanwhile.
            self.outputs.push_back(Output::KillNode {
                nodeid: me,
                reason: "lost a partition merge: its state is stale".into(),
            });
        }
    }

    /// Marks `node` stale (ignored from now on) and has the lowest active member ask corosync
    /// to remove it.
    pub(super) fn remove_stale(&mut self, node: NodeId, reason: &str) {
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

    pub(super) fn on_membership(&mut self, members: Vec<NodeId>) {
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
}
