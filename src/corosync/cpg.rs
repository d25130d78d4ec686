//! CPG groups: one libcpg handle per joined group, each driven by a tokio task.
//!
//! # Why one handle per group
//!
//! libcpg allows a single joined group per handle (`cpg_join` on a handle that already joined
//! answers `CS_ERR_EXIST`), and `cpg_mcast_joined` sends to "the" group of the handle. A handle
//! per group also gives each group its own flow control, its own send queue and its own
//! failure: a dead handle is reported as [`CpgEvent::Lost`] for exactly that group.
//!
//! # The task of a group
//!
//! The task owns the handle, its `AsyncFd`, a FIFO of messages still to send and a command
//! channel from [`CpgGroups`] (mcast, leave). It dispatches when the fd is readable, forwards
//! the callbacks' data (kept in delivery order) to the one event channel shared by all
//! groups, and sends queued messages in order; `CS_ERR_TRY_AGAIN` (flow control) is retried
//! after a short, growing backoff without blocking anyone. A leave is sent after every
//! message queued before it. The handle is finalized only after our own leave confchg was
//! forwarded, when the handle dies, or when [`CpgGroups`] is dropped (then corosync reports
//! the departure to the others as `PROCDOWN`).
//!
//! Joining a group again while our previous membership of it is still being left is
//! supported: the new task waits for the old one to finish (its own-leave confchg forwarded,
//! handle finalized) before calling `cpg_join`, so the daemon sees the leave before the join.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use gfs_core::{ConfChg, Input, LeaveReason, Peer};
use rust_corosync::cpg;
use rust_corosync::{CsError, DispatchFlags, NodeId};
use tokio::sync::mpsc::{self, UnboundedReceiver, UnboundedSender};
use tokio::task::JoinHandle;

use super::conn::{Conn, LibHandle};
use super::registry::Registry;
use super::{describe, CorosyncError};

/// Longest CPG group name (libcpg's `CPG_MAX_NAME_LENGTH` minus the NUL).
const MAX_GROUP_NAME: usize = 127;
/// First and longest wait before retrying a call that answered `CS_ERR_TRY_AGAIN`.
const RETRY_MIN: Duration = Duration::from_millis(1);
const RETRY_MAX: Duration = Duration::from_millis(100);

/// Events from CPG, already the core's types.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CpgEvent {
    /// Members are processes: any process corosync lets use its IPC may join a group, so the
    /// core tells a node's daemon from other processes by pid. The daemon adds the quorum it
    /// reads on arrival ([`ConfChg::with_quorum`]).
    ConfChg(ConfChg),
    /// A message delivered in agreed order: an [`Input::Deliver`].
    Deliver(Input),
    /// The handle of `group` died (corosync went away, dispatch error): the daemon must treat
    /// it as fatal.
    Lost { group: String, reason: String },
}

/// What a callback copies out of libcpg (node ids with pids, reasons as cpg.h numbers).
enum Raw {
    ConfChg {
        members: Vec<(u32, u32)>,
        joined: Vec<(u32, u32)>,
        left: Vec<(u32, u32, u32)>,
    },
    Deliver {
        sender: Peer,
        payload: Vec<u8>,
    },
}

static REGISTRY: Registry<cpg::Handle, UnboundedSender<Raw>> = Registry::new();

fn send_raw(handle: &cpg::Handle, raw: Raw) {
    match REGISTRY.get(handle) {
        // A closed receiver means the task is finishing: nothing to deliver to.
        Some(tx) => {
            let _ = tx.send(raw);
        }
        None => tracing::warn!("CPG callback for an unknown handle; event dropped"),
    }
}

fn on_deliver(
    handle: &cpg::Handle,
    _group: String,
    nodeid: NodeId,
    pid: u32,
    msg: &[u8],
    _len: usize,
) {
    send_raw(
        handle,
        Raw::Deliver {
            sender: Peer::new(nodeid.into(), pid),
            payload: msg.to_vec(),
        },
    );
}

fn on_confchg(
    handle: &cpg::Handle,
    _group: &str,
    members: Vec<cpg::Address>,
    left: Vec<cpg::Address>,
    joined: Vec<cpg::Address>,
) {
    let pair = |a: &cpg::Address| (u32::from(a.nodeid), a.pid);
    send_raw(
        handle,
        Raw::ConfChg {
            members: members.iter().map(pair).collect(),
            joined: joined.iter().map(pair).collect(),
            left: left
                .iter()
                .map(|a| (u32::from(a.nodeid), a.pid, a.reason as u32))
                .collect(),
        },
    );
}

fn model() -> cpg::ModelData {
    cpg::ModelData::ModelV1(cpg::Model1Data {
        flags: cpg::Model1Flags::None,
        deliver_fn: Some(on_deliver),
        confchg_fn: Some(on_confchg),
        totem_confchg_fn: None,
    })
}

/// cpg.h reason numbers to the core's leave reasons.
fn leave_reason(reason: u32) -> LeaveReason {
    match reason {
        2 => LeaveReason::Leave,
        3 => LeaveReason::NodeDown,
        5 => LeaveReason::ProcDown,
        other => {
            // Unknown reasons are treated as failures: recovering a journal for nothing is
            // safe, skipping a needed recovery is not.
            tracing::warn!(
                reason = other,
                "unexpected CPG leave reason; treating it as NODEDOWN"
            );
            LeaveReason::NodeDown
        }
    }
}

enum Cmd {
    Mcast(Vec<u8>),
    Leave,
}

struct Entry {
    cmd: UnboundedSender<Cmd>,
    task: JoinHandle<()>,
    /// Set by the task when it stops being a member (own leave seen, or handle lost).
    done: Arc<AtomicBool>,
}

impl Entry {
    fn active(&self) -> bool {
        !self.done.load(Ordering::SeqCst) && !self.task.is_finished()
    }
}

/// One CPG handle per joined group: libcpg allows one group per handle, and a handle of its
/// own gives each group its own send queue, flow control and failure report (see the
/// documentation of this module's source, `src/corosync/cpg.rs`).
///
/// Dropping `CpgGroups` closes the handles of the groups not being left: the other members
/// see us leave with reason `PROCDOWN`, as if the daemon had died.
pub struct CpgGroups {
    runtime: Option<tokio::runtime::Handle>,
    events: UnboundedSender<CpgEvent>,
    groups: HashMap<String, Entry>,
    /// Groups we asked to leave whose task still runs (waiting for our own leave confchg).
    leaving: HashMap<String, JoinHandle<()>>,
    local_nodeid: OnceLock<u32>,
}

impl CpgGroups {
    /// Must be called inside a tokio runtime. Events of every group arrive on the returned
    /// receiver, in delivery order per group.
    pub fn new() -> (CpgGroups, UnboundedReceiver<CpgEvent>) {
        let (events, rx) = mpsc::unbounded_channel();
        let runtime = tokio::runtime::Handle::try_current().ok();
        if runtime.is_none() {
            tracing::error!("CpgGroups::new called outside a tokio runtime; joins will fail");
        }
        let groups = CpgGroups {
            runtime,
            events,
            groups: HashMap::new(),
            leaving: HashMap::new(),
            local_nodeid: OnceLock::new(),
        };
        (groups, rx)
    }

    /// This node's id (`cpg_local_get` on a temporary handle; cached after the first success).
    pub fn local_nodeid(&self) -> Result<u32, CorosyncError> {
        if let Some(id) = self.local_nodeid.get() {
            return Ok(*id);
        }
        let handle =
            cpg::initialize(&model(), 0).map_err(|e| CorosyncError::unavailable("cpg", e))?;
        let id = cpg::local_get(&handle).map_err(|e| CorosyncError::call("cpg_local_get", e));
        drop(handle); // finalizes the temporary handle
        let id = u32::from(id?);
        Ok(*self.local_nodeid.get_or_init(|| id))
    }

    /// Joins `group`: a new handle, registered for callbacks, `cpg_join`, and a task driving
    /// its fd. Our own join shows up as a [`CpgEvent::ConfChg`].
    pub fn join(&mut self, group: &str) -> Result<(), CorosyncError> {
        check_group_name(group)?;
        self.reap();
        if self.groups.get(group).is_some_and(Entry::active) {
            return Err(CorosyncError::AlreadyJoined(group.to_string()));
        }
        let runtime = match &self.runtime {
            Some(rt) => rt.clone(),
            None => tokio::runtime::Handle::try_current().map_err(|e| CorosyncError::Call {
                call: "CpgGroups::join",
                reason: format!("not inside a tokio runtime: {e}"),
            })?,
        };
        let our_nodeid = self.local_nodeid()?;
        // A membership of this group that is still ending (being left, or a task that lost
        // its handle): join only after it is gone.
        let has_predecessor = self.leaving.contains_key(group) || self.groups.contains_key(group);

        let handle =
            cpg::initialize(&model(), 0).map_err(|e| CorosyncError::unavailable("cpg", e))?;
        let (raw_tx, raw_rx) = mpsc::unbounded_channel();
        REGISTRY.insert(handle.clone(), raw_tx);
        let conn = Conn::new(handle, &runtime)?;

        // Join now when nothing is in the way, so that plain errors are reported here.
        let mut join_state = JoinState::Pending;
        if !has_predecessor {
            match cpg::join(conn.handle(), group) {
                Ok(()) => join_state = JoinState::Joined,
                Err(CsError::CsErrTryAgain) => {}
                Err(e) => return Err(CorosyncError::call("cpg_join", e)),
            }
        }

        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let done = Arc::new(AtomicBool::new(false));
        let task = GroupTask {
            group: group.to_string(),
            conn,
            raw_rx,
            cmd_rx,
            events: self.events.clone(),
            our_nodeid,
            our_pid: std::process::id(),
            join_state,
            pending: VecDeque::new(),
            leave: LeaveState::No,
            retry: None,
            backoff: RETRY_MIN,
            done: done.clone(),
        };
        // The newest previous membership first: it waits for any older one itself.
        let predecessor = self
            .groups
            .remove(group)
            .map(|e| e.task)
            .or_else(|| self.leaving.remove(group));
        let task = runtime.spawn(task.run(predecessor));
        tracing::info!(group, nodeid = our_nodeid, "joining CPG group");
        self.groups.insert(
            group.to_string(),
            Entry {
                cmd: cmd_tx,
                task,
                done,
            },
        );
        Ok(())
    }

    /// Leaves `group` (`cpg_leave`, after every message queued before). The handle is
    /// finalized once our own leave confchg has been delivered (or when `self` is dropped).
    pub fn leave(&mut self, group: &str) -> Result<(), CorosyncError> {
        self.reap();
        let Some(entry) = self.groups.remove(group) else {
            return Err(CorosyncError::NotJoined(group.to_string()));
        };
        if !entry.active() {
            return Err(CorosyncError::NotJoined(group.to_string()));
        }
        if entry.cmd.send(Cmd::Leave).is_err() {
            return Err(CorosyncError::NotJoined(group.to_string()));
        }
        tracing::info!(group, "leaving CPG group");
        // Dropping entry.cmd is fine: the task finishes the queued commands first.
        self.leaving.insert(group.to_string(), entry.task);
        Ok(())
    }

    /// Queues a message; order of sends per group is kept; `CS_ERR_TRY_AGAIN` is retried
    /// (short backoff) without blocking the caller.
    pub fn mcast(&mut self, group: &str, payload: Vec<u8>) -> Result<(), CorosyncError> {
        let gone = || CorosyncError::Call {
            call: "cpg_mcast_joined",
            reason: format!(
                "the CPG handle of group {group:?} is gone (reported as CpgEvent::Lost)"
            ),
        };
        match self.groups.get(group) {
            Some(entry) if entry.active() => {
                entry.cmd.send(Cmd::Mcast(payload)).map_err(|_| gone())
            }
            // A membership that ended without our leave: its handle died, or corosync
            // removed us.
            Some(_) => Err(gone()),
            None => Err(CorosyncError::NotJoined(group.to_string())),
        }
    }

    /// The groups joined (or being joined) and not being left, sorted.
    pub fn joined(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .groups
            .iter()
            .filter(|(_, e)| e.active())
            .map(|(name, _)| name.clone())
            .collect();
        names.sort();
        names
    }

    /// Forgets tasks that have finished.
    fn reap(&mut self) {
        self.leaving.retain(|_, task| !task.is_finished());
        self.groups.retain(|_, e| !e.task.is_finished());
    }
}

fn check_group_name(group: &str) -> Result<(), CorosyncError> {
    let reason = if group.is_empty() {
        "empty"
    } else if group.len() > MAX_GROUP_NAME {
        "longer than 127 bytes"
    } else if group.contains('\0') {
        "contains a NUL byte"
    } else {
        return Ok(());
    };
    Err(CorosyncError::InvalidGroup {
        name: group.to_string(),
        reason,
    })
}

impl LibHandle for cpg::Handle {
    const SERVICE: &'static str = "cpg";
    const FD_GET: &'static str = "cpg_fd_get";

    fn fd_get(&self) -> Result<std::os::fd::RawFd, CsError> {
        cpg::fd_get(self)
    }

    fn dispatch(&self) -> Result<(), CsError> {
        cpg::dispatch(self, DispatchFlags::All)
    }

    fn forget(&self) {
        drop(REGISTRY.remove(self));
    }

    fn finalize(&self) -> Result<(), CsError> {
        cpg::finalize(self)
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum JoinState {
    Pending,
    Joined,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum LeaveState {
    No,
    Requested,
    Sent,
}

struct GroupTask {
    group: String,
    conn: Conn<cpg::Handle>,
    raw_rx: UnboundedReceiver<Raw>,
    cmd_rx: UnboundedReceiver<Cmd>,
    events: UnboundedSender<CpgEvent>,
    our_nodeid: u32,
    our_pid: u32,
    join_state: JoinState,
    pending: VecDeque<Vec<u8>>,
    leave: LeaveState,
    /// When to retry a call that answered `CS_ERR_TRY_AGAIN`.
    retry: Option<tokio::time::Instant>,
    backoff: Duration,
    done: Arc<AtomicBool>,
}

/// Why a group task stops.
enum Stop {
    /// Our own leave confchg was forwarded.
    Left,
    /// [`CpgGroups`] was dropped.
    Dropped,
    /// The handle failed.
    Lost(String),
}

impl GroupTask {
    async fn run(mut self, predecessor: Option<JoinHandle<()>>) {
        if let Some(previous) = predecessor {
            tracing::debug!(group = %self.group, "waiting for our previous membership to end before joining again");
            let _ = previous.await;
        }
        let stop = self.drive().await;
        self.done.store(true, Ordering::SeqCst);
        match stop {
            Stop::Left => tracing::info!(group = %self.group, "left CPG group"),
            Stop::Dropped => tracing::debug!(group = %self.group, "CPG handle closed"),
            Stop::Lost(reason) => {
                tracing::error!(group = %self.group, reason = %reason, "lost the CPG group");
                let _ = self.events.send(CpgEvent::Lost {
                    group: self.group.clone(),
                    reason,
                });
            }
        }
        // Dropping self.conn deregisters the fd and finalizes the handle.
    }

    async fn drive(&mut self) -> Stop {
        let mut cmds_open = true;
        loop {
            if let Err(stop) = self.progress() {
                return stop;
            }
            let retry = self.retry;
            let retry_timer = async move {
                match retry {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let raw_rx = &self.raw_rx;
            tokio::select! {
                biased;
                dispatched = self.conn.dispatch_when_readable(|| !raw_rx.is_empty()) => {
                    let result = match dispatched {
                        Ok(result) => result,
                        Err(e) => return Stop::Lost(format!("polling the CPG fd failed: {e}")),
                    };
                    // Forward what was delivered before reporting a failure.
                    if let Some(stop) = self.forward() {
                        return stop;
                    }
                    match result {
                        Ok(()) | Err(CsError::CsErrTryAgain) => {}
                        Err(e) => return Stop::Lost(format!("cpg_dispatch failed: {}", describe(e))),
                    }
                }
                cmd = self.cmd_rx.recv(), if cmds_open => match cmd {
                    Some(cmd) => {
                        self.command(cmd);
                        while let Ok(cmd) = self.cmd_rx.try_recv() {
                            self.command(cmd);
                        }
                    }
                    None => {
                        cmds_open = false;
                        // CpgGroups dropped without asking to leave: close the handle.
                        if self.leave == LeaveState::No {
                            return Stop::Dropped;
                        }
                    }
                },
                () = retry_timer => self.retry = None,
            }
        }
    }

    fn command(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Mcast(payload) => self.pending.push_back(payload),
            Cmd::Leave => {
                if self.leave == LeaveState::No {
                    self.leave = LeaveState::Requested;
                }
            }
        }
    }

    /// Issues whatever can be issued now: the join, queued messages, the leave.
    fn progress(&mut self) -> Result<(), Stop> {
        if self.retry.is_some() {
            return Ok(());
        }
        if self.join_state == JoinState::Pending {
            // Even when a leave is already requested, join first: the daemon then sees the
            // usual pair of confchgs (our join, our leave).
            match cpg::join(self.conn.handle(), &self.group) {
                Ok(()) => self.join_state = JoinState::Joined,
                Err(CsError::CsErrTryAgain) => return self.try_again(),
                Err(e) => return Err(Stop::Lost(format!("cpg_join failed: {}", describe(e)))),
            }
        }
        while let Some(payload) = self.pending.front() {
            match cpg::mcast_joined(self.conn.handle(), cpg::Guarantee::TypeAgreed, payload) {
                Ok(()) => {
                    self.pending.pop_front();
                    self.backoff = RETRY_MIN;
                }
                Err(CsError::CsErrTryAgain) => return self.try_again(),
                Err(e) => {
                    return Err(Stop::Lost(format!(
                        "cpg_mcast_joined failed: {} ({} messages unsent)",
                        describe(e),
                        self.pending.len()
                    )))
                }
            }
        }
        if self.leave == LeaveState::Requested {
            match cpg::leave(self.conn.handle(), &self.group) {
                Ok(()) => {
                    self.leave = LeaveState::Sent;
                    self.backoff = RETRY_MIN;
                }
                Err(CsError::CsErrTryAgain) => return self.try_again(),
                Err(e) => return Err(Stop::Lost(format!("cpg_leave failed: {}", describe(e)))),
            }
        }
        Ok(())
    }

    fn try_again(&mut self) -> Result<(), Stop> {
        tracing::trace!(group = %self.group, backoff = ?self.backoff, queued = self.pending.len(), "corosync answered TRY_AGAIN");
        self.retry = Some(tokio::time::Instant::now() + self.backoff);
        self.backoff = (self.backoff * 2).min(RETRY_MAX);
        Ok(())
    }

    /// Forwards the callbacks' data in order. Returns `Some(Stop::Left)` after forwarding our
    /// own leave.
    fn forward(&mut self) -> Option<Stop> {
        while let Ok(raw) = self.raw_rx.try_recv() {
            let event = match raw {
                Raw::Deliver { sender, payload } => CpgEvent::Deliver(Input::Deliver {
                    group: self.group.clone(),
                    sender,
                    payload,
                }),
                Raw::ConfChg {
                    members,
                    joined,
                    left,
                } => {
                    let we_left = left
                        .iter()
                        .any(|&(n, pid, _)| n == self.our_nodeid && pid == self.our_pid);
                    tracing::debug!(
                        group = %self.group,
                        nodeid = self.our_nodeid,
                        members = ?members,
                        joined = ?joined,
                        left = ?left,
                        "CPG confchg"
                    );
                    let event = CpgEvent::ConfChg(ConfChg {
                        group: self.group.clone(),
                        members: members.iter().map(|&(n, p)| Peer::new(n, p)).collect(),
                        joined: joined.iter().map(|&(n, p)| Peer::new(n, p)).collect(),
                        left: left
                            .iter()
                            .map(|&(n, p, reason)| (Peer::new(n, p), leave_reason(reason)))
                            .collect(),
                    });
                    if we_left {
                        if self.leave != LeaveState::Sent {
                            tracing::warn!(group = %self.group, nodeid = self.our_nodeid, "corosync removed us from the CPG group without our leave");
                        }
                        // Mark the membership over before the daemon can react to the event.
                        self.done.store(true, Ordering::SeqCst);
                        let _ = self.events.send(event);
                        return Some(Stop::Left);
                    }
                    event
                }
            };
            if self.events.send(event).is_err() {
                // Nobody listens any more: the daemon is gone.
                return Some(Stop::Dropped);
            }
        }
        None
    }
}
