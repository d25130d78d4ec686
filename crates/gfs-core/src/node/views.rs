//! The operator views: `gfs_control status` and `gfs_control ls`.

use std::collections::BTreeSet;

use super::{Node, Phase};
use crate::state::MState;
use crate::time::Time;
use crate::types::Table;
use crate::view::{FenceWaitView, FsView, JournalView, LocalMountView, MemberView, StatusView};

impl Node {
    /// The status as of `now` (the driver's current time: the core's own clock moves only with
    /// inputs, and a wait must show as long as it really is).
    pub fn status(&self, now: Time) -> StatusView {
        let now = now.max(self.now);
        let quorum_ok = self.quorum_ok();
        let waits = self.fence_waits();
        StatusView {
            nodeid: self.cfg.nodeid,
            cluster_name: self.cfg.cluster_name.clone(),
            protocol_version: if self.is_synced() {
                self.rep.version
            } else {
                0
            },
            protocol_max: self.cfg.proto_max,
            synced: self.is_synced(),
            quorate: self.quorate,
            // Nodes whose daemon is in the group: another process of a node whose daemon is
            // gone keeps the node in the CPG group, not among the members.
            members: self
                .config_members
                .iter()
                .copied()
                .filter(|&n| self.daemon_in_group(n))
                .collect(),
            stale_members: self
                .rep
                .members
                .iter()
                .filter(|(_, m)| m.stale)
                .map(|(id, _)| *id)
                .collect(),
            // Inquorate, nothing is fenced: those nodes wait for quorum, not for fencing.
            fence_waits: waits
                .iter()
                .filter(|_| quorum_ok)
                .map(|(n, f)| FenceWaitView {
                    nodeid: *n,
                    failed_at_ms: f.failed_at.millis(),
                    waiting_ms: now.since(self.wait_since(f)),
                    requested: f.requested,
                    last_error: f.last_error.clone(),
                })
                .collect(),
            quorum_waits: waits
                .iter()
                .filter(|_| !quorum_ok)
                .map(|(n, _)| *n)
                .collect(),
            filesystems: self.local.len(),
            recoveries: self.timelines.all().cloned().collect(),
        }
    }

    pub fn filesystems(&self) -> Vec<FsView> {
        let me = self.cfg.nodeid;
        let mut tables: BTreeSet<&Table> = self.local.keys().collect();
        tables.extend(self.rep.fs.keys());
        tables
            .into_iter()
            .map(|table| {
                let fs = self.rep.fs.get(table);
                let l = self.local.get(table);
                let members = fs
                    .map(|fs| {
                        fs.mounters
                            .iter()
                            .map(|(id, m)| MemberView {
                                nodeid: *id,
                                jid: m.jid,
                                mode: m.mode,
                                state: m.state.as_str().into(),
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                let dirty_journals = fs
                    .map(|fs| {
                        fs.dirty
                            .iter()
                            .map(|(jid, d)| JournalView {
                                jid: *jid,
                                owner: d.owner,
                                replayer: d.replayer,
                                attempts: d.attempts,
                                waiting_for: self.journal_wait(fs, d),
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                FsView {
                    table: table.to_string(),
                    name: table.fs().to_owned(),
                    kernel_managed: l.is_some_and(|l| l.phase == Phase::KernelManaged),
                    state: self.fs_state_line(table),
                    local: l.map(|l| LocalMountView {
                        jid: fs.and_then(|fs| fs.mounters.get(&me)).and_then(|m| m.jid),
                        mode: l.mode,
                        blocked: l.block_requested,
                        kernel_state: format!("{:?}", l.phase).to_lowercase(),
                    }),
                    members,
                    dirty_journals,
                    first_mounter: fs.and_then(|fs| fs.first_mounters().next()),
                }
            })
            .collect()
    }

    pub(super) fn journal_wait(
        &self,
        fs: &crate::state::FsState,
        d: &crate::state::Dirty,
    ) -> String {
        let missing = fs.unstopped(&self.rep.members);
        if !missing.is_empty() {
            return format!("members to block: {missing:?}");
        }
        // Inquorate, nothing is fenced or replayed: the operator must look at quorum, not at
        // the fencing backend or fence-ack.
        if !self.quorum_ok() {
            return "quorum".into();
        }
        if let Some(n) = d.fence.iter().find(|n| !self.fenced(**n)) {
            return format!("fencing of node {n}");
        }
        match d.replayer {
            Some(r) => format!("replay on node {r}"),
            None => "a read-write member to replay it".into(),
        }
    }

    pub(super) fn fs_state_line(&self, table: &Table) -> String {
        let me = self.cfg.nodeid;
        let l = self.local.get(table);
        if l.is_some_and(|l| l.phase == Phase::KernelManaged) {
            return "kernel-managed".into();
        }
        if !self.is_synced() {
            return "waiting for the group state".into();
        }
        let Some(fs) = self.rep.fs.get(table) else {
            return "unknown".into();
        };
        if let Some((jid, d)) = fs.dirty.iter().next() {
            return format!(
                "recovering jid {jid}: waiting for {}",
                self.journal_wait(fs, d)
            );
        }
        match fs.mounters.get(&me).map(|m| m.state) {
            Some(MState::Waiting) => "mounting: waiting for recovery to finish".into(),
            Some(MState::Admitted) => "mounting".into(),
            Some(MState::Mounted) => "mounted".into(),
            Some(MState::Rejected) => "mount refused: no free journal".into(),
            Some(MState::NeedsRw) => {
                "mount refused: failed journals need a read-write mounter".into()
            }
            Some(MState::First) => "mounting as a first mounter".into(),
            None => match l.map(|l| l.phase) {
                Some(Phase::Withdrawn) => "withdrawn".into(),
                Some(Phase::Registering) => "registering with dlm_controld".into(),
                Some(Phase::Pending) | Some(Phase::Announced) => "joining".into(),
                _ => "mounted elsewhere".into(),
            },
        }
    }
}
