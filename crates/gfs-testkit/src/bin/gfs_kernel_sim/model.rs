//! One node's simulated GFS2 kernel (Linux 6.1, lock_dlm): its mounts, what each sysfs file
//! reads and what each write does, the mount sequence, journal recovery, and the uevents.
//!
//! The state sits behind one mutex. The FUSE thread and the tokio tasks (mounts, recoveries,
//! writes that have to wait) take it briefly and never across an await. A write that the
//! kernel would block (`first`/`jid` until the DLM join, `recover` until the node's own journal
//! is checked) becomes a task that waits for the mount's stage and then answers the writer, so
//! one blocked writer never holds up another file.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant, SystemTime};

use gfs_core::{KernelEvent, KernelEventKind, MountMode, SysfsFile, Table};
use gfs_sim::kernel_model::{
    Admit, Effect, KernelModel, RecoveryStart, RecoveryWork, Refusal, Stage,
};
use gfs_testkit::now_us;
use gfs_testkit::proto::{Entry, Status, TableStatus};
use gfs_testkit::uevent::{KernelVars, UeventSender};
use tokio::sync::watch;

use super::disk::{Held, Lock, SharedDisk};
use super::sysfs::{errno_name, kstrtoint, sscanf_d, sscanf_u, SysFile};

/// `recover_status` after a successful recovery (LM_RD_SUCCESS) and after one that gave up
/// (LM_RD_GAVEUP).
pub const STATUS_DONE: i64 = 309;
pub const STATUS_FAILED: i64 = 308;

/// How often a waiter retries a lock held by another node.
pub(crate) const POLL: Duration = Duration::from_millis(5);

/// One mounted (or mounting) filesystem.
pub struct TableSim {
    pub table: Table,
    /// Tells this mount from an earlier or later one of the same table (inodes, tasks).
    pub generation: u64,
    pub created: SystemTime,
    /// The lock_module files, the stage, the queued recoveries: the model the in-process
    /// simulator uses too.
    pub kernel: KernelModel,
    /// The value the `jid` write stored (for the status).
    pub jid_written: Option<i64>,
    pub journal_checked: bool,
    /// SDF_JOURNAL_LIVE: mounted read-write, the journal is in use (and so dirty).
    pub journal_live: bool,
    pub recover_done: i64,
    pub recover_status: i64,
    pub replays_done: Vec<u32>,
    pub replays_failed: Vec<u32>,
    /// JDF_RECOVERY: journals with a recovery queued or running here.
    pub journals_replayed: Vec<u32>,
    /// The own journal's lock, held while mounted (not by spectators).
    pub(crate) own_journal: Option<Held>,
    /// Rung on every change that a waiter may be waiting for; dropped with the table.
    pub(crate) bell: watch::Sender<()>,
}

impl TableSim {
    fn mode(&self) -> MountMode {
        self.kernel.mode
    }

    pub fn ro(&self) -> bool {
        self.kernel.ro()
    }

    pub fn spectator(&self) -> bool {
        self.kernel.spectator()
    }

    pub fn mounted(&self) -> bool {
        self.kernel.stage == Stage::Mounted
    }

    /// SDF_NOJOURNALID: no jid yet.
    fn nojournalid(&self) -> bool {
        self.kernel.jid.is_none()
    }

    /// `ls_jid`, as `jid` reads it (0 until written).
    fn ls_jid(&self) -> i64 {
        self.kernel.jid.unwrap_or(0)
    }

    pub(crate) fn ring(&self) {
        self.bell.send_replace(());
    }

    /// The superblock UUID: the same for a filesystem on every node.
    fn uuid(&self) -> String {
        fs_uuid(&self.table.to_string())
    }

    fn fsname(&self) -> String {
        let table = self.table.to_string();
        match (self.nojournalid(), self.spectator()) {
            (true, _) => table,
            (false, true) => format!("{table}.s"),
            (false, false) => format!("{table}.{}", self.ls_jid()),
        }
    }

    /// `/sys/fs/gfs2/<table>/status` in the layout of 6.1's `status_show`: the daemon reads
    /// `Mounted RO:` from it.
    fn status_text(&self) -> String {
        let b = |v: bool| i64::from(v);
        let journal = self.kernel.journal.is_some();
        let lines: [(&str, i64); 28] = [
            ("Journal Checked:", b(self.journal_checked)),
            ("Journal Live:", b(self.journal_live)),
            ("Journal ID:", self.kernel.journal.map_or(0, i64::from)),
            ("Spectator:", b(self.spectator())),
            ("Withdrawn:", b(self.kernel.withdrawn)),
            ("No barriers:", 0),
            ("No recovery:", b(self.kernel.unmounting)),
            ("Demote:", 0),
            ("No Journal ID:", b(self.nojournalid())),
            ("Mounted RO:", b(self.ro())),
            ("RO Recovery:", b(self.spectator())),
            ("Skip DLM Unlock:", 0),
            ("Force AIL Flush:", 0),
            ("FS Frozen:", 0),
            ("Withdrawing:", 0),
            ("Withdraw In Prog:", 0),
            ("Remote Withdraw:", 0),
            ("Withdraw Recovery:", 0),
            ("sd_log_error:", 0),
            ("sd_log_flush_lock:", 0),
            ("sd_log_num_revoke:", 0),
            ("sd_log_in_flight:", 0),
            ("sd_log_blks_needed:", 0),
            ("sd_log_blks_free:", if journal { 32768 } else { 0 }),
            ("sd_log_flush_head:", 0),
            ("sd_log_flush_tail:", 0),
            ("sd_log_blks_reserved:", 0),
            ("sd_log_revokes_available:", if journal { 503 } else { 0 }),
        ];
        lines
            .iter()
            .map(|(label, v)| format!("{label:<26}{v}\n"))
            .collect()
    }
}

/// A stable UUID per lock table, printed as `%pUB` does (upper-case, 8-4-4-4-12).
fn fs_uuid(table: &str) -> String {
    let fnv = |seed: u64| {
        table.bytes().fold(seed, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        })
    };
    let hex = format!(
        "{:016X}{:016X}",
        fnv(0xcbf2_9ce4_8422_2325),
        fnv(0x6c62_272e_07bb_0142)
    );
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// Server-wide settings given at start.
pub struct Config {
    pub replay_ms: u64,
    pub join_ms: u64,
    pub recover_callbacks: u32,
    /// `<configfs root>/dlm/cluster/recover_callbacks`, when a configfs root was given.
    pub configfs_file: Option<PathBuf>,
    pub disk: SharedDisk,
    pub sender: UeventSender,
    pub handle: tokio::runtime::Handle,
}

pub struct Sim {
    pub tables: BTreeMap<String, TableSim>,
    pub(crate) by_gen: BTreeMap<u64, String>,
    pub violations: Vec<Entry>,
    pub timeline: Vec<Entry>,
    pub replay_ms: u64,
    pub fail_next_replays: u32,
    pub join_ms: u64,
    recover_callbacks: u32,
    configfs_file: Option<PathBuf>,
    pub(crate) next_generation: u64,
    seqnum: u64,
    sender: UeventSender,
    pub disk: SharedDisk,
    handle: tokio::runtime::Handle,
    /// This state's own handle, for the tasks it starts.
    me: Weak<Mutex<Sim>>,
    pub started: SystemTime,
    /// `serve --record FILE`: every timeline entry and violation is appended here as a JSON
    /// line when it happens, so the record outlives this process (a crashed node's kernel).
    pub record: Option<std::fs::File>,
}

pub type Shared = Arc<Mutex<Sim>>;

pub fn lock(sim: &Shared) -> MutexGuard<'_, Sim> {
    sim.lock().unwrap_or_else(|p| p.into_inner())
}

/// Answers a sysfs writer: `Ok` (the whole buffer was taken) or the errno.
pub type Completion = Box<dyn FnOnce(Result<(), i32>) + Send>;

fn refuse(errno: i32, why: impl Into<String>) -> Result<(), Refusal> {
    Err(Refusal::new(errno, why))
}

enum Plan {
    Now(Result<(), Refusal>),
    /// The write waits for the stage, then applies (file, value).
    After(Stage, (SysfsFile, i64)),
}

impl Sim {
    pub fn new(c: Config) -> Shared {
        Arc::new_cyclic(|me| {
            let mut sim = Sim::with(c, me.clone());
            sim.set_recover_callbacks(sim.recover_callbacks);
            Mutex::new(sim)
        })
    }

    fn with(c: Config, me: Weak<Mutex<Sim>>) -> Sim {
        Sim {
            tables: BTreeMap::new(),
            by_gen: BTreeMap::new(),
            violations: Vec::new(),
            timeline: Vec::new(),
            replay_ms: c.replay_ms,
            fail_next_replays: 0,
            join_ms: c.join_ms,
            recover_callbacks: c.recover_callbacks,
            configfs_file: c.configfs_file,
            next_generation: 1,
            seqnum: 0,
            sender: c.sender,
            disk: c.disk,
            handle: c.handle,
            me,
            started: SystemTime::now(),
            record: None,
        }
    }

    /// Records a timeline entry; returns its index.
    pub fn note(&mut self, table: &str, what: impl Into<String>) -> usize {
        self.push(table, what.into(), None)
    }

    /// Records a timeline entry with a result (a replay's cause, a read's value).
    pub(crate) fn note_with(
        &mut self,
        table: &str,
        what: impl Into<String>,
        result: impl Into<String>,
    ) {
        self.push(table, what.into(), Some(result.into()));
    }

    fn push(&mut self, table: &str, what: String, result: Option<String>) -> usize {
        eprintln!("gfs_kernel_sim: {table} {what}");
        let t_us = now_us();
        let entry = Entry {
            t_ms: t_us / 1000,
            t_us,
            table: table.to_owned(),
            what,
            result,
            end_ms: None,
            end_us: None,
        };
        self.append_record(&entry);
        self.timeline.push(entry);
        self.timeline.len() - 1
    }

    /// Appends `entry` to the record file, if there is one (one `write(2)` per line, so a
    /// process killed mid-way leaves whole lines).
    fn append_record(&mut self, entry: &Entry) {
        use std::io::Write;
        if let Some(file) = self.record.as_mut() {
            if let Ok(mut line) = serde_json::to_vec(entry) {
                line.push(b'\n');
                let _ = file.write_all(&line);
            }
        }
    }

    pub fn violation(&mut self, table: &str, what: impl Into<String>) {
        let what = what.into();
        self.note(table, format!("VIOLATION: {what}"));
        let t_us = now_us();
        self.violations.push(Entry {
            t_ms: t_us / 1000,
            t_us,
            table: table.to_owned(),
            what,
            result: None,
            end_ms: None,
            end_us: None,
        });
    }

    /// The DLM's `recover_callbacks` as a mount joining now sees it: the configfs file when
    /// there is one (a test may rewrite it, as an administrator would), else the setting.
    pub(crate) fn recover_callbacks_now(&self) -> u32 {
        self.configfs_file
            .as_ref()
            .and_then(|f| std::fs::read_to_string(f).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(self.recover_callbacks)
    }

    pub fn recover_callbacks(&self) -> u32 {
        self.recover_callbacks_now()
    }

    pub fn set_recover_callbacks(&mut self, value: u32) {
        self.recover_callbacks = value;
        if let Some(file) = &self.configfs_file {
            let written = file
                .parent()
                .map_or(Ok(()), std::fs::create_dir_all)
                .and_then(|()| std::fs::write(file, format!("{value}\n")));
            if let Err(e) = written {
                let what = format!("cannot write {}: {e}", file.display());
                self.note("", what);
            }
        }
    }

    /// Removes the configfs file this server created.
    pub fn remove_configfs_file(&self) {
        if let Some(file) = &self.configfs_file {
            let _ = std::fs::remove_file(file);
        }
    }

    pub fn name_of(&self, generation: u64) -> Option<String> {
        self.by_gen.get(&generation).cloned()
    }

    pub fn table(&self, generation: u64) -> Option<&TableSim> {
        let t = self.tables.get(self.by_gen.get(&generation)?)?;
        (t.generation == generation).then_some(t)
    }

    pub(crate) fn table_mut(&mut self, generation: u64) -> Option<&mut TableSim> {
        let name = self.by_gen.get(&generation)?;
        let t = self.tables.get_mut(name)?;
        (t.generation == generation).then_some(t)
    }

    /// Sends a uevent for `name` as its kernel would, and records it.
    pub(crate) fn send(&mut self, name: &str, kind: KernelEventKind) {
        let Some(t) = self.tables.get(name) else {
            return;
        };
        self.seqnum += 1;
        let vars = KernelVars {
            journal_id: (!t.nojournalid()).then_some(t.ls_jid()),
            uuid: Some(t.uuid()),
            seqnum: self.seqnum,
        };
        let event = KernelEvent {
            table: t.table.clone(),
            kind,
        };
        let what = describe(&event.kind);
        match self.sender.send_kernel(&event, &vars) {
            Ok(()) => self.note(name, format!("uevent {what}")),
            Err(e) => self.note(name, format!("uevent {what} NOT SENT: {e}")),
        };
    }

    /// Drops a table (its sysfs directory goes, its locks are released); waiters wake.
    pub(crate) fn remove_table(&mut self, name: &str) {
        if let Some(t) = self.tables.remove(name) {
            self.by_gen.remove(&t.generation);
            t.ring();
        }
    }

    /// SIGTERM: every table goes at once, as at power-off (no uevents; journals stay as they
    /// are on the shared disk).
    pub fn shutdown(&mut self) {
        let names: Vec<String> = self.tables.keys().cloned().collect();
        for name in names {
            self.remove_table(&name);
        }
    }

    pub fn status(&self) -> Status {
        Status {
            tables: self
                .tables
                .values()
                .map(|t| {
                    let name = t.table.to_string();
                    TableStatus {
                        table: name.clone(),
                        mode: t.mode().as_str().to_owned(),
                        jid: t.jid_written,
                        first: i64::from(t.kernel.first),
                        blocked: t.kernel.blocked,
                        mounted: t.mounted(),
                        withdrawn: t.kernel.withdrawn,
                        replays_done: t.replays_done.clone(),
                        replays_failed: t.replays_failed.clone(),
                        replaying: t.kernel.recovering.iter().copied().collect(),
                        stage: t.kernel.stage.as_str().to_owned(),
                        journals: t.kernel.journals,
                        kernel_managed: t.kernel.kernel_managed,
                        journals_replayed: t.journals_replayed.clone(),
                        dirty: self.disk.dirty_journals(&name, t.kernel.journals),
                        withdraw_acked: t.kernel.withdraw_acked,
                    }
                })
                .collect(),
            violations: self.violations.clone(),
            timeline: self.timeline.clone(),
            replay_ms: self.replay_ms,
            fail_next_replays: self.fail_next_replays,
            join_ms: self.join_ms,
            recover_callbacks: self.recover_callbacks_now(),
        }
    }

    // -----------------------------------------------------------------------------------------
    // Reads

    /// What reading `file` of mount `generation` gives, without recording it.
    pub fn peek_file(&self, generation: u64, file: SysFile) -> Result<String, i32> {
        let Some(t) = self.table(generation) else {
            return Err(libc::ENODEV);
        };
        Ok(match file {
            SysFile::Id => format!("253:{generation}\n"),
            SysFile::Fsname => format!("{}\n", t.fsname()),
            SysFile::Uuid => format!("{}\n", t.uuid()),
            SysFile::Status => t.status_text(),
            SysFile::Withdraw => format!("{}\n", u8::from(t.kernel.withdrawn)),
            SysFile::ProtoName => "lock_dlm\n".to_owned(),
            SysFile::Block => format!("{}\n", t.kernel.read(SysfsFile::Block)?),
            SysFile::WithdrawAck => format!("{}\n", t.kernel.read(SysfsFile::Withdraw)?),
            SysFile::Jid => format!("{}\n", t.kernel.read(SysfsFile::Jid)?),
            SysFile::First => format!("{}\n", t.kernel.read(SysfsFile::First)?),
            // Set only on the DLM-callback path, which this mode never takes.
            SysFile::FirstDone => "0\n".to_owned(),
            SysFile::RecoverDone => format!("{}\n", t.recover_done),
            SysFile::RecoverStatus => format!("{}\n", t.recover_status),
            SysFile::Recover => return Err(libc::EACCES),
        })
    }

    /// What reading `file` of mount `generation` gives, recorded in the timeline.
    pub fn read_file(&mut self, generation: u64, file: SysFile) -> Result<String, i32> {
        let text = self.peek_file(generation, file)?;
        let Some(name) = self.name_of(generation) else {
            return Err(libc::ENODEV);
        };
        let shown = if file == SysFile::Status {
            let line = |label: &str| {
                text.lines()
                    .find_map(|l| l.strip_prefix(label))
                    .map(|v| format!("{label} {}", v.trim()))
                    .unwrap_or_default()
            };
            [
                line("Mounted RO:"),
                line("No Journal ID:"),
                line("Withdrawn:"),
            ]
            .join(", ")
        } else {
            text.trim().to_owned()
        };
        self.note_with(&name, format!("read {}", file.label()), shown);
        Ok(text)
    }

    // -----------------------------------------------------------------------------------------
    // Writes

    /// The part of a write that does not wait: the text parsed as the kernel's store function
    /// parses it, then the shared model's checks before its wait.
    fn plan_write(&mut self, name: &str, file: SysFile, text: &str) -> Plan {
        let Some(t) = self.tables.get_mut(name) else {
            return Plan::Now(Err(Refusal::gone()));
        };
        let not_number = |e: i32| Plan::Now(refuse(e, "not a number"));
        let (lock_file, value) = match file {
            SysFile::Withdraw => {
                return match kstrtoint(text) {
                    Err(e) => not_number(e),
                    Ok(1) => Plan::Now(self.withdraw(name)),
                    Ok(_) => Plan::Now(refuse(libc::EINVAL, "withdraw takes only 1")),
                }
            }
            SysFile::Block => (SysfsFile::Block, kstrtoint(text).map(i64::from)),
            SysFile::WithdrawAck => (SysfsFile::Withdraw, kstrtoint(text).map(i64::from)),
            SysFile::First => (
                SysfsFile::First,
                sscanf_u(text).map(i64::from).ok_or(libc::EINVAL),
            ),
            SysFile::Jid => (
                SysfsFile::Jid,
                sscanf_d(text).map(i64::from).ok_or(libc::EINVAL),
            ),
            SysFile::Recover => (
                SysfsFile::Recover,
                sscanf_u(text).map(i64::from).ok_or(libc::EINVAL),
            ),
            _ => return Plan::Now(refuse(libc::EACCES, "read-only file")),
        };
        let value = match value {
            Ok(v) => v,
            Err(e) => return not_number(e),
        };
        match t.kernel.admit(lock_file, value) {
            Admit::Refused(r) => Plan::Now(Err(r)),
            Admit::WaitFor(stage) => Plan::After(stage, (lock_file, value)),
            Admit::Ready => Plan::Now(self.apply(name, lock_file, value)),
        }
    }

    /// A write once the mount is far enough: the shared model's rules, and its effects.
    fn apply(&mut self, name: &str, file: SysfsFile, value: i64) -> Result<(), Refusal> {
        let Some(t) = self.tables.get_mut(name) else {
            return Err(Refusal::gone());
        };
        let (result, effects) = t.kernel.apply(file, value);
        if file == SysfsFile::Jid && effects.contains(&Effect::JidStored) {
            t.jid_written = t.kernel.jid;
        }
        // Whatever changed, a task waiting for this mount looks again.
        t.ring();
        let recovering = t.kernel.recovering.clone();
        for effect in effects {
            match effect {
                Effect::Thawed if !recovering.is_empty() => {
                    self.note(name, format!("block=0 while replaying {recovering:?}"));
                }
                Effect::RecoveryQueued(jid) => self.start_recovery(name, jid),
                Effect::Thawed | Effect::JidStored => {}
            }
        }
        result
    }

    /// Records the write's result; a refusal (other than "the filesystem is gone") is a
    /// violation: the daemon made a write the kernel does not accept.
    fn finish_write(&mut self, idx: usize, name: &str, what: &str, result: &Result<(), Refusal>) {
        if let Some(e) = self.timeline.get_mut(idx) {
            e.result = Some(match result {
                Ok(()) => "ok".to_owned(),
                Err(r) => format!("{} ({})", errno_name(r.errno), r.why),
            });
            let end_us = now_us();
            e.end_ms = Some(end_us / 1000);
            e.end_us = Some(end_us);
            // The write's end, as a second record line with its result.
            let done = e.clone();
            self.append_record(&done);
        }
        if let Err(Refusal { errno, why }) = result {
            eprintln!(
                "gfs_kernel_sim: {name} {what} -> {} ({why})",
                errno_name(*errno)
            );
            if *errno != libc::ENODEV {
                let v = format!("{what} refused: {} ({why})", errno_name(*errno));
                self.violation(name, v);
            }
        }
    }

    // -----------------------------------------------------------------------------------------
    // Recovery, withdraw, remount

    /// Queues the recovery of `jid` (`recover` write): the write has already returned 0.
    fn start_recovery(&mut self, name: &str, jid: u32) {
        let fail = self.fail_next_replays > 0;
        if fail {
            self.fail_next_replays -= 1;
        }
        let Some(sim) = self.me.upgrade() else {
            return;
        };
        let Some(t) = self.tables.get(name) else {
            return;
        };
        let generation = t.generation;
        let name = name.to_owned();
        let disk = self.disk.clone();
        let replay_ms = self.replay_ms;
        self.handle.spawn(async move {
            run_recovery(sim, disk, generation, name, jid, fail, replay_ms).await;
        });
    }

    /// Withdraw: this node stops using its journal (its lock goes, the journal stays dirty for
    /// a peer to replay) and `offline` is sent. 6.1 has the peers' kernels replay the journal
    /// before `offline`; that is not modelled: the daemon's `recover` does it here.
    pub fn withdraw(&mut self, name: &str) -> Result<(), Refusal> {
        let Some(t) = self.tables.get_mut(name) else {
            return refuse(libc::ENODEV, "the filesystem is gone");
        };
        if !t.mounted() {
            return refuse(libc::EBUSY, "still mounting");
        }
        if t.kernel.withdrawn {
            return Ok(());
        }
        let offline = t.kernel.withdraw();
        t.journal_live = false;
        t.own_journal = None;
        t.ring();
        self.note(
            name,
            "withdraw: own journal lock released, journal left as it is",
        );
        self.send(name, offline);
        Ok(())
    }

    /// Remount: `online` carries the OLD read-only flag (6.1 computes it before the VFS applies
    /// the new flags); `status` shows the new state at once.
    pub fn remount(&mut self, name: &str, ro: bool) -> Result<(), Refusal> {
        let Some(t) = self.tables.get_mut(name) else {
            return refuse(libc::EINVAL, "not mounted");
        };
        if !t.mounted() {
            return refuse(libc::EBUSY, "still mounting");
        }
        if t.spectator() && !ro {
            return refuse(libc::EINVAL, "a spectator stays read-only");
        }
        let old_ro = t.ro();
        let spectator = t.spectator();
        let online = t.kernel.remount(MountMode::from_flags(ro, spectator));
        let table = t.table.to_string();
        let own = t.kernel.journal;
        let mut journal = None;
        if !t.kernel.withdrawn && !spectator {
            if ro && !old_ro {
                // Going read-only flushes the log and marks the journal clean.
                t.journal_live = false;
                journal = own.map(|j| (j, false));
            } else if !ro && old_ro {
                t.journal_live = true;
                journal = own.map(|j| (j, true));
            }
        }
        if let Some((j, dirty)) = journal {
            let _ = self.disk.set_dirty(&table, j, dirty);
        }
        self.note(name, format!("remount {}", if ro { "ro" } else { "rw" }));
        self.send(name, online);
        Ok(())
    }
}

fn describe(kind: &KernelEventKind) -> String {
    match kind {
        KernelEventKind::Add { ro, spectator, .. } => {
            format!("add RDONLY={} SPECTATOR={}", *ro as u8, *spectator as u8)
        }
        KernelEventKind::Online { ro, spectator } => {
            format!("online RDONLY={} SPECTATOR={}", *ro as u8, *spectator as u8)
        }
        KernelEventKind::FirstMountDone => "change FIRSTMOUNT=Done".into(),
        KernelEventKind::Recovery { jid, done } => format!(
            "change JID={jid} RECOVERY={}",
            if *done { "Done" } else { "Failed" }
        ),
        KernelEventKind::Offline => "offline".into(),
        KernelEventKind::Remove => "remove".into(),
    }
}

// ---------------------------------------------------------------------------------------------
// Writes from the FUSE thread

/// A write of `data` to `file` of mount `generation`. `done` answers the writer, at once or,
/// for a write the kernel blocks, from a task once the mount is far enough.
pub fn write_file(sim: &Shared, generation: u64, file: SysFile, data: &[u8], done: Completion) {
    let text = String::from_utf8_lossy(data).into_owned();
    let what = format!("write {}={}", file.label(), text.trim());
    let mut s = lock(sim);
    let Some(name) = s.name_of(generation) else {
        drop(s);
        done(Err(libc::ENODEV));
        return;
    };
    let idx = s.note(&name, what.clone());
    if s.tables.get(&name).is_some_and(|t| t.kernel.kernel_managed) {
        s.violation(
            &name,
            format!("{what} on a kernel-managed filesystem (recover_callbacks=1): the daemon must leave it alone"),
        );
    }
    match s.plan_write(&name, file, &text) {
        Plan::Now(result) => {
            s.finish_write(idx, &name, &what, &result);
            drop(s);
            done(result.map_err(|r| r.errno));
        }
        Plan::After(stage, deferred) => {
            let handle = s.handle.clone();
            drop(s);
            let sim = sim.clone();
            handle.spawn(async move {
                let reached = wait_table(&sim, generation, None, |t| {
                    (t.kernel.stage >= stage).then_some(())
                })
                .await;
                let mut s = lock(&sim);
                let result = match reached {
                    Waited::Ready(()) => s.apply(&name, deferred.0, deferred.1),
                    _ => refuse(libc::ENODEV, "the mount ended while the write waited"),
                };
                s.finish_write(idx, &name, &what, &result);
                drop(s);
                done(result.map_err(|r| r.errno));
            });
        }
    }
}

pub enum Waited<T> {
    Ready(T),
    Gone,
    TimedOut,
}

/// Waits until `check` gives a value for mount `generation`, the mount goes, or `deadline`.
pub async fn wait_table<T>(
    sim: &Shared,
    generation: u64,
    deadline: Option<Instant>,
    mut check: impl FnMut(&TableSim) -> Option<T>,
) -> Waited<T> {
    loop {
        let mut bell = {
            let s = lock(sim);
            let Some(t) = s.table(generation) else {
                return Waited::Gone;
            };
            if let Some(v) = check(t) {
                return Waited::Ready(v);
            }
            t.bell.subscribe()
        };
        let rang = match deadline {
            Some(d) => {
                match tokio::time::timeout_at(tokio::time::Instant::from_std(d), bell.changed())
                    .await
                {
                    Ok(r) => r,
                    Err(_) => return Waited::TimedOut,
                }
            }
            None => bell.changed().await,
        };
        if rang.is_err() {
            return Waited::Gone;
        }
    }
}

/// The recovery work a `recover` write queued (fs/gfs2/recovery.c): gives up at once on a
/// withdrawn node or a spectator; takes the journal's lock with TRY (held by a live node:
/// "Busy", Failed); replays it if dirty (a read-only mount cannot: Failed); reports.
async fn run_recovery(
    sim: Shared,
    disk: SharedDisk,
    generation: u64,
    name: String,
    jid: u32,
    fail: bool,
    replay_ms: u64,
) {
    // The model decides from the mount's state; the lock and the dirty flag come from the
    // shared disk.
    let model = {
        let s = lock(&sim);
        let Some(t) = s.table(generation) else {
            return;
        };
        t.kernel.clone()
    };
    let (done, why) = match model.recovery_start() {
        RecoveryStart::GiveUp(why) => (false, why.to_owned()),
        RecoveryStart::TryLock => match disk.try_lock(&name, Lock::Journal(jid)) {
            Err(e) => (false, format!("journal lock: {e}")),
            Ok(None) => (false, "Busy: a live node holds the journal".to_owned()),
            Ok(Some(held)) => {
                let work = model.recovery_work(false, disk.is_dirty(&name, jid));
                let r = if fail {
                    lock(&sim).note(&name, format!("replay start jid={jid} (will fail)"));
                    tokio::time::sleep(Duration::from_millis(replay_ms)).await;
                    (false, "replay failed (fail_next_replays)".to_owned())
                } else if work == RecoveryWork::Clean {
                    (true, "clean: nothing to replay".to_owned())
                } else if work == RecoveryWork::ReadOnly {
                    (false, "EROFS: a read-only mount cannot replay".to_owned())
                } else {
                    lock(&sim).note(&name, format!("replay start jid={jid}"));
                    tokio::time::sleep(Duration::from_millis(replay_ms)).await;
                    if lock(&sim).table(generation).is_none() {
                        return; // unmounted or killed mid-replay: the journal stays dirty
                    }
                    match disk.set_dirty(&name, jid, false) {
                        Ok(()) => {
                            if let Some(t) = lock(&sim).table_mut(generation) {
                                t.journals_replayed.push(jid);
                            }
                            (true, "replayed".to_owned())
                        }
                        Err(e) => (false, format!("clearing the dirty flag: {e}")),
                    }
                };
                drop(held);
                r
            }
        },
    };
    let mut s = lock(&sim);
    let Some(t) = s.table_mut(generation) else {
        return;
    };
    let event = t.kernel.recovery_done(jid, done);
    if done {
        t.replays_done.push(jid);
    } else {
        t.replays_failed.push(jid);
    }
    t.recover_done = i64::from(jid);
    t.recover_status = if done { STATUS_DONE } else { STATUS_FAILED };
    t.ring();
    s.note_with(
        &name,
        format!(
            "replay end jid={jid} {}",
            if done { "Done" } else { "Failed" }
        ),
        why,
    );
    s.send(&name, event);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shared_models_errnos_are_linuxs() {
        use gfs_sim::errno;
        let pairs = [
            (errno::EPERM, libc::EPERM),
            (errno::ENOENT, libc::ENOENT),
            (errno::EINTR, libc::EINTR),
            (errno::EIO, libc::EIO),
            (errno::EAGAIN, libc::EAGAIN),
            (errno::EACCES, libc::EACCES),
            (errno::EBUSY, libc::EBUSY),
            (errno::ENODEV, libc::ENODEV),
            (errno::EINVAL, libc::EINVAL),
            (errno::EROFS, libc::EROFS),
            (errno::ERANGE, libc::ERANGE),
            (errno::EUSERS, libc::EUSERS),
            (errno::EOPNOTSUPP, libc::EOPNOTSUPP),
            (errno::ESHUTDOWN, libc::ESHUTDOWN),
        ];
        for (ours, linux) in pairs {
            assert_eq!(ours, linux);
        }
    }

    #[test]
    fn uuid_is_stable_and_kernel_shaped() {
        let u = fs_uuid("clu:fs1");
        assert_eq!(u, fs_uuid("clu:fs1"));
        assert_ne!(u, fs_uuid("clu:fs2"));
        assert_eq!(u.len(), 36);
        assert!(u.chars().all(|c| c == '-' || c.is_ascii_hexdigit()));
        assert_eq!(u, u.to_uppercase());
    }
}
