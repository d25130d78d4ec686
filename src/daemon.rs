//! The daemon loop: one task that owns the protocol core and carries out its outputs.
//!
//! Every source of events (CPG, quorum, uevents, sysfs results, dlm_controld answers, fencing
//! results, control requests, signals, the core's own deadline) is a channel or a cancel-safe
//! future polled by one `select!`, so the core sees one totally ordered stream of inputs.
//! Outputs are executed in the order the core produced them. Sysfs writes and reads, which may
//! block in the kernel, run off the loop through [`SysfsExecutor`] (in order per filesystem);
//! their results come back as inputs like any other (the drive rule, `gfs_core::drive`).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use gfs_core::{
    Input, KernelEvent, KernelEventKind, Level, LogRecord, Node, NodeConfig, Output, Table,
};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, oneshot};

use crate::clock::Clock;
use crate::config::Settings;
use crate::control::proto::{Reply, Request, VersionInfo};
use crate::control::server::{self, ControlRequest};
use crate::corosync::{self, CorosyncError, CpgEvent, CpgGroups, QuorumTracker};
use crate::dlm::{DlmControl, DlmEvent, DlmOptions};
use crate::fence::{FenceEvent, FenceMode, FenceOptions, Fencer};
use crate::kernel::{
    recover_callbacks, KernelError, RecoverCallbacks, SysfsDone, SysfsExecutor, SysfsOp,
    SysfsWriter, UeventListener,
};
use crate::logging::DebugRing;
use crate::process::Readiness;

/// How often startup retries reaching corosync.
const COROSYNC_RETRY: Duration = Duration::from_secs(2);
/// How long a clean shutdown waits for corosync to confirm that we left our groups.
const LEAVE_WAIT: Duration = Duration::from_secs(3);
/// The most a `gfs_control dump` reply carries of the debug ring (the newest lines).
const MAX_DUMP_BYTES: usize = 2 << 20;
/// When the mount's read-only state is read again after an `online` uevent, which carries the
/// state from before a remount (the kernel applies the new flags after sending it).
const MODE_CHECKS: [Duration; 3] = [
    Duration::from_millis(100),
    Duration::from_millis(500),
    Duration::from_secs(2),
];

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("cluster name {found:?} from corosync is not usable: {reason}")]
    ClusterName { found: String, reason: String },
    #[error(transparent)]
    Corosync(#[from] CorosyncError),
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error(transparent)]
    Control(#[from] server::ControlError),
    #[error(transparent)]
    Fence(#[from] crate::fence::FenceError),
    #[error("cannot install a signal handler: {0}")]
    Signal(std::io::Error),
    #[error("lost the CPG group {group}: {reason}")]
    GroupLost { group: String, reason: String },
    #[error("the control socket server stopped: {0}")]
    ControlStopped(String),
    /// An adapter's task ended: it logged why (corosync went away, its fd failed).
    #[error("{0} stopped; corosync is gone or its connection failed (see the log above)")]
    SourceStopped(&'static str),
}

/// Everything the loop owns.
struct Daemon {
    settings: Settings,
    clock: Clock,
    node: Node,
    cpg: CpgGroups,
    quorum: QuorumTracker,
    executor: SysfsExecutor,
    dlm: DlmControl,
    /// The read-only state of each mount as the core was last told it (uevents, then the
    /// re-reads after `online`).
    modes: HashMap<Table, bool>,
    /// Due re-reads of a mount's read-only state.
    mode_checks: mpsc::UnboundedSender<Table>,
    fencer: Option<Fencer>,
    node_names: BTreeMap<u32, String>,
    ring: DebugRing,
    /// Sysfs operations the core asked for during the current drive, handed to the executor
    /// when it ends (in order): starting each costs a thread, and after a failure F of them
    /// would otherwise delay the fencing request and the messages that follow them.
    sysfs_batch: Vec<(Table, SysfsOp)>,
    /// Operator fence-acks waiting for the core's answer.
    acks: HashMap<u64, oneshot::Sender<Reply>>,
    next_request: u64,
    last_quorate: Option<bool>,
}

/// Runs the daemon until a clean shutdown (Ok) or a fatal error.
pub async fn run(
    settings: Settings,
    ring: DebugRing,
    mut readiness: Readiness,
) -> Result<(), DaemonError> {
    // Listen for uevents before anything can mount, so no `add` is missed.
    let mut uevents = match &settings.uevent_test_socket {
        None => UeventListener::bind()?,
        Some(path) => UeventListener::bind_with_test_socket(path)?,
    };

    let cluster_name =
        corosync::connect_with_retry("cmap", COROSYNC_RETRY, corosync::cmap::cluster_name).await;
    gfs_core::Table::parse(&format!("{cluster_name}:probe")).map_err(|e| {
        DaemonError::ClusterName {
            found: cluster_name.clone(),
            reason: e.to_string(),
        }
    })?;
    let node_names: BTreeMap<u32, String> = corosync::cmap::nodes()?
        .into_iter()
        .map(|(id, name)| (id, name.unwrap_or_else(|| format!("node{id}"))))
        .collect();
    let (quorum, mut quorum_events) =
        corosync::connect_with_retry("quorum", COROSYNC_RETRY, QuorumTracker::new).await;
    let (cpg, mut cpg_events) = CpgGroups::new();
    let nodeid = cpg.local_nodeid()?;

    let (fence_tx, mut fence_events) = mpsc::unbounded_channel();
    let fencer = if settings.enable_fencing {
        let mode = FenceMode::from_setting(&settings.fencing);
        let options = FenceOptions {
            retry: settings.fence_retry,
            timeout: settings.fence_timeout,
            power_off: settings.fence_power_off,
        };
        tracing::info!(mode = %mode, "fencing backend ready");
        Some(Fencer::new(mode, options, fence_tx)?)
    } else {
        tracing::warn!(
            "enable_fencing=0: failed nodes are treated as fenced at once; a node that is not \
             really dead can corrupt the filesystem"
        );
        None
    };

    let listener = server::bind(&settings.socket_path)?;
    let (control_tx, mut control_rx) = mpsc::channel::<ControlRequest>(64);
    let mut control_server = tokio::spawn(server::serve(listener, control_tx));

    let mut sigterm = signal(SignalKind::terminate()).map_err(DaemonError::Signal)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(DaemonError::Signal)?;
    let mut sighup = signal(SignalKind::hangup()).map_err(DaemonError::Signal)?;
    let mut sigusr1 = signal(SignalKind::user_defined1()).map_err(DaemonError::Signal)?;
    let mut sigusr2 = signal(SignalKind::user_defined2()).map_err(DaemonError::Signal)?;

    let (executor, mut sysfs_done) = SysfsExecutor::new(SysfsWriter::new(&settings.sysfs_root));
    let (dlm, mut dlm_events) =
        DlmControl::spawn(settings.dlm_socket.clone(), DlmOptions::default());
    let (mode_checks, mut mode_due) = mpsc::unbounded_channel();

    let clock = Clock::new();
    let mut cfg = NodeConfig::new(nodeid, &cluster_name);
    // corosync identifies group members by (nodeid, pid): the core acts on this process's own
    // leave only, and tells the node's other processes in the group apart from this daemon.
    cfg.pid = std::process::id();
    cfg.cluster_nodes = node_names.keys().copied().collect();
    cfg.max_journals = settings.max_journals;
    cfg.recover_retry_ms = settings.recover_retry.as_millis() as u64;
    cfg.fence_retry_ms = settings.fence_retry.as_millis() as u64;
    cfg.require_quorum = settings.enable_quorum;
    cfg.require_fencing = settings.enable_fencing;
    cfg.startup_fence_delay_ms = settings.startup_fence_delay.as_millis() as u64;
    cfg.merge_wait_ms = settings.merge_wait.as_millis() as u64;
    cfg.fence_warn_ms = settings.fence_warn.as_millis() as u64;
    cfg.timeline_keep = settings.timeline_keep;
    tracing::info!(
        nodeid,
        cluster = %cluster_name,
        nodes = ?cfg.cluster_nodes,
        sysfs_root = %settings.sysfs_root.display(),
        configfs_root = %settings.configfs_root.display(),
        dlm_socket = %settings.dlm_socket,
        "gfs_controld starting"
    );
    let node = Node::new(cfg, clock.now());

    let mut d = Daemon {
        executor,
        dlm,
        modes: HashMap::new(),
        mode_checks,
        settings,
        clock,
        node,
        cpg,
        quorum,
        fencer,
        node_names,
        ring,
        sysfs_batch: Vec::new(),
        acks: HashMap::new(),
        next_request: 1,
        last_quorate: None,
    };
    let quorate = d.quorum.quorate()?;
    d.quorum_changed(quorate)?;
    d.drain()?;
    crate::systemd::notify("READY=1\nSTATUS=running");
    readiness.ready();
    tracing::info!("gfs_controld ready");

    // No periodic tick: every timer is a deadline (the core's, or a slow sysfs operation's),
    // so an idle daemon does not wake up at all.
    loop {
        let deadline = d.node.poll_timeout().map(|t| d.clock.instant(t));
        let timer = sleep_until(deadline);
        let slow_sysfs = sleep_until(d.executor.next_slow_warning());
        // Biased: membership and messages first, so the core's view of the group is as fresh
        // as possible when kernel events and operator requests are judged.
        tokio::select! {
            biased;
            _ = sigterm.recv() => { if d.shutdown_requested("SIGTERM") { break; } }
            _ = sigint.recv() => { if d.shutdown_requested("SIGINT") { break; } }
            _ = sighup.recv() => ignored_signal("SIGHUP"),
            _ = sigusr1.recv() => ignored_signal("SIGUSR1"),
            _ = sigusr2.recv() => ignored_signal("SIGUSR2"),
            event = cpg_events.recv() => match event {
                Some(event) => d.cpg_event(event)?,
                None => return Err(DaemonError::SourceStopped("CPG event delivery")),
            },
            change = quorum_events.recv() => match change {
                Some(change) => {
                    d.quorum_changed(change.quorate)?;
                    d.feed(Input::Membership { members: change.members })?;
                }
                None => return Err(DaemonError::SourceStopped("quorum tracking")),
            },
            // Before uevents: a write's result usually precedes the uevent it causes.
            Some(done) = sysfs_done.recv() => d.sysfs_done(done)?,
            event = uevents.next() => match event {
                Ok(Ok(event)) => d.kernel_event(event)?,
                Ok(Err(gfs_core::UeventError::UnsupportedTable { name, add: true, why })) => {
                    d.refuse_unsupported_table(name, why)
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "dropped a gfs2 uevent"),
                Err(KernelError::Overflow) => tracing::error!(
                    "the uevent socket overflowed: kernel events were lost; mounts or recoveries \
                     in progress may stall (check `gfs_control ls`)"
                ),
                Err(e) => return Err(e.into()),
            },
            Some(event) = dlm_events.recv() => d.dlm_event(event)?,
            Some(table) = mode_due.recv() => d.executor.submit(table, SysfsOp::ReadMode),
            Some(event) = fence_events.recv() => d.fence_event(event)?,
            Some(request) = control_rx.recv() => d.control(request)?,
            result = &mut control_server => {
                let reason = match result {
                    Ok(Ok(())) => "returned".to_owned(),
                    Ok(Err(e)) => e.to_string(),
                    Err(e) => e.to_string(),
                };
                return Err(DaemonError::ControlStopped(reason));
            }
            _ = slow_sysfs => d.executor.warn_slow(),
            _ = timer => d.feed(Input::Timeout)?,
        }
    }

    crate::systemd::notify("STOPPING=1");
    d.leave_all(&mut cpg_events).await;
    control_server.abort();
    let _ = std::fs::remove_file(&d.settings.socket_path);
    tracing::info!("gfs_controld stopped");
    Ok(())
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

impl Daemon {
    /// Feeds one input and carries out everything it leads to (`gfs_core::drive`, the rule
    /// the simulator runs too); sysfs operations go to the executor at the end.
    fn feed(&mut self, input: Input) -> Result<(), DaemonError> {
        gfs_core::drive(self, self.clock.now(), input)?;
        self.after_drive()
    }

    /// Executes the outputs already queued (the join at start).
    fn drain(&mut self) -> Result<(), DaemonError> {
        gfs_core::drain(self, self.clock.now())?;
        self.after_drive()
    }

    fn after_drive(&mut self) -> Result<(), DaemonError> {
        for (table, op) in std::mem::take(&mut self.sysfs_batch) {
            self.executor.submit(table, op);
        }
        Ok(())
    }
}

impl gfs_core::Driver for Daemon {
    type Error = DaemonError;

    fn node(&mut self) -> Option<&mut Node> {
        Some(&mut self.node)
    }

    fn execute(&mut self, output: Output) -> Result<Option<Input>, DaemonError> {
        match output {
            // The daemon group, once at start: without it the daemon can do nothing, so a
            // failed join is fatal there (and only there: no other group is ever joined).
            Output::JoinGroup { group } => self.cpg.join(&group)?,
            Output::Mcast { group, payload } => self.cpg.mcast(&group, payload)?,
            // Off the loop, once this drive ends: the result comes back through `sysfs_done`.
            Output::Write { table, file, value } => self
                .sysfs_batch
                .push((table, SysfsOp::Write { file, value })),
            Output::Read { table, file } => self.sysfs_batch.push((table, SysfsOp::Read { file })),
            Output::DlmRegister { table } => self.dlm.register(table),
            Output::DlmUnregister { table } => self.dlm.unregister(table),
            Output::DlmNotify { table, nodeid } => self.dlm.notify(table, nodeid),
            Output::Fence { nodeid, failed_at } => match &mut self.fencer {
                Some(fencer) => {
                    let name = self.node_names.get(&nodeid).cloned();
                    fencer.request(nodeid, name, self.clock.wall(failed_at));
                }
                // The core asks for no fencing with `require_fencing` off.
                None => tracing::error!(
                    nodeid,
                    "enable_fencing=0, yet the core asked to fence node {nodeid}"
                ),
            },
            Output::KillNode { nodeid, reason } => {
                tracing::error!(nodeid, reason = %reason, "asking corosync to remove node {nodeid} from the cluster");
                if let Err(e) = corosync::cfg::kill_node(nodeid, &reason) {
                    tracing::error!(nodeid, error = %e, "corosync could not kill the node");
                }
            }
            Output::Reply { request, result } => {
                if let Some(reply) = self.acks.remove(&request) {
                    let _ = reply.send(match result {
                        Ok(text) => Reply::Message(text),
                        Err(text) => Reply::Error(text),
                    });
                }
            }
            Output::Log(record) => log_record(&record),
        }
        Ok(None)
    }
}

impl Daemon {
    /// A gfs2 uevent. At `add`, whether the kernel or the daemon manages the mount comes from the
    /// DLM's `recover_callbacks` (the uevent cannot tell). After `online`, the read-only state is
    /// read again a few times, since a remount's `online` carries the state from before it.
    fn kernel_event(&mut self, mut event: KernelEvent) -> Result<(), DaemonError> {
        let table = event.table.clone();
        match &mut event.kind {
            KernelEventKind::Add {
                ro, kernel_managed, ..
            } => {
                let callbacks = recover_callbacks(&self.settings.configfs_root);
                *kernel_managed = callbacks.kernel_managed();
                match &callbacks {
                    RecoverCallbacks::Value(1) => tracing::info!(
                        fs = %table.fs(),
                        "kernel-managed mount (DLM recover_callbacks=1): the kernel picks the \
                         journal id and recovers by itself; gfs_controld will not write to it"
                    ),
                    RecoverCallbacks::Value(value) => tracing::info!(
                        fs = %table.fs(),
                        recover_callbacks = value,
                        "daemon-managed mount (DLM recover_callbacks=0)"
                    ),
                    RecoverCallbacks::Unreadable { path, reason } => tracing::info!(
                        fs = %table.fs(),
                        path = %path.display(),
                        reason = %reason,
                        "daemon-managed mount (the DLM's recover_callbacks is unreadable)"
                    ),
                }
                self.modes.insert(table, *ro);
            }
            KernelEventKind::Online { ro, .. } => {
                self.modes.insert(table.clone(), *ro);
                self.schedule_mode_checks(table);
            }
            KernelEventKind::Remove => {
                self.modes.remove(&table);
            }
            _ => {}
        }
        self.feed(Input::Kernel(event))
    }

    fn schedule_mode_checks(&self, table: Table) {
        let due = self.mode_checks.clone();
        tokio::spawn(async move {
            let start = tokio::time::Instant::now();
            for delay in MODE_CHECKS {
                tokio::time::sleep_until(start + delay).await;
                if due.send(table.clone()).is_err() {
                    return;
                }
            }
        });
    }

    /// A sysfs operation returned: the next one of its filesystem starts, and the core hears of
    /// it (a changed read-only state only when it differs from what the core was told).
    fn sysfs_done(&mut self, done: SysfsDone) -> Result<(), DaemonError> {
        match self.executor.complete(done) {
            SysfsDone::Write {
                table,
                file,
                value,
                result,
            } => self.feed(Input::WriteDone {
                table,
                file,
                value,
                result,
            }),
            SysfsDone::Read {
                table,
                file,
                result,
            } => self.feed(Input::ReadDone {
                table,
                file,
                result,
            }),
            SysfsDone::Mode {
                table,
                ro: Some(ro),
            } => {
                // Unmounted meanwhile: nothing to tell.
                let Some(known) = self.modes.get_mut(&table) else {
                    return Ok(());
                };
                if *known == ro {
                    return Ok(());
                }
                *known = ro;
                tracing::info!(
                    fs = %table.fs(),
                    ro,
                    "the mount is now {} (read from its sysfs status after online)",
                    if ro { "read-only" } else { "read-write" }
                );
                self.feed(Input::MountMode { table, ro })
            }
            SysfsDone::Mode { ro: None, .. } => Ok(()),
        }
    }

    /// A mount of a lock table the daemon cannot handle would wait for `jid` forever: fail it.
    /// The write blocks until the kernel's DLM join ends, so it runs on its own thread.
    fn refuse_unsupported_table(&self, name: String, why: String) {
        tracing::error!(
            fs = %name,
            "refusing the mount: {why} (lock tables are <cluster>:<fs> of letters, digits, '_', '.' and '-')"
        );
        let writer = SysfsWriter::new(&self.settings.sysfs_root);
        std::thread::spawn(move || {
            if let Err(error) =
                writer.write_named(&name, gfs_core::SysfsFile::Jid, -i64::from(libc::EINVAL))
            {
                tracing::warn!(fs = %name, error = %error, "could not fail the unsupported mount");
            }
        });
    }

    fn dlm_event(&mut self, event: DlmEvent) -> Result<(), DaemonError> {
        match event {
            DlmEvent::Registered { table, result } => {
                self.feed(Input::DlmRegistered { table, result })
            }
            DlmEvent::Notified {
                table,
                nodeid,
                result,
            } => self.feed(Input::DlmNotified {
                table,
                nodeid,
                result,
            }),
        }
    }

    /// A quorum change without a change of the daemon group.
    fn quorum_changed(&mut self, quorate: bool) -> Result<(), DaemonError> {
        if self.last_quorate == Some(quorate) {
            return Ok(());
        }
        // The core logs the change.
        self.last_quorate = Some(quorate);
        self.feed(Input::Quorum { quorate })
    }

    /// A configuration change goes to the core with quorum as it is now (a synchronous read),
    /// so the core never judges a membership newer than its quorum view.
    fn cpg_event(&mut self, event: CpgEvent) -> Result<(), DaemonError> {
        match event {
            CpgEvent::Lost { group, reason } => Err(DaemonError::GroupLost { group, reason }),
            CpgEvent::ConfChg(change) => {
                tracing::info!(group = %change.group, members = ?change.members, joined = ?change.joined, left = ?change.left, "CPG membership change");
                let quorate = self.quorum.quorate()?;
                self.last_quorate = Some(quorate);
                self.feed(change.with_quorum(quorate))
            }
            CpgEvent::Deliver(input) => self.feed(input),
        }
    }

    fn fence_event(&mut self, event: FenceEvent) -> Result<(), DaemonError> {
        match event {
            // The core logs both outcomes.
            FenceEvent::Fenced { nodeid, at } => {
                let at = self.clock.core_time(at);
                self.feed(Input::Fenced { nodeid, at })
            }
            FenceEvent::Failed { nodeid, reason } => {
                self.feed(Input::FenceFailed { nodeid, reason })
            }
        }
    }

    fn control(&mut self, request: ControlRequest) -> Result<(), DaemonError> {
        let ControlRequest { request, reply } = request;
        let answer = match request {
            Request::Status {} => Reply::Status(self.node.status(self.clock.now())),
            Request::Ls { fs } => {
                let mut filesystems = self.node.filesystems();
                if let Some(wanted) = fs {
                    filesystems.retain(|f| f.name == wanted || f.table == wanted);
                    if filesystems.is_empty() {
                        let _ = reply.send(Reply::Error(format!("no filesystem {wanted:?}")));
                        return Ok(());
                    }
                }
                Reply::Filesystems(filesystems)
            }
            Request::Dump {} => Reply::Dump(self.ring.lines_within(MAX_DUMP_BYTES)),
            Request::Version {} => Reply::Version(VersionInfo::current()),
            Request::FenceAck { nodeid } => {
                tracing::warn!(nodeid, "operator fence-ack for node {nodeid}");
                let request = self.next_request;
                self.next_request += 1;
                self.acks.insert(request, reply);
                return self.feed(Input::FenceAck { request, nodeid });
            }
        };
        let _ = reply.send(answer);
        Ok(())
    }

    /// SIGTERM/SIGINT: leaving while a filesystem is mounted would leave its journal to be
    /// replayed by others while this node can still write, so the daemon refuses.
    fn shutdown_requested(&mut self, signal: &str) -> bool {
        if self.node.can_shutdown() {
            tracing::info!(signal, "no gfs2 filesystem is mounted: shutting down");
            return true;
        }
        let mounted: Vec<String> = self
            .node
            .filesystems()
            .into_iter()
            .filter(|f| f.local.is_some())
            .map(|f| f.name)
            .collect();
        tracing::error!(
            signal,
            mounted = ?mounted,
            "refusing to exit: gfs2 filesystems are mounted here; unmount them first"
        );
        false
    }

    /// Leaves every group cleanly (CPG LEAVE, not PROCDOWN) and waits briefly for corosync to
    /// confirm, so the others see a clean departure.
    async fn leave_all(&mut self, events: &mut mpsc::UnboundedReceiver<CpgEvent>) {
        let mut groups = self.cpg.joined();
        for group in &groups {
            if let Err(e) = self.cpg.leave(group) {
                tracing::warn!(group = %group, error = %e, "leaving the CPG group failed");
            }
        }
        let me = gfs_core::Peer::new(self.node.nodeid(), std::process::id());
        let deadline = tokio::time::Instant::now() + LEAVE_WAIT;
        while !groups.is_empty() {
            match tokio::time::timeout_at(deadline, events.recv()).await {
                Ok(Some(CpgEvent::ConfChg(change)))
                    if change.left.iter().any(|(p, _)| *p == me) =>
                {
                    groups.retain(|g| *g != change.group);
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
    }
}

/// SIGHUP does not reload the configuration: most settings shape the running protocol state,
/// so a restart (with no filesystem mounted) applies changes.
fn ignored_signal(name: &str) {
    tracing::warn!(
        signal = name,
        "{name} ignored: gfs_controld does not reload its configuration; restart it (with no \
         gfs2 filesystem mounted) to apply changes, and stop it with SIGTERM"
    );
}

/// Turns a core log record into a tracing event with structured fields.
fn log_record(record: &LogRecord) {
    // Absent fields are left out of the event rather than shown as placeholders.
    let fs = record.fs.as_deref();
    let nodeid = record.nodeid;
    let jid = record.jid;
    let change = record.change;
    let message = &record.message;
    match record.level {
        Level::Error => tracing::error!(target: "gfs_core", fs, nodeid, jid, change, "{message}"),
        Level::Warn => tracing::warn!(target: "gfs_core", fs, nodeid, jid, change, "{message}"),
        Level::Info => tracing::info!(target: "gfs_core", fs, nodeid, jid, change, "{message}"),
        Level::Debug => tracing::debug!(target: "gfs_core", fs, nodeid, jid, change, "{message}"),
    }
}
