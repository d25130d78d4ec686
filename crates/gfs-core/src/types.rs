//! Names shared by inputs, outputs, the wire format and the views.

use serde::{Deserialize, Serialize};

pub type NodeId = u32;
pub type Jid = u32;

/// The daemon-wide CPG group.
pub const DAEMON_GROUP: &str = "gfs:controld";
/// Prefix of the per-filesystem CPG groups: `gfs:mount:<fsname>`.
pub const MOUNT_GROUP_PREFIX: &str = "gfs:mount:";
/// Longest filesystem name (the DLM lockspace name limit).
pub const MAX_FSNAME_LEN: usize = 64;
/// Longest lock table `<cluster>:<fs>` (the on-disk superblock field, NUL excluded).
pub const MAX_TABLE_LEN: usize = 63;

/// A member of a CPG group as corosync reports it: one process on one node. Any process that
/// may use corosync's IPC can join the daemon group, so a node's daemon is one particular
/// instance, not the node id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Peer {
    pub nodeid: NodeId,
    pub pid: u32,
}

impl Peer {
    pub fn new(nodeid: NodeId, pid: u32) -> Peer {
        Peer { nodeid, pid }
    }
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.nodeid, self.pid)
    }
}

/// Why a member left a CPG group (corosync's `cpg_reason`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum LeaveReason {
    /// Clean `cpg_leave`: nothing to recover.
    Leave,
    /// The node left the corosync membership (crash, partition).
    NodeDown,
    /// The process died while corosync lives on.
    ProcDown,
}

impl LeaveReason {
    pub fn is_failure(self) -> bool {
        !matches!(self, LeaveReason::Leave)
    }
}

/// How a filesystem is mounted on one node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MountMode {
    Rw,
    Ro,
    Spectator,
}

impl MountMode {
    pub fn from_flags(ro: bool, spectator: bool) -> MountMode {
        match (spectator, ro) {
            (true, _) => MountMode::Spectator,
            (false, true) => MountMode::Ro,
            (false, false) => MountMode::Rw,
        }
    }

    /// Only read-write mounters replay other nodes' journals (SPEC §5).
    pub fn can_replay(self) -> bool {
        self == MountMode::Rw
    }

    pub fn as_str(self) -> &'static str {
        match self {
            MountMode::Rw => "rw",
            MountMode::Ro => "ro",
            MountMode::Spectator => "spectator",
        }
    }
}

/// The `lock_module/` files the daemon writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SysfsFile {
    Block,
    First,
    Jid,
    Recover,
    Withdraw,
}

impl SysfsFile {
    pub fn name(self) -> &'static str {
        match self {
            SysfsFile::Block => "block",
            SysfsFile::First => "first",
            SysfsFile::Jid => "jid",
            SysfsFile::Recover => "recover",
            SysfsFile::Withdraw => "withdraw",
        }
    }
}

/// A validated lock table `<cluster>:<fs>`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Table {
    cluster: String,
    fs: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TableError {
    NoColon,
    TooLong,
    EmptyPart,
    BadCharacter,
    FsNameTooLong,
}

impl std::fmt::Display for TableError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TableError::NoColon => "lock table has no ':' between cluster and filesystem name",
            TableError::TooLong => "lock table is longer than 63 characters",
            TableError::EmptyPart => "lock table has an empty cluster or filesystem name",
            TableError::BadCharacter => "lock table contains a character other than [A-Za-z0-9_.-]",
            TableError::FsNameTooLong => "filesystem name is longer than 64 characters",
        })
    }
}

impl Table {
    pub fn parse(text: &str) -> Result<Table, TableError> {
        if text.len() > MAX_TABLE_LEN {
            return Err(TableError::TooLong);
        }
        let (cluster, fs) = text.split_once(':').ok_or(TableError::NoColon)?;
        if cluster.is_empty() || fs.is_empty() {
            return Err(TableError::EmptyPart);
        }
        let ok = |s: &str| {
            s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
        };
        if !ok(cluster) || !ok(fs) {
            return Err(TableError::BadCharacter);
        }
        if fs.len() > MAX_FSNAME_LEN {
            return Err(TableError::FsNameTooLong);
        }
        Ok(Table {
            cluster: cluster.to_owned(),
            fs: fs.to_owned(),
        })
    }

    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    pub fn fs(&self) -> &str {
        &self.fs
    }

    pub fn mount_group(&self) -> String {
        format!("{MOUNT_GROUP_PREFIX}{}", self.fs)
    }
}

impl std::fmt::Display for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.cluster, self.fs)
    }
}
