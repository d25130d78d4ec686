//! The simulator's client/server protocol: one JSON [`Request`] line, one JSON [`Response`] line.

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
        /// How long to wait for the `jid` write; then the mount fails with EINTR (as if killed).
        #[serde(default)]
        timeout_ms: Option<u64>,
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
    /// Writes the real kernel would refuse (with the errno it would give) or that break safety.
    pub violations: Vec<Entry>,
    pub timeline: Vec<Entry>,
    pub replay_ms: u64,
    pub fail_next_replays: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableStatus {
    pub table: String,
    /// `rw`, `ro` or `spectator`.
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
    /// Journals whose replay finished with Done (mount-time own-journal replay included), in order.
    pub replays_done: Vec<u32>,
    /// Journals whose `recover` replay finished with Failed, in order.
    pub replays_failed: Vec<u32>,
    /// Journals being replayed now.
    pub replaying: Vec<u32>,
}

/// One timeline line or violation. `table` is empty for simulator-wide entries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub t_ms: u64,
    pub table: String,
    pub what: String,
}
