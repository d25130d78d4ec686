//! The DLM beneath GFS2 and dlm_controld's fs-control gate: which kernels are in each
//! filesystem's lockspace, the registrations dlm_controld holds, and the recovery of a failed
//! node's locks, which dlm_controld starts only when every registered survivor has said it
//! blocked and the survivors are together in one quorate membership (S8 is judged there).

use std::collections::{BTreeMap, BTreeSet};

use gfs_core::{Input, NodeId, Table};

use super::{checker, Event, World};
use crate::errno::{EAGAIN, EOPNOTSUPP};

/// The DLM's and dlm_controld's state, cluster-wide.
#[derive(Default)]
pub(super) struct DlmModel {
    /// Kernels joined to each filesystem's lockspace.
    pub lockspaces: BTreeMap<String, BTreeSet<NodeId>>,
    /// (node, table) registrations dlm_controld holds (they outlive the daemon, not the node).
    pub registered: BTreeSet<(NodeId, String)>,
    /// Recoveries of failed nodes' locks still waiting.
    pub recoveries: Vec<DlmRecovery>,
    /// dlm_controld runs with `enable_fscontrol=1` (it accepts registrations).
    pub fscontrol: bool,
}

impl DlmModel {
    /// What each waiting recovery waits for, as the liveness check reports it.
    pub fn waits(&self) -> Vec<String> {
        self.recoveries
            .iter()
            .map(|r| {
                let members = self.lockspaces.get(&r.table).cloned().unwrap_or_default();
                let waiting: Vec<NodeId> = r
                    .waiting
                    .iter()
                    .copied()
                    .filter(|s| members.contains(s) && !r.notified.contains(s))
                    .collect();
                format!(
                    "DLM recovery of n{} on {} waits (for notifications from {waiting:?}; lockspace {members:?})",
                    r.failed, r.table
                )
            })
            .collect()
    }
}

/// DLM recovery of one failed node in one lockspace, as dlm_controld gates it.
#[derive(Clone, Debug)]
pub(super) struct DlmRecovery {
    pub table: String,
    pub failed: NodeId,
    /// The failed node's journal needs replay (its locks cover blocks newer on its journal).
    pub dirty: bool,
    /// Survivors whose dlm_controld saw the failure with the lockspace registered: each waits
    /// for its own daemon's notification (later joiners never knew the failed node).
    pub waiting: BTreeSet<NodeId>,
    pub notified: BTreeSet<NodeId>,
    /// Survivors whose mount was complete when the node failed. A mount still in progress
    /// cannot be held back: its lock requests wait for the DLM, so it must let DLM recovery run
    /// before its journal work, and it is blocked only once that is done (the daemon's design,
    /// as the historical daemon's).
    pub online_at_failure: BTreeSet<NodeId>,
}

impl World {
    pub(super) fn leave_lockspace(&mut self, n: NodeId, key: &str) {
        if let Some(ls) = self.dlm.lockspaces.get_mut(key) {
            ls.remove(&n);
        }
        // A later incarnation of its mount never knew the failures this one was to confirm.
        for r in self.dlm.recoveries.iter_mut().filter(|r| r.table == key) {
            r.waiting.remove(&n);
        }
        self.dlm_check();
    }

    pub(super) fn dlm_register(&mut self, n: NodeId, table: Table) {
        let result = if self.dlm.fscontrol {
            self.dlm.registered.insert((n, table.to_string()));
            Ok(())
        } else {
            Err(EOPNOTSUPP)
        };
        let incarnation = self.nodes[&n].daemon.as_ref().map_or(0, |d| d.incarnation);
        self.schedule(
            1,
            Event::IoDone {
                node: n,
                incarnation,
                input: Input::DlmRegistered { table, result },
            },
        );
    }

    pub(super) fn dlm_unregister(&mut self, n: NodeId, table: &Table) {
        self.dlm.registered.remove(&(n, table.to_string()));
        self.dlm_check();
    }

    /// dlm_controld's answer: 0 once it has seen the node fail (or the node is not in the
    /// lockspace), -EAGAIN while the node is still a member.
    pub(super) fn dlm_notify(&mut self, n: NodeId, table: Table, failed: NodeId) {
        let key = table.to_string();
        // dlm_controld keeps one flag per node id, whatever incarnation failed.
        let mut seen = false;
        for r in self
            .dlm
            .recoveries
            .iter_mut()
            .filter(|r| r.table == key && r.failed == failed)
        {
            r.notified.insert(n);
            seen = true;
        }
        let member = self
            .dlm
            .lockspaces
            .get(&key)
            .is_some_and(|m| m.contains(&failed));
        let result = if !seen && member { Err(EAGAIN) } else { Ok(()) };
        self.log(format!(
            "n{n} dlm_controld: {key} notified for n{failed} -> {result:?}"
        ));
        let incarnation = self.nodes[&n].daemon.as_ref().map_or(0, |d| d.incarnation);
        self.schedule(
            1,
            Event::IoDone {
                node: n,
                incarnation,
                input: Input::DlmNotified {
                    table,
                    nodeid: failed,
                    result,
                },
            },
        );
        self.dlm_check();
    }

    /// Complete every DLM recovery whose conditions hold: every registered survivor in the
    /// lockspace notified, and the survivors together in one quorate membership.
    pub(super) fn dlm_check(&mut self) {
        loop {
            let ready = self.dlm.recoveries.iter().position(|r| {
                let members = self
                    .dlm
                    .lockspaces
                    .get(&r.table)
                    .cloned()
                    .unwrap_or_default();
                let notified = r.waiting.iter().all(|s| {
                    !members.contains(s)
                        || !self.dlm.registered.contains(&(*s, r.table.clone()))
                        || r.notified.contains(s)
                });
                let comps: BTreeSet<Option<u64>> =
                    members.iter().map(|s| self.cpg.component_of(*s)).collect();
                let together = comps.len() <= 1
                    && comps
                        .iter()
                        .all(|c| c.is_some_and(|c| self.cpg.component_quorate(c)));
                notified && together
            });
            let Some(i) = ready else {
                return;
            };
            let r = self.dlm.recoveries.remove(i);
            self.dlm_recovered(r);
        }
    }

    pub(super) fn dlm_recovered(&mut self, r: DlmRecovery) {
        let key = r.table.clone();
        self.log(format!("dlm: {key} recovered the locks of n{}", r.failed));
        let members: Vec<NodeId> = self
            .dlm
            .lockspaces
            .get(&key)
            .map(|m| m.iter().copied().collect())
            .unwrap_or_default();
        if r.dirty {
            if let Some(v) =
                checker::dlm_ordering(r.failed, &key, &r.online_at_failure, &members, &self.nodes)
            {
                self.violate(v);
                return;
            }
        }
        for ((t, _), j) in self.journals.iter_mut() {
            if *t == key && j.dead_lock_by == Some(r.failed) {
                j.dead_locked = false;
                j.dead_lock_by = None;
            }
        }
        if self
            .glock
            .get(&key)
            .is_some_and(|(h, _, alive)| *h == r.failed && !alive)
        {
            self.glock.remove(&key);
            self.grant_glock(&key);
        }
        for s in members {
            let waiting: Vec<u32> = self.nodes[&s]
                .mounts
                .get(&key)
                .map(|m| m.waiting_replays.iter().copied().collect())
                .unwrap_or_default();
            for jid in waiting {
                let free = !self
                    .journals
                    .get(&(key.clone(), jid))
                    .is_some_and(|j| j.dead_locked);
                if free {
                    if let Some(m) = self.mount_of(s, &key) {
                        m.waiting_replays.remove(&jid);
                    }
                    self.begin_replay(s, &key, jid);
                }
            }
            self.journal_work(s, &key);
        }
    }
}
