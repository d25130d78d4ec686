//! The core's deadlines, each a named [`Timer`] (quinn's `connection/timer.rs`): `poll_timeout`
//! is the earliest of them and `Input::Timeout` acts on the ones due. Each deadline lives with
//! the state it belongs to; this table is the one place that lists them all.

use super::Node;
use crate::time::Time;
use crate::types::{Jid, NodeId, Table};

#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Timer {
    /// Replay again a journal this node failed to replay (`recover_retry`).
    RecoverRetry { table: Table, jid: Jid },
    /// Tell dlm_controld again of a failed node it was not ready for (`-EAGAIN`).
    DlmRetry { table: Table, node: NodeId },
    /// Ask the fencing backend again after it failed (`fence_retry`).
    FenceRetry(NodeId),
    /// Quorum came back: wait for the membership change that brought it (`merge_wait`).
    QuorumHold,
    /// Nodes absent when the group formed may be fenced from here (`startup_fence_delay`).
    StartupFence,
    /// The slow-fencing warning for a wait on this node is due (`fence_warn`).
    FenceWarn(NodeId),
}

impl Node {
    /// Every armed timer with its deadline.
    fn timers(&self) -> Vec<(Timer, Time)> {
        let mut timers = Vec::new();
        for (table, l) in &self.local {
            timers.extend(l.retry_at.iter().map(|(jid, t)| {
                let table = table.clone();
                (Timer::RecoverRetry { table, jid: *jid }, *t)
            }));
            timers.extend(l.dlm_retry.iter().map(|(node, t)| {
                let table = table.clone();
                (Timer::DlmRetry { table, node: *node }, *t)
            }));
        }
        timers.extend(
            self.fence
                .iter()
                .filter_map(|(n, f)| Some((Timer::FenceRetry(*n), f.retry_at?))),
        );
        timers.extend(self.quorum_hold_until.map(|t| (Timer::QuorumHold, t)));
        let startup = (!self.rep.must_fence.is_empty() && self.is_synced())
            .then(|| self.synced_at.after(self.cfg.startup_fence_delay_ms))
            .filter(|t| *t > self.now);
        timers.extend(startup.map(|t| (Timer::StartupFence, t)));
        timers.extend(
            self.fence_waits()
                .into_iter()
                .filter_map(|(n, f)| Some((Timer::FenceWarn(n), self.fence_warn_due(f)?))),
        );
        timers
    }

    /// The earliest moment this node wants `Input::Timeout`.
    pub fn poll_timeout(&self) -> Option<Time> {
        self.timers().into_iter().map(|(_, t)| t).min()
    }

    /// Disarms the timers that are due. What they wait for is re-judged by the drive that
    /// follows every input (the startup delay and the fencing warning need no disarming).
    pub(super) fn on_timeout(&mut self) {
        let now = self.now;
        for (timer, at) in self.timers() {
            if at > now {
                continue;
            }
            match timer {
                Timer::RecoverRetry { table, jid } => {
                    if let Some(l) = self.local.get_mut(&table) {
                        l.retry_at.remove(&jid);
                    }
                }
                Timer::DlmRetry { table, node } => {
                    if let Some(l) = self.local.get_mut(&table) {
                        l.dlm_retry.remove(&node);
                        l.dlm_pending.insert(node);
                    }
                }
                Timer::FenceRetry(node) => {
                    if let Some(f) = self.fence.get_mut(&node) {
                        f.retry_at = None;
                    }
                }
                Timer::QuorumHold => self.quorum_hold_until = None,
                Timer::StartupFence | Timer::FenceWarn(_) => {}
            }
        }
    }
}
