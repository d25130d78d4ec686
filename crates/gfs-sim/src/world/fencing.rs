//! The fencing oracle: pacemaker's fencer as the daemons see it. It powers a node off after a
//! delay drawn from the seed, or fails when the profile (or a scenario) says so, and tells every
//! daemon when it fenced whom. It remembers when each node was last fenced or acknowledged by an
//! operator, which S1 judges replays against.

use std::collections::BTreeMap;

use gfs_core::{Input, NodeId, Time};

use super::{Event, World};

/// An operation in progress on the fencing device.
pub(super) struct FenceOp {
    pub requested_at: Time,
}

/// The fencer's state.
#[derive(Default)]
pub(super) struct FencingOracle {
    /// Fencing operations in progress, by target.
    pub ops: BTreeMap<NodeId, FenceOp>,
    pub last_fenced: BTreeMap<NodeId, Time>,
    pub last_acked: BTreeMap<NodeId, Time>,
    /// A scenario's count of fencing requests to fail.
    pub failures_left: u32,
    /// The fencing backend never fences (only `fence_ack` does).
    pub manual: bool,
}

impl World {
    /// The fencing device starts powering `target` off; it is done after the profile's delay.
    pub(super) fn start_fence(&mut self, target: NodeId) {
        self.fencing.ops.insert(
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

    pub(super) fn fence_request(&mut self, requester: NodeId, target: NodeId, failed_at: Time) {
        let comp_quorate = self.cpg.partition_quorate(requester);
        if let Some(t) = self
            .fencing
            .last_fenced
            .get(&target)
            .copied()
            .filter(|t| *t >= failed_at)
        {
            let incarnation = self.nodes[&requester]
                .daemon
                .as_ref()
                .map_or(0, |d| d.incarnation);
            self.schedule(
                1,
                Event::FenceNotify {
                    node: requester,
                    target,
                    at: t,
                    incarnation,
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
        if self.fencing.ops.contains_key(&target) || self.fencing.manual {
            return;
        }
        let forced = self.fencing.failures_left > 0;
        if forced {
            self.fencing.failures_left -= 1;
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

    pub(super) fn fence_done(&mut self, target: NodeId) {
        let Some(op) = self.fencing.ops.remove(&target) else {
            return;
        };
        self.log(format!(
            "fencer: n{target} fenced (requested at {})",
            op.requested_at
        ));
        self.crash(target, true);
        self.fencing.last_fenced.insert(target, self.now);
        let at = self.now;
        let listeners: Vec<(NodeId, u64)> = self
            .nodes
            .values()
            .filter_map(|x| x.daemon.as_ref().map(|d| (x.id, d.incarnation)))
            .collect();
        for (n, incarnation) in listeners {
            let d = self.rng.range(0, 300);
            self.schedule(
                d,
                Event::FenceNotify {
                    node: n,
                    target,
                    at,
                    incarnation,
                },
            );
        }
    }
}
