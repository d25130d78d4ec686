//! The core's whole contract with the outside world: [`Input`] in, [`Output`] out.
//!
//! Drive rule: [`crate::drive`] (the run loop in the crate docs), the same for every driver.
//!
//! Sysfs writes and reads may block in the real kernel (`first`/`jid` until the DLM join is
//! complete, `recover` until this node's own journal is ready), so a driver runs them off its
//! event loop: in the order given per filesystem (one at a time), with filesystems independent of
//! each other. Each result (`Input::WriteDone`, `Input::ReadDone`) is fed back when it comes, in
//! the same per-filesystem order, interleaved with any other input. The core never assumes a
//! result arrives before the next input.

use serde::{Deserialize, Serialize};

use crate::errno;
use crate::types::{Jid, LeaveReason, NodeId, Peer, SysfsFile, Table};
use crate::uevent::KernelEvent;

/// Everything that can happen to a node.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Input {
    /// A CPG configuration change, with the partition's quorum as the driver read it when it
    /// built this input: the core takes the quorum first, so it never judges a membership newer
    /// than its quorum view.
    ConfChg { change: ConfChg, quorate: bool },
    /// A CPG message delivered in agreed order in `group`, from the process `sender`.
    Deliver {
        group: String,
        sender: Peer,
        payload: Vec<u8>,
    },
    /// The corosync quorum service's view of this node's partition, when it changed without a
    /// configuration change of the daemon group (a node without a daemon came or went).
    Quorum { quorate: bool },
    /// The corosync membership (every node, daemon or not), as the quorum service reports it.
    /// A node that leaves it may have joined a DLM lockspace without its daemon ever joining
    /// the group (the kernel joins at mount(2)); dlm_controld then waits for a notification.
    Membership { members: Vec<NodeId> },
    /// A parsed kernel uevent.
    Kernel(KernelEvent),
    /// The result of an [`Output::Write`], fed back before the next unrelated input.
    WriteDone {
        table: Table,
        file: SysfsFile,
        value: i64,
        result: Result<(), WriteError>,
    },
    /// The result of an [`Output::Read`]: the file's decimal value, or `Err(errno)`.
    ReadDone {
        table: Table,
        file: SysfsFile,
        result: Result<i64, i32>,
    },
    /// dlm_controld's answer to [`Output::DlmRegister`]: `Err(EOPNOTSUPP)` when it runs without
    /// `enable_fscontrol=1`, `Err(ENOTCONN)` when it is not running (or not reachable).
    DlmRegistered {
        table: Table,
        result: Result<(), i32>,
    },
    /// dlm_controld's answer to [`Output::DlmNotify`]: `Err(EAGAIN)` while it has not processed
    /// the node's failure yet (the core asks again later, unless the node came back meanwhile).
    DlmNotified {
        table: Table,
        nodeid: NodeId,
        result: Result<(), i32>,
    },
    /// The mount's read-only state as the kernel applied it (the `online` uevent of a remount
    /// carries the state from *before* the remount, so the driver re-reads it from the
    /// filesystem's sysfs `status` and reports every change here).
    MountMode { table: Table, ro: bool },
    /// The fencing backend reports that `nodeid` was fenced at `at` (on the core's clock).
    Fenced { nodeid: NodeId, at: crate::Time },
    /// The fencing backend could not fence `nodeid`; the core asks again later.
    FenceFailed { nodeid: NodeId, reason: String },
    /// An operator confirmed (`gfs_control fence-ack`) that `nodeid` is down.
    FenceAck { request: u64, nodeid: NodeId },
    /// The deadline from `Node::poll_timeout` passed.
    Timeout,
}

/// A CPG configuration change in `group` as corosync reports it (the member list is the new
/// one). Members are processes (node id and pid): the core admits one instance per node as its
/// daemon.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ConfChg {
    pub group: String,
    pub members: Vec<Peer>,
    pub joined: Vec<Peer>,
    pub left: Vec<(Peer, LeaveReason)>,
}

impl ConfChg {
    /// The core's input for this change, with the quorum read as it is built.
    pub fn with_quorum(self, quorate: bool) -> Input {
        Input::ConfChg {
            change: self,
            quorate,
        }
    }
}

/// Why a sysfs write failed, as the protocol tells the cases apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WriteError {
    /// The filesystem's sysfs directory or file is gone (the mount is), or the kernel said
    /// `ENODEV`.
    Gone,
    /// `EBUSY`: `first`/`jid` on a mount the kernel manages itself, or `recover` of a journal
    /// already being replayed.
    Busy,
    /// `ENOENT` from the kernel itself (for `recover`: no such journal).
    NoJournal,
    /// Any other errno.
    Refused(i32),
}

impl WriteError {
    /// The kernel's answer to a write(2) on a lock_module file (a missing file is
    /// [`WriteError::Gone`] before any write is tried, and is the driver's to tell).
    pub fn from_errno(errno: i32) -> WriteError {
        match errno {
            errno::ENODEV => WriteError::Gone,
            errno::EBUSY => WriteError::Busy,
            errno::ENOENT => WriteError::NoJournal,
            other => WriteError::Refused(other),
        }
    }

    pub fn errno(self) -> i32 {
        match self {
            WriteError::Gone => errno::ENODEV,
            WriteError::Busy => errno::EBUSY,
            WriteError::NoJournal => errno::ENOENT,
            WriteError::Refused(errno) => errno,
        }
    }
}

impl std::fmt::Display for WriteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WriteError::Gone => f.write_str("the filesystem's sysfs file is gone"),
            WriteError::Busy => f.write_str("busy (EBUSY)"),
            WriteError::NoJournal => f.write_str("no such journal (ENOENT)"),
            WriteError::Refused(errno) => write!(f, "errno {errno}"),
        }
    }
}

/// Everything a node asks its driver to do.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Output {
    /// Join the daemon group (once, at start; the only CPG group: per-filesystem holders are
    /// part of the replicated state, so no corosync resources grow with the filesystems).
    JoinGroup { group: String },
    /// Multicast in agreed order. The driver must keep the order of sends, retrying on TRY_AGAIN.
    Mcast { group: String, payload: Vec<u8> },
    /// Write `value` (decimal ASCII) to `<root>/<table>/lock_module/<file>`; answer with `Input::WriteDone`.
    Write {
        table: Table,
        file: SysfsFile,
        value: i64,
    },
    /// Read `<root>/<table>/lock_module/<file>` (after every earlier write and read of that
    /// filesystem); answer with `Input::ReadDone`.
    Read { table: Table, file: SysfsFile },
    /// Register the filesystem's lockspace (the table's fs part) with dlm_controld, so that DLM
    /// recovery of a failed node waits for [`Output::DlmNotify`]. The driver keeps the
    /// registration across dlm_controld restarts and answers once with `Input::DlmRegistered`.
    DlmRegister { table: Table },
    /// Drop the registration (unmount).
    DlmUnregister { table: Table },
    /// Tell dlm_controld that this node has blocked the filesystem against `nodeid`'s failure, so
    /// DLM recovery of that node's locks may go ahead. One attempt: answer with
    /// `Input::DlmNotified` (the core decides whether to ask again: a retry after the node
    /// rejoined would be taken for its next failure).
    DlmNotify { table: Table, nodeid: NodeId },
    /// Ask the fencing backend to fence `nodeid`, which failed at `failed_at`; the backend answers
    /// with `Input::Fenced` (a fence time at or after `failed_at` counts) or `Input::FenceFailed`.
    Fence {
        nodeid: NodeId,
        failed_at: crate::Time,
    },
    /// Ask corosync to remove a node from the cluster (a stale merge only).
    KillNode { nodeid: NodeId, reason: String },
    /// Answer to `Input::FenceAck`.
    Reply {
        request: u64,
        result: Result<String, String>,
    },
    /// A log record with the structured fields the driver turns into a tracing event.
    Log(LogRecord),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Error,
    Warn,
    Info,
    Debug,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LogRecord {
    pub level: Level,
    pub fs: Option<String>,
    pub nodeid: Option<NodeId>,
    pub jid: Option<Jid>,
    /// The failure epoch (membership-change sequence) the record belongs to.
    pub change: Option<u64>,
    pub message: String,
}

impl LogRecord {
    pub fn new(level: Level, message: impl Into<String>) -> LogRecord {
        LogRecord {
            level,
            fs: None,
            nodeid: None,
            jid: None,
            change: None,
            message: message.into(),
        }
    }

    pub fn fs(self, fs: impl std::fmt::Display) -> LogRecord {
        LogRecord {
            fs: Some(fs.to_string()),
            ..self
        }
    }

    pub fn node(self, nodeid: NodeId) -> LogRecord {
        LogRecord {
            nodeid: Some(nodeid),
            ..self
        }
    }

    pub fn jid(self, jid: impl Into<Option<Jid>>) -> LogRecord {
        LogRecord {
            jid: jid.into(),
            ..self
        }
    }
}

impl std::fmt::Display for LogRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(fs) = &self.fs {
            write!(f, "{fs} ")?;
        }
        f.write_str(&self.message)?;
        if let Some(n) = self.nodeid {
            write!(f, " nodeid={n}")?;
        }
        if let Some(j) = self.jid {
            write!(f, " jid={j}")?;
        }
        if let Some(c) = self.change {
            write!(f, " change={c}")?;
        }
        Ok(())
    }
}
