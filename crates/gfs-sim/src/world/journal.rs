//! What is true of each journal on the shared disk, whatever any daemon believes: who holds it,
//! whether it needs replay and whose failure made it so, who is replaying it, and whether a dead
//! kernel's lock still covers it. The kernel model keeps it; the checkers judge against it.

use std::collections::BTreeSet;

use gfs_core::NodeId;

#[derive(Clone, Debug, Default)]
pub(super) struct JournalTruth {
    /// The live kernel instance that holds this journal: (node, kernel instance).
    pub holder: Option<(NodeId, u64)>,
    pub holder_withdrawn: bool,
    /// Needs replay: its writer died or withdrew.
    pub dirty: bool,
    pub dirty_owner: Option<(NodeId, u64)>,
    pub dirty_withdrawn: bool,
    pub replaying: BTreeSet<NodeId>,
    /// Daemons that processed the failure of its writer (they must stay blocked: S3).
    pub known_by: BTreeSet<NodeId>,
    /// Its lock is held by a dead kernel (its writer or a replayer) until DLM recovery.
    pub dead_locked: bool,
    pub dead_lock_by: Option<NodeId>,
}

impl JournalTruth {
    /// The live kernel holding the journal still uses it: a withdrawn kernel whose journal the
    /// group already replayed does not.
    pub fn in_use_by(&self, node: NodeId) -> bool {
        self.holder.is_some_and(|(h, _)| h == node) && (!self.holder_withdrawn || self.dirty)
    }

    pub fn user(&self) -> Option<NodeId> {
        self.holder
            .filter(|_| !self.holder_withdrawn || self.dirty)
            .map(|(h, _)| h)
    }

    /// Another kernel holds the journal's lock: a live writer (a withdrawn 6.1 kernel drops
    /// its journal locks before it says `offline`), or a replayer.
    pub fn locked_by_other(&self, node: NodeId) -> bool {
        self.holder
            .is_some_and(|(h, _)| h != node && !self.holder_withdrawn)
            || self.replaying.iter().any(|r| *r != node)
    }
}
