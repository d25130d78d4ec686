//! What this node's mounts need next (dlm_controld's action.c): the `first`/`jid` writes of a
//! mount, dlm_controld's registration and notifications, `block`, journal replay requests, and
//! the withdraw acknowledgement, each once the group's state allows it.

use super::mounts::Phase;
use super::{FenceRecord, Node};
use crate::errno::{EUCLEAN, EUSERS};
use crate::io::{Level, LogRecord, Output};
use crate::state::MState;
use crate::types::{Jid, MountMode, NodeId, SysfsFile, Table};
use crate::wire::Message;

impl Node {
    pub(super) fn drive_mount(&mut self, table: &Table) {
        let me = self.cfg.nodeid;
        let Some(l) = self.local.get(table) else {
            return;
        };
        if l.phase != Phase::Announced || !l.mount_seen {
            return;
        }
        let Some(fs) = self.rep.fs.get(table) else {
            return;
        };
        let Some(m) = fs.mounters.get(&me) else {
            return;
        };
        let (t, mode, jid) = (l.table.clone(), l.mode, m.jid);
        let state = if self.sabotage().skip_first_wait && m.state == MState::First {
            MState::Admitted
        } else {
            m.state
        };
        let phase = match state {
            MState::Waiting => return,
            MState::Rejected | MState::NeedsRw => {
                let errno = if state == MState::Rejected {
                    EUSERS
                } else {
                    EUCLEAN
                };
                self.refuse(table, errno);
                return;
            }
            MState::First => {
                // First-mounter replay touches every journal: it needs what a replay needs (S1).
                let dirty_fenced = fs
                    .dirty
                    .values()
                    .all(|d| d.fence.iter().all(|n| self.fenced(*n)));
                let startup_fenced = self
                    .rep
                    .must_fence
                    .iter()
                    .chain(fs.fence_before_first.iter())
                    .all(|n| self.fenced(*n));
                if !(self.quorum_ok()
                    && self.membership_settled()
                    && dirty_fenced
                    && startup_fenced)
                {
                    return;
                }
                self.write(&t, SysfsFile::First, 1);
                self.write(&t, SysfsFile::Jid, jid.map_or(0, i64::from));
                self.emit(
                    LogRecord::new(Level::Info, "mounting as a first mounter")
                        .fs(table)
                        .jid(jid),
                );
                Phase::JidWritten
            }
            MState::Admitted | MState::Mounted => {
                // A node that left uncleanly may have mounted behind the group's back (S4, S1).
                if !self.rep.must_fence.iter().all(|n| self.fenced(*n)) {
                    return;
                }
                if mode == MountMode::Spectator {
                    // The kernel refuses `first` for a spectator only once its DLM join is done,
                    // after which `first` shows what the mount options said.
                    self.write(&t, SysfsFile::First, 0);
                    self.outputs.push_back(Output::Read {
                        table: t.clone(),
                        file: SysfsFile::First,
                    });
                    Phase::Probing
                } else {
                    self.write(&t, SysfsFile::First, 0);
                    self.write(&t, SysfsFile::Jid, jid.map_or(0, i64::from));
                    Phase::JidWritten
                }
            }
        };
        if let Some(l) = self.local.get_mut(table) {
            l.phase = phase;
        }
    }

    /// Tell dlm_controld, per failed node, that DLM recovery of its locks may go ahead here:
    /// once this node has blocked the filesystem (if it must: S8), and once the node is fenced
    /// (its kernel could still hold and use locks; and a mounting kernel replays journals as
    /// soon as their locks are free, so the DLM is what keeps S1 for those replays), as
    /// dlm_controld's own fencing would.
    pub(super) fn drive_dlm(&mut self, table: &Table) {
        let me = self.cfg.nodeid;
        let Some(l) = self.local.get(table) else {
            return;
        };
        if !l.dlm_registered || l.dlm_pending.is_empty() {
            return;
        }
        let fs = self.rep.fs.get(table);
        let must_block = fs.is_some_and(|fs| fs.is_participant(me, &self.rep.members))
            && !matches!(l.phase, Phase::Withdrawn | Phase::Refused);
        let blocked = l.block_confirmed;
        if must_block && !blocked {
            return;
        }
        // A failed node back in the group rebooted: its old kernel is gone.
        let ready: Vec<NodeId> = l
            .dlm_pending
            .iter()
            .copied()
            .filter(|n| {
                self.fenced(*n)
                    || self.daemon_in_group(*n)
                    || (!self.rep.must_fence.contains(n)
                        && self.fence.get(n).is_none_or(FenceRecord::done))
            })
            .collect();
        let t = l.table.clone();
        for n in ready {
            if let Some(l) = self.local.get_mut(table) {
                l.dlm_pending.remove(&n);
            }
            self.outputs.push_back(Output::DlmNotify {
                table: t.clone(),
                nodeid: n,
            });
            self.emit(
                LogRecord::new(
                    Level::Info,
                    "dlm_controld may recover the failed node's locks",
                )
                .fs(table)
                .node(n),
            );
        }
    }

    pub(super) fn drive_block(&mut self, table: &Table) {
        let me = self.cfg.nodeid;
        let early = self.sabotage().early_unblock;
        let (participant, clean, replayers_chosen) = match self.rep.fs.get(table) {
            Some(fs) => (
                fs.is_participant(me, &self.rep.members),
                fs.dirty.is_empty(),
                !fs.dirty.is_empty() && fs.dirty.values().all(|d| d.replayer.is_some()),
            ),
            None => (false, true, false),
        };
        let Some(l) = self.local.get_mut(table) else {
            return;
        };
        let t = l.table.clone();
        if l.phase == Phase::Refused && l.block_requested {
            // A refused mount ends only when its kernel reads the negative jid, after the parts
            // of the mount that `block=1` would freeze.
            l.block_requested = false;
            l.block_confirmed = false;
            self.write(&t, SysfsFile::Block, 0);
            return;
        }
        if matches!(
            l.phase,
            Phase::Withdrawn
                | Phase::Refused
                | Phase::KernelManaged
                | Phase::Pending
                | Phase::Registering
        ) {
            return;
        }
        if participant && !l.block_requested && !(early && replayers_chosen) {
            l.block_requested = true;
            l.block_confirmed = false;
            self.write(&t, SysfsFile::Block, 1);
            let epoch = self.rep.epoch;
            self.emit(
                LogRecord::new(
                    Level::Info,
                    format!("blocked for recovery (change {epoch})"),
                )
                .fs(table),
            );
            self.timeline_fs_note(table, "blocked");
        } else if l.block_requested && (clean || !participant || (early && replayers_chosen)) {
            l.block_requested = false;
            l.block_confirmed = false;
            self.write(&t, SysfsFile::Block, 0);
            let what = if clean || early {
                "every failed journal replayed: unblocked"
            } else {
                "no ready read-write member can replay: unblocked so this mount can finish its journal work and replay"
            };
            self.emit(LogRecord::new(Level::Info, what).fs(table));
            self.timeline_fs_note(table, "unblocked");
        }
    }

    pub(super) fn drive_recovery(&mut self, table: &Table) {
        let me = self.cfg.nodeid;
        let Some(fs) = self.rep.fs.get(table) else {
            return;
        };
        let Some(l) = self.local.get(table) else {
            return;
        };
        // A mounting node replays once its journal is ready (`recover` waits for that).
        let ready = fs.mounters.get(&me).is_some_and(|m| m.is_ready());
        if !ready || !matches!(l.phase, Phase::Online | Phase::JidWritten) {
            return;
        }
        // A result we sent is applied once the journal is clean or handed to someone else.
        let settled: Vec<Jid> = l
            .reported
            .iter()
            .filter(|(j, a)| {
                fs.dirty
                    .get(j)
                    .is_none_or(|d| d.replayer != Some(me) || d.attempts != **a)
            })
            .map(|(j, _)| *j)
            .collect();
        let read_only = l.mode != MountMode::Rw;
        let quorum_ok = self.quorum_ok() && self.membership_settled();
        // Every node that left uncleanly must be dead first, not only the journal's owner: a
        // failed member's kernel is not blocked and could see the journal's blocks (S1, S3).
        let others_fenced = self.rep.must_fence.iter().all(|n| self.fenced(*n));
        let replay_fenced =
            |d: &crate::state::Dirty| others_fenced && d.fence.iter().all(|n| self.fenced(*n));
        let ready: Vec<(Jid, NodeId)> = fs
            .dirty
            .iter()
            .filter(|(jid, d)| {
                d.replayer == Some(me)
                    && !l.recovering.contains(jid)
                    && !l.reported.contains_key(jid)
                    && (read_only
                        || (!l.retry_at.contains_key(jid) && quorum_ok && replay_fenced(d)))
            })
            .map(|(jid, d)| (*jid, d.owner))
            .collect();
        let t = l.table.clone();
        if let Some(l) = self.local.get_mut(table) {
            for j in settled {
                l.reported.remove(&j);
            }
        }
        if read_only {
            // Remounted read-only: hand back what we have not started.
            for (jid, _) in ready {
                let attempts = self.journal_attempts(table, jid);
                if let Some(l) = self.local.get_mut(table) {
                    l.reported.insert(jid, attempts);
                }
                self.send(Message::Recovered {
                    table: table.to_owned(),
                    jid,
                    done: false,
                    attempt: attempts,
                });
            }
            return;
        }
        for (jid, owner) in ready {
            if let Some(l) = self.local.get_mut(table) {
                l.recovering.insert(jid);
            }
            self.write(&t, SysfsFile::Recover, i64::from(jid));
            self.emit(
                LogRecord::new(Level::Info, "replaying the journal of a failed member")
                    .fs(table)
                    .node(owner)
                    .jid(jid),
            );
            self.timeline_note(format!(
                "replay of jid {jid} ({table}) started on node {me}"
            ));
        }
    }

    pub(super) fn drive_withdraw(&mut self, table: &Table) {
        let me = self.cfg.nodeid;
        let Some(l) = self.local.get(table) else {
            return;
        };
        if l.phase != Phase::Withdrawn || l.withdraw_acked {
            return;
        }
        // Our WITHDRAW was delivered and every remaining member blocked: the others have taken
        // over our journal, so the kernel may release its locks.
        let ready = match self.rep.fs.get(table) {
            None => true,
            Some(fs) => !fs.mounters.contains_key(&me) && fs.barrier_complete(&self.rep.members),
        };
        if ready {
            let t = l.table.clone();
            if let Some(l) = self.local.get_mut(table) {
                l.withdraw_acked = true;
            }
            self.write(&t, SysfsFile::Withdraw, 1);
            self.log(
                Level::Info,
                Some(table),
                "withdraw acknowledged by the group".into(),
            );
        }
    }
}
