//! Startup checks made before the daemon reaches corosync: no lock_dlm filesystem mounted
//! behind its back, a fence program that can run, and one daemon per node (the pid file).

use std::fs::File;
use std::io::Write as _;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use crate::config::{FenceSetting, Settings};
use crate::fence::{self, FenceError};
use crate::kernel::SysfsWriter;

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(
        "refusing to start: gfs2 filesystems are mounted ({0}); their journals are unknown to \
         the cluster without a running gfs_controld. Unmount them (or reboot the node), or set \
         allow_existing_mounts=1 if you know they are safe"
    )]
    ExistingMounts(String),
    #[error(transparent)]
    Fence(#[from] FenceError),
    #[error("pid file {path}: {reason}")]
    PidFile { path: PathBuf, reason: String },
}

/// The checks that need neither corosync nor the runtime: existing mounts, then the fence
/// program (a typo would otherwise surface only at the first node failure).
pub fn check(settings: &Settings) -> Result<(), StartupError> {
    check_existing_mounts(settings)?;
    if let (true, FenceSetting::Program(program)) = (settings.enable_fencing, &settings.fencing) {
        fence::check_program(program)?;
    }
    Ok(())
}

/// Refuses to run beside another gfs_controld: the pid file is locked for the daemon's life.
pub struct PidFile {
    _file: File,
    path: PathBuf,
}

impl PidFile {
    pub fn acquire(path: &Path) -> Result<PidFile, StartupError> {
        let err = |reason: String| StartupError::PidFile {
            path: path.to_owned(),
            reason,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
        }
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| err(e.to_string()))?;
        // SAFETY: flock on an fd we own; no memory is involved.
        let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if locked != 0 {
            let holder = std::fs::read_to_string(path).unwrap_or_default();
            return Err(err(format!(
                "another gfs_controld is running (pid {})",
                holder.trim()
            )));
        }
        file.set_len(0).map_err(|e| err(e.to_string()))?;
        writeln!(file, "{}", std::process::id()).map_err(|e| err(e.to_string()))?;
        Ok(PidFile {
            _file: file,
            path: path.to_owned(),
        })
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Startup checks that need no corosync: a filesystem mounted before the daemon starts
/// has members' journals nobody tracks (SPEC §3).
pub fn check_existing_mounts(settings: &Settings) -> Result<(), StartupError> {
    let existing: Vec<String> = SysfsWriter::new(&settings.sysfs_root)
        .existing_tables()
        .into_iter()
        .filter(|t| t.proto.as_deref() == Some("lock_dlm"))
        .map(|t| t.name)
        .collect();
    if existing.is_empty() {
        return Ok(());
    }
    let list = existing.join(", ");
    if settings.allow_existing_mounts {
        tracing::warn!(
            tables = %list,
            "gfs2 filesystems were mounted before gfs_controld started; allow_existing_mounts=1, \
             so they are left alone and not protected by this daemon"
        );
        Ok(())
    } else {
        Err(StartupError::ExistingMounts(list))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_pid_file_lock_is_refused() {
        let dir = std::env::temp_dir().join(format!("gfs-pid-{}", std::process::id()));
        let path = dir.join("gfs_controld.pid");
        let first = PidFile::acquire(&path).unwrap();
        let second = PidFile::acquire(&path);
        assert!(matches!(second, Err(StartupError::PidFile { .. })));
        drop(first);
        assert!(!path.exists());
        let _ = std::fs::remove_dir_all(dir);
    }
}
