//! The kernel side of the simulated cluster: GFS2 as Linux 6.1 runs it in daemon-managed mode
//! (`recover_callbacks=0`), the DLM lockspace beneath it, and dlm_controld's fs-control gate.
//!
//! What it models, because the daemon's safety depends on it:
//! - the `lock_module` files: errnos, `first` defaulting to 1, `first`/`jid` writes that wait
//!   for the DLM join, `recover` writes that wait until the node's own journal is ready;
//! - the mount sequence: DLM join, the cluster-wide mount lock (held from before the wait for
//!   `jid` to the end of the mount), the superblock read and the rest of the mount frozen by
//!   `block=1`, first-mounter replay of every journal it can lock, the per-journal and
//!   FIRSTMOUNT uevents, `online`;
//! - journal locks: a live holder makes a replay attempt fail (Busy); a dead holder's lock, and
//!   its mount lock, stay held until DLM recovery of that node, which dlm_controld starts only
//!   once every registered survivor said it blocked (S8 is judged there);
//! - kernel-managed mounts (the DLM offered recovery callbacks): `first`/`jid` answer EBUSY;
//! - remount: `online` carries the mode from before; the new one is read back later.
//!
//! Sysfs operations of one filesystem run one at a time, in order, and their results reach the
//! daemon as separate events, as the daemon's off-loop executor delivers them.

use std::collections::BTreeSet;

use gfs_core::{Input, KernelEvent, KernelEventKind, MountMode, NodeId, SysfsFile, Table};

use super::dlm::DlmRecovery;
use super::mount::{Mount, MountStep};
use super::trace::ReplayRecord;
use super::{checker, Event, World};
use crate::errno::{ENODEV, EUSERS};
use crate::kernel_model::{
    Admit, Effect, JournalWork, KernelModel, RecoveryStart, RecoveryWork, Stage,
};

impl World {
    /// Uevents reach the daemon as separate events, in order, never in the middle of a write.
    pub(super) fn uevent(&mut self, n: NodeId, table: &Table, kind: KernelEventKind) {
        let boot = self.nodes[&n].boot;
        self.schedule(
            0,
            Event::Uevent {
                node: n,
                event: KernelEvent {
                    table: table.clone(),
                    kind,
                },
                boot,
            },
        );
    }

    pub(super) fn mount_of(&mut self, n: NodeId, key: &str) -> Option<&mut Mount> {
        self.nodes.get_mut(&n).and_then(|x| x.mounts.get_mut(key))
    }

    pub(super) fn step_later(&mut self, n: NodeId, key: &str, delay: u64) {
        let boot = self.nodes[&n].boot;
        self.schedule(
            delay,
            Event::KernelMountStep {
                node: n,
                table: key.to_owned(),
                boot,
            },
        );
    }

    /// `hostdata_first0`: a spectator mounted with `-o spectator,hostdata=first=0`.
    pub(super) fn mount(&mut self, n: NodeId, t: &Table, mode: MountMode, hostdata_first0: bool) {
        let hostdata_first0 = mode == MountMode::Spectator && hostdata_first0;
        self.log(format!(
            "WORK mount {t} {}{} on n{n}",
            mode.as_str(),
            if hostdata_first0 {
                " hostdata=first=0"
            } else {
                ""
            }
        ));
        let kernel_managed = self.kernel_managed_nodes.contains(&n);
        let journals = self.journals_per_fs;
        self.nodes.get_mut(&n).expect("node").mounts.insert(
            t.to_string(),
            Mount {
                table: t.clone(),
                kernel: KernelModel::new(mode, journals, kernel_managed, hostdata_first0),
                first_written: false,
                state: MountStep::Joining,
                journal_work: false,
                begun: self.now,
                busy_at_mount: BTreeSet::new(),
                mount_replays: BTreeSet::new(),
                waiting_replays: BTreeSet::new(),
            },
        );
        // The daemon reads recover_callbacks at `add`; a scenario may change it in between.
        let said = kernel_managed != self.recover_callbacks_flips.contains(&n);
        self.uevent(
            n,
            t,
            KernelEventKind::Add {
                ro: mode != MountMode::Rw,
                spectator: mode == MountMode::Spectator,
                kernel_managed: said,
            },
        );
        let quorate = self.cpg.partition_quorate(n);
        if !kernel_managed && quorate {
            // A joining kernel is in the lockspace's membership: a failure during its join is
            // recovered with it. (In an inquorate partition the join waits, unseen by others.)
            self.dlm
                .lockspaces
                .entry(t.to_string())
                .or_default()
                .insert(n);
        }
        let d = self.rng.range(5, 200);
        self.step_later(n, &t.to_string(), d);
    }

    pub(super) fn kernel_mount_step(&mut self, n: NodeId, key: &str, boot: u64) {
        if self.nodes[&n].boot != boot {
            return;
        }
        let Some(m) = self.mount_of(n, key) else {
            return;
        };
        match m.state {
            MountStep::Joining => {
                let quorate = self.cpg.partition_quorate(n);
                let Some(m) = self.mount_of(n, key) else {
                    return;
                };
                if !quorate && !m.kernel.kernel_managed {
                    // dlm_controld completes a lockspace join only with quorum.
                    self.step_later(n, key, 200);
                    return;
                }
                m.kernel.stage = Stage::Joined;
                if !m.kernel.kernel_managed {
                    self.dlm
                        .lockspaces
                        .entry(key.to_owned())
                        .or_default()
                        .insert(n);
                }
                let Some(m) = self.mount_of(n, key) else {
                    return;
                };
                if m.kernel.kernel_managed {
                    // The kernel picks its journal and recovers by itself: nothing to model here
                    // but the mount completing without the daemon.
                    // The DLM join ends any `first`/`jid` write waiting for it (EBUSY here).
                    m.state = MountStep::Online;
                    m.kernel.stage = Stage::Mounted;
                    let (t, online) = (m.table.clone(), m.kernel.online_event());
                    self.io_run(n, key);
                    let boot = self.nodes[&n].boot;
                    let d = self.rng.range(10, 100);
                    self.schedule(
                        d,
                        Event::Uevent {
                            node: n,
                            event: KernelEvent {
                                table: t,
                                kind: online,
                            },
                            boot,
                        },
                    );
                    return;
                }
                m.state = MountStep::WaitGlock;
                self.glock_waiters
                    .entry(key.to_owned())
                    .or_default()
                    .push_back(n);
                self.io_run(n, key);
                self.grant_glock(key);
            }
            MountStep::InitSb if !m.kernel.blocked => {
                m.state = MountStep::WaitJid;
                self.wait_jid(n, key);
            }
            MountStep::InitJournal => self.finish_journal_work(n, key),
            MountStep::MountRest if !m.kernel.blocked => {
                m.state = MountStep::Online;
                m.kernel.stage = Stage::Mounted;
                let (t, online) = (m.table.clone(), m.kernel.online_event());
                self.glock.remove(key);
                self.grant_glock(key);
                self.uevent(n, &t, online);
                self.maybe_finish_unmount(n, key);
            }
            _ => {}
        }
    }

    /// The mount lock goes to the longest waiter once nobody holds it (a dead holder's lock
    /// is freed only by DLM recovery).
    pub(super) fn grant_glock(&mut self, key: &str) {
        if self.glock.contains_key(key) {
            return;
        }
        while let Some(n) = self.glock_waiters.get_mut(key).and_then(|q| q.pop_front()) {
            let boot = self.nodes[&n].boot;
            let Some(m) = self.mount_of(n, key) else {
                continue;
            };
            if m.state != MountStep::WaitGlock {
                continue;
            }
            m.state = MountStep::InitSb;
            self.glock.insert(key.to_owned(), (n, boot, true));
            self.log(format!("n{n} kernel: {key} mount lock acquired"));
            let d = self.rng.range(1, 10);
            self.step_later(n, key, d);
            return;
        }
    }

    pub(super) fn wait_jid(&mut self, n: NodeId, key: &str) {
        let Some(m) = self.mount_of(n, key) else {
            return;
        };
        if m.state != MountStep::WaitJid {
            return;
        }
        let (Some(written), Some(taken)) = (m.kernel.jid, m.kernel.take_journal()) else {
            return;
        };
        let jid = match taken {
            Ok(jid) => jid,
            Err(EUSERS) => {
                let why = format!("can't mount journal #{written} (EUSERS)");
                self.mount_failed(n, key, why);
                return;
            }
            Err(_) => {
                self.mount_failed(n, key, format!("the daemon wrote jid={written}"));
                return;
            }
        };
        let spectator = m.kernel.spectator();
        let first = m.kernel.first && !spectator;
        m.kernel.journal = Some(jid);
        m.state = MountStep::InitJournal;
        let boot = self.nodes[&n].boot;
        if !spectator {
            let j = self.journals.entry((key.to_owned(), jid)).or_default();
            if let Some(v) = checker::unique_journal(n, key, jid, j) {
                self.violate(v);
                return;
            }
            if !first {
                if let Some(v) = checker::first_mounter(n, key, jid, &self.journals, &self.nodes) {
                    self.violate(v);
                    return;
                }
            }
            let j = self.journals.entry((key.to_owned(), jid)).or_default();
            j.holder = Some((n, boot));
            j.holder_withdrawn = false;
        }
        self.journal_work(n, key);
    }

    /// Start the mount's journal work, unless a journal it must try is locked by a dead node
    /// whose DLM recovery has not run (the kernel's lock request waits for it).
    pub(super) fn journal_work(&mut self, n: NodeId, key: &str) {
        let journals = self.journals_per_fs;
        let Some(m) = self.nodes.get(&n).and_then(|x| x.mounts.get(key)) else {
            return;
        };
        if m.state != MountStep::InitJournal || m.journal_work {
            return;
        }
        let own = m.kernel.journal;
        let work = m.kernel.journal_work();
        let tries: Vec<u32> = match work {
            JournalWork::RecoverAll | JournalWork::CheckAllClean => (0..journals).collect(),
            JournalWork::Own(jid) => vec![jid],
            JournalWork::Nothing => Vec::new(),
        };
        if tries.iter().any(|j| {
            Some(*j) != own
                && self
                    .journals
                    .get(&(key.to_owned(), *j))
                    .is_some_and(|x| x.dead_locked)
        }) {
            return;
        }
        if work == JournalWork::CheckAllClean {
            // A spectator keeping first=1 checks that every journal is clean.
            let unclean = (0..journals).find(|j| {
                self.journals
                    .get(&(key.to_owned(), *j))
                    .is_some_and(|x| x.dirty || x.user().is_some())
            });
            if let Some(j) = unclean {
                self.mount_failed(n, key, format!("spectator: jid {j} is not clean (EPERM)"));
                return;
            }
        }
        let mut busy = BTreeSet::new();
        let mut replays = BTreeSet::new();
        for j in tries {
            let x = self
                .journals
                .get(&(key.to_owned(), j))
                .cloned()
                .unwrap_or_default();
            if Some(j) != own && x.locked_by_other(n) {
                busy.insert(j);
            } else if x.dirty {
                replays.insert(j);
            }
        }
        for j in &replays {
            self.replay_start(n, key, *j, true);
        }
        let m = self.mount_of(n, key).expect("checked");
        m.journal_work = true;
        m.busy_at_mount = busy;
        m.mount_replays = replays.clone();
        let d = if replays.is_empty() {
            self.rng.range(1, 20)
        } else {
            self.rng
                .range(self.profile.replay_ms.0, self.profile.replay_ms.1)
        };
        self.step_later(n, key, d);
    }

    pub(super) fn finish_journal_work(&mut self, n: NodeId, key: &str) {
        let Some(m) = self.mount_of(n, key) else {
            return;
        };
        if !m.journal_work || m.kernel.stage >= Stage::JournalReady {
            return;
        }
        m.kernel.stage = Stage::JournalReady;
        m.state = MountStep::MountRest;
        let replays = std::mem::take(&mut m.mount_replays);
        let busy = std::mem::take(&mut m.busy_at_mount);
        let (t, events) = (m.table.clone(), m.kernel.journal_work_events(&busy));
        for j in replays {
            self.replay_finish(n, key, j);
        }
        for kind in events {
            self.uevent(n, &t, kind);
        }
        self.io_run(n, key);
        let d = self.rng.range(1, 20);
        self.step_later(n, key, d);
    }

    pub(super) fn mount_failed(&mut self, n: NodeId, key: &str, why: String) {
        self.log(format!("n{n} kernel: mount of {key} fails: {why}"));
        let node = self.nodes.get_mut(&n).expect("node");
        let Some(m) = node.mounts.remove(key) else {
            return;
        };
        if self.glock.get(key).is_some_and(|(h, _, _)| *h == n) {
            self.glock.remove(key);
        }
        self.leave_lockspace(n, key);
        self.uevent(n, &m.table, KernelEventKind::Remove);
        self.io_run(n, key);
        self.grant_glock(key);
    }

    pub(super) fn withdraw(&mut self, n: NodeId, key: &str) {
        let node = self.nodes.get_mut(&n).expect("node");
        let Some(m) = node.mounts.get_mut(key) else {
            return;
        };
        if m.state != MountStep::Online {
            return;
        }
        m.state = MountStep::Withdrawn;
        let offline = m.kernel.withdraw();
        // Recoveries in flight end with the withdraw, unreported (the daemon's group treats the
        // withdrawn node's replays as failed anyway).
        let aborted: Vec<u32> = std::mem::take(&mut m.kernel.recovering)
            .into_iter()
            .collect();
        m.waiting_replays.clear();
        let table = m.table.clone();
        let jid = m.kernel.jid;
        let spectator = m.kernel.spectator();
        for j in aborted {
            self.journals
                .entry((key.to_owned(), j))
                .or_default()
                .replaying
                .remove(&n);
        }
        if let Some(jid) = jid.filter(|j| *j >= 0 && !spectator) {
            let j = self
                .journals
                .entry((key.to_owned(), jid as u32))
                .or_default();
            j.holder_withdrawn = true;
            j.dirty = true;
            j.dirty_withdrawn = true;
            j.dirty_owner = j.holder;
        }
        self.uevent(n, &table, offline);
    }

    /// A remount: the `online` uevent carries the mode from before (the kernel sends it before
    /// the VFS applies the new flags); the daemon learns the new one by reading it back.
    pub(super) fn remount(&mut self, n: NodeId, key: &str, mode: MountMode) {
        let boot = self.nodes[&n].boot;
        let Some(m) = self.mount_of(n, key) else {
            return;
        };
        if m.state != MountStep::Online || m.kernel.spectator() {
            return;
        }
        let online = m.kernel.remount(mode);
        let t = m.table.clone();
        self.uevent(n, &t, online);
        let d = self.rng.range(50, 500);
        self.schedule(
            d,
            Event::ModeRead {
                node: n,
                table: key.to_owned(),
                boot,
            },
        );
    }

    pub(super) fn mode_read(&mut self, n: NodeId, key: &str, boot: u64) {
        if self.nodes[&n].boot != boot {
            return;
        }
        let Some(m) = self.nodes[&n].mounts.get(key) else {
            return;
        };
        let input = Input::MountMode {
            table: m.table.clone(),
            ro: m.kernel.mode != MountMode::Rw,
        };
        self.feed(n, input);
    }

    pub(super) fn kernel_dies(&mut self, n: NodeId, by_fence: bool) {
        let now = self.now;
        let node = self.nodes.get_mut(&n).expect("node");
        if node.kernel_dead_at.is_some() {
            return;
        }
        node.kernel_dead_at = Some(now);
        node.kernel_killed_by_fence = by_fence;
        let boot = node.boot;
        let mounts = std::mem::take(&mut node.mounts);
        self.sysfs.queued.retain(|(x, _), _| *x != n);
        self.dlm.registered.retain(|(x, _)| *x != n);
        let mut failed = Vec::new();
        for (key, m) in mounts {
            let mut dirty = false;
            for j in m.kernel.recovering.iter().chain(m.mount_replays.iter()) {
                let x = self.journals.entry((key.clone(), *j)).or_default();
                if x.replaying.remove(&n) {
                    // A replayer's lock on the journal dies with it, until DLM recovery.
                    x.dead_locked = true;
                    x.dead_lock_by = Some(n);
                }
            }
            if let Some(jid) = m
                .kernel
                .jid
                .filter(|j| *j >= 0 && m.kernel.mode != MountMode::Spectator)
            {
                let j = self.journals.entry((key.clone(), jid as u32)).or_default();
                if j.holder == Some((n, boot)) {
                    j.holder = None;
                    // A withdrawn kernel stopped writing: its journal is as dirty as it was.
                    if !j.holder_withdrawn {
                        j.dirty = true;
                        j.dirty_withdrawn = false;
                        j.dirty_owner = Some((n, boot));
                        dirty = true;
                    }
                    if m.kernel.stage >= Stage::Joined && !m.kernel.withdraw_acked {
                        j.dead_locked = true;
                        j.dead_lock_by = Some(n);
                    }
                    j.holder_withdrawn = false;
                }
            }
            if let Some(g) = self.glock.get_mut(&key).filter(|(h, _, _)| *h == n) {
                g.2 = false; // held by a dead kernel until DLM recovery
            }
            let member = self
                .dlm
                .lockspaces
                .get(&key)
                .is_some_and(|ls| ls.contains(&n));
            if member && !m.kernel.withdraw_acked {
                failed.push((key, dirty));
            }
        }
        for r in self.dlm.recoveries.iter_mut() {
            r.waiting.remove(&n);
        }
        for ls in self.dlm.lockspaces.values_mut() {
            ls.remove(&n);
        }
        for (key, dirty) in failed {
            // dlm_controld waits on the nodes that saw it leave the membership.
            let seen_with = self.nodes[&n].seen_with.clone();
            let waiting = self
                .dlm
                .lockspaces
                .get(&key)
                .map(|ls| {
                    ls.iter()
                        .copied()
                        .filter(|s| {
                            seen_with.contains(s)
                                && self.dlm.registered.contains(&(*s, key.clone()))
                        })
                        .collect()
                })
                .unwrap_or_default();
            let online_at_failure = self
                .nodes
                .values()
                .filter(|x| {
                    x.mounts
                        .get(&key)
                        .is_some_and(|m| m.state == MountStep::Online && !m.kernel.kernel_managed)
                })
                .map(|x| x.id)
                .collect();
            let notified = BTreeSet::new();
            self.dlm.recoveries.push(DlmRecovery {
                table: key,
                failed: n,
                dirty,
                waiting,
                notified,
                online_at_failure,
            });
        }
        self.dlm_check();
    }

    pub(super) fn kernel_read(
        &mut self,
        n: NodeId,
        key: &str,
        file: SysfsFile,
    ) -> Result<i64, i32> {
        let Some(m) = self.nodes[&n].mounts.get(key) else {
            return Err(ENODEV);
        };
        m.kernel.read(file)
    }

    /// A sysfs write that no longer has to wait (`io_run` holds it back until then), answered
    /// by the shared kernel model; its effects are carried out here.
    pub(super) fn kernel_write(
        &mut self,
        n: NodeId,
        table: &Table,
        file: SysfsFile,
        value: i64,
    ) -> Result<(), i32> {
        let key = table.to_string();
        let Some(m) = self.mount_of(n, &key) else {
            return Err(ENODEV);
        };
        let (result, effects) = match m.kernel.admit(file, value) {
            Admit::Refused(refusal) => (Err(refusal), Vec::new()),
            Admit::WaitFor(_) | Admit::Ready => m.kernel.apply(file, value),
        };
        if file == SysfsFile::First && result.is_ok() {
            m.first_written = true;
        }
        let frozen = matches!(m.state, MountStep::InitSb | MountStep::MountRest);
        for effect in effects {
            match effect {
                Effect::Thawed => {
                    self.check_unblock(n, &key);
                    if frozen {
                        self.step_later(n, &key, 1);
                    }
                }
                Effect::JidStored => self.wait_jid(n, &key),
                Effect::RecoveryQueued(jid) => self.queue_recovery(n, &key, jid),
            }
        }
        result.map_err(|refusal| refusal.errno)
    }

    /// The recovery a `recover` write queued: a withdrawn node or a spectator gives up at once;
    /// otherwise its lock request waits for DLM recovery of a dead holder, or goes ahead.
    pub(super) fn queue_recovery(&mut self, n: NodeId, key: &str, jid: u32) {
        let Some(m) = self.mount_of(n, key) else {
            return;
        };
        if let RecoveryStart::GiveUp(_) = m.kernel.recovery_start() {
            let event = m.kernel.recovery_done(jid, false);
            let t = m.table.clone();
            self.uevent(n, &t, event);
            return;
        }
        self.replays.push(ReplayRecord {
            node: n,
            table: key.to_owned(),
            jid,
            started: self.now,
            done: None,
        });
        let j = self
            .journals
            .get(&(key.to_owned(), jid))
            .cloned()
            .unwrap_or_default();
        if j.dead_locked {
            // The lock request waits for DLM recovery of the node that held it.
            self.mount_of(n, key)
                .expect("mounted")
                .waiting_replays
                .insert(jid);
            self.log(format!(
                "n{n} kernel: {key} jid {jid} waits for DLM recovery"
            ));
        } else {
            self.begin_replay(n, key, jid);
        }
    }

    /// A `recover` replay whose journal lock is free (or held by a live node: Busy).
    pub(super) fn begin_replay(&mut self, n: NodeId, key: &str, jid: u32) {
        let boot = self.nodes[&n].boot;
        let j = self
            .journals
            .get(&(key.to_owned(), jid))
            .cloned()
            .unwrap_or_default();
        let Some(m) = self.nodes[&n].mounts.get(key) else {
            return;
        };
        let work = m.kernel.recovery_work(j.locked_by_other(n), j.dirty);
        // Busy, or a dirty journal a read-only mount cannot replay: GAVEUP right away. (A clean
        // journal takes the model's replay time, like a dirty one.)
        if matches!(work, RecoveryWork::Busy | RecoveryWork::ReadOnly) {
            self.busy_replays.insert((n, key.to_owned(), jid));
            self.schedule(
                1,
                Event::ReplayDone {
                    node: n,
                    table: key.to_owned(),
                    jid,
                    boot,
                },
            );
            return;
        }
        self.replay_start(n, key, jid, false);
        let d = self
            .rng
            .range(self.profile.replay_ms.0, self.profile.replay_ms.1);
        self.schedule(
            d,
            Event::ReplayDone {
                node: n,
                table: key.to_owned(),
                jid,
                boot,
            },
        );
    }

    /// A replay of `jid` starts on `n` (S1, S2 and the barrier part of S3 are checked here).
    pub(super) fn replay_start(&mut self, n: NodeId, key: &str, jid: u32, at_mount: bool) {
        // The daemon's view when it asked, or the partition's when the kernel runs a replay that
        // waited for DLM recovery (which itself needs quorum).
        let vs_quorate = self.cpg.view_quorate(n) || self.cpg.partition_quorate(n);
        let j = self.journals.entry((key.to_owned(), jid)).or_default();
        let start = checker::ReplayStart {
            n,
            key,
            jid,
            at_mount,
            quorate: vs_quorate,
            cluster_nodes: self.cfg.nodes,
        };
        let fences = checker::FenceHistory {
            fenced: &self.fencing.last_fenced,
            acked: &self.fencing.last_acked,
            off: !self.cfg.fencing,
        };
        if let Some(v) = checker::replay_start(&start, j, &self.nodes, &fences) {
            self.violate(v);
            return;
        }
        self.journals
            .entry((key.to_owned(), jid))
            .or_default()
            .replaying
            .insert(n);
    }

    pub(super) fn replay_finish(&mut self, n: NodeId, key: &str, jid: u32) {
        let j = self.journals.entry((key.to_owned(), jid)).or_default();
        if !j.replaying.remove(&n) {
            return;
        }
        if j.dirty {
            self.journals_replayed += 1;
        }
        j.dirty = false;
        j.dirty_owner = None;
        j.dirty_withdrawn = false;
        j.known_by.clear();
    }

    pub(super) fn replay_done(&mut self, n: NodeId, key: &str, jid: u32, boot: u64) {
        if self.nodes[&n].boot != boot {
            return;
        }
        let Some(m) = self.mount_of(n, key) else {
            return;
        };
        if !m.kernel.recovering.remove(&jid) {
            return;
        }
        let table = m.table.clone();
        let busy = self.busy_replays.remove(&(n, key.to_owned(), jid));
        let forced_failure = !busy && self.fail_next_replay.remove(&n);
        let done = !busy && !forced_failure && !self.rng.chance(self.profile.recover_fail);
        if let Some(r) = self
            .replays
            .iter_mut()
            .rev()
            .find(|r| r.node == n && r.table == key && r.jid == jid && r.done.is_none())
        {
            r.done = Some(done);
        }
        if done {
            self.replay_finish(n, key, jid);
        } else {
            self.journals
                .entry((key.to_owned(), jid))
                .or_default()
                .replaying
                .remove(&n);
        }
        self.uevent(n, &table, KernelEventKind::Recovery { jid, done });
        self.maybe_finish_unmount(n, key);
    }

    pub(super) fn check_unblock(&mut self, n: NodeId, key: &str) {
        let mount = self.nodes[&n].mounts.get(key);
        if let Some(v) = checker::unblock(n, key, mount, &self.journals) {
            self.violate(v);
        }
    }

    /// umount(8) on node `n`: the mount goes once nothing holds it any more.
    pub(super) fn unmount(&mut self, n: NodeId, key: &str) {
        if let Some(m) = self.nodes.get_mut(&n).and_then(|x| x.mounts.get_mut(key)) {
            m.kernel.unmounting = true;
        }
        self.maybe_finish_unmount(n, key);
    }

    pub(super) fn maybe_finish_unmount(&mut self, n: NodeId, key: &str) {
        let Some(m) = self.nodes[&n].mounts.get(key) else {
            return;
        };
        if !m.kernel.unmounting
            || !m.kernel.recovering.is_empty()
            || !matches!(m.state, MountStep::Online | MountStep::Withdrawn)
        {
            return;
        }
        let m = self
            .nodes
            .get_mut(&n)
            .expect("node")
            .mounts
            .remove(key)
            .expect("mount");
        if let Some(jid) = m
            .kernel
            .jid
            .filter(|j| *j >= 0 && m.kernel.mode != MountMode::Spectator)
        {
            let j = self
                .journals
                .entry((key.to_owned(), jid as u32))
                .or_default();
            if j.holder.is_some_and(|(h, _)| h == n) {
                j.holder = None;
                // A clean unmount flushes the journal; a withdrawn one stays dirty for others.
                if !m.kernel.withdraw_acked && m.state != MountStep::Withdrawn {
                    j.known_by.clear();
                }
                j.holder_withdrawn = false;
            }
        }
        self.log(format!("n{n} kernel: unmounted {key}"));
        self.uevent(n, &m.table, KernelEventKind::Remove);
        self.io_run(n, key);
        self.leave_lockspace(n, key);
    }
}

#[cfg(test)]
mod tests {
    use gfs_core::{MountMode, SysfsFile, Time};

    use super::super::{SimConfig, World};
    use crate::errno::{EBUSY, ENOENT};

    /// Linux 6.1 takes a read-only mount's `recover` write like any other (EBUSY for its own
    /// journal, ENOENT beyond the disk) and gives up only in the recovery itself, for a dirty
    /// journal it cannot write; the simulator used to answer every such write with an
    /// immediate `RECOVERY=Failed`.
    #[test]
    fn a_read_only_mounts_recover_write_follows_linux() {
        let mut cfg = SimConfig::new(1, 3, 1);
        cfg.faults = false;
        cfg.workload = false;
        let mut w = World::new(cfg);
        w.faults_on = false;
        w.run_until(Time(2_000));
        let t = w.tables[0].clone();
        let key = t.to_string();
        w.mount(1, &t, MountMode::Rw, false);
        w.run_until(Time(6_000));
        w.mount(2, &t, MountMode::Ro, false);
        w.run_until(Time(12_000));
        assert!(w.violation.is_none(), "{:?}", w.violation);
        let own = w.kernel_read(2, &key, SysfsFile::Jid).expect("mounted");
        assert_eq!(w.kernel_write(2, &t, SysfsFile::Recover, own), Err(EBUSY));
        assert_eq!(
            w.kernel_write(2, &t, SysfsFile::Recover, 1_000),
            Err(ENOENT)
        );
    }
}
