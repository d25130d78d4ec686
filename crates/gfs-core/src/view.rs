//! Serialisable snapshots of a node's state, for `gfs_control ls/status` and for the checkers.

use serde::{Deserialize, Serialize};

use crate::types::{Jid, MountMode, NodeId};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusView {
    pub nodeid: NodeId,
    pub cluster_name: String,
    /// The protocol version the daemon group runs (0 until this daemon has synced).
    pub protocol_version: u16,
    pub protocol_max: u16,
    /// Has this daemon received the group's state (it may act only then).
    pub synced: bool,
    pub quorate: bool,
    /// Nodes whose gfs_controld is in the daemon group (before this daemon has synced: every
    /// node with a process in the group).
    pub members: Vec<NodeId>,
    /// Members that came back from a partition with stale state and are being removed (S7).
    pub stale_members: Vec<NodeId>,
    /// Failed nodes waiting to be fenced (only while quorate: an inquorate partition fences
    /// nothing, see `quorum_waits`). `waiting_ms` is as of the status request.
    pub fence_waits: Vec<FenceWaitView>,
    /// Failed nodes to be fenced once this inquorate partition regains quorum.
    #[serde(default)]
    pub quorum_waits: Vec<NodeId>,
    pub filesystems: usize,
    pub recoveries: Vec<RecoveryTimeline>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FenceWaitView {
    pub nodeid: NodeId,
    pub failed_at_ms: u64,
    /// How long fencing has been waited for: since the failure, or since quorum returned.
    pub waiting_ms: u64,
    pub requested: bool,
    pub last_error: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsView {
    pub table: String,
    pub name: String,
    /// The kernel coordinates recovery itself (modern DLM callbacks): the daemon leaves it alone.
    pub kernel_managed: bool,
    /// One-line state: `mounting`, `waiting for first mounter N`, `recovering jid J on node N`,
    /// `waiting for fencing of node N`, `waiting for quorum`, `blocked`, `mounted`, ...
    pub state: String,
    pub local: Option<LocalMountView>,
    pub members: Vec<MemberView>,
    pub dirty_journals: Vec<JournalView>,
    pub first_mounter: Option<NodeId>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalMountView {
    pub jid: Option<Jid>,
    pub mode: MountMode,
    pub blocked: bool,
    pub kernel_state: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberView {
    pub nodeid: NodeId,
    pub jid: Option<Jid>,
    pub mode: MountMode,
    /// `waiting`, `first-mounting`, `mounting`, `mounted`
    pub state: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalView {
    pub jid: Jid,
    pub owner: NodeId,
    pub replayer: Option<NodeId>,
    pub attempts: u32,
    pub waiting_for: String,
}

/// What happened, and when, for one failure (the last N are kept).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecoveryTimeline {
    pub change: u64,
    pub failed: Vec<NodeId>,
    pub filesystems: Vec<String>,
    pub started_ms: u64,
    pub finished_ms: Option<u64>,
    pub events: Vec<TimelineEntry>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimelineEntry {
    pub at_ms: u64,
    pub what: String,
}
