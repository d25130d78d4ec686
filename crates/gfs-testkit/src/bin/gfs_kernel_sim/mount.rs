//! A mount and an unmount, step by step as 6.1's `gfs2_fill_super` and `gfs2_put_super` take
//! them: the DLM join, the mount glock, the wait for `jid`, the journal work the shared kernel
//! model chooses, `online`; and on unmount, running recoveries finished, the journal marked
//! clean, `remove`.

use std::time::{Duration, Instant, SystemTime};

use gfs_core::{KernelEventKind, MountMode, Table, MAX_JOURNALS};
use gfs_sim::kernel_model::{JournalWork, KernelModel, Stage};
use gfs_testkit::proto::Response;
use tokio::sync::watch;

use super::disk::{Held, Lock, SharedDisk};
use super::model::{lock, wait_table, Shared, TableSim, Waited, POLL, STATUS_DONE, STATUS_FAILED};
use super::sysfs::errno_name;

pub struct MountArgs {
    pub table: String,
    pub spectator: bool,
    pub ro: bool,
    pub timeout_ms: Option<u64>,
    pub journals: Option<u32>,
    pub join_ms: Option<u64>,
    pub hostdata_first0: bool,
}

/// Why a mount stopped: the reply its client gets (boxed: it is large).
type Stop = Box<Response>;

/// A mount in progress: the steps of fs/gfs2/ops_fstype.c `gfs2_fill_super` for lock_dlm.
struct Mounting<'a> {
    sim: &'a Shared,
    disk: SharedDisk,
    generation: u64,
    name: String,
    deadline: Option<Instant>,
}

impl Mounting<'_> {
    fn gone(&self) -> Stop {
        Box::new(Response::err(
            libc::EINTR,
            format!("{} unmounted while mounting", self.name),
        ))
    }

    fn note(&self, what: impl Into<String>) {
        lock(self.sim).note(&self.name, what);
    }

    /// The mount fails with `errno`: `remove` (after the lockspace is left), the directory
    /// goes. `reset_jid`: a negative jid is returned to mount(2) and `ls_jid` reset to 0.
    fn fail(&self, errno: i32, why: String, reset_jid: bool) -> Stop {
        let mut s = lock(self.sim);
        let Some(t) = s.table_mut(self.generation) else {
            return self.gone();
        };
        if reset_jid {
            // The negative jid went back to mount(2); `jid` reads 0 again.
            t.kernel.jid = Some(0);
        }
        s.note(
            &self.name,
            format!("mount fails: {why} ({})", errno_name(errno)),
        );
        s.send(&self.name, KernelEventKind::Remove);
        s.remove_table(&self.name);
        Box::new(Response::err(errno, format!("{}: {why}", self.name)))
    }

    fn timed_out(&self, what: &str) -> Stop {
        self.fail(
            libc::EINTR,
            format!("--timeout-ms expired waiting for {what} (as if the mount were killed)"),
            false,
        )
    }

    /// Waits for `lock` (EX) on the shared disk, retrying while another node holds it.
    async fn acquire(&self, which: Lock, what: &str) -> Result<Held, Stop> {
        let started = Instant::now();
        let mut waiting = false;
        loop {
            if lock(self.sim).table(self.generation).is_none() {
                return Err(self.gone());
            }
            match self.disk.try_lock(&self.name, which) {
                Ok(Some(held)) => {
                    if waiting {
                        let ms = started.elapsed().as_millis();
                        self.note(format!("{what} acquired after {ms} ms"));
                    }
                    return Ok(held);
                }
                Ok(None) => {}
                Err(e) => return Err(self.fail(libc::EIO, format!("{what}: {e}"), false)),
            }
            if !waiting {
                waiting = true;
                match which {
                    Lock::Journal(j) => lock(self.sim).violation(
                        &self.name,
                        format!("jid={j}: another live node holds journal {j}; the mount waits for its lock"),
                    ),
                    Lock::Mount => self.note(format!("waiting for {what} (another node is mounting)")),
                }
            }
            if self.deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(self.timed_out(what));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// In kernel-managed mode the kernel picks its jid (its DLM slot) and whether it is first;
    /// under the mount glock, so two mounts never pick the same.
    fn kernel_picks_jid(&self) -> Result<(), Stop> {
        let mut s = lock(self.sim);
        let Some(t) = s.table(self.generation) else {
            return Err(self.gone());
        };
        let journals = t.kernel.journals;
        let held: Vec<bool> = (0..journals)
            .map(|j| self.disk.is_held(&self.name, Lock::Journal(j)))
            .collect();
        let Some(jid) = held.iter().position(|h| !h) else {
            drop(s);
            return Err(self.fail(
                libc::EUSERS,
                "kernel-managed: no free journal".into(),
                false,
            ));
        };
        let first = held.iter().all(|h| !h);
        let Some(t) = s.table_mut(self.generation) else {
            return Err(self.gone());
        };
        t.kernel.jid = Some(jid as i64);
        t.kernel.first = first;
        s.note(
            &self.name,
            format!(
                "kernel-managed: the kernel takes jid {jid}, first={}",
                u8::from(first)
            ),
        );
        Ok(())
    }

    /// Checks journal `jid` at mount time (the lock is held): replays it if dirty. A mount may
    /// write its journals even when mounted read-only.
    async fn check_journal(&self, jid: u32, replay_ms: u64) -> Result<(), Stop> {
        if !self.disk.is_dirty(&self.name, jid) {
            return Ok(());
        }
        {
            let mut s = lock(self.sim);
            let Some(t) = s.table_mut(self.generation) else {
                return Err(self.gone());
            };
            t.kernel.recovering.insert(jid);
            s.note_with(&self.name, format!("replay start jid={jid}"), "mount-time");
        }
        tokio::time::sleep(Duration::from_millis(replay_ms)).await;
        let mut s = lock(self.sim);
        let Some(t) = s.table_mut(self.generation) else {
            return Err(self.gone());
        };
        t.kernel.recovering.remove(&jid);
        t.journals_replayed.push(jid);
        let _ = self.disk.set_dirty(&self.name, jid, false);
        s.note_with(
            &self.name,
            format!("replay end jid={jid} Done"),
            "mount-time",
        );
        Ok(())
    }

    /// `change JID=<jid> RECOVERY=Done|Failed` after a mount-time check.
    fn report(&self, jid: u32, done: bool) -> Result<(), Stop> {
        let mut s = lock(self.sim);
        let Some(t) = s.table_mut(self.generation) else {
            return Err(self.gone());
        };
        t.recover_done = i64::from(jid);
        t.recover_status = if done { STATUS_DONE } else { STATUS_FAILED };
        s.send(&self.name, KernelEventKind::Recovery { jid, done });
        Ok(())
    }
}

pub async fn mount(sim: &Shared, a: MountArgs) -> Response {
    match mount_steps(sim, a).await {
        Ok(r) => r,
        Err(r) => *r,
    }
}

async fn mount_steps(sim: &Shared, a: MountArgs) -> Result<Response, Stop> {
    let table = Table::parse(&a.table).map_err(|e| {
        Box::new(Response::err(
            libc::EINVAL,
            format!("bad lock table {}: {e}", a.table),
        ))
    })?;
    let ro = a.ro || a.spectator;
    let journals = a.journals.unwrap_or(MAX_JOURNALS);
    if journals == 0 {
        return Err(Box::new(Response::err(
            libc::EINVAL,
            "--journals must be at least 1",
        )));
    }
    let name = a.table.clone();
    let (generation, join_ms, replay_ms, disk) = {
        let mut s = lock(sim);
        if s.tables.contains_key(&name) {
            return Err(Box::new(Response::err(
                libc::EBUSY,
                format!("{name} is already mounted"),
            )));
        }
        let kernel_managed = s.recover_callbacks_now() == 1;
        let generation = s.next_generation;
        s.next_generation += 1;
        let join_ms = a.join_ms.unwrap_or(s.join_ms);
        let (bell, _) = watch::channel(());
        s.tables.insert(
            name.clone(),
            TableSim {
                table,
                generation,
                created: SystemTime::now(),
                // gfs2_lm_mount: ls_first = 1, unless hostdata says first=0.
                kernel: KernelModel::new(
                    MountMode::from_flags(ro, a.spectator),
                    journals,
                    kernel_managed,
                    a.hostdata_first0,
                ),
                jid_written: None,
                journal_checked: false,
                journal_live: false,
                recover_done: 0,
                recover_status: 0,
                replays_done: Vec::new(),
                replays_failed: Vec::new(),
                journals_replayed: Vec::new(),
                own_journal: None,
                bell,
            },
        );
        s.by_gen.insert(generation, name.clone());
        let mode = MountMode::from_flags(ro, a.spectator).as_str();
        let mut what = format!("mount {mode}: {journals} journals, DLM join {join_ms} ms");
        if kernel_managed {
            what.push_str(", kernel-managed (recover_callbacks=1)");
        }
        if a.hostdata_first0 {
            what.push_str(", hostdata=first=0");
        }
        s.note(&name, what);
        s.send(
            &name,
            KernelEventKind::Add {
                ro,
                spectator: a.spectator,
                kernel_managed: false,
            },
        );
        (generation, join_ms, s.replay_ms, s.disk.clone())
    };
    let m = Mounting {
        sim,
        disk,
        generation,
        name: name.clone(),
        deadline: a
            .timeout_ms
            .map(|ms| Instant::now() + Duration::from_millis(ms)),
    };

    // The DLM lockspace join; blocked `first`/`jid` writes go on after it.
    tokio::time::sleep(Duration::from_millis(join_ms)).await;
    {
        let mut s = lock(sim);
        let Some(t) = s.table_mut(generation) else {
            return Err(m.gone());
        };
        t.kernel.stage = Stage::Joined;
        t.ring();
        s.note(&name, "DLM lockspace joined");
    }

    // init_locking: the mount glock, EX until the mount ends (including the wait for `jid`).
    let glock = m.acquire(Lock::Mount, "the mount glock").await?;
    m.note("mount glock held (EX)");
    if lock(sim)
        .table(generation)
        .is_some_and(|t| t.kernel.kernel_managed)
    {
        m.kernel_picks_jid()?;
    }

    // wait_on_journal.
    let (jid, taken) = match wait_table(sim, generation, m.deadline, |t| {
        t.kernel.jid.zip(t.kernel.take_journal())
    })
    .await
    {
        Waited::Ready(j) => j,
        Waited::Gone => return Err(m.gone()),
        Waited::TimedOut => return Err(m.timed_out("a jid write")),
    };
    // init_journal: the journal this mount uses (0 for a spectator), checked by the shared model.
    let own = match taken {
        Ok(own) => own,
        Err(_) if jid >= 0 => {
            return Err(m.fail(
                libc::EUSERS,
                format!("can't mount journal #{jid}: there are only {journals} journals"),
                false,
            ))
        }
        Err(errno) => return Err(m.fail(errno, format!("refused by jid={jid}"), true)),
    };
    let (spectator, work) = {
        let mut s = lock(sim);
        let t = s.table_mut(generation).ok_or_else(|| m.gone())?;
        t.kernel.journal = Some(own);
        (t.spectator(), t.kernel.journal_work())
    };
    if !spectator {
        let held = m.acquire(Lock::Journal(own), "its journal lock").await?;
        let mut s = lock(sim);
        let t = s.table_mut(generation).ok_or_else(|| m.gone())?;
        t.own_journal = Some(held);
    }
    match work {
        JournalWork::CheckAllClean => {
            // A spectator cannot replay: every journal must be clean, and a live node's is not.
            for j in 0..journals {
                if m.disk.is_dirty(&name, j) || m.disk.is_held(&name, Lock::Journal(j)) {
                    return Err(m.fail(
                        libc::EPERM,
                        format!("spectator: journal {j} is not clean"),
                        false,
                    ));
                }
            }
        }
        JournalWork::RecoverAll => {
            // The first mounter recovers every journal; a live node's is "Busy" and skipped.
            for j in 0..journals {
                if j == own {
                    m.check_journal(j, replay_ms).await?;
                    m.report(j, true)?;
                    continue;
                }
                match m.disk.try_lock(&name, Lock::Journal(j)) {
                    Ok(Some(held)) => {
                        m.check_journal(j, replay_ms).await?;
                        drop(held);
                        m.report(j, true)?;
                    }
                    Ok(None) | Err(_) => m.report(j, false)?,
                }
            }
        }
        JournalWork::Own(j) => {
            m.check_journal(j, replay_ms).await?;
            m.report(j, true)?;
        }
        JournalWork::Nothing => {}
    }
    if matches!(work, JournalWork::CheckAllClean | JournalWork::RecoverAll) {
        let mut s = lock(sim);
        if s.table(generation).is_none() {
            return Err(m.gone());
        }
        s.send(&name, KernelEventKind::FirstMountDone);
    }

    // The journal is ready: `recover` writes go on; a read-write mount's journal is live.
    {
        let mut s = lock(sim);
        let t = s.table_mut(generation).ok_or_else(|| m.gone())?;
        t.journal_checked = true;
        t.kernel.stage = Stage::JournalReady;
        t.ring();
        if !t.ro() {
            t.journal_live = true;
            let _ = m.disk.set_dirty(&name, own, true);
        }
        // S5: nobody may start using the filesystem while a journal is dirty and nobody holds
        // it: its owner is dead and its blocks not yet replayed.
        let orphans: Vec<u32> = m
            .disk
            .dirty_journals(&name, journals)
            .into_iter()
            .filter(|j| (spectator || *j != own) && !m.disk.is_held(&name, Lock::Journal(*j)))
            .collect();
        if !orphans.is_empty() {
            s.violation(
                &name,
                format!("S5: the mount completes while journals {orphans:?} are dirty and no live node holds them (not replayed)"),
            );
        }
    }

    // The rest of the mount; then the mount glock goes and `online` is sent.
    drop(glock);
    let mut s = lock(sim);
    let t = s.table_mut(generation).ok_or_else(|| m.gone())?;
    t.kernel.stage = Stage::Mounted;
    t.ring();
    let online = t.kernel.online_event();
    s.note(&name, "mount glock released");
    s.send(&name, online);
    Ok(Response::ok(format!("{name} mounted with jid {jid}")))
}

/// Unmount. A mount still in progress fails (EINTR). A mounted filesystem refuses new
/// `recover` writes (ESHUTDOWN), waits for its running recoveries, marks its journal clean
/// (read-write, not withdrawn), releases its journal lock and sends `remove`.
pub async fn umount(sim: &Shared, name: &str) -> Response {
    let generation = {
        let mut s = lock(sim);
        let Some(t) = s.tables.get_mut(name) else {
            return Response::err(libc::EINVAL, format!("{name} is not mounted"));
        };
        if !t.mounted() {
            s.note(name, "umount while mounting: the mount fails");
            s.send(name, KernelEventKind::Remove);
            s.remove_table(name);
            return Response::ok(format!("{name} unmounted (the mount failed)"));
        }
        t.kernel.unmounting = true;
        t.ring();
        let generation = t.generation;
        s.note(name, "umount");
        generation
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    let _ = wait_table(sim, generation, Some(deadline), |t| {
        t.kernel.recovering.is_empty().then_some(())
    })
    .await;
    let mut s = lock(sim);
    let Some(t) = s.table_mut(generation) else {
        return Response::ok(format!("{name} unmounted"));
    };
    let clean = t.journal_live && !t.kernel.withdrawn;
    let own = t.kernel.journal;
    t.journal_live = false;
    if let (true, Some(j)) = (clean, own) {
        let _ = s.disk.set_dirty(name, j, false);
    }
    s.send(name, KernelEventKind::Remove);
    s.remove_table(name);
    Response::ok(format!("{name} unmounted"))
}
