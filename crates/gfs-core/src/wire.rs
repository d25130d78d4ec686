//! The daemon group's message format: little-endian, length-checked, versioned.
//!
//! Header (24 bytes): magic `GFSC` (u32), protocol version (u16), message type (u16),
//! sender nodeid (u32), sender's failure epoch ("change", u64), payload length (u32).
//! Decoding never panics: any byte string either decodes or yields a [`WireError`].

use std::collections::{BTreeMap, BTreeSet};

use crate::state::{Dirty, FsState, MState, Member, Mounter, Replicated};
use crate::types::{Jid, MountMode, NodeId, Table};

pub const MAGIC: u32 = 0x4746_5343; // "GFSC"
pub const HEADER_LEN: usize = 24;
/// Oldest wire version this build understands.
pub const PROTOCOL_MIN: u16 = 1;
/// Newest wire version this build speaks.
pub const PROTOCOL_MAX: u16 = 1;
/// Refuse absurd messages before allocating for them (corosync's own limit is about 1 MiB).
pub const MAX_MESSAGE_LEN: usize = 1 << 20;
/// Bounds on decoded collections, far above any real cluster (corosync allows 384 nodes).
const MAX_ITEMS: u32 = 65_536;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WireError {
    Truncated,
    TooLarge(usize),
    BadMagic(u32),
    UnsupportedVersion(u16),
    UnknownType(u16),
    LengthMismatch { header: u32, actual: usize },
    TrailingBytes(usize),
    BadValue(&'static str),
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WireError::Truncated => f.write_str("message truncated"),
            WireError::TooLarge(n) => write!(f, "message of {n} bytes exceeds the limit"),
            WireError::BadMagic(m) => write!(f, "bad magic {m:#010x}"),
            WireError::UnsupportedVersion(v) => write!(f, "unsupported protocol version {v}"),
            WireError::UnknownType(t) => write!(f, "unknown message type {t}"),
            WireError::LengthMismatch { header, actual } => {
                write!(f, "header says {header} payload bytes, got {actual}")
            }
            WireError::TrailingBytes(n) => write!(f, "{n} unexpected trailing bytes"),
            WireError::BadValue(what) => write!(f, "invalid {what}"),
        }
    }
}

impl std::error::Error for WireError {}

/// Every message of the daemon group `gfs:controld`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Message {
    /// Sent on joining (and after every configuration change while unsynced) to ask for the
    /// group's state, and by synced members when others join, to detect stale merges.
    Hello {
        proto_min: u16,
        proto_max: u16,
        attempt: u32,
        synced: bool,
        /// The synced members the sender knows (its "side" after a partition).
        side: Vec<NodeId>,
        /// The configuration the sender was in when it sent this: a HELLO that crossed a
        /// configuration change does not count towards forming the group.
        config: Vec<NodeId>,
    },
    /// The group's state as it was right after `recipient`'s Hello number `attempt`.
    State {
        recipient: NodeId,
        attempt: u32,
        snapshot: Replicated,
    },
    Mount {
        table: Table,
        mode: MountMode,
    },
    Mounted {
        table: Table,
    },
    /// The sender's kernel finished the journal work of its mount (`FIRSTMOUNT=Done` for a
    /// first mounter, the check of its own journal otherwise).
    JournalReady {
        table: Table,
    },
    Unmount {
        table: Table,
    },
    Withdraw {
        table: Table,
    },
    Remount {
        table: Table,
        mode: MountMode,
    },
    /// The sender has blocked `tables`, the filesystems affected by failures up to `epoch` in
    /// which it was a participant when it sent this. Naming them matters: a filesystem in which
    /// the sender became a participant while this was in flight (a replayer became ready) is not
    /// covered, and needs another STOPPED.
    Stopped {
        epoch: u64,
        tables: Vec<Table>,
    },
    /// The result of a replay the group assigned; `attempt` is the journal's failed-attempt count
    /// when it was assigned, so a late result of an earlier assignment is recognised as stale.
    Recovered {
        table: Table,
        jid: Jid,
        done: bool,
        attempt: u32,
    },
    /// An operator confirmed `nodeid` is down; it covers every failure of that node up to
    /// configuration change `failure` (the sender's count when it sent it).
    FenceAck {
        nodeid: NodeId,
        failure: u64,
    },
    /// The member that requested fencing reports that its backend fenced `nodeid` after its
    /// failure at configuration change `failure`: only one member runs the fencing backend, and
    /// a report about an earlier failure than the receiver's latest one is stale.
    Fenced {
        nodeid: NodeId,
        failure: u64,
    },
}

impl Message {
    fn type_code(&self) -> u16 {
        match self {
            Message::Hello { .. } => 1,
            Message::State { .. } => 2,
            Message::Mount { .. } => 3,
            Message::Mounted { .. } => 4,
            Message::JournalReady { .. } => 5,
            Message::Unmount { .. } => 6,
            Message::Withdraw { .. } => 7,
            Message::Remount { .. } => 8,
            Message::Stopped { .. } => 9,
            Message::Recovered { .. } => 10,
            Message::FenceAck { .. } => 11,
            Message::Fenced { .. } => 12,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Message::Hello { .. } => "HELLO",
            Message::State { .. } => "STATE",
            Message::Mount { .. } => "MOUNT",
            Message::Mounted { .. } => "MOUNTED",
            Message::JournalReady { .. } => "JOURNAL_READY",
            Message::Unmount { .. } => "UNMOUNT",
            Message::Withdraw { .. } => "WITHDRAW",
            Message::Remount { .. } => "REMOUNT",
            Message::Stopped { .. } => "STOPPED",
            Message::Recovered { .. } => "RECOVERED",
            Message::FenceAck { .. } => "FENCE_ACK",
            Message::Fenced { .. } => "FENCED",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub version: u16,
    pub sender: NodeId,
    pub change: u64,
}

pub fn encode(header: &Header, msg: &Message) -> Vec<u8> {
    let mut body = Writer::default();
    match msg {
        Message::Hello {
            proto_min,
            proto_max,
            attempt,
            synced,
            side,
            config,
        } => {
            body.u16(*proto_min);
            body.u16(*proto_max);
            body.u32(*attempt);
            body.bool(*synced);
            body.nodes(side.iter().copied());
            body.nodes(config.iter().copied());
        }
        Message::State {
            recipient,
            attempt,
            snapshot,
        } => {
            body.u32(*recipient);
            body.u32(*attempt);
            write_replicated(&mut body, snapshot);
        }
        Message::Mount { table, mode } | Message::Remount { table, mode } => {
            body.table(table);
            body.mode(*mode);
        }
        Message::Mounted { table }
        | Message::JournalReady { table }
        | Message::Unmount { table }
        | Message::Withdraw { table } => body.table(table),
        Message::Stopped { epoch, tables } => {
            body.u64(*epoch);
            body.u32(tables.len() as u32);
            for t in tables {
                body.table(t);
            }
        }
        Message::Recovered {
            table,
            jid,
            done,
            attempt,
        } => {
            body.table(table);
            body.u32(*jid);
            body.bool(*done);
            body.u32(*attempt);
        }
        Message::FenceAck { nodeid, failure } | Message::Fenced { nodeid, failure } => {
            body.u32(*nodeid);
            body.u64(*failure);
        }
    }
    let mut out = Writer::default();
    out.u32(MAGIC);
    out.u16(header.version);
    out.u16(msg.type_code());
    out.u32(header.sender);
    out.u64(header.change);
    out.u32(body.0.len() as u32);
    out.0.extend_from_slice(&body.0);
    out.0
}

pub fn decode(buf: &[u8]) -> Result<(Header, Message), WireError> {
    decode_up_to(buf, PROTOCOL_MAX)
}

/// Decode accepting wire versions up to `max` (a daemon configured to speak a newer version).
pub fn decode_up_to(buf: &[u8], max: u16) -> Result<(Header, Message), WireError> {
    if buf.len() > MAX_MESSAGE_LEN {
        return Err(WireError::TooLarge(buf.len()));
    }
    let mut r = Reader(buf);
    let magic = r.u32()?;
    if magic != MAGIC {
        return Err(WireError::BadMagic(magic));
    }
    let version = r.u16()?;
    if !(PROTOCOL_MIN..=max).contains(&version) {
        return Err(WireError::UnsupportedVersion(version));
    }
    let ty = r.u16()?;
    let sender = r.u32()?;
    let change = r.u64()?;
    let len = r.u32()?;
    if len as usize != r.0.len() {
        return Err(WireError::LengthMismatch {
            header: len,
            actual: r.0.len(),
        });
    }
    let msg = match ty {
        1 => Message::Hello {
            proto_min: r.u16()?,
            proto_max: r.u16()?,
            attempt: r.u32()?,
            synced: r.bool()?,
            side: r.nodes()?.into_iter().collect(),
            config: r.nodes()?.into_iter().collect(),
        },
        2 => Message::State {
            recipient: r.u32()?,
            attempt: r.u32()?,
            snapshot: read_replicated(&mut r)?,
        },
        3 => Message::Mount {
            table: r.table()?,
            mode: r.mode()?,
        },
        4 => Message::Mounted { table: r.table()? },
        5 => Message::JournalReady { table: r.table()? },
        6 => Message::Unmount { table: r.table()? },
        7 => Message::Withdraw { table: r.table()? },
        8 => Message::Remount {
            table: r.table()?,
            mode: r.mode()?,
        },
        9 => Message::Stopped {
            epoch: r.u64()?,
            tables: {
                let n = r.count()?;
                let mut tables = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    tables.push(r.table()?);
                }
                tables
            },
        },
        10 => Message::Recovered {
            table: r.table()?,
            jid: r.jid()?,
            done: r.bool()?,
            attempt: r.u32()?,
        },
        11 => Message::FenceAck {
            nodeid: r.u32()?,
            failure: r.u64()?,
        },
        12 => Message::Fenced {
            nodeid: r.u32()?,
            failure: r.u64()?,
        },
        other => return Err(WireError::UnknownType(other)),
    };
    if !r.0.is_empty() {
        return Err(WireError::TrailingBytes(r.0.len()));
    }
    Ok((
        Header {
            version,
            sender,
            change,
        },
        msg,
    ))
}

fn write_replicated(w: &mut Writer, s: &Replicated) {
    w.u16(s.version);
    w.u64(s.epoch);
    w.u64(s.confchgs);
    w.u32(s.members.len() as u32);
    for (id, m) in &s.members {
        w.u32(*id);
        w.u32(m.pid);
        w.u16(m.proto_min);
        w.u16(m.proto_max);
        w.bool(m.synced);
        w.bool(m.stale);
        w.opt_u32(m.synced_by);
        w.u64(m.joined_at);
        w.u64(m.synced_at);
    }
    w.nodes(s.must_fence.iter().copied());
    w.u32(s.must_fence_since.len() as u32);
    for (id, change) in &s.must_fence_since {
        w.u32(*id);
        w.u64(*change);
    }
    w.nodes(s.fenced.iter().copied());
    w.u32(s.fs.len() as u32);
    for (table, fs) in &s.fs {
        w.table(table);
        w.u64(fs.dirty_epoch);
        w.nodes(fs.stopped.iter().copied());
        w.nodes(fs.fence_before_first.iter().copied());
        w.u32(fs.mounters.len() as u32);
        for (id, m) in &fs.mounters {
            w.u32(*id);
            w.opt_u32(m.jid);
            w.mode(m.mode);
            w.u8(match m.state {
                MState::Waiting => 0,
                MState::First => 1,
                MState::Admitted => 2,
                MState::Mounted => 3,
                MState::Rejected => 4,
                MState::NeedsRw => 5,
            });
            w.bool(m.ready);
        }
        w.u32(fs.dirty.len() as u32);
        for (jid, d) in &fs.dirty {
            w.u32(*jid);
            w.u32(d.owner);
            w.nodes(d.fence.iter().copied());
            w.opt_u32(d.replayer);
            w.u32(d.attempts);
            w.opt_u32(d.last_failed_by);
        }
    }
}

fn read_replicated(r: &mut Reader) -> Result<Replicated, WireError> {
    let version = r.u16()?;
    let epoch = r.u64()?;
    let confchgs = r.u64()?;
    let mut members = BTreeMap::new();
    for _ in 0..r.count()? {
        let id = r.u32()?;
        let m = Member {
            pid: r.u32()?,
            proto_min: r.u16()?,
            proto_max: r.u16()?,
            synced: r.bool()?,
            stale: r.bool()?,
            synced_by: r.opt_u32()?,
            joined_at: r.u64()?,
            synced_at: r.u64()?,
        };
        members.insert(id, m);
    }
    let must_fence = r.nodes()?;
    let mut must_fence_since = BTreeMap::new();
    for _ in 0..r.count()? {
        let id = r.u32()?;
        must_fence_since.insert(id, r.u64()?);
    }
    let fenced = r.nodes()?;
    let mut fs = BTreeMap::new();
    for _ in 0..r.count()? {
        let table = r.table()?;
        let dirty_epoch = r.u64()?;
        let stopped = r.nodes()?;
        let fence_before_first = r.nodes()?;
        let mut mounters = BTreeMap::new();
        for _ in 0..r.count()? {
            let id = r.u32()?;
            let jid = r.opt_u32()?;
            let mode = r.mode()?;
            let state = match r.u8()? {
                0 => MState::Waiting,
                1 => MState::First,
                2 => MState::Admitted,
                3 => MState::Mounted,
                4 => MState::Rejected,
                5 => MState::NeedsRw,
                _ => return Err(WireError::BadValue("mount state")),
            };
            let ready = r.bool()?;
            mounters.insert(
                id,
                Mounter {
                    jid,
                    mode,
                    state,
                    ready,
                },
            );
        }
        let mut dirty = BTreeMap::new();
        for _ in 0..r.count()? {
            let jid = r.jid()?;
            let d = Dirty {
                owner: r.u32()?,
                fence: r.nodes()?,
                replayer: r.opt_u32()?,
                attempts: r.u32()?,
                last_failed_by: r.opt_u32()?,
            };
            dirty.insert(jid, d);
        }
        fs.insert(
            table,
            FsState {
                mounters,
                dirty,
                dirty_epoch,
                stopped,
                fence_before_first,
            },
        );
    }
    Ok(Replicated {
        version,
        epoch,
        confchgs,
        members,
        must_fence,
        must_fence_since,
        fenced,
        fs,
    })
}

#[derive(Default)]
struct Writer(Vec<u8>);

impl Writer {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn bool(&mut self, v: bool) {
        self.0.push(v as u8);
    }
    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    /// `u32::MAX` stands for "none": neither a node id nor a journal id can take it.
    fn opt_u32(&mut self, v: Option<u32>) {
        self.u32(v.unwrap_or(u32::MAX));
    }
    fn str(&mut self, s: &str) {
        self.u16(s.len() as u16);
        self.0.extend_from_slice(s.as_bytes());
    }
    fn table(&mut self, t: &Table) {
        self.str(&t.to_string());
    }
    fn mode(&mut self, m: MountMode) {
        self.u8(match m {
            MountMode::Rw => 0,
            MountMode::Ro => 1,
            MountMode::Spectator => 2,
        });
    }
    fn nodes(&mut self, ids: impl ExactSizeIterator<Item = NodeId>) {
        self.u32(ids.len() as u32);
        for id in ids {
            self.u32(id);
        }
    }
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], WireError> {
        if self.0.len() < n {
            return Err(WireError::Truncated);
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }
    fn bool(&mut self) -> Result<bool, WireError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(WireError::BadValue("boolean")),
        }
    }
    fn u16(&mut self) -> Result<u16, WireError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, WireError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, WireError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    fn opt_u32(&mut self) -> Result<Option<u32>, WireError> {
        let v = self.u32()?;
        Ok((v != u32::MAX).then_some(v))
    }
    fn jid(&mut self) -> Result<Jid, WireError> {
        let v = self.u32()?;
        if v >= crate::MAX_JOURNALS {
            return Err(WireError::BadValue("journal id"));
        }
        Ok(v)
    }
    fn count(&mut self) -> Result<u32, WireError> {
        let n = self.u32()?;
        // Every item takes at least one byte: a count beyond what is left is a lie.
        if n > MAX_ITEMS || n as usize > self.0.len() {
            return Err(WireError::BadValue("item count"));
        }
        Ok(n)
    }
    fn nodes(&mut self) -> Result<BTreeSet<NodeId>, WireError> {
        let n = self.count()?;
        let mut set = BTreeSet::new();
        for _ in 0..n {
            set.insert(self.u32()?);
        }
        if set.len() != n as usize {
            return Err(WireError::BadValue("duplicate node id"));
        }
        Ok(set)
    }
    fn mode(&mut self) -> Result<MountMode, WireError> {
        match self.u8()? {
            0 => Ok(MountMode::Rw),
            1 => Ok(MountMode::Ro),
            2 => Ok(MountMode::Spectator),
            _ => Err(WireError::BadValue("mount mode")),
        }
    }
    fn table(&mut self) -> Result<Table, WireError> {
        let n = self.u16()? as usize;
        let bytes = self.take(n)?;
        let s = std::str::from_utf8(bytes).map_err(|_| WireError::BadValue("table (utf-8)"))?;
        Table::parse(s).map_err(|_| WireError::BadValue("lock table"))
    }
}
