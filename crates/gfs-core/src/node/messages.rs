//! The replicated messages (dlm_controld's cpg.c start/stop barrier): applying each delivered
//! message to the replicated state, the STOPPED barrier, RECOVERED, and the settling of the
//! group's decisions after each of them.

use std::collections::BTreeSet;

use super::Node;
use crate::io::{Level, LogRecord};
use crate::state::MState;
use crate::types::{Jid, MountMode, NodeId, Peer, Table};
use crate::wire::Message;

impl Node {
    /// Apply a message if it comes from its node's admitted daemon (synced nodes only).
    pub(super) fn apply_from(&mut self, peer: Peer, msg: Message) {
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
    pub(super) fn apply(&mut self, sender: NodeId, msg: Message) {
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
                    let n = self.announcements.delivered(&table);
                    if let Some(l) = self.local.get_mut(&table) {
                        if l.mount_seq == n {
                            l.mount_seen = true;
                        }
                    }
                }
                let max = self.cfg.max_journals;
                let dup = self.sabotage().duplicate_jid;
                match self
                    .rep
                    .add_mounter(&table, sender, mode, max, dup)
                    .cloned()
                {
                    Some(m) if m.state == MState::Rejected => self.emit(
                        LogRecord::new(
                            Level::Error,
                            format!("no free journal among {max}: mount refused"),
                        )
                        .fs(&table)
                        .node(sender),
                    ),
                    Some(m) => self.emit(
                        LogRecord::new(Level::Info, format!("mounting {}", mode.as_str()))
                            .fs(&table)
                            .node(sender)
                            .jid(m.jid),
                    ),
                    None => self.emit(
                        LogRecord::new(Level::Warn, "duplicate mount ignored")
                            .fs(&table)
                            .node(sender),
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
                    self.emit(
                        LogRecord::new(
                            Level::Info,
                            if first {
                                "first mounter replayed every journal it could lock"
                            } else {
                                "journal ready"
                            },
                        )
                        .fs(&table)
                        .node(sender),
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
                    self.emit(
                        LogRecord::new(Level::Warn, "member withdrew: its journal needs replay")
                            .fs(&table)
                            .node(sender),
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
                    self.timeline_note(format!("node {nodeid} fence-acked by operator"));
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
                    self.timeline_note(format!("node {nodeid} fenced (by node {sender})"));
                }
            }
        }
        match scope {
            Some(table) => {
                self.settle(&table);
                self.scope.include(table);
            }
            None => {
                self.settle_all();
                self.scope.widen();
            }
        }
    }

    pub(super) fn on_recovered(
        &mut self,
        table: &Table,
        jid: Jid,
        done: bool,
        attempt: u32,
        sender: NodeId,
    ) {
        let Some(fs) = self.rep.fs.get_mut(table) else {
            return;
        };
        let Some(d) = fs.dirty.get_mut(&jid) else {
            return;
        };
        if d.replayer == Some(sender) && d.attempts != attempt {
            let current = d.attempts;
            self.emit(LogRecord::new(Level::Warn, format!("ignored a stale replay result (attempt {attempt}, the journal is at attempt {current})")).fs(table).node(sender).jid(jid));
            return;
        }
        if d.replayer != Some(sender) {
            self.emit(
                LogRecord::new(
                    Level::Debug,
                    "ignored a replay result from a node not assigned",
                )
                .fs(table)
                .node(sender)
                .jid(jid),
            );
            return;
        }
        let owner = d.owner;
        if done {
            fs.dirty.remove(&jid);
            if fs.dirty.is_empty() {
                fs.stopped.clear();
            }
            self.emit(
                LogRecord::new(Level::Info, format!("journal of node {owner} replayed"))
                    .fs(table)
                    .node(sender)
                    .jid(jid),
            );
            self.timeline_note(format!(
                "replay of jid {jid} ({table}) done by node {sender}"
            ));
        } else {
            d.attempts = d.attempts.saturating_add(1);
            d.last_failed_by = Some(sender);
            d.replayer = None;
            self.emit(
                LogRecord::new(Level::Warn, "journal replay failed: handing it on")
                    .fs(table)
                    .node(sender)
                    .jid(jid),
            );
            self.timeline_note(format!(
                "replay of jid {jid} ({table}) failed on node {sender}"
            ));
        }
    }

    /// Re-run admission and replayer choice everywhere (deterministic: same on every member).
    pub(super) fn settle_all(&mut self) {
        let tables: Vec<Table> = self.rep.fs.keys().cloned().collect();
        for table in tables {
            self.settle(&table);
        }
    }

    pub(super) fn settle(&mut self, table: &Table) {
        let skip_barrier = self.sabotage().skip_barrier;
        for (node, state) in self.rep.admit(table) {
            let (level, what) = match state {
                MState::First => (Level::Info, "may mount as a first mounter (first=1)"),
                MState::NeedsRw => (
                    Level::Error,
                    "mount refused: journals of failed nodes need a read-write mounter to replay them",
                ),
                _ => (Level::Info, "may mount"),
            };
            self.emit(LogRecord::new(level, what).fs(table).node(node));
        }
        for (jid, node) in self.rep.assign_replayers(table, skip_barrier) {
            let owner = self.rep.fs[table].dirty[&jid].owner;
            self.emit(
                LogRecord::new(
                    Level::Info,
                    format!("assigned to replay the journal of node {owner}"),
                )
                .fs(table)
                .node(node)
                .jid(jid),
            );
            self.timeline_note(format!(
                "replay of jid {jid} ({table}) assigned to node {node}"
            ));
        }
    }

    /// One STOPPED covers every filesystem this node blocked: N messages per failure, not N·F.
    /// Another one only when this node became part of a barrier after its last one (a mount
    /// became ready during recovery).
    pub(super) fn send_stopped(&mut self) {
        let me = self.cfg.nodeid;
        if !self.stopped_in_flight && !self.replaying {
            let waiting: Vec<Table> = self
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
    }
}
