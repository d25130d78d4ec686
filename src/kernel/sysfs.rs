//! Writes and reads of `<root>/<table>/lock_module/<file>`, the mount's `status` file, and the
//! startup scan of `<root>`. Every call may block in the kernel: the daemon runs them through
//! [`super::SysfsExecutor`], never on its event loop.

use std::fs::OpenOptions;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use gfs_core::{SysfsFile, Table, WriteError};

/// Writes the `lock_module/` files of the GFS2 sysfs tree rooted at `root`
/// (`/sys/fs/gfs2` in production, a temporary directory served by the kernel simulator in tests).
#[derive(Clone, Debug)]
pub struct SysfsWriter {
    root: PathBuf,
    /// `O_NONBLOCK` on open (see [`SysfsWriter::write`]); off only in tests that need a FIFO
    /// to block the way a real `jid` write does.
    nonblocking_open: bool,
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
        SysfsWriter {
            root: root.into(),
            nonblocking_open: true,
        }
    }

    /// For tests: open files without `O_NONBLOCK`, so that writing to a FIFO nobody reads
    /// blocks (in `open(2)`) until a reader comes, as a real `first`/`jid` write blocks until
    /// the DLM join completes.
    pub fn with_blocking_open(mut self) -> SysfsWriter {
        self.nonblocking_open = false;
        self
    }

    fn open_flags(&self) -> i32 {
        if self.nonblocking_open {
            libc::O_NONBLOCK
        } else {
            0
        }
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
    /// The one place write errors become the core's [`WriteError`]: a missing directory or file
    /// (ENOENT, ENOTDIR) or a FIFO nobody serves (ENXIO) means the filesystem is gone
    /// ([`WriteError::Gone`]); the kernel's own answers map by [`WriteError::from_errno`]
    /// (EBUSY, ENOENT: no such journal, EINVAL, ESHUTDOWN, ...).
    /// `EINTR` is retried. A short write (sysfs never does one) is refused as `EIO`.
    ///
    /// On a real kernel a `first`/`jid` write blocks until the DLM join completes and a
    /// `recover` write until this node's own journal is ready.
    pub fn write(&self, table: &Table, file: SysfsFile, value: i64) -> Result<(), WriteError> {
        self.write_named(&table.to_string(), file, value)
    }

    /// [`SysfsWriter::write`] to the filesystem whose sysfs directory is `name` (a lock table
    /// the daemon cannot parse, which it only ever refuses).
    pub fn write_named(&self, name: &str, file: SysfsFile, value: i64) -> Result<(), WriteError> {
        let path = self.lock_module(name).join(file.name());
        let mut f = loop {
            match OpenOptions::new()
                .write(true)
                .truncate(true)
                .custom_flags(self.open_flags())
                .open(&path)
            {
                Ok(f) => break f,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(WriteError::from_errno(gone_is_enodev(&e))),
            }
        };
        let text = format!("{value}\n");
        loop {
            match f.write(text.as_bytes()) {
                Ok(n) if n == text.len() => return Ok(()),
                Ok(_) => return Err(WriteError::Refused(libc::EIO)),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(WriteError::from_errno(
                        e.raw_os_error().unwrap_or(libc::EIO),
                    ))
                }
            }
        }
    }

    /// Reads `<root>/<table>/lock_module/<file>` as a decimal integer (surrounding whitespace
    /// ignored). Errors as for [`SysfsWriter::write`]; content that is not a decimal integer
    /// is `EINVAL`.
    pub fn read(&self, table: &Table, file: SysfsFile) -> Result<i64, i32> {
        let path = self.lock_module(&table.to_string()).join(file.name());
        let text = self.read_text(&path)?;
        text.trim().parse::<i64>().map_err(|_| libc::EINVAL)
    }

    /// Whether the mount is read-only now, from the `Mounted RO:` line of
    /// `<root>/<table>/status` (the kernel's `sb_rdonly`). `None` when the file is missing or
    /// unreadable, or has no such line.
    pub fn read_mount_ro(&self, table: &Table) -> Option<bool> {
        let path = self.root.join(table.to_string()).join("status");
        parse_mounted_ro(&self.read_text(&path).ok()?)
    }

    fn read_text(&self, path: &Path) -> Result<String, i32> {
        let mut f = loop {
            match OpenOptions::new()
                .read(true)
                .custom_flags(self.open_flags())
                .open(path)
            {
                Ok(f) => break f,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(gone_is_enodev(&e)),
            }
        };
        let mut bytes = Vec::new();
        loop {
            match f.read_to_end(&mut bytes) {
                Ok(_) => return Ok(String::from_utf8_lossy(&bytes).into_owned()),
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

/// A missing directory or file (ENOENT, ENOTDIR) or a FIFO nobody serves (ENXIO) means the
/// filesystem is gone: `ENODEV`, so that `ENOENT` stays the kernel's own answer.
fn gone_is_enodev(e: &std::io::Error) -> i32 {
    match e.raw_os_error().unwrap_or(libc::EIO) {
        libc::ENOENT | libc::ENOTDIR | libc::ENXIO => libc::ENODEV,
        other => other,
    }
}

/// The value of the `Mounted RO:` line of a gfs2 sysfs `status` file (`Mounted RO:` padded with
/// spaces to a column, then `0` or `1`; Linux 5.x to 7.x).
pub fn parse_mounted_ro(status: &str) -> Option<bool> {
    status.lines().find_map(|line| {
        let value = line.trim_start().strip_prefix("Mounted RO:")?;
        match value.trim() {
            "0" => Some(false),
            "1" => Some(true),
            _ => None,
        }
    })
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
        assert_eq!(
            w.write(&table(), SysfsFile::Block, 1),
            Err(WriteError::Gone)
        );
        std::fs::create_dir_all(tmp.0.join("alpha:fs1/lock_module")).unwrap();
        // The directory exists but the file does not: never created.
        assert_eq!(
            w.write(&table(), SysfsFile::Block, 1),
            Err(WriteError::Gone)
        );
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
        assert_eq!(
            w.write(&table(), SysfsFile::Recover, 1),
            Err(WriteError::Gone)
        );
    }

    #[test]
    fn reads_decimal_values_and_mount_mode() {
        let tmp = TempDir::new("read");
        let dir = tmp.0.join("alpha:fs1");
        let lm = dir.join("lock_module");
        std::fs::create_dir_all(&lm).unwrap();
        std::fs::write(lm.join("jid"), " 3\n").unwrap();
        std::fs::write(lm.join("first"), "yes\n").unwrap();
        let w = SysfsWriter::new(&tmp.0);
        assert_eq!(w.read(&table(), SysfsFile::Jid), Ok(3));
        assert_eq!(w.read(&table(), SysfsFile::First), Err(libc::EINVAL));
        assert_eq!(w.read(&table(), SysfsFile::Block), Err(libc::ENODEV));
        assert_eq!(w.read_mount_ro(&table()), None, "no status file");
        let status = "Journal Checked:          1\nJournal Live:             1\n\
                      No Journal ID:            0\nMounted RO:               1\n\
                      RO Recovery:              0\n";
        std::fs::write(dir.join("status"), status).unwrap();
        assert_eq!(w.read_mount_ro(&table()), Some(true));
        std::fs::write(
            dir.join("status"),
            status.replace("RO:               1", "RO:\t0"),
        )
        .unwrap();
        assert_eq!(w.read_mount_ro(&table()), Some(false));
        assert_eq!(parse_mounted_ro("Mounted RO: maybe\n"), None);
        assert_eq!(parse_mounted_ro("RO Recovery: 1\n"), None);
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
