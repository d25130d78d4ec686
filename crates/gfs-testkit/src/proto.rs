//! The simulator's client/server protocol: one JSON [`Request`] line, one JSON [`Response`] line.
//!
//! Fields added after the first version carry `#[serde(default)]`, so older clients and older
//! `status --json` readers keep working.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    /// Start a mount; the reply comes when `online` was sent or the mount failed.
    Mount {
        table: String,
        #[serde(default)]
        spectator: bool,
        #[serde(default)]
        ro: bool,
        /// How long the mount may wait (for the mount glock and for its `jid`); then it fails
        /// with EINTR, as a mount killed by a signal would.
        #[serde(default)]
        timeout_ms: Option<u64>,
        /// Journals on the filesystem (mkfs.gfs2 -j); default [`gfs_core::MAX_JOURNALS`].
        #[serde(default)]
        journals: Option<u32>,
        /// How long this mount's DLM lockspace join takes; default: the server's `join_ms`.
        #[serde(default)]
        join_ms: Option<u64>,
        /// Emulates `-o hostdata=first=0`: `first` reads 0 and a spectator checks no journal.
        #[serde(default)]
        hostdata_first0: bool,
    },
    Umount {
        table: String,
    },
    Withdraw {
        table: String,
    },
    Remount {
        table: String,
        ro: bool,
    },
    Set {
        #[serde(default)]
        replay_ms: Option<u64>,
        #[serde(default)]
        fail_next_replays: Option<u32>,
        #[serde(default)]
        join_ms: Option<u64>,
        /// Rewrites the configfs `recover_callbacks` file (read by each later mount).
        #[serde(default)]
        recover_callbacks: Option<u32>,
    },
    Status,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    /// Set when the request failed with an errno (a refused mount: the negative `jid` written).
    #[serde(default)]
    pub errno: Option<i32>,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub status: Option<Status>,
}

impl Response {
    pub fn ok(message: impl Into<String>) -> Response {
        Response {
            ok: true,
            errno: None,
            message: message.into(),
            status: None,
        }
    }

    pub fn err(errno: i32, message: impl Into<String>) -> Response {
        Response {
            ok: false,
            errno: Some(errno),
            message: message.into(),
            status: None,
        }
    }
}

/// `status --json`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub tables: Vec<TableStatus>,
    /// Writes the real kernel refused (the writer got that errno), writes to a kernel-managed
    /// filesystem, and safety breaches (a mount completing with a dirty journal nobody holds,
    /// a jid held by another live node).
    pub violations: Vec<Entry>,
    /// Every sysfs write and read (with its result), uevent, replay and mount step.
    pub timeline: Vec<Entry>,
    pub replay_ms: u64,
    pub fail_next_replays: u32,
    /// Default DLM join time of a mount.
    #[serde(default)]
    pub join_ms: u64,
    /// The DLM's `recover_callbacks` as later mounts will see it (1: kernel-managed).
    #[serde(default)]
    pub recover_callbacks: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableStatus {
    pub table: String,
    /// `rw`, `ro` or `spectator` (after a remount: the new mode).
    pub mode: String,
    /// The `jid` written (negative: the mount was refused); `None` before the write.
    pub jid: Option<i64>,
    /// Current `first` (kernel default 1).
    pub first: i64,
    pub blocked: bool,
    /// `online` was sent.
    pub mounted: bool,
    /// `offline` was sent.
    pub withdrawn: bool,
    /// Journals whose `recover` write ended with RECOVERY=Done, in order.
    pub replays_done: Vec<u32>,
    /// Journals whose `recover` write ended with RECOVERY=Failed, in order.
    pub replays_failed: Vec<u32>,
    /// Journals with a recovery queued or running on this node now.
    pub replaying: Vec<u32>,
    /// `joining` (DLM join), `joined` (waiting for the mount glock or `jid`), `journal_ready`
    /// (own journal checked), `mounted`.
    #[serde(default)]
    pub stage: String,
    /// Journals of the filesystem.
    #[serde(default)]
    pub journals: u32,
    /// The DLM had `recover_callbacks=1` at this mount: the kernel manages recovery itself.
    #[serde(default)]
    pub kernel_managed: bool,
    /// Journals whose dirty contents this node replayed (at mount or for `recover`), in order.
    #[serde(default)]
    pub journals_replayed: Vec<u32>,
    /// Journals dirty on the shared disk now (a live rw mounter's journal is dirty).
    #[serde(default)]
    pub dirty: Vec<u32>,
    /// `lock_module/withdraw=1` was written.
    #[serde(default)]
    pub withdraw_acked: bool,
}

/// One timeline line or violation. `table` is empty for simulator-wide entries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub t_ms: u64,
    /// `t_ms` in microseconds (benchmarks measure sub-millisecond steps).
    #[serde(default)]
    pub t_us: u64,
    pub table: String,
    pub what: String,
    /// For sysfs writes: `ok` or the errno name the writer got; for reads: what it read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<String>,
    /// For sysfs writes: when the write returned (a blocked write returns later than `t_ms`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_ms: Option<u64>,
    /// `end_ms` in microseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_us: Option<u64>,
}
