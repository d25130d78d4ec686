//! Writes to `<root>/<table>/lock_module/<file>` and the startup scan of `<root>`.

use std::fs::OpenOptions;
use std::io::{ErrorKind, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use gfs_core::{SysfsFile, Table};

/// Writes the `lock_module/` files of the GFS2 sysfs tree rooted at `root`
/// (`/sys/fs/gfs2` in production, a temporary directory served by the kernel simulator in tests).
#[derive(Clone, Debug)]
pub struct SysfsWriter {
    root: PathBuf,
}

/// A `<root>/<name>` entry found at startup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExistingTable {
    /// Directory name: the lock table (`cluster:fs`), not validated here.
    pub name: String,
    /// `lock_module/proto_name`, trimmed; `None` if unreadable.
    pub proto: Option<String>,
    /// `lock_module/jid` parsed as decimal; `None` if unreadable, empty or not a number.
    pub jid: Option<i64>,
}

impl SysfsWriter {
    pub fn new(root: impl Into<PathBuf>) -> SysfsWriter {
        SysfsWriter { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn lock_module(&self, table: &str) -> PathBuf {
        self.root.join(table).join("lock_module")
    }

    /// Writes `value` as decimal ASCII followed by `\n` with a single `write(2)`.
    ///
    /// The file is opened `O_WRONLY|O_TRUNC|O_NONBLOCK` without `O_CREAT`. sysfs ignores
    /// `O_TRUNC` and `O_NONBLOCK` (a `jid` write still blocks in the kernel as it should); the
    /// simulator's regular files need `O_TRUNC` so a shorter value leaves no tail, and its
    /// `recover` FIFO needs `O_NONBLOCK` so a dead simulator gives ENXIO instead of a hang.
    /// A missing directory or file (ENOENT, ENOTDIR) or a FIFO nobody serves (ENXIO) means the
    /// filesystem is gone and is reported as `ENODEV`; every other errno is returned as the
    /// kernel gave it (EBUSY, EINVAL, ESHUTDOWN, ...).
    /// `EINTR` is retried. A short write (sysfs never does one) is reported as `EIO`.
    ///
    /// Note: on a real kernel a `jid`/`first` write may block until the lock module is mounted.
    pub fn write(&self, table: &Table, file: SysfsFile, value: i64) -> Result<(), i32> {
        let path = self.lock_module(&table.to_string()).join(file.name());
        let mut f = loop {
            match OpenOptions::new()
                .write(true)
                .truncate(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&path)
            {
                Ok(f) => break f,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    let errno = e.raw_os_error().unwrap_or(libc::EIO);
                    return Err(match errno {
                        libc::ENOENT | libc::ENOTDIR | libc::ENXIO => libc::ENODEV,
                        other => other,
                    });
                }
            }
        };
        let text = format!("{value}\n");
        loop {
            match f.write(text.as_bytes()) {
                Ok(n) if n == text.len() => return Ok(()),
                Ok(_) => return Err(libc::EIO),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.raw_os_error().unwrap_or(libc::EIO)),
            }
        }
    }

    /// The filesystems already present at startup, sorted by name. A missing or unreadable root
    /// gives an empty list.
    pub fn existing_tables(&self) -> Vec<ExistingTable> {
        let Ok(dir) = std::fs::read_dir(&self.root) else {
            return Vec::new();
        };
        let mut out: Vec<ExistingTable> = dir
            .filter_map(Result::ok)
            .filter(|e| e.path().is_dir())
            .filter_map(|e| e.file_name().into_string().ok())
            .map(|name| {
                let lm = self.lock_module(&name);
                let read = |f: &str| std::fs::read_to_string(lm.join(f)).ok();
                ExistingTable {
                    proto: read("proto_name").map(|s| s.trim().to_owned()),
                    jid: read("jid").and_then(|s| s.trim().parse::<i64>().ok()),
                    name,
                }
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct TempDir(PathBuf);
    impl TempDir {
        fn new(tag: &str) -> TempDir {
            use std::sync::atomic::{AtomicU32, Ordering};
            static N: AtomicU32 = AtomicU32::new(0);
            let p = std::env::temp_dir().join(format!(
                "gfs-sysfs-unit-{tag}-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&p).unwrap();
            TempDir(p)
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn table() -> Table {
        Table::parse("alpha:fs1").unwrap()
    }

    #[test]
    fn writes_decimal_with_newline_and_truncates() {
        let tmp = TempDir::new("write");
        let lm = tmp.0.join("alpha:fs1/lock_module");
        std::fs::create_dir_all(&lm).unwrap();
        std::fs::write(lm.join("jid"), "").unwrap();
        std::fs::write(lm.join("recover"), "123456\n").unwrap();
        let w = SysfsWriter::new(&tmp.0);
        w.write(&table(), SysfsFile::Jid, -22).unwrap();
        assert_eq!(std::fs::read_to_string(lm.join("jid")).unwrap(), "-22\n");
        w.write(&table(), SysfsFile::Recover, 7).unwrap();
        assert_eq!(std::fs::read_to_string(lm.join("recover")).unwrap(), "7\n");
    }

    #[test]
    fn missing_file_or_directory_is_enodev() {
        let tmp = TempDir::new("enodev");
        let w = SysfsWriter::new(&tmp.0);
        assert_eq!(w.write(&table(), SysfsFile::Block, 1), Err(libc::ENODEV));
        std::fs::create_dir_all(tmp.0.join("alpha:fs1/lock_module")).unwrap();
        // The directory exists but the file does not: never created.
        assert_eq!(w.write(&table(), SysfsFile::Block, 1), Err(libc::ENODEV));
        assert!(!tmp.0.join("alpha:fs1/lock_module/block").exists());
        let gone = SysfsWriter::new(tmp.0.join("nope"));
        assert_eq!(gone.existing_tables(), vec![]);
    }

    #[test]
    fn unserved_fifo_is_enodev_not_a_hang() {
        let tmp = TempDir::new("fifo");
        let lm = tmp.0.join("alpha:fs1/lock_module");
        std::fs::create_dir_all(&lm).unwrap();
        nix::unistd::mkfifo(
            &lm.join("recover"),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .unwrap();
        let w = SysfsWriter::new(&tmp.0);
        assert_eq!(w.write(&table(), SysfsFile::Recover, 1), Err(libc::ENODEV));
    }

    #[test]
    fn existing_tables_reads_proto_and_jid() {
        let tmp = TempDir::new("existing");
        for (name, proto, jid) in [("c:b", "lock_dlm\n", "3\n"), ("c:a", "lock_nolock", "")] {
            let lm = tmp.0.join(name).join("lock_module");
            std::fs::create_dir_all(&lm).unwrap();
            std::fs::write(lm.join("proto_name"), proto).unwrap();
            std::fs::write(lm.join("jid"), jid).unwrap();
        }
        std::fs::write(tmp.0.join("stray-file"), "x").unwrap();
        std::fs::create_dir_all(tmp.0.join("c:empty")).unwrap();
        let got = SysfsWriter::new(&tmp.0).existing_tables();
        assert_eq!(
            got,
            vec![
                ExistingTable {
                    name: "c:a".into(),
                    proto: Some("lock_nolock".into()),
                    jid: None
                },
                ExistingTable {
                    name: "c:b".into(),
                    proto: Some("lock_dlm".into()),
                    jid: Some(3)
                },
                ExistingTable {
                    name: "c:empty".into(),
                    proto: None,
                    jid: None
                },
            ]
        );
    }
}
