//! The workload: random mounts (read-write, read-only, spectator), unmounts, remounts and mount
//! storms while faults run, and the operator's way out when only read-only members hold a
//! filesystem whose journals need replay.

use gfs_core::{MountMode, NodeId};

use super::mount::{Mount, MountStep};
use super::World;

impl World {
    pub(super) fn workload(&mut self) {
        let p = self.profile.clone();
        let tables = self.tables.clone();
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for n in ids {
            let node = &self.nodes[&n];
            if node.daemon.is_none() || !node.corosync || node.kernel_dead_at.is_some() {
                continue;
            }
            for t in &tables {
                let key = t.to_string();
                let state = self.nodes[&n]
                    .mounts
                    .get(&key)
                    .map(|m| (m.state, m.kernel.mode, m.kernel.recovering.is_empty()));
                match state {
                    None if self.rng.chance(p.mount / tables.len() as f64) => {
                        let mode = if self.rng.chance(p.spectator_share) {
                            MountMode::Spectator
                        } else if self.rng.chance(p.ro_share) {
                            MountMode::Ro
                        } else {
                            MountMode::Rw
                        };
                        let hostdata = self.rng.chance(0.7);
                        self.mount(n, t, mode, hostdata);
                    }
                    Some((MountStep::Online, _, _)) | Some((MountStep::Withdrawn, _, _))
                        if self.faults_on && self.rng.chance(p.unmount / tables.len() as f64) =>
                    {
                        self.log(format!("WORK umount {key} on n{n}"));
                        self.unmount(n, &key);
                    }
                    Some((MountStep::Online, mode, true))
                        if mode != MountMode::Spectator
                            && self.rng.chance(p.remount / tables.len() as f64) =>
                    {
                        let new = if mode == MountMode::Rw {
                            MountMode::Ro
                        } else {
                            MountMode::Rw
                        };
                        self.log(format!("WORK remount {key} {} on n{n}", new.as_str()));
                        self.remount(n, &key, new);
                    }
                    _ => {}
                }
            }
        }
        if self.rng.chance(p.storm) {
            // Every node that can mounts one filesystem at the same moment.
            let t = tables[self.rng.range(0, tables.len() as u64 - 1) as usize].clone();
            let key = t.to_string();
            let ready: Vec<NodeId> = self
                .nodes
                .values()
                .filter(|x| {
                    x.daemon.is_some()
                        && x.corosync
                        && x.kernel_dead_at.is_none()
                        && !x.mounts.contains_key(&key)
                })
                .map(|x| x.id)
                .collect();
            if !ready.is_empty() {
                self.log(format!("WORK mount storm {key} on {ready:?}"));
            }
            for n in ready {
                let mode = if self.rng.chance(p.ro_share) {
                    MountMode::Ro
                } else {
                    MountMode::Rw
                };
                self.mount(n, &t, mode, false);
            }
        }
    }

    /// When only read-only or spectator mounts hold a filesystem with dirty journals nobody can
    /// replay them (SPEC §5): the documented way out is to unmount them, so that a read-write
    /// mounter becomes first mounter and replays every journal.
    pub(super) fn operator_rescue(&mut self) {
        for key in self
            .tables
            .iter()
            .map(|t| t.to_string())
            .collect::<Vec<_>>()
        {
            if !self.stalled(&key) {
                continue;
            }
            let holders: Vec<NodeId> = self
                .nodes
                .values()
                .filter(|x| {
                    x.mounts.get(&key).is_some_and(|m| {
                        m.kernel.mode != MountMode::Rw && m.state != MountStep::WaitJid
                    })
                })
                .map(|x| x.id)
                .collect();
            for n in holders {
                self.log(format!("OPERATOR umount {key} on n{n}: only read-only members hold it and journals need replay"));
                self.unmount(n, &key);
            }
        }
    }

    /// Dirty journals, no read-write member mounted to replay them, and read-only or spectator
    /// members holding the filesystem.
    pub(super) fn stalled(&self, key: &str) -> bool {
        // What an operator sees in `gfs_control ls`, or what the disk holds.
        let said_dirty = self
            .nodes
            .values()
            .filter_map(|x| x.daemon.as_ref())
            .any(|d| {
                d.core.is_synced()
                    && gfs_core::Table::parse(key)
                        .ok()
                        .and_then(|t| d.core.replicated().fs.get(&t))
                        .is_some_and(|fs| !fs.dirty.is_empty())
            });
        let dirty = said_dirty || self.journals.iter().any(|((k, _), j)| k == key && j.dirty);
        let mounts: Vec<&Mount> = self
            .nodes
            .values()
            .filter_map(|x| x.mounts.get(key))
            .collect();
        let rw_online = mounts
            .iter()
            .any(|m| m.kernel.mode == MountMode::Rw && m.state == MountStep::Online);
        let ro_active = mounts.iter().any(|m| {
            m.kernel.mode != MountMode::Rw
                && !matches!(m.state, MountStep::WaitJid | MountStep::Withdrawn)
        });
        dirty && !rw_online && ro_active
    }

    pub(super) fn stalled_without_rw(&self) -> u64 {
        self.tables
            .iter()
            .filter(|t| self.stalled(&t.to_string()))
            .count() as u64
    }
}
