//! Corosync CPG as the daemons see it: partitions (components), the daemon group's membership
//! in each, agreed order of messages within a component, and virtual synchrony (every member of
//! a component gets the same configuration change at the same point of its stream). Also the
//! quorum each component has, since the daemon reads it with every configuration change.
//!
//! The model owns the components and each node's end of the group (its queue of stream entries
//! and its last view). It changes nothing else: each operation returns the wakeups the world
//! must schedule (a delivery to a node, a commit of a component's multicasts), with the delays
//! drawn from the world's generator in the order they are needed.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use gfs_core::{LeaveReason, NodeId, Peer};

use super::{Event, FOREIGN_PID_BASE};
use crate::rng::Rng;

/// One entry of a node's CPG stream.
#[derive(Clone, Debug)]
pub(super) enum Entry {
    ConfChg {
        id: u64,
        members: Vec<Peer>,
        joined: Vec<Peer>,
        left: Vec<(Peer, LeaveReason)>,
        quorate: bool,
    },
    Msg {
        id: u64,
        sender: Peer,
        payload: Vec<u8>,
    },
    Quorum(bool),
}

/// Something the world schedules for the CPG model: an event after a delay.
pub(super) type Wakeup = (u64, Event);

/// The processes in the daemon group on one node, as the world knows them.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct NodeProcesses {
    /// corosync runs on the node.
    pub corosync: bool,
    /// The pid of the node's daemon, once it joined the group.
    pub daemon: Option<u32>,
    /// A foreign process in the group.
    pub foreign: Option<u32>,
}

impl NodeProcesses {
    fn in_group(&self, p: Peer) -> bool {
        self.daemon == Some(p.pid) || self.foreign == Some(p.pid)
    }
}

pub(super) type Processes = BTreeMap<NodeId, NodeProcesses>;

/// A corosync component: the nodes that see each other, and the multicasts not yet committed.
struct Component {
    members: BTreeSet<NodeId>,
    inflight: VecDeque<(Peer, Vec<u8>)>,
    commit_pending: bool,
}

/// A node's end of the daemon group.
#[derive(Default)]
struct Endpoint {
    component: Option<u64>,
    queue: VecDeque<Entry>,
    deliver_pending: bool,
    /// Quorum of the configuration this daemon last processed (its own view of its partition).
    quorate: bool,
    /// The group's membership as this daemon last saw it.
    view: Vec<Peer>,
}

pub(super) struct CpgModel {
    cluster_nodes: u32,
    components: BTreeMap<u64, Component>,
    next_component: u64,
    /// Stream entries are numbered in commit order, across components.
    next_entry: u64,
    endpoints: BTreeMap<NodeId, Endpoint>,
}

impl CpgModel {
    pub fn new(nodes: impl IntoIterator<Item = NodeId>, cluster_nodes: u32) -> CpgModel {
        CpgModel {
            cluster_nodes,
            components: BTreeMap::new(),
            next_component: 1,
            next_entry: 1,
            endpoints: nodes
                .into_iter()
                .map(|n| (n, Endpoint::default()))
                .collect(),
        }
    }

    fn endpoint(&mut self, n: NodeId) -> &mut Endpoint {
        self.endpoints.get_mut(&n).expect("node")
    }

    fn quorate(&self, members: &BTreeSet<NodeId>) -> bool {
        members.len() as u32 * 2 > self.cluster_nodes
    }

    /// The component `n` is in (none while its corosync is down).
    pub fn component_of(&self, n: NodeId) -> Option<u64> {
        self.endpoints[&n].component
    }

    /// `n`'s component has quorum.
    pub fn partition_quorate(&self, n: NodeId) -> bool {
        self.component_of(n)
            .is_some_and(|c| self.quorate(&self.components[&c].members))
    }

    /// The nodes of `n`'s component, as the quorum service reports them.
    pub fn members_with(&self, n: NodeId) -> Vec<NodeId> {
        self.component_of(n)
            .map(|c| self.components[&c].members.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Each component's nodes, in component order.
    pub fn sides(&self) -> Vec<BTreeSet<NodeId>> {
        self.components
            .values()
            .map(|c| c.members.clone())
            .collect()
    }

    pub fn component_count(&self) -> usize {
        self.components.len()
    }

    /// The position (in [`sides`](Self::sides)) of the component with the most nodes.
    pub fn largest_side(&self) -> Option<usize> {
        let target = self
            .components
            .iter()
            .max_by_key(|(_, c)| c.members.len())
            .map(|(id, _)| *id);
        target.and_then(|t| self.components.keys().position(|k| *k == t))
    }

    /// The quorum this daemon last processed.
    pub fn view_quorate(&self, n: NodeId) -> bool {
        self.endpoints[&n].quorate
    }

    /// The daemon on `n` is gone: nothing more is delivered to it, and a new one starts from an
    /// empty view.
    pub fn reset_endpoint(&mut self, n: NodeId) {
        let e = self.endpoint(n);
        e.queue.clear();
        e.view.clear();
    }

    /// Drops what is queued for `n` (it has no daemon to deliver to).
    pub fn clear_queue(&mut self, n: NodeId) {
        self.endpoint(n).queue.clear();
    }

    /// The next entry of `n`'s stream, for a `Deliver` wakeup.
    pub fn next_for(&mut self, n: NodeId) -> Option<Entry> {
        let e = self.endpoint(n);
        e.deliver_pending = false;
        e.queue.pop_front()
    }

    /// The daemon on `n` processed a quorum or configuration change.
    pub fn set_view_quorate(&mut self, n: NodeId, quorate: bool) {
        self.endpoint(n).quorate = quorate;
    }

    pub fn component_quorate(&self, c: u64) -> bool {
        self.quorate(&self.components[&c].members)
    }

    /// Replace the components by `sides` (sets of corosync-up nodes), delivering configuration
    /// changes with virtual synchrony: each member of a new component gets the same change at the
    /// same point of its stream; messages in flight go before it to the sender's side or after it.
    pub fn reform(
        &mut self,
        sides: Vec<BTreeSet<NodeId>>,
        procs: &Processes,
        rng: &mut Rng,
    ) -> Vec<Wakeup> {
        let mut wake = Vec::new();
        let old: BTreeMap<u64, Component> = std::mem::take(&mut self.components);
        let mut new_of: BTreeMap<NodeId, u64> = BTreeMap::new();
        let mut new_ids = Vec::new();
        for side in sides.into_iter().filter(|s| !s.is_empty()) {
            let id = self.next_component;
            self.next_component += 1;
            for n in &side {
                new_of.insert(*n, id);
            }
            self.components.insert(
                id,
                Component {
                    members: side,
                    inflight: VecDeque::new(),
                    commit_pending: false,
                },
            );
            new_ids.push(id);
        }
        // Messages in flight in the old components. Each sender's messages stay in order: once
        // one is carried past the change, all its later ones are too.
        for (_, comp) in old {
            let mut carried: BTreeSet<Peer> = BTreeSet::new();
            for (sender, payload) in comp.inflight {
                let sender_daemon_up = procs[&sender.nodeid].in_group(sender);
                match new_of.get(&sender.nodeid).copied() {
                    Some(c) if sender_daemon_up => {
                        if !carried.contains(&sender) && rng.chance(0.5) {
                            let targets: Vec<NodeId> = comp
                                .members
                                .iter()
                                .copied()
                                .filter(|n| new_of.get(n) == Some(&c))
                                .collect();
                            self.commit_to(&targets, sender, payload, procs, rng, &mut wake);
                        } else if let Some(nc) = self.components.get_mut(&c) {
                            carried.insert(sender);
                            nc.inflight.push_back((sender, payload));
                        }
                    }
                    _ => {
                        // The sender is gone: all survivors get it, or none do.
                        if rng.chance(0.5) {
                            let targets: Vec<NodeId> = comp
                                .members
                                .iter()
                                .copied()
                                .filter(|n| new_of.contains_key(n) && *n != sender.nodeid)
                                .collect();
                            self.commit_to(&targets, sender, payload, procs, rng, &mut wake);
                        }
                    }
                }
            }
        }
        for (n, e) in self.endpoints.iter_mut() {
            e.component = new_of.get(n).copied();
        }
        for id in new_ids {
            wake.extend(self.group_change(id, None, procs, rng));
            if !self.components[&id].inflight.is_empty() {
                wake.extend(self.schedule_commit(id, rng));
            }
        }
        wake
    }

    /// Recompute the daemon group's membership in a component and queue a configuration change
    /// for every daemon whose view changed. `gone` names a process that just left or died on a
    /// node whose corosync lives on.
    pub fn group_change(
        &mut self,
        comp: u64,
        gone: Option<(Peer, LeaveReason)>,
        procs: &Processes,
        rng: &mut Rng,
    ) -> Vec<Wakeup> {
        let mut wake = Vec::new();
        let mut members: Vec<Peer> = Vec::new();
        for n in &self.components[&comp].members {
            let p = &procs[n];
            if let Some(pid) = p.daemon {
                members.push(Peer::new(*n, pid));
            }
            if let Some(pid) = p.foreign {
                members.push(Peer::new(*n, pid));
            }
        }
        members.sort_unstable();
        let quorate = self.quorate(&self.components[&comp].members);
        let mut by_view: BTreeMap<Vec<Peer>, Vec<NodeId>> = BTreeMap::new();
        for p in members.iter().filter(|p| p.pid < FOREIGN_PID_BASE) {
            by_view
                .entry(self.endpoints[&p.nodeid].view.clone())
                .or_default()
                .push(p.nodeid);
        }
        for (view, receivers) in by_view {
            // Quorum may change without the group changing (a node without a daemon left).
            for n in &receivers {
                let e = self.endpoint(*n);
                if e.quorate != quorate && view == members {
                    e.queue.push_back(Entry::Quorum(quorate));
                }
            }
            if view == members {
                for n in &receivers {
                    wake.extend(self.kick_delivery(*n, rng));
                }
                continue;
            }
            let joined: Vec<Peer> = members
                .iter()
                .copied()
                .filter(|p| !view.contains(p))
                .collect();
            let left: Vec<(Peer, LeaveReason)> = view
                .iter()
                .copied()
                .filter(|p| !members.contains(p))
                .map(|p| {
                    let n = p.nodeid;
                    let reason = match gone {
                        Some((g, r)) if g == p => r,
                        _ if procs[&n].corosync && self.endpoints[&n].component == Some(comp) => {
                            LeaveReason::ProcDown
                        }
                        _ => LeaveReason::NodeDown,
                    };
                    (p, reason)
                })
                .collect();
            let id = self.next_entry;
            self.next_entry += 1;
            // The daemon reads quorum as it hands a configuration change to the core, which
            // carries it (`ConfChg::with_quorum`).
            for n in &receivers {
                let e = self.endpoint(*n);
                e.queue.push_back(Entry::ConfChg {
                    id,
                    members: members.clone(),
                    joined: joined.clone(),
                    left: left.clone(),
                    quorate,
                });
                e.view = members.clone();
            }
            for n in &receivers {
                wake.extend(self.kick_delivery(*n, rng));
            }
        }
        wake
    }

    /// A process multicasts `payload` in `n`'s component; it is committed a moment later.
    pub fn multicast(
        &mut self,
        n: NodeId,
        sender: Peer,
        payload: Vec<u8>,
        rng: &mut Rng,
    ) -> Vec<Wakeup> {
        let Some(c) = self.component_of(n) else {
            return Vec::new();
        };
        if let Some(comp) = self.components.get_mut(&c) {
            comp.inflight.push_back((sender, payload));
        }
        self.schedule_commit(c, rng).into_iter().collect()
    }

    /// A component's multicasts get their place in the agreed order and go to every member.
    pub fn commit(&mut self, comp: u64, procs: &Processes, rng: &mut Rng) -> Vec<Wakeup> {
        let mut wake = Vec::new();
        let Some(c) = self.components.get_mut(&comp) else {
            return wake;
        };
        c.commit_pending = false;
        let batch: Vec<(Peer, Vec<u8>)> = c.inflight.drain(..).collect();
        let members: Vec<NodeId> = c.members.iter().copied().collect();
        for (sender, payload) in batch {
            self.commit_to(&members, sender, payload, procs, rng, &mut wake);
        }
        wake
    }

    fn commit_to(
        &mut self,
        targets: &[NodeId],
        sender: Peer,
        payload: Vec<u8>,
        procs: &Processes,
        rng: &mut Rng,
        wake: &mut Vec<Wakeup>,
    ) {
        let id = self.next_entry;
        self.next_entry += 1;
        for n in targets {
            if procs[n].daemon.is_some() {
                self.endpoint(*n).queue.push_back(Entry::Msg {
                    id,
                    sender,
                    payload: payload.clone(),
                });
            }
        }
        for n in targets {
            wake.extend(self.kick_delivery(*n, rng));
        }
    }

    fn schedule_commit(&mut self, comp: u64, rng: &mut Rng) -> Option<Wakeup> {
        let c = self.components.get_mut(&comp)?;
        if c.commit_pending {
            return None;
        }
        c.commit_pending = true;
        Some((rng.range(1, 8), Event::Commit(comp)))
    }

    /// A delivery to `n` if it has entries queued and none is scheduled.
    pub fn kick_delivery(&mut self, n: NodeId, rng: &mut Rng) -> Option<Wakeup> {
        let e = self.endpoint(n);
        if e.deliver_pending || e.queue.is_empty() {
            return None;
        }
        e.deliver_pending = true;
        Some((rng.range(0, 4), Event::Deliver(n)))
    }
}
