//! The run's record: the trace (one line per fact, each stamped with the simulated time) and its
//! FNV hash, which two runs of a seed must share; and the sysfs writes and journal replays that
//! scenario tests assert on.

use gfs_core::{NodeId, SysfsFile, Time};

/// The trace and its hash.
pub(super) struct Trace {
    pub lines: Vec<String>,
    pub hash: u64,
    /// Keep every line (`SimConfig::trace`); otherwise only the first 400,000.
    pub keep_all: bool,
}

impl Trace {
    pub fn new(keep_all: bool) -> Trace {
        Trace {
            lines: Vec::new(),
            hash: 0,
            keep_all,
        }
    }

    pub fn log(&mut self, now: Time, line: String) {
        let line = format!("{:>9} {line}", now.to_string());
        self.hash = fnv(self.hash, &line);
        if self.keep_all || self.lines.len() < 400_000 {
            self.lines.push(line);
        }
    }
}

fn fnv(h: u64, s: &str) -> u64 {
    s.bytes().fold(h ^ 0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

/// One sysfs write a daemon made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteRecord {
    pub time: Time,
    pub node: NodeId,
    pub table: String,
    pub file: SysfsFile,
    pub value: i64,
    pub result: Result<(), i32>,
}

/// One journal replay a kernel ran for a `recover` write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplayRecord {
    pub node: NodeId,
    pub table: String,
    pub jid: u32,
    pub started: Time,
    pub done: Option<bool>,
}
