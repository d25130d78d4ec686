//! One node's GFS2 kernel for one filesystem, as Linux 6.1 runs it with lock_dlm in
//! daemon-managed mode (`recover_callbacks=0`): the `lock_module` files' write and read rules,
//! the mount's stages that the blocking writes wait for, and the recovery work a `recover`
//! write queues. Pure: no IO, no clock, no locks of other nodes; whatever the rules need from
//! the cluster (is a journal's lock held elsewhere? is it dirty?) is passed in.
//!
//! Two programs drive it: the simulator's kernel (`world/kernel.rs`), which adds the cluster-wide
//! mount lock, journal locks and the DLM as in-memory state, and `gfs_kernel_sim`, which adds
//! FUSE, a shared directory for the locks and real uevents. Both answer a daemon's writes
//! through [`KernelModel::admit`] and [`KernelModel::apply`], so the two cannot drift apart on
//! an errno. The rules follow `fs/gfs2/sys.c` and `fs/gfs2/recovery.c` of 6.1 (SPEC §2,
//! `research/real-kernel.md` §2 and §4).

use std::collections::BTreeSet;

use gfs_core::{KernelEventKind, MountMode, SysfsFile};

use crate::errno::{EBUSY, EINVAL, ENODEV, ENOENT, ESHUTDOWN};

/// How far a mount is, in the order the kernel goes. The blocking writes wait for a stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    /// `add` sent; the DLM lockspace join runs. `first`/`jid` writes wait.
    Joining,
    /// Joined (`sd_locking_init` complete): the mount lock, then the wait for `jid`.
    Joined,
    /// The node's own journal is checked (`sd_journal_ready`): `recover` writes go on.
    JournalReady,
    /// `online` sent.
    Mounted,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Joining => "joining",
            Stage::Joined => "joined",
            Stage::JournalReady => "journal_ready",
            Stage::Mounted => "mounted",
        }
    }
}

/// A refused write: the errno, and why (for a simulator's timeline).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub errno: i32,
    pub why: String,
}

fn refuse<T>(errno: i32, why: impl Into<String>) -> Result<T, Refusal> {
    Err(Refusal {
        errno,
        why: why.into(),
    })
}

/// What a write does before it may touch the mount.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Admit {
    /// Refused at once (a malformed value, or `recover` while unmounting).
    Refused(Refusal),
    /// The write blocks until the mount reaches this stage (or ends: ENODEV).
    WaitFor(Stage),
    /// [`KernelModel::apply`] may run now.
    Ready,
}

/// What an accepted write set in motion; the driver carries it out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effect {
    /// `block=0`: mount steps frozen by `block=1` go on.
    Thawed,
    /// `jid` stored (a negative one is the mount's error): the mount waiting for it wakes.
    JidStored,
    /// `recover`: the recovery of this journal is queued (JDF_RECOVERY set).
    RecoveryQueued(u32),
}

/// The first decision of a queued recovery (`gfs2_recover_func`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecoveryStart {
    /// GAVEUP at once: `RECOVERY=Failed` with no lock taken.
    GiveUp(&'static str),
    /// Try the journal's lock (its own journal needs none).
    TryLock,
}

/// The outcome of a queued recovery once the journal's lock was tried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecoveryWork {
    /// Another live kernel holds the journal: "Busy", GAVEUP.
    Busy,
    /// The journal has nothing to replay: SUCCESS.
    Clean,
    /// A dirty journal on a node that cannot write (a read-only mount after its mount): EROFS,
    /// GAVEUP.
    ReadOnly,
    /// Replay it; SUCCESS unless the replay itself fails.
    Replay,
}

/// Which journals a mount checks while it holds the mount lock (`init_journal`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JournalWork {
    /// A first mounter replays every journal it can lock and skips those held by live nodes.
    RecoverAll,
    /// A spectator keeping `first=1` checks that every journal is clean (else EPERM).
    CheckAllClean,
    /// Only its own journal.
    Own(u32),
    /// A spectator with `first=0`: nothing.
    Nothing,
}

/// One node's kernel state for one mounted (or mounting) filesystem.
#[derive(Clone, Debug)]
pub struct KernelModel {
    pub mode: MountMode,
    /// The DLM offered recovery callbacks at the join: the kernel picks its jid itself.
    pub kernel_managed: bool,
    /// Journals on disk.
    pub journals: u32,
    pub stage: Stage,
    /// `ls_first`: 1 unless written 0 (or mounted with `hostdata=first=0`).
    pub first: bool,
    /// `ls_jid` once written; `None` while SDF_NOJOURNALID (reads 0).
    pub jid: Option<i64>,
    /// The journal this node uses (`sd_jdesc`), once its journal work began: its jid, or 0 for
    /// a spectator.
    pub journal: Option<u32>,
    pub blocked: bool,
    pub withdrawn: bool,
    /// `withdraw=1` written.
    pub withdraw_acked: bool,
    /// SDF_NORECOVERY: unmounting.
    pub unmounting: bool,
    /// JDF_RECOVERY: journals with a recovery queued or running here.
    pub recovering: BTreeSet<u32>,
}

impl KernelModel {
    /// A mount that just sent `add`.
    pub fn new(
        mode: MountMode,
        journals: u32,
        kernel_managed: bool,
        hostdata_first0: bool,
    ) -> Self {
        KernelModel {
            mode,
            kernel_managed,
            journals,
            stage: Stage::Joining,
            // gfs2_lm_mount: ls_first = 1 unless hostdata says first=0.
            first: !hostdata_first0,
            jid: None,
            journal: None,
            blocked: false,
            withdrawn: false,
            withdraw_acked: false,
            unmounting: false,
            recovering: BTreeSet::new(),
        }
    }

    pub fn spectator(&self) -> bool {
        self.mode == MountMode::Spectator
    }

    pub fn ro(&self) -> bool {
        self.mode != MountMode::Rw
    }

    /// The checks a write makes before it waits, and the stage it waits for.
    pub fn admit(&self, file: SysfsFile, value: i64) -> Admit {
        let at_least = |stage: Stage| {
            if self.stage >= stage {
                Admit::Ready
            } else {
                Admit::WaitFor(stage)
            }
        };
        match file {
            SysfsFile::Block if value != 0 && value != 1 => {
                Admit::Refused(Refusal::new(EINVAL, "block takes 0 or 1"))
            }
            SysfsFile::Withdraw if value != 1 => {
                Admit::Refused(Refusal::new(EINVAL, "withdraw takes only 1"))
            }
            SysfsFile::Block | SysfsFile::Withdraw => Admit::Ready,
            // `sscanf("%u")` and the range check come before the wait for the DLM join.
            SysfsFile::First if value != 0 && value != 1 => {
                Admit::Refused(Refusal::new(EINVAL, "first takes 0 or 1"))
            }
            SysfsFile::First | SysfsFile::Jid => at_least(Stage::Joined),
            SysfsFile::Recover if value < 0 => {
                Admit::Refused(Refusal::new(EINVAL, "recover takes a journal number"))
            }
            SysfsFile::Recover if self.unmounting => {
                Admit::Refused(Refusal::new(ESHUTDOWN, "the filesystem is unmounting"))
            }
            SysfsFile::Recover => at_least(Stage::JournalReady),
        }
    }

    /// A write once [`admit`](Self::admit) said `Ready` (or the wait it asked for is over).
    pub fn apply(&mut self, file: SysfsFile, value: i64) -> (Result<(), Refusal>, Vec<Effect>) {
        let mut effects = Vec::new();
        let result = match file {
            SysfsFile::Block => {
                self.blocked = value == 1;
                if value == 0 {
                    effects.push(Effect::Thawed);
                }
                Ok(())
            }
            SysfsFile::Withdraw => {
                self.withdraw_acked = true;
                Ok(())
            }
            SysfsFile::First => {
                if self.kernel_managed {
                    refuse(EBUSY, "kernel-managed: the kernel chose its jid")
                } else if self.jid.is_some() {
                    refuse(EBUSY, "the jid is already set")
                } else if self.spectator() {
                    refuse(EINVAL, "a spectator cannot set first")
                } else {
                    self.first = value == 1;
                    Ok(())
                }
            }
            SysfsFile::Jid => {
                if self.kernel_managed {
                    refuse(EBUSY, "kernel-managed: the kernel chose its jid")
                } else if self.jid.is_some() {
                    refuse(EBUSY, "the jid is already set")
                } else if self.spectator() && value > 0 {
                    // Stored as the mount's error: the mount fails with EINVAL.
                    self.jid = Some(-i64::from(EINVAL));
                    effects.push(Effect::JidStored);
                    refuse(EINVAL, "a spectator takes jid 0 only: the mount fails")
                } else {
                    self.jid = Some(value);
                    effects.push(Effect::JidStored);
                    Ok(())
                }
            }
            SysfsFile::Recover => self.queue_recovery(value, &mut effects),
        };
        (result, effects)
    }

    /// `gfs2_recover_set`: EBUSY without a journal or for its own; a spectator recovers the
    /// first journal whatever was asked; ENOENT for no such journal; EBUSY if that journal's
    /// recovery is already queued.
    fn queue_recovery(&mut self, value: i64, effects: &mut Vec<Effect>) -> Result<(), Refusal> {
        let Some(own) = self.journal else {
            return refuse(EBUSY, "no journal yet");
        };
        let asked = u32::try_from(value).unwrap_or(u32::MAX);
        if !self.spectator() && own == asked {
            return refuse(EBUSY, "its own journal");
        }
        let jid = if self.spectator() { 0 } else { asked };
        if jid >= self.journals {
            return refuse(ENOENT, format!("no journal {value}"));
        }
        if !self.recovering.insert(jid) {
            return refuse(EBUSY, format!("journal {jid} is already recovering"));
        }
        effects.push(Effect::RecoveryQueued(jid));
        Ok(())
    }

    /// A write: [`admit`](Self::admit), then [`apply`](Self::apply) unless it must wait.
    /// `Err(stage)`: the write blocks until the mount reaches `stage`.
    #[allow(clippy::type_complexity)]
    pub fn write(
        &mut self,
        file: SysfsFile,
        value: i64,
    ) -> Result<(Result<(), Refusal>, Vec<Effect>), Stage> {
        match self.admit(file, value) {
            Admit::Refused(r) => Ok((Err(r), Vec::new())),
            Admit::WaitFor(stage) => Err(stage),
            Admit::Ready => Ok(self.apply(file, value)),
        }
    }

    /// What reading a `lock_module` file gives. `recover` is write-only.
    pub fn read(&self, file: SysfsFile) -> Result<i64, i32> {
        Ok(match file {
            SysfsFile::First => i64::from(self.first),
            SysfsFile::Jid => self.jid.unwrap_or(0),
            SysfsFile::Block => i64::from(self.blocked),
            SysfsFile::Withdraw => i64::from(self.withdraw_acked),
            SysfsFile::Recover => return Err(crate::errno::EACCES),
        })
    }

    /// `wait_on_journal` ended: the jid the daemon wrote, checked as `init_journal` does.
    /// `Ok(journal)`: the journal this mount uses (0 for a spectator); `Err`: the mount fails
    /// with that errno (a negative jid is the daemon's refusal, one beyond the disk EUSERS).
    pub fn take_journal(&self) -> Option<Result<u32, i32>> {
        let jid = self.jid?;
        Some(if jid < 0 {
            Err(i32::try_from(-jid).unwrap_or(EINVAL))
        } else if self.spectator() {
            Ok(0)
        } else {
            match u32::try_from(jid) {
                Ok(j) if j < self.journals => Ok(j),
                _ => Err(crate::errno::EUSERS),
            }
        })
    }

    /// Which journals the mount checks while it holds the mount lock.
    pub fn journal_work(&self) -> JournalWork {
        match (self.first, self.spectator()) {
            (true, true) => JournalWork::CheckAllClean,
            (true, false) => JournalWork::RecoverAll,
            (false, true) => JournalWork::Nothing,
            (false, false) => JournalWork::Own(self.journal.unwrap_or(0)),
        }
    }

    /// The uevents that report the mount's journal work, in the kernel's order: one
    /// `RECOVERY` per journal a first mounter tried (`Failed` for those it found `busy`), or its
    /// own journal's, then `FIRSTMOUNT=Done` from a first mounter.
    pub fn journal_work_events(&self, busy: &BTreeSet<u32>) -> Vec<KernelEventKind> {
        let mut events = Vec::new();
        match self.journal_work() {
            JournalWork::RecoverAll => {
                for jid in 0..self.journals {
                    let done = !busy.contains(&jid);
                    events.push(KernelEventKind::Recovery { jid, done });
                }
            }
            JournalWork::Own(jid) => events.push(KernelEventKind::Recovery { jid, done: true }),
            JournalWork::CheckAllClean | JournalWork::Nothing => {}
        }
        if self.first {
            events.push(KernelEventKind::FirstMountDone);
        }
        events
    }

    /// The end of a mount: `online` with the mode it mounted with.
    pub fn online_event(&self) -> KernelEventKind {
        KernelEventKind::Online {
            ro: self.ro(),
            spectator: self.spectator(),
        }
    }

    /// A queued recovery starts: a withdrawn node or a spectator gives up at once.
    pub fn recovery_start(&self) -> RecoveryStart {
        if self.withdrawn {
            RecoveryStart::GiveUp("withdrawn")
        } else if self.spectator() {
            RecoveryStart::GiveUp("a spectator gives up")
        } else {
            RecoveryStart::TryLock
        }
    }

    /// A queued recovery once the lock was tried: `locked_elsewhere`, another live kernel holds
    /// the journal; `dirty`, its head lacks the unmount flag.
    pub fn recovery_work(&self, locked_elsewhere: bool, dirty: bool) -> RecoveryWork {
        if locked_elsewhere {
            RecoveryWork::Busy
        } else if !dirty {
            RecoveryWork::Clean
        } else if self.ro() {
            RecoveryWork::ReadOnly
        } else {
            RecoveryWork::Replay
        }
    }

    /// A queued recovery ended: JDF_RECOVERY clears and the kernel says so.
    pub fn recovery_done(&mut self, jid: u32, done: bool) -> KernelEventKind {
        self.recovering.remove(&jid);
        KernelEventKind::Recovery { jid, done }
    }

    /// A remount to `mode`: `online` carries the mode from before (6.1 computes it before the
    /// VFS applies the new flags).
    pub fn remount(&mut self, mode: MountMode) -> KernelEventKind {
        let before = self.mode;
        self.mode = mode;
        KernelEventKind::Online {
            ro: before != MountMode::Rw,
            spectator: before == MountMode::Spectator,
        }
    }

    /// The node withdraws from the filesystem: it stops using its journal and says `offline`.
    pub fn withdraw(&mut self) -> KernelEventKind {
        self.withdrawn = true;
        KernelEventKind::Offline
    }
}

impl Refusal {
    pub fn new(errno: i32, why: impl Into<String>) -> Refusal {
        Refusal {
            errno,
            why: why.into(),
        }
    }

    /// The filesystem is gone (the write raced an unmount or a failed mount).
    pub fn gone() -> Refusal {
        Refusal::new(ENODEV, "the filesystem is gone")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::errno::*;

    fn joined(mode: MountMode) -> KernelModel {
        let mut k = KernelModel::new(mode, 4, false, false);
        k.stage = Stage::Joined;
        k
    }

    fn errno(r: Result<(), Refusal>) -> i32 {
        r.err().map_or(0, |r| r.errno)
    }

    #[test]
    fn first_and_jid_wait_for_the_dlm_join_after_their_value_checks() {
        let mut k = KernelModel::new(MountMode::Rw, 4, false, false);
        assert_eq!(
            k.admit(SysfsFile::First, 2),
            Admit::Refused(Refusal::new(EINVAL, "first takes 0 or 1"))
        );
        assert_eq!(k.write(SysfsFile::First, 0).err(), Some(Stage::Joined));
        assert_eq!(k.write(SysfsFile::Jid, 1).err(), Some(Stage::Joined));
        k.stage = Stage::Joined;
        assert_eq!(k.write(SysfsFile::First, 0).map(|(r, _)| errno(r)), Ok(0));
        assert!(!k.first);
    }

    #[test]
    fn first_after_jid_is_ebusy_and_jid_twice_is_ebusy() {
        let mut k = joined(MountMode::Rw);
        let (r, fx) = k.apply(SysfsFile::Jid, 2);
        assert_eq!((errno(r), fx), (0, vec![Effect::JidStored]));
        assert_eq!(errno(k.apply(SysfsFile::First, 0).0), EBUSY);
        assert_eq!(errno(k.apply(SysfsFile::Jid, 3).0), EBUSY);
        assert_eq!(k.take_journal(), Some(Ok(2)));
    }

    #[test]
    fn spectators_cannot_set_first_and_take_jid_zero_only() {
        let mut k = joined(MountMode::Spectator);
        assert_eq!(errno(k.apply(SysfsFile::First, 0).0), EINVAL);
        let (r, fx) = k.apply(SysfsFile::Jid, 1);
        assert_eq!((errno(r), fx), (EINVAL, vec![Effect::JidStored]));
        assert_eq!(k.read(SysfsFile::Jid), Ok(-i64::from(EINVAL)));
        assert_eq!(k.take_journal(), Some(Err(EINVAL)));
    }

    #[test]
    fn kernel_managed_mounts_answer_ebusy() {
        let mut k = KernelModel::new(MountMode::Rw, 4, true, false);
        k.stage = Stage::Joined;
        assert_eq!(errno(k.apply(SysfsFile::First, 1).0), EBUSY);
        assert_eq!(errno(k.apply(SysfsFile::Jid, 0).0), EBUSY);
    }

    #[test]
    fn a_jid_beyond_the_disk_fails_the_mount_with_eusers() {
        let mut k = joined(MountMode::Rw);
        let _ = k.apply(SysfsFile::Jid, 4);
        assert_eq!(k.take_journal(), Some(Err(EUSERS)));
    }

    #[test]
    fn recover_rules() {
        let mut k = joined(MountMode::Rw);
        assert_eq!(
            k.admit(SysfsFile::Recover, 1),
            Admit::WaitFor(Stage::JournalReady)
        );
        assert!(matches!(k.admit(SysfsFile::Recover, -1), Admit::Refused(r) if r.errno == EINVAL));
        let _ = k.apply(SysfsFile::Jid, 1);
        k.journal = Some(1);
        k.stage = Stage::Mounted;
        assert_eq!(errno(k.apply(SysfsFile::Recover, 1).0), EBUSY);
        assert_eq!(errno(k.apply(SysfsFile::Recover, 4).0), ENOENT);
        let (r, fx) = k.apply(SysfsFile::Recover, 2);
        assert_eq!((errno(r), fx), (0, vec![Effect::RecoveryQueued(2)]));
        assert_eq!(errno(k.apply(SysfsFile::Recover, 2).0), EBUSY);
        assert_eq!(
            k.recovery_done(2, true),
            KernelEventKind::Recovery { jid: 2, done: true }
        );
        k.unmounting = true;
        assert!(
            matches!(k.admit(SysfsFile::Recover, 3), Admit::Refused(r) if r.errno == ESHUTDOWN)
        );
    }

    #[test]
    fn a_spectator_recovers_journal_zero_and_gives_up() {
        let mut k = joined(MountMode::Spectator);
        let _ = k.apply(SysfsFile::Jid, 0);
        k.journal = Some(0);
        k.stage = Stage::Mounted;
        let (r, fx) = k.apply(SysfsFile::Recover, 3);
        assert_eq!((errno(r), fx), (0, vec![Effect::RecoveryQueued(0)]));
        assert_eq!(
            k.recovery_start(),
            RecoveryStart::GiveUp("a spectator gives up")
        );
    }

    #[test]
    fn recovery_outcomes() {
        let mut k = joined(MountMode::Rw);
        assert_eq!(k.recovery_work(true, true), RecoveryWork::Busy);
        assert_eq!(k.recovery_work(false, false), RecoveryWork::Clean);
        assert_eq!(k.recovery_work(false, true), RecoveryWork::Replay);
        let _ = k.remount(MountMode::Ro);
        assert_eq!(k.recovery_work(false, true), RecoveryWork::ReadOnly);
        let _ = k.withdraw();
        assert_eq!(k.recovery_start(), RecoveryStart::GiveUp("withdrawn"));
    }

    #[test]
    fn block_and_withdraw_values() {
        let mut k = KernelModel::new(MountMode::Rw, 4, false, false);
        assert!(matches!(k.admit(SysfsFile::Block, 2), Admit::Refused(r) if r.errno == EINVAL));
        assert!(matches!(k.admit(SysfsFile::Withdraw, 0), Admit::Refused(r) if r.errno == EINVAL));
        assert_eq!(k.write(SysfsFile::Block, 1).map(|(r, _)| errno(r)), Ok(0));
        assert_eq!(
            k.write(SysfsFile::Block, 0).map(|(_, fx)| fx),
            Ok(vec![Effect::Thawed])
        );
        assert_eq!(k.read(SysfsFile::Recover), Err(EACCES));
    }

    #[test]
    fn journal_work_and_its_uevents() {
        let mut k = joined(MountMode::Rw);
        k.journal = Some(1);
        let busy: BTreeSet<u32> = [1].into();
        let ev = k.journal_work_events(&busy);
        assert_eq!(ev.len(), 5);
        assert_eq!(
            ev[1],
            KernelEventKind::Recovery {
                jid: 1,
                done: false
            }
        );
        assert_eq!(ev[4], KernelEventKind::FirstMountDone);
        k.first = false;
        assert_eq!(k.journal_work(), JournalWork::Own(1));
        assert_eq!(
            k.journal_work_events(&busy),
            vec![KernelEventKind::Recovery { jid: 1, done: true }]
        );
        let s = KernelModel::new(MountMode::Spectator, 4, false, true);
        assert_eq!(s.journal_work(), JournalWork::Nothing);
    }
}
