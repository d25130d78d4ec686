//! corosync cfg: removing a node from the cluster.

use rust_corosync::cfg;
use rust_corosync::NodeId;

use super::CorosyncError;

/// Longest reason corosync accepts (its `CS_MAX_NAME_LENGTH` is 256, NUL included).
const MAX_REASON: usize = 255;

/// Ask corosync to remove `nodeid` from the cluster (cfg kill_node), as dlm_controld does for
/// a stale merge. `reason` ends up in corosync's log (NUL bytes dropped, cut to 255 bytes).
pub fn kill_node(nodeid: u32, reason: &str) -> Result<(), CorosyncError> {
    let mut reason: String = reason.chars().filter(|c| *c != '\0').collect();
    if reason.len() > MAX_REASON {
        let mut cut = MAX_REASON;
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        reason.truncate(cut);
    }
    let handle = cfg::initialize(&cfg::Callbacks {
        corosync_cfg_shutdown_callback_fn: None,
    })
    .map_err(|e| CorosyncError::unavailable("cfg", e))?;
    cfg::kill_node(&handle, NodeId::from(nodeid), &reason)
        .map_err(|e| CorosyncError::call("corosync_cfg_kill_node", e))
}
