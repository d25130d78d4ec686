//! This node's own kernel mounts: their state (`LocalFs`, `Phase`) and what comes back from the
//! kernel and dlm_controld (uevents, sysfs results, registrations and notifications). The writes
//! each mount needs next are in `actions.rs`.

use std::collections::{BTreeMap, BTreeSet};

use super::Node;
use crate::errno::{EAGAIN, EBADR, ENOTCONN, EOPNOTSUPP, EPERM};
use crate::io::{Level, LogRecord, Output, WriteError};
use crate::state::MState;
use crate::time::Time;
use crate::types::{Jid, MountMode, NodeId, SysfsFile, Table};
use crate::uevent::{KernelEvent, KernelEventKind};
use crate::wire::Message;

/// How far this node's own kernel mount has come.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Phase {
    /// `add` seen; waiting for dlm_controld to accept the lockspace registration.
    Registering,
    /// Registered; waiting to be synced before announcing the mount.
    Pending,
    /// MOUNT sent; waiting for the group to admit us.
    Announced,
    /// A spectator admitted by the group: `first` was written only to wait for the DLM join
    /// (a spectator's kernel refuses it), and is read back to learn the mount's own `first`.
    Probing,
    /// `first`/`jid` written; waiting for `online`.
    JidWritten,
    Online,
    Withdrawn,
    /// We refused the mount (negative jid written); waiting for `remove`.
    Refused,
    /// The kernel coordinates recovery itself: hands off.
    KernelManaged,
}

#[derive(Clone, Debug)]
pub(super) struct LocalFs {
    pub(super) table: Table,
    pub(super) mode: MountMode,
    pub(super) phase: Phase,
    /// Which of our MOUNTs for this table is this mount's; it acts only once that one has been
    /// delivered (an earlier mount's admission may still be in the group's state).
    pub(super) mount_seq: u64,
    pub(super) mount_seen: bool,
    /// A `block=1` write was issued and not undone.
    pub(super) block_requested: bool,
    /// The kernel accepted `block=1` (or the filesystem is gone).
    pub(super) block_confirmed: bool,
    /// JOURNAL_READY sent for this mount.
    pub(super) ready_sent: bool,
    /// dlm_controld accepted (or is being asked for) the lockspace registration.
    pub(super) dlm_registered: bool,
    /// Failed nodes dlm_controld waits to hear about before it recovers their DLM locks (S8).
    pub(super) dlm_pending: BTreeSet<NodeId>,
    /// Notifications dlm_controld was not ready for (-EAGAIN), asked again at these times.
    pub(super) dlm_retry: BTreeMap<NodeId, Time>,
    pub(super) withdraw_acked: bool,
    pub(super) recovering: BTreeSet<Jid>,
    /// Replays whose result we multicast, with the attempt count it answered: the group has
    /// applied it once the journal is clean or its attempt count moved on.
    pub(super) reported: BTreeMap<Jid, u32>,
    pub(super) retry_at: BTreeMap<Jid, Time>,
}

/// Our MOUNT messages per filesystem: how many we sent and how many came back, so that a mount
/// acts only once its own MOUNT has been delivered (an earlier mount's admission may still be
/// in the group's state).
#[derive(Clone, Debug, Default)]
pub(super) struct Announcements {
    sent: BTreeMap<Table, u64>,
    delivered: BTreeMap<Table, u64>,
}

impl Announcements {
    /// Numbers the next MOUNT for `table`.
    pub(super) fn next(&mut self, table: &Table) -> u64 {
        let n = self.sent.entry(table.clone()).or_default();
        *n += 1;
        *n
    }

    /// Counts one of our MOUNTs for `table` as delivered; returns its number.
    pub(super) fn delivered(&mut self, table: &Table) -> u64 {
        let n = self.delivered.entry(table.clone()).or_default();
        *n += 1;
        *n
    }
}

impl Node {
    pub(super) fn on_kernel(&mut self, ev: KernelEvent) {
        let key = ev.table.clone();
        if self.is_stale() {
            self.log(
                Level::Warn,
                Some(&key),
                format!("ignoring {:?}: this daemon lost a partition merge", ev.kind),
            );
            return;
        }
        match ev.kind {
            KernelEventKind::Add {
                ro,
                spectator,
                kernel_managed,
            } => {
                if self.local.contains_key(&key) {
                    self.log(
                        Level::Warn,
                        Some(&key),
                        "duplicate add uevent ignored".into(),
                    );
                    return;
                }
                let mode = MountMode::from_flags(ro, spectator);
                let mut l = LocalFs {
                    table: ev.table.clone(),
                    mode,
                    phase: Phase::Registering,
                    mount_seq: 0,
                    mount_seen: false,
                    block_requested: false,
                    block_confirmed: false,
                    ready_sent: false,
                    dlm_registered: false,
                    dlm_pending: BTreeSet::new(),
                    dlm_retry: BTreeMap::new(),
                    withdraw_acked: false,
                    recovering: BTreeSet::new(),
                    reported: BTreeMap::new(),
                    retry_at: BTreeMap::new(),
                };
                if kernel_managed {
                    l.phase = Phase::KernelManaged;
                    self.local.insert(key.clone(), l);
                    self.log(
                        Level::Info,
                        Some(&key),
                        "kernel-managed: the DLM offers recovery callbacks (recover_callbacks=1), so the kernel picks journals and recovers by itself; leaving it alone".into(),
                    );
                    return;
                }
                if ev.table.cluster() != self.cfg.cluster_name {
                    l.phase = Phase::Refused;
                    self.local.insert(key.clone(), l);
                    self.log(
                        Level::Error,
                        Some(&key),
                        format!("refusing the mount: the filesystem belongs to cluster {:?}, this is {:?}", ev.table.cluster(), self.cfg.cluster_name),
                    );
                    self.write(&ev.table, SysfsFile::Jid, -(EBADR as i64));
                    return;
                }
                // Registered before any jid is written, so that dlm_controld holds DLM recovery
                // of a failed node's locks until this node has blocked (S8).
                l.dlm_registered = true;
                self.local.insert(key.clone(), l);
                self.seed_dlm_pending();
                self.outputs
                    .push_back(Output::DlmRegister { table: ev.table });
            }
            KernelEventKind::Online { ro, spectator } => {
                let Some(l) = self.local.get_mut(&key) else {
                    return;
                };
                match l.phase {
                    Phase::JidWritten => {
                        l.phase = Phase::Online;
                        self.send(Message::Mounted { table: key });
                    }
                    Phase::Online => {
                        // After a remount the kernel reports the mode from before it; the
                        // driver's `MountMode` brings the new one. A differing value here can
                        // only be newer than ours.
                        self.set_mode(&key, MountMode::from_flags(ro, spectator));
                    }
                    _ => {}
                }
            }
            KernelEventKind::FirstMountDone => {
                // A first mounter's kernel tried every journal: its own is ready.
                if self
                    .own_mounter(&key)
                    .is_some_and(|m| m.state == MState::First)
                {
                    self.journal_ready(&key);
                }
            }
            KernelEventKind::Recovery { jid, done } => {
                if self.local.get(&key).map(|l| l.phase) == Some(Phase::KernelManaged) {
                    // Observed only: the kernel recovers a kernel-managed filesystem by itself.
                    let what = if done { "replayed" } else { "could not replay" };
                    self.emit(
                        LogRecord::new(
                            Level::Info,
                            format!("the kernel {what} a journal (kernel-managed)"),
                        )
                        .fs(&key)
                        .jid(jid),
                    );
                    return;
                }
                let retry = self.now.after(self.cfg.recover_retry_ms);
                let attempts = self.journal_attempts(&key, jid);
                let own = self.own_mounter(&key).cloned();
                if own
                    .as_ref()
                    .is_some_and(|m| m.jid == Some(jid) && m.state == MState::Admitted)
                {
                    // A `first=0` mount checked its own journal: it is ready.
                    self.journal_ready(&key);
                    return;
                }
                let Some(l) = self.local.get_mut(&key) else {
                    return;
                };
                if !l.recovering.remove(&jid) {
                    // A first mounter's journal checks, or peers' kernels after a withdraw:
                    // not a replay this daemon asked for.
                    return;
                }
                l.reported.insert(jid, attempts);
                if !done {
                    l.retry_at.insert(jid, retry);
                }
                self.send(Message::Recovered {
                    table: key,
                    jid,
                    done,
                    attempt: attempts,
                });
            }
            KernelEventKind::Offline => {
                let Some(l) = self.local.get_mut(&key) else {
                    return;
                };
                if matches!(l.phase, Phase::JidWritten | Phase::Online) {
                    l.phase = Phase::Withdrawn;
                    l.recovering.clear();
                    self.log(
                        Level::Warn,
                        Some(&key),
                        "filesystem withdrew: others will replay its journal".into(),
                    );
                    self.send(Message::Withdraw { table: key });
                }
            }
            KernelEventKind::Remove => self.mount_gone(&key, "unmounted"),
        }
    }

    /// This node's mount of `key` ended (`remove`, or its sysfs directory is gone): the group
    /// drops it, so no node keeps a filesystem nobody holds.
    pub(super) fn mount_gone(&mut self, key: &Table, why: &str) {
        {
            {
                let Some(l) = self.local.remove(key) else {
                    return;
                };
                // The group must hear of it if it heard of the mount (a mount refused for the
                // wrong cluster never reached it).
                let in_group = self
                    .rep
                    .fs
                    .get(key)
                    .is_some_and(|fs| fs.mounters.contains_key(&self.cfg.nodeid));
                let announced = match l.phase {
                    Phase::Announced | Phase::Probing | Phase::JidWritten | Phase::Online => true,
                    Phase::Refused => in_group,
                    _ => false,
                };
                if l.dlm_registered {
                    self.outputs.push_back(Output::DlmUnregister {
                        table: l.table.clone(),
                    });
                }
                if announced {
                    self.send(Message::Unmount {
                        table: key.to_owned(),
                    });
                }
                self.log(Level::Info, Some(key), why.into());
            }
        }
    }

    pub(super) fn journal_attempts(&self, table: &Table, jid: Jid) -> u32 {
        self.rep
            .fs
            .get(table)
            .and_then(|fs| fs.dirty.get(&jid))
            .map_or(0, |d| d.attempts)
    }

    /// A node that failed earlier may still be in a lockspace (its daemon died but its kernel
    /// lives until fenced): dlm_controld will wait for every registered mount to confirm it
    /// too once it sees the node go, so each registered mount owes it a notification.
    pub(super) fn seed_dlm_pending(&mut self) {
        let failed: BTreeSet<NodeId> = self
            .rep
            .must_fence
            .iter()
            .copied()
            .chain(
                self.fence
                    .iter()
                    .filter(|(_, f)| !f.done())
                    .map(|(n, _)| *n),
            )
            .filter(|n| !self.daemon_in_group(*n))
            .collect();
        for l in self.local.values_mut().filter(|l| l.dlm_registered) {
            l.dlm_pending.extend(failed.iter().copied());
        }
    }

    pub(super) fn own_mounter(&self, table: &Table) -> Option<&crate::state::Mounter> {
        self.rep
            .fs
            .get(table)
            .and_then(|fs| fs.mounters.get(&self.cfg.nodeid))
    }

    /// Tell the group once that this mount's journal work is done (see `Mounter::ready`).
    pub(super) fn journal_ready(&mut self, table: &Table) {
        let Some(l) = self.local.get_mut(table) else {
            return;
        };
        if l.ready_sent || l.phase != Phase::JidWritten {
            return;
        }
        l.ready_sent = true;
        self.send(Message::JournalReady {
            table: table.to_owned(),
        });
    }

    pub(super) fn set_mode(&mut self, table: &Table, mode: MountMode) {
        let Some(l) = self.local.get_mut(table) else {
            return;
        };
        if l.phase != Phase::Online || mode == l.mode || l.mode == MountMode::Spectator {
            return;
        }
        l.mode = mode;
        self.log(
            Level::Info,
            Some(table),
            format!("remounted {}", mode.as_str()),
        );
        self.send(Message::Remount {
            table: table.to_owned(),
            mode,
        });
    }

    pub(super) fn on_mount_mode(&mut self, table: Table, ro: bool) {
        let key = table.clone();
        let mode = if ro { MountMode::Ro } else { MountMode::Rw };
        self.set_mode(&key, mode);
    }

    pub(super) fn on_dlm_registered(&mut self, table: Table, result: Result<(), i32>) {
        let key = table.clone();
        let Some(l) = self.local.get_mut(&key) else {
            return;
        };
        if l.phase != Phase::Registering {
            return;
        }
        match result {
            Ok(()) => {
                l.phase = Phase::Pending;
                if self.is_synced() {
                    self.announce_mount(&key);
                } else {
                    self.log(
                        Level::Info,
                        Some(&key),
                        "mount waits until this daemon has the group state".into(),
                    );
                }
            }
            Err(errno) => {
                l.phase = Phase::Refused;
                l.dlm_registered = false;
                l.dlm_pending.clear();
                l.dlm_retry.clear();
                let why = match errno {
                    EOPNOTSUPP => "dlm_controld runs without enable_fscontrol=1, so it would not wait for this daemon before recovering a failed node's locks; set enable_fscontrol=1 in /etc/dlm/dlm.conf on every node and restart dlm_controld (or leave recovery to the kernel: dlm_controld's default recover_callbacks=1)".to_owned(),
                    ENOTCONN => "dlm_controld is not running (its socket dlmc_sock does not answer)".to_owned(),
                    e => format!("dlm_controld refused to register the lockspace (errno {e})"),
                };
                self.log(
                    Level::Error,
                    Some(&key),
                    format!("refusing the mount: {why}"),
                );
                self.write(&table, SysfsFile::Jid, -i64::from(errno));
            }
        }
    }

    pub(super) fn on_dlm_notified(
        &mut self,
        table: Table,
        nodeid: NodeId,
        result: Result<(), i32>,
    ) {
        let key = table.clone();
        let retry = self.now.after(500);
        let back = self.daemon_in_group(nodeid);
        let Some(l) = self.local.get_mut(&key) else {
            return;
        };
        match result {
            Ok(()) => {}
            // dlm_controld has not seen the failure yet. Once the node is back in the group,
            // dlm_controld has long processed (and finished) that failure: asking again would
            // count for the node's next failure, which is notified on its own.
            Err(EAGAIN) if l.dlm_registered && !back => {
                l.dlm_retry.insert(nodeid, retry);
            }
            Err(EAGAIN) => {}
            Err(errno) => self.emit(
                LogRecord::new(
                    Level::Warn,
                    format!("dlm_controld refused the notification (errno {errno})"),
                )
                .fs(&key)
                .node(nodeid),
            ),
        }
    }

    pub(super) fn on_read_done(&mut self, table: Table, file: SysfsFile, result: Result<i64, i32>) {
        let key = table.clone();
        if file != SysfsFile::First || self.local.get(&key).map(|l| l.phase) != Some(Phase::Probing)
        {
            return;
        }
        // A spectator that keeps the kernel's default `first=1` checks that every journal is
        // clean and fails with EPERM if one is not, which a live node's journal never is.
        let others = self.rep.fs.get(&key).is_some_and(|fs| {
            fs.mounters
                .iter()
                .any(|(id, m)| *id != self.cfg.nodeid && m.kernel_active())
        });
        if let Some(l) = self.local.get_mut(&key) {
            l.phase = Phase::JidWritten;
        }
        if result == Ok(1) && others {
            self.log(
                Level::Error,
                Some(&key),
                "refusing the spectator mount: the filesystem is mounted elsewhere, and a spectator needs -o spectator,hostdata=first=0 to skip the kernel's check that every journal is clean".into(),
            );
            self.refuse(&key, EPERM);
            return;
        }
        self.write(&table, SysfsFile::Jid, 0);
    }

    /// Fail the mount (the kernel returns `errno` from mount(2)) and leave the group's mount at
    /// once: the kernel ends it only when it reaches its wait for `jid`, which can be after
    /// other mounts, and until then the group must not count it.
    pub(super) fn refuse(&mut self, table: &Table, errno: i32) {
        let Some(l) = self.local.get_mut(table) else {
            return;
        };
        l.phase = Phase::Refused;
        let t = l.table.clone();
        self.write(&t, SysfsFile::Jid, -i64::from(errno));
        if self
            .rep
            .fs
            .get(table)
            .is_some_and(|fs| fs.mounters.contains_key(&self.cfg.nodeid))
        {
            self.send(Message::Unmount {
                table: table.to_owned(),
            });
        }
    }

    pub(super) fn announce_mount(&mut self, table: &Table) {
        let Some(l) = self.local.get_mut(table) else {
            return;
        };
        l.phase = Phase::Announced;
        l.mount_seq = self.announcements.next(table);
        let mode = l.mode;
        self.send(Message::Mount {
            table: table.to_owned(),
            mode,
        });
    }

    pub(super) fn on_write_done(
        &mut self,
        table: Table,
        file: SysfsFile,
        value: i64,
        result: Result<(), WriteError>,
    ) {
        let key = table.clone();
        let Err(error) = result else {
            if file == SysfsFile::Block && value == 1 {
                if let Some(l) = self.local.get_mut(&key) {
                    l.block_confirmed = l.block_requested;
                }
            }
            return;
        };
        let phase = self.local.get(&key).map(|l| l.phase);
        if matches!(file, SysfsFile::First | SysfsFile::Jid)
            && error == WriteError::Busy
            && matches!(
                phase,
                Some(Phase::JidWritten | Phase::Probing | Phase::Online)
            )
        {
            self.became_kernel_managed(&key);
            return;
        }
        if file == SysfsFile::First && phase == Some(Phase::Probing) {
            return; // a spectator's kernel refuses `first`: the write only waited for the DLM join
        }
        // ENODEV: the filesystem's sysfs directory is gone, so the mount is (its `remove` uevent
        // was lost, or the `add` was no real mount). Left in the group it would stay there for
        // good, and a first mounter that never finishes holds every later mount. A mount still
        // registering or announced has written nothing, so the result is an earlier mount's.
        if error == WriteError::Gone
            && phase.is_some_and(|p| {
                !matches!(p, Phase::Registering | Phase::Pending | Phase::Announced)
            })
        {
            self.mount_gone(
                &key,
                &format!(
                    "the filesystem's sysfs directory is gone ({}={value}: {error}): treating \
                     it as unmounted",
                    file.name()
                ),
            );
            return;
        }
        self.log(
            Level::Error,
            Some(&key),
            format!("the kernel refused {}={}: {error}", file.name(), value),
        );
        match file {
            SysfsFile::Block if value == 1 => {
                if let Some(l) = self.local.get_mut(&key) {
                    if error == WriteError::Gone {
                        l.block_confirmed = l.block_requested; // the filesystem is gone: nothing to block
                    } else {
                        l.block_requested = false; // write it again on the next pass
                    }
                }
            }
            SysfsFile::Recover => {
                let retry = self.now.after(self.cfg.recover_retry_ms);
                let attempts = self.journal_attempts(&key, value as Jid);
                if let Some(l) = self.local.get_mut(&key) {
                    if error == WriteError::Busy {
                        return; // already replaying it: the uevent will come
                    }
                    if error == WriteError::NoJournal && l.recovering.remove(&(value as Jid)) {
                        // No such journal (a mount that failed for want of journals, then its
                        // node died): there is nothing to replay. The historical daemon hung here.
                        l.reported.insert(value as Jid, attempts);
                        self.send(Message::Recovered {
                            table: key,
                            jid: value as Jid,
                            done: true,
                            attempt: attempts,
                        });
                        return;
                    }
                    if l.recovering.remove(&(value as Jid)) {
                        l.retry_at.insert(value as Jid, retry);
                        l.reported.insert(value as Jid, attempts);
                        // Never hang on a refused write (the historical daemon did): hand it on.
                        self.send(Message::Recovered {
                            table: key,
                            jid: value as Jid,
                            done: false,
                            attempt: attempts,
                        });
                    }
                }
            }
            _ => {}
        }
    }

    /// `first`/`jid` answered EBUSY: the kernel picked its journal itself (the DLM offered
    /// recovery callbacks when the lockspace was created). Leave the group's mount cleanly.
    pub(super) fn became_kernel_managed(&mut self, table: &Table) {
        let Some(l) = self.local.get_mut(table) else {
            return;
        };
        l.phase = Phase::KernelManaged;
        l.recovering.clear();
        l.block_requested = false;
        l.dlm_pending.clear();
        l.dlm_retry.clear();
        let t = l.table.clone();
        let registered = std::mem::replace(&mut l.dlm_registered, false);
        self.log(
            Level::Warn,
            Some(table),
            "kernel-managed: the kernel refused first/jid (EBUSY), so it coordinates recovery itself; leaving it alone (set recover_callbacks the same on every node)".into(),
        );
        if registered {
            self.outputs
                .push_back(Output::DlmUnregister { table: t.clone() });
        }
        self.send(Message::Unmount {
            table: table.to_owned(),
        });
    }
}
