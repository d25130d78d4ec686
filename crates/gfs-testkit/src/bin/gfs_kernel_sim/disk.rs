//! The cluster's shared disk as the simulated kernels see it: one directory for every node of a
//! test cluster (`serve --shared DIR`), holding per filesystem
//!
//! * `mount.lock`: the cluster-wide mount glock (GFS2_MOUNT_LOCK), EX for a whole mount;
//! * `journal<j>.lock`: journal `j`'s glock, held EX by the node that mounted with jid `j`, and
//!   taken with TRY by a first mounter or a `recover` replay;
//! * `journal<j>.dirty`: journal `j` has log records not yet replayed (a mount that ends
//!   uncleanly leaves it; a replay or a clean unmount clears it).
//!
//! Locks are Linux open-file-description locks (`F_OFD_SETLK`): like flock(2) they belong to the
//! open file, so the kernel releases them when the holder's process dies (a killed node), and
//! unlike flock they can be tested without being taken (`F_OFD_GETLK`), so a check never makes
//! another node's TRY fail.

use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg};

/// A lock on the shared disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lock {
    Mount,
    Journal(u32),
}

impl Lock {
    fn file_name(self) -> String {
        match self {
            Lock::Mount => "mount.lock".to_owned(),
            Lock::Journal(j) => format!("journal{j}.lock"),
        }
    }
}

/// A held lock; dropping it releases the lock.
#[derive(Debug)]
pub struct Held {
    _file: File,
}

#[derive(Clone, Debug)]
pub struct SharedDisk {
    dir: PathBuf,
}

fn whole_file(kind: libc::c_short) -> libc::flock {
    libc::flock {
        l_type: kind,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: 0,
        l_len: 0,
        l_pid: 0,
    }
}

impl SharedDisk {
    pub fn new(dir: impl Into<PathBuf>) -> std::io::Result<SharedDisk> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)?;
        Ok(SharedDisk { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn fs_dir(&self, table: &str) -> PathBuf {
        self.dir.join(table)
    }

    /// Takes `lock` in EX without waiting: `None` while another holder has it.
    pub fn try_lock(&self, table: &str, lock: Lock) -> std::io::Result<Option<Held>> {
        let dir = self.fs_dir(table);
        std::fs::create_dir_all(&dir)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(dir.join(lock.file_name()))?;
        let fl = whole_file(libc::F_WRLCK as libc::c_short);
        loop {
            match fcntl(file.as_raw_fd(), FcntlArg::F_OFD_SETLK(&fl)) {
                Ok(_) => return Ok(Some(Held { _file: file })),
                Err(Errno::EAGAIN) | Err(Errno::EACCES) => return Ok(None),
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Whether anyone (another node, or another open file of this one) holds `lock` now.
    pub fn is_held(&self, table: &str, lock: Lock) -> bool {
        let path = self.fs_dir(table).join(lock.file_name());
        let Ok(file) = OpenOptions::new().read(true).write(true).open(path) else {
            return false; // never locked by anyone
        };
        let mut fl = whole_file(libc::F_WRLCK as libc::c_short);
        match fcntl(file.as_raw_fd(), FcntlArg::F_OFD_GETLK(&mut fl)) {
            Ok(_) => fl.l_type != libc::F_UNLCK as libc::c_short,
            Err(_) => false,
        }
    }

    fn dirty_path(&self, table: &str, jid: u32) -> PathBuf {
        self.fs_dir(table).join(format!("journal{jid}.dirty"))
    }

    pub fn is_dirty(&self, table: &str, jid: u32) -> bool {
        self.dirty_path(table, jid).exists()
    }

    pub fn set_dirty(&self, table: &str, jid: u32, dirty: bool) -> std::io::Result<()> {
        let path = self.dirty_path(table, jid);
        if dirty {
            std::fs::create_dir_all(self.fs_dir(table))?;
            File::create(path).map(|_| ())
        } else {
            match std::fs::remove_file(path) {
                Err(e) if e.kind() != ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            }
        }
    }

    /// The dirty journals among `0..journals`, ascending.
    pub fn dirty_journals(&self, table: &str, journals: u32) -> Vec<u32> {
        let Ok(entries) = std::fs::read_dir(self.fs_dir(table)) else {
            return Vec::new();
        };
        let mut out: Vec<u32> = entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                name.strip_prefix("journal")?
                    .strip_suffix(".dirty")?
                    .parse()
                    .ok()
            })
            .filter(|j| *j < journals)
            .collect();
        out.sort_unstable();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(tag: &str) -> SharedDisk {
        let dir = std::env::temp_dir().join(format!("ksim-disk-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        SharedDisk::new(dir).unwrap()
    }

    #[test]
    fn locks_exclude_other_open_files_and_release_on_drop() {
        let d = disk("locks");
        assert!(!d.is_held("c:f", Lock::Mount));
        let held = d.try_lock("c:f", Lock::Mount).unwrap().expect("free");
        assert!(d.is_held("c:f", Lock::Mount));
        assert!(d.try_lock("c:f", Lock::Mount).unwrap().is_none());
        assert!(d.try_lock("c:f", Lock::Journal(0)).unwrap().is_some());
        drop(held);
        assert!(!d.is_held("c:f", Lock::Mount));
        assert!(d.try_lock("c:f", Lock::Mount).unwrap().is_some());
        let _ = std::fs::remove_dir_all(d.dir());
    }

    #[test]
    fn dirty_flags() {
        let d = disk("dirty");
        assert!(!d.is_dirty("c:f", 3));
        d.set_dirty("c:f", 3, true).unwrap();
        d.set_dirty("c:f", 1, true).unwrap();
        d.set_dirty("c:f", 9, true).unwrap();
        assert_eq!(d.dirty_journals("c:f", 8), vec![1, 3]);
        d.set_dirty("c:f", 3, false).unwrap();
        d.set_dirty("c:f", 3, false).unwrap();
        assert_eq!(d.dirty_journals("c:f", 8), vec![1]);
        let _ = std::fs::remove_dir_all(d.dir());
    }
}
