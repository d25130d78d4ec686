//! What this node knows of failed nodes' fencing: the records, the backend's answers, FENCED
//! and FENCE_ACK, who needs fencing, and the slow-fencing warning.

use std::collections::BTreeSet;

use super::{Node, Phase};
use crate::io::{Level, LogRecord, Output};
use crate::state::MState;
use crate::time::Time;
use crate::types::NodeId;
use crate::wire::Message;

#[derive(Clone, Debug)]
pub(super) struct FenceRecord {
    pub(super) failed_at: Time,
    /// The configuration change (`Replicated::confchgs`) that reported the failure, when this
    /// daemon saw it; a FENCED or FENCE_ACK about an earlier failure is stale.
    pub(super) failed_change: Option<u64>,
    pub(super) fenced_at: Option<Time>,
    pub(super) requested: bool,
    pub(super) retry_at: Option<Time>,
    pub(super) last_error: Option<String>,
    /// When the slow-fencing warning was last logged for this wait.
    pub(super) warned_at: Option<Time>,
}

impl FenceRecord {
    /// A node that failed at `failed_at`, reported by configuration change `failed_change`
    /// when this daemon saw it.
    pub(super) fn new(failed_at: Time, failed_change: Option<u64>) -> FenceRecord {
        FenceRecord {
            failed_at,
            failed_change,
            fenced_at: None,
            requested: false,
            retry_at: None,
            last_error: None,
            warned_at: None,
        }
    }

    /// The node failed again: an earlier fence does not count for it. The last fencing error
    /// and warning stay (the wait goes on).
    pub(super) fn failed_again(&mut self, now: Time, change: u64) {
        self.failed_at = now;
        self.failed_change = Some(change);
        self.fenced_at = None;
        self.requested = false;
        self.retry_at = None;
    }

    pub(super) fn done(&self) -> bool {
        self.fenced_at.is_some_and(|t| t >= self.failed_at)
    }
}

impl Node {
    pub(super) fn on_fence_failed(&mut self, nodeid: NodeId, reason: String) {
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

    pub(super) fn on_fenced(&mut self, nodeid: NodeId, at: Time) {
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
            self.timeline_note(format!("node {nodeid} fenced"));
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
    pub(super) fn fenced_by_message(
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
                self.emit(LogRecord::new(Level::Warn, format!("ignored a stale {what} from node {from}: it answers the failure at change {failure}, the node failed again at change {latest}")).node(nodeid));
                return false;
            }
        }
        let now = self.now;
        let rec = self
            .fence
            .entry(nodeid)
            .or_insert_with(|| FenceRecord::new(now, None));
        rec.fenced_at = Some(now);
        rec.last_error = None;
        true
    }

    /// A fence report in the group's order: the replicated state takes it for the node's latest
    /// failure (so a member that syncs later neither fences the node again nor waits for it).
    /// Always true but for a current member, which is never taken as fenced.
    pub(super) fn agree_fenced(&mut self, nodeid: NodeId, failure: u64) -> bool {
        if self.daemon_in_group(nodeid) {
            return false;
        }
        self.rep.fence_agreed(nodeid, failure);
        true
    }

    /// Failed nodes some decision here waits to see fenced, and their records.
    pub(super) fn fence_waits(&self) -> Vec<(NodeId, &FenceRecord)> {
        self.fence_needs()
            .into_iter()
            .filter_map(|n| self.fence.get(&n).filter(|f| !f.done()).map(|f| (n, f)))
            .collect()
    }

    /// Since when this wait is for fencing (quorate) or for quorum (inquorate): an inquorate
    /// partition fences nothing, so the time without quorum is not a fencing delay.
    pub(super) fn wait_since(&self, f: &FenceRecord) -> Time {
        if self.cfg.require_quorum {
            f.failed_at.max(self.quorum_changed_at)
        } else {
            f.failed_at
        }
    }

    /// When the slow-fencing warning for this wait is due next (first after `fence_warn`, then
    /// every `fence_warn`); `None` when warnings are off.
    pub(super) fn fence_warn_due(&self, f: &FenceRecord) -> Option<Time> {
        if self.cfg.fence_warn_ms == 0 {
            return None;
        }
        let since = self.wait_since(f);
        let base = f.warned_at.filter(|w| *w >= since).unwrap_or(since);
        Some(base.after(self.cfg.fence_warn_ms))
    }

    /// Logs every fence wait that has lasted `fence_warn` since it began or was last reported.
    /// Driven by `poll_timeout`, so it fires on time even when nothing else happens.
    pub(super) fn warn_slow_fencing(&mut self) {
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

    pub(super) fn on_fence_ack_request(&mut self, request: u64, nodeid: NodeId) {
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
    pub(super) fn fence_needs(&self) -> BTreeSet<NodeId> {
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

    pub(super) fn fenced(&self, node: NodeId) -> bool {
        self.sabotage().skip_fencing
            || self.rep.fenced.contains(&node)
            || self.fence.get(&node).is_some_and(FenceRecord::done)
    }

    /// One member runs the fencing backend (as dlm_controld's lowest nodeid does) and shares
    /// the result; the others wait for its FENCED. It fences for everyone.
    pub(super) fn request_fencing(&mut self) {
        if !self.quorum_ok() {
            return;
        }
        let fencer = self.lowest_active() == Some(self.cfg.nodeid);
        let needs = self.fence_needs();
        for n in needs {
            if self.daemon_in_group(n) {
                continue;
            }
            let now = self.now;
            let f = self
                .fence
                .entry(n)
                .or_insert_with(|| FenceRecord::new(now, None));
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

    /// With fencing off (`require_fencing`), a request is answered at once, as a backend's
    /// answer would be: after everything the input led to.
    pub(super) fn answer_unfenced(&mut self) {
        while !self.assume_fenced.is_empty() {
            for (nodeid, failed_at) in std::mem::take(&mut self.assume_fenced) {
                self.log_node(
                    Level::Warn,
                    nodeid,
                    "fencing is off (enable_fencing=0): taking the node as fenced when it failed"
                        .into(),
                );
                self.scope.widen();
                self.on_fenced(nodeid, failed_at);
                self.drive();
                self.warn_slow_fencing();
            }
        }
    }
}
