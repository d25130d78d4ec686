//! Switches that break one safety gate each, so the simulator's tests can prove its checkers
//! catch the breach. They exist only in builds with the `sabotage` feature (which gfs-sim
//! enables and the daemon does not); elsewhere every switch reads as off.

use super::Node;

/// Test-only switches, each breaking one safety gate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sabotage {
    /// Replay without waiting for the failed node to be fenced (breaks S1).
    pub skip_fencing: bool,
    /// Replay without quorum (breaks S1).
    pub ignore_quorum: bool,
    /// Give every mounter the lowest jid in use (breaks S4).
    pub duplicate_jid: bool,
    /// Unblock as soon as a replayer is chosen, before the replay finished (breaks S3).
    pub early_unblock: bool,
    /// Assign replayers before every member confirmed it blocked.
    pub skip_barrier: bool,
    /// Readmit members that return from a partition with state (breaks S7).
    pub accept_stale_merge: bool,
    /// Give every mounter `first=0`, even when no mount has completed (breaks S5).
    pub skip_first_wait: bool,
    /// Tell dlm_controld a failed node may be recovered as soon as it fails, before this node has
    /// blocked or the node is fenced (breaks S8).
    pub early_dlm_notify: bool,
}

impl Node {
    /// The switches in force: none without the `sabotage` feature.
    pub(super) fn sabotage(&self) -> Sabotage {
        #[cfg(feature = "sabotage")]
        return self.cfg.sabotage;
        #[cfg(not(feature = "sabotage"))]
        Sabotage::default()
    }
}
