//! The DLM's global `recover_callbacks` setting in configfs
//! (`<configfs_root>/dlm/cluster/recover_callbacks`).
//!
//! When it is 1 as a gfs2 mount creates its lockspace (dlm_controld's default), the kernel picks
//! journal ids and recovers by itself: the filesystem is kernel-managed and the daemon must
//! never write to it. When it is 0 (dlm_controld with `enable_fscontrol=1`), the kernel waits
//! for the daemon's `first`/`jid`. The `add` uevent does not tell the two apart, so the daemon
//! reads this file at every `add`. A configfs attribute read never waits on the DLM, so it is
//! done on the event loop, keeping the `add` in order with the uevents that follow it.

use std::path::{Path, PathBuf};

/// What `recover_callbacks` said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecoverCallbacks {
    /// The file's value (1: kernel-managed; anything else: daemon-managed).
    Value(i64),
    /// Missing, unreadable or not a number: no DLM configfs, so daemon-managed (and the
    /// dlm_controld registration will fail and refuse the mount if the DLM is really absent).
    Unreadable { path: PathBuf, reason: String },
}

impl RecoverCallbacks {
    pub fn kernel_managed(&self) -> bool {
        matches!(self, RecoverCallbacks::Value(1))
    }
}

/// Reads `<configfs_root>/dlm/cluster/recover_callbacks`.
pub fn recover_callbacks(configfs_root: &Path) -> RecoverCallbacks {
    let path = configfs_root
        .join("dlm")
        .join("cluster")
        .join("recover_callbacks");
    match std::fs::read_to_string(&path) {
        // configfs shows it with "%u\n"; dlm_controld writes it with kstrtouint base 0.
        Ok(text) => match text.trim().parse::<i64>() {
            Ok(value) => RecoverCallbacks::Value(value),
            Err(_) => RecoverCallbacks::Unreadable {
                path,
                reason: format!("not a number: {:?}", text.trim()),
            },
        },
        Err(e) => RecoverCallbacks::Unreadable {
            path,
            reason: e.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_means_kernel_managed_and_anything_else_does_not() {
        let dir = std::env::temp_dir().join(format!("gfs-configfs-{}", std::process::id()));
        let cluster = dir.join("dlm/cluster");
        std::fs::create_dir_all(&cluster).unwrap();
        let file = cluster.join("recover_callbacks");
        assert!(!recover_callbacks(&dir.join("nope")).kernel_managed());
        for (text, managed) in [("1\n", true), ("0\n", false), ("junk", false), ("", false)] {
            std::fs::write(&file, text).unwrap();
            assert_eq!(
                recover_callbacks(&dir).kernel_managed(),
                managed,
                "{text:?}"
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
