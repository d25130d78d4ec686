//! `/sys/fs/gfs2` through FUSE: a directory per mounted filesystem with its `lock_module/`
//! files, whose reads and writes go to the simulated kernel as sysfs's go to the real one, so a
//! write can fail with the kernel's errno or block until the kernel is ready.
//!
//! Every file is opened with direct I/O (each read and each `write(2)` reaches the model, as
//! with sysfs) and no attribute or entry is cached (tables come and go). A write the kernel
//! would block is answered later from a task, so the one FUSE thread keeps serving other files.

use std::ffi::OsStr;
use std::time::{Duration, SystemTime};

use fuser::{
    FileAttr, FileType, Filesystem, ReplyAttr, ReplyData, ReplyDirectory, ReplyEntry, ReplyOpen,
    ReplyWrite, Request, TimeOrNow, FUSE_ROOT_ID,
};

use super::model::{lock, write_file, Shared};
use super::sysfs::{Dir, SysFile};

/// Nothing is cached by the kernel: every lookup and stat asks again.
const TTL: Duration = Duration::ZERO;

/// Inodes per mount: the table directory, `lock_module/`, then one per [`SysFile`].
const PER_TABLE: u64 = 32;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Node {
    Root,
    Table(u64),
    LockModule(u64),
    File(u64, SysFile),
}

impl Node {
    fn from_ino(ino: u64) -> Option<Node> {
        if ino == FUSE_ROOT_ID {
            return Some(Node::Root);
        }
        let (generation, offset) = (ino / PER_TABLE, ino % PER_TABLE);
        if generation == 0 {
            return None;
        }
        match offset {
            0 => Some(Node::Table(generation)),
            1 => Some(Node::LockModule(generation)),
            n => SysFile::ALL
                .get(n as usize - 2)
                .map(|f| Node::File(generation, *f)),
        }
    }

    fn ino(self) -> u64 {
        match self {
            Node::Root => FUSE_ROOT_ID,
            Node::Table(g) => g * PER_TABLE,
            Node::LockModule(g) => g * PER_TABLE + 1,
            Node::File(g, f) => g * PER_TABLE + 2 + f.index() as u64,
        }
    }

    fn generation(self) -> Option<u64> {
        match self {
            Node::Root => None,
            Node::Table(g) | Node::LockModule(g) | Node::File(g, _) => Some(g),
        }
    }

    fn kind(self) -> FileType {
        match self {
            Node::File(..) => FileType::RegularFile,
            _ => FileType::Directory,
        }
    }
}

pub struct KernelFs {
    sim: Shared,
}

impl KernelFs {
    pub fn new(sim: Shared) -> KernelFs {
        KernelFs { sim }
    }

    /// The node's attributes, or `None` when its mount is gone.
    fn attr(&self, node: Node) -> Option<FileAttr> {
        let s = lock(&self.sim);
        let time = match node.generation() {
            None => s.started,
            Some(g) => s.table(g)?.created,
        };
        let (perm, nlink, size) = match node {
            Node::File(_, f) => (f.mode(), 1, 4096),
            _ => (0o755, 2, 0),
        };
        Some(FileAttr {
            ino: node.ino(),
            size,
            blocks: 0,
            atime: time,
            mtime: time,
            ctime: time,
            crtime: time,
            kind: node.kind(),
            perm,
            nlink,
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        })
    }

    fn child(&self, parent: Node, name: &str) -> Option<Node> {
        match parent {
            Node::Root => {
                let s = lock(&self.sim);
                s.tables.get(name).map(|t| Node::Table(t.generation))
            }
            Node::Table(g) if name == "lock_module" => Some(Node::LockModule(g)),
            Node::Table(g) => SysFile::lookup(Dir::Table, name).map(|f| Node::File(g, f)),
            Node::LockModule(g) => SysFile::lookup(Dir::LockModule, name).map(|f| Node::File(g, f)),
            Node::File(..) => None,
        }
    }

    fn entries(&self, dir: Node) -> Vec<(Node, String)> {
        match dir {
            Node::Root => {
                let s = lock(&self.sim);
                s.tables
                    .iter()
                    .map(|(name, t)| (Node::Table(t.generation), name.clone()))
                    .collect()
            }
            Node::Table(g) => std::iter::once((Node::LockModule(g), "lock_module".to_owned()))
                .chain(SysFile::in_dir(Dir::Table).map(|f| (Node::File(g, f), f.name().into())))
                .collect(),
            Node::LockModule(g) => SysFile::in_dir(Dir::LockModule)
                .map(|f| (Node::File(g, f), f.name().into()))
                .collect(),
            Node::File(..) => Vec::new(),
        }
    }
}

impl Filesystem for KernelFs {
    fn lookup(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEntry) {
        let found = Node::from_ino(parent)
            .zip(name.to_str())
            .and_then(|(p, n)| self.child(p, n))
            .and_then(|node| self.attr(node));
        match found {
            Some(attr) => reply.entry(&TTL, &attr, 0),
            None => reply.error(libc::ENOENT),
        }
    }

    fn getattr(&mut self, _req: &Request<'_>, ino: u64, _fh: Option<u64>, reply: ReplyAttr) {
        match Node::from_ino(ino).and_then(|n| self.attr(n)) {
            Some(attr) => reply.attr(&TTL, &attr),
            None => reply.error(libc::ENOENT),
        }
    }

    /// Only the `O_TRUNC` of an open for writing gets here: sysfs ignores it.
    fn setattr(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        _size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<u64>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<u32>,
        reply: ReplyAttr,
    ) {
        self.getattr(_req, ino, None, reply);
    }

    fn readdir(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        mut reply: ReplyDirectory,
    ) {
        let Some(dir) = Node::from_ino(ino) else {
            reply.error(libc::ENOENT);
            return;
        };
        if dir.generation().is_some() && self.attr(dir).is_none() {
            reply.error(libc::ENOENT);
            return;
        }
        let mut all = vec![
            (dir, ".".to_owned()),
            (Node::Root, "..".to_owned()), // the parent's inode does not matter to readdir
        ];
        all.extend(self.entries(dir));
        for (i, (node, name)) in all.into_iter().enumerate().skip(offset.max(0) as usize) {
            if reply.add(node.ino(), i as i64 + 1, node.kind(), name) {
                break;
            }
        }
        reply.ok();
    }

    /// As kernfs: opening for reading a file without a show method, or for writing one without
    /// a store method, is EACCES.
    fn open(&mut self, _req: &Request<'_>, ino: u64, flags: i32, reply: ReplyOpen) {
        let Some(node @ Node::File(_, file)) = Node::from_ino(ino) else {
            reply.error(libc::EISDIR);
            return;
        };
        if self.attr(node).is_none() {
            reply.error(libc::ENOENT);
            return;
        }
        let access = flags & libc::O_ACCMODE;
        let reads = access == libc::O_RDONLY || access == libc::O_RDWR;
        let writes = access == libc::O_WRONLY || access == libc::O_RDWR;
        if (reads && !file.readable()) || (writes && !file.writable()) {
            reply.error(libc::EACCES);
            return;
        }
        reply.opened(0, fuser::consts::FOPEN_DIRECT_IO);
    }

    fn read(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        size: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyData,
    ) {
        let Some(Node::File(generation, file)) = Node::from_ino(ino) else {
            reply.error(libc::EISDIR);
            return;
        };
        // Render once per read(2) from the start, as sysfs does; later chunks come from the
        // same text without another timeline entry.
        let text = {
            let mut s = lock(&self.sim);
            if offset == 0 {
                s.read_file(generation, file)
            } else {
                s.peek_file(generation, file)
            }
        };
        match text {
            Ok(text) => {
                let bytes = text.as_bytes();
                let start = (offset.max(0) as usize).min(bytes.len());
                let end = (start + size as usize).min(bytes.len());
                reply.data(&bytes[start..end]);
            }
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        _offset: i64,
        data: &[u8],
        _write_flags: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyWrite,
    ) {
        let Some(Node::File(generation, file)) = Node::from_ino(ino) else {
            reply.error(libc::EISDIR);
            return;
        };
        let len = data.len() as u32;
        write_file(
            &self.sim,
            generation,
            file,
            data,
            Box::new(move |result| match result {
                Ok(()) => reply.written(len),
                Err(e) => reply.error(e),
            }),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inode_numbers_round_trip() {
        let nodes = [
            Node::Root,
            Node::Table(1),
            Node::LockModule(1),
            Node::File(1, SysFile::Id),
            Node::File(7, SysFile::RecoverStatus),
        ];
        for n in nodes {
            assert_eq!(Node::from_ino(n.ino()), Some(n), "{n:?}");
        }
        assert_eq!(Node::from_ino(5), None);
        assert!(SysFile::ALL.len() + 2 <= PER_TABLE as usize);
    }
}
