//! Faults, drawn from the seed's profile: node crashes, daemon crashes, partitions and their
//! healing, withdraws, operator fence-acks, foreign processes in the daemon group; and the
//! node lifecycle they drive (crash, corosync death, reboot, daemon start). When the fault
//! period ends everything is healed and restarted, so that liveness (L1) can be judged.

use std::collections::BTreeSet;

use gfs_core::{wire, Input, LeaveReason, Node, NodeConfig, NodeId, Peer};

use super::mount::MountStep;
use super::{Daemon, Event, World, CLUSTER};
use crate::rng::Rng;

/// How rough this seed is (swarm testing: every seed draws its own mix).
#[derive(Clone, Debug)]
pub(super) struct Profile {
    pub crash: f64,
    pub daemon_crash: f64,
    pub partition: f64,
    pub withdraw: f64,
    pub recover_fail: f64,
    pub fence_fail: f64,
    pub fence_ack: f64,
    pub fence_delay: (u64, u64),
    pub replay_ms: (u64, u64),
    pub mount: f64,
    pub unmount: f64,
    pub remount: f64,
    pub ro_share: f64,
    pub spectator_share: f64,
    /// Every node mounts one filesystem at the same moment (the kernel's mount lock decides).
    pub storm: f64,
}

impl Profile {
    pub(super) fn draw(rng: &mut Rng) -> Profile {
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

impl World {
    /// A process that is not gfs_controld joins the daemon group on a node (any process corosync
    /// lets use its IPC can): it may send a forged message, then leaves or exits. The daemons
    /// must change nothing for it.
    pub(super) fn foreign_join(&mut self) {
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
    pub(super) fn foreign_send(&mut self, peer: Peer) {
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
        let table = self.tables[0].clone();
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

    pub(super) fn foreign_go(&mut self, peer: Peer, clean: bool) {
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

    pub(super) fn up_nodes(&self) -> Vec<NodeId> {
        self.nodes
            .values()
            .filter(|x| x.corosync)
            .map(|x| x.id)
            .collect()
    }

    pub(super) fn inject_fault(&mut self) {
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
                self.fencing.last_acked.insert(t, self.now);
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

    /// A daemon's knowledge of failures dies with it.
    pub(super) fn forget_daemon(&mut self, n: NodeId) {
        for j in self.journals.values_mut() {
            j.known_by.remove(&n);
        }
    }

    pub(super) fn crash(&mut self, n: NodeId, by_fence: bool) {
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

    pub(super) fn leave_component(&mut self, n: NodeId) {
        let mut sides = self.cpg.sides();
        for s in sides.iter_mut() {
            s.remove(&n);
        }
        self.reform(sides);
    }

    pub(super) fn daemon_crash(&mut self, n: NodeId) {
        self.forget_daemon(n);
        // Its queued sysfs operations die with it (dlm_controld keeps its registrations).
        self.sysfs.queued.retain(|(x, _), _| *x != n);
        let node = self.nodes.get_mut(&n).expect("node");
        let pid = node.daemon.take().map_or(0, |d| d.pid);
        self.cpg.reset_endpoint(n);
        if let Some(c) = self.cpg.component_of(n) {
            self.group_change(c, Some((Peer::new(n, pid), LeaveReason::ProcDown)));
        }
        let d = self.rng.range(500, 5000);
        self.schedule(d, Event::DaemonStart(n));
    }

    pub(super) fn kill_corosync(&mut self, n: NodeId) {
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
        } else if !self.fencing.ops.contains_key(&n) && !self.fencing.manual {
            // Pacemaker fences a node that left the membership uncleanly.
            self.start_fence(n);
        }
    }

    pub(super) fn reboot(&mut self, n: NodeId) {
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

    pub(super) fn daemon_start(&mut self, n: NodeId) {
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
        node.daemon_starts += 1;
        node.saw_fail.clear();
        let mut cfg = NodeConfig::new(n, CLUSTER);
        cfg.cluster_nodes = (1..=self.cfg.nodes).collect();
        cfg.sabotage = self.cfg.sabotage;
        cfg.require_fencing = self.cfg.fencing;
        cfg.max_journals = self.cfg.max_journals;
        let incarnation = (n as u64) << 32 | node.daemon_starts;
        // Each incarnation is a new process.
        let pid = 100 + node.daemon_starts as u32;
        cfg.pid = pid;
        node.daemon = Some(Daemon {
            core: Node::new(cfg, self.now),
            incarnation,
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

    pub(super) fn end_faults(&mut self) {
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
}
