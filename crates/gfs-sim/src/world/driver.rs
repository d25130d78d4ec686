//! The driver: how the simulated daemons' cores are fed, as the daemon's loop feeds its core.
//! Inputs go in one at a time through the core's one drive rule (`gfs_core::drive`, the
//! daemon's): every output of a drain is executed before the next input, and a sysfs or
//! dlm_controld result comes back later as its own input; then the core's timer is armed. The
//! quorum service's view goes in with each configuration change (inside it) and with every
//! membership change. S6 (agreement) is judged on every stream entry fed.

use gfs_core::{wire, ConfChg, Input, LeaveReason, Node, NodeId, Output, Peer, DAEMON_GROUP};

use super::checker;
use super::cpg::Entry;
use super::sysfs::IoOp;
use super::{Event, World, FOREIGN_PID_BASE};

impl World {
    pub(super) fn deliver(&mut self, n: NodeId) {
        let Some(entry) = self.cpg.next_for(n) else {
            return;
        };
        self.state_from = None;
        if self.nodes[&n].daemon.is_none() {
            self.cpg.clear_queue(n);
            return;
        }
        match entry {
            Entry::Quorum(q) => {
                self.cpg.set_view_quorate(n, q);
                self.feed(n, Input::Quorum { quorate: q });
            }
            Entry::ConfChg {
                id,
                members,
                joined,
                left,
                quorate,
            } => {
                self.cpg.set_view_quorate(n, quorate);
                // S7 is about members that held state when they were seen to fail.
                // Foreign processes are nobody's daemon: their leaves fail nothing.
                let daemon_left: Vec<(NodeId, LeaveReason)> = left
                    .iter()
                    .filter(|(p, _)| p.pid < FOREIGN_PID_BASE)
                    .map(|(p, r)| (p.nodeid, *r))
                    .collect();
                let dinc: Vec<(NodeId, u64)> = daemon_left
                    .iter()
                    .filter(|(_, r)| r.is_failure())
                    .filter_map(|(x, _)| {
                        self.nodes[x]
                            .daemon
                            .as_ref()
                            .filter(|d| d.core.is_synced())
                            .map(|d| (*x, d.incarnation))
                    })
                    .collect();
                // The daemons that processed this change know its failed members' journals need replay.
                for (x, _) in daemon_left.iter().filter(|(_, r)| r.is_failure()) {
                    for j in self.journals.values_mut() {
                        let live_holder = j.in_use_by(*x);
                        if live_holder || j.dirty_owner.is_some_and(|(h, _)| h == *x) {
                            j.known_by.insert(n);
                        }
                    }
                }
                let node = self.nodes.get_mut(&n).expect("node");
                if node.daemon.as_ref().is_some_and(|d| d.core.is_synced()) {
                    node.saw_fail.extend(dinc.into_iter().map(|k| (k, id)));
                }
                self.log(format!("n{n} confchg members={members:?} joined={joined:?} left={left:?} quorate={quorate}"));
                let change = ConfChg {
                    group: DAEMON_GROUP.into(),
                    members,
                    joined,
                    left,
                };
                self.feed_tracked(n, id, change.with_quorum(quorate));
            }
            Entry::Msg {
                id,
                sender,
                payload,
            } => {
                if let Ok((_, msg)) = wire::decode(&payload) {
                    if let wire::Message::Withdraw { table } = &msg {
                        for ((t, _), j) in self.journals.iter_mut() {
                            if sender.pid < FOREIGN_PID_BASE
                                && *t == table.to_string()
                                && j.dirty_owner.is_some_and(|(h, _)| h == sender.nodeid)
                            {
                                j.known_by.insert(n);
                            }
                        }
                    }
                    if matches!(&msg, wire::Message::State { recipient, .. } if *recipient == n) {
                        self.state_from = Some((sender.nodeid, id));
                    }
                    let name = match &msg {
                        wire::Message::State { recipient, .. } => format!("STATE for n{recipient}"),
                        other => format!("{other:?}"),
                    };
                    let from = if sender.pid < FOREIGN_PID_BASE {
                        format!("n{}", sender.nodeid)
                    } else {
                        format!("n{} (foreign process {})", sender.nodeid, sender.pid)
                    };
                    self.log(format!("n{n} <- {from} {name}"));
                }
                self.feed_tracked(
                    n,
                    id,
                    Input::Deliver {
                        group: DAEMON_GROUP.into(),
                        sender,
                        payload,
                    },
                );
            }
        }
        self.kick_delivery(n);
    }

    /// Feed a stream entry and check agreement: two nodes in the same replicated state that
    /// process the same entry must end in the same replicated state (S6).
    pub(super) fn feed_tracked(&mut self, n: NodeId, entry: u64, input: Input) {
        self.nodes.get_mut(&n).expect("node").last_entry = entry;
        let pre = self.nodes[&n]
            .daemon
            .as_ref()
            .and_then(|d| d.core.settled_digest());
        self.feed(n, input);
        let post = self.nodes[&n]
            .daemon
            .as_ref()
            .and_then(|d| d.core.settled_digest());
        if let (Some(_), Some(post)) = (pre, post) {
            let first = self.agreement.get(&(entry, 0)).copied();
            if first.is_none() {
                self.agreement.insert((entry, 0), (post, n));
            }
            if let Some(v) = checker::agreement(n, entry, post, first) {
                let who = first.map_or(n, |(_, who)| who);
                for x in [who, n] {
                    if let Some(d) = self.nodes[&x].daemon.as_ref() {
                        let rep = format!("{:?}", d.core.replicated());
                        self.log(format!("STATE n{x}: {rep}"));
                    }
                }
                self.violate(v);
            }
        }
    }

    pub(super) fn feed(&mut self, n: NodeId, input: Input) {
        let was_synced = self.nodes[&n]
            .daemon
            .as_ref()
            .is_some_and(|d| d.core.is_synced());
        self.feed_inner(n, input);
        let digest = self.nodes[&n]
            .daemon
            .as_ref()
            .and_then(|d| d.core.replicated_digest());
        if let (false, Some(_)) = (was_synced, digest) {
            // A node that adopts the group's state inherits its sender's memory of failures
            // as of the STATE's place in the stream: the sender may have run ahead (even into
            // another partition) by the time the recipient processes it. A group it formed
            // itself remembers none.
            let inherited = self
                .state_from
                .take()
                .and_then(|(from, at)| self.nodes.get(&from).map(|x| (x, at)))
                .map(|(x, at)| {
                    x.saw_fail
                        .iter()
                        .filter(|(_, seen)| **seen < at)
                        .map(|(k, seen)| (*k, *seen))
                        .collect()
                })
                .unwrap_or_default();
            self.nodes.get_mut(&n).expect("node").saw_fail = inherited;
        }
    }

    fn feed_inner(&mut self, n: NodeId, input: Input) {
        let now = self.now;
        let Ok(()) = gfs_core::drive(&mut Driving { world: self, n }, now, input);
        self.arm_timer(n);
    }

    pub(super) fn arm_timer(&mut self, n: NodeId) {
        let now = self.now;
        let Some(d) = self.nodes.get_mut(&n).and_then(|x| x.daemon.as_mut()) else {
            return;
        };
        if let Some(t) = d.core.poll_timeout() {
            if d.timer.is_none_or(|cur| t < cur) {
                d.timer = Some(t);
                let delay = t.since(now);
                self.schedule(delay, Event::NodeTimer(n));
            }
        }
    }

    fn execute(&mut self, n: NodeId, out: Output) -> Option<Input> {
        match out {
            Output::JoinGroup { group } => {
                if group == DAEMON_GROUP {
                    let node = self.nodes.get_mut(&n).expect("node");
                    if let Some(d) = node.daemon.as_mut() {
                        d.joined = true;
                    }
                    if let Some(c) = self.cpg.component_of(n) {
                        self.group_change(c, None);
                    }
                }
                None
            }
            Output::Mcast { group: _, payload } => {
                self.messages += 1;
                if self.cfg.log_multicasts {
                    let what = wire::decode(&payload).map(|(_, m)| m.name()).unwrap_or("?");
                    self.log(format!("n{n} mcast {what}"));
                }
                let pid = self.nodes[&n].daemon.as_ref().map_or(0, |d| d.pid);
                let wakeups = self
                    .cpg
                    .multicast(n, Peer::new(n, pid), payload, &mut self.rng);
                self.wake(wakeups);
                None
            }
            Output::Write { table, file, value } => {
                self.io_submit(n, &table, IoOp::Write { file, value });
                None
            }
            Output::Read { table, file } => {
                self.io_submit(n, &table, IoOp::Read { file });
                None
            }
            Output::DlmRegister { table } => {
                self.dlm_register(n, table);
                None
            }
            Output::DlmUnregister { table } => {
                self.dlm_unregister(n, &table);
                None
            }
            Output::DlmNotify { table, nodeid } => {
                self.dlm_notify(n, table, nodeid);
                None
            }
            Output::Fence { nodeid, failed_at } => {
                self.fence_request(n, nodeid, failed_at);
                None
            }
            Output::KillNode { nodeid, reason } => {
                self.log(format!("n{n} asks corosync to kill n{nodeid}: {reason}"));
                self.kill_corosync(nodeid);
                None
            }
            Output::Reply { request, result } => {
                self.log(format!("n{n} reply {request}: {result:?}"));
                None
            }
            Output::Log(rec) => {
                self.log(format!("n{n} {:?} {rec}", rec.level));
                None
            }
        }
    }

    /// Each daemon hears its partition's membership from the quorum service.
    pub(super) fn feed_memberships(&mut self) {
        let views: Vec<(NodeId, Vec<NodeId>)> = self
            .nodes
            .values()
            .filter(|x| x.daemon.is_some())
            .filter(|x| self.cpg.component_of(x.id).is_some())
            .map(|x| (x.id, self.cpg.members_with(x.id)))
            .collect();
        for (n, members) in views {
            self.feed(n, Input::Membership { members });
        }
    }
}

/// One node's daemon driven by the world, through the core's one drive rule (the daemon's).
struct Driving<'w> {
    world: &'w mut World,
    n: NodeId,
}

impl gfs_core::Driver for Driving<'_> {
    type Error = std::convert::Infallible;

    fn node(&mut self) -> Option<&mut Node> {
        let node = self.world.nodes.get_mut(&self.n)?;
        node.daemon.as_mut().map(|d| &mut d.core)
    }

    fn execute(&mut self, output: Output) -> Result<Option<Input>, Self::Error> {
        Ok(self.world.execute(self.n, output))
    }
}
