//! The daemon's sysfs executor as the simulator models it: operations on one filesystem run one
//! at a time, in order; a write the kernel blocks holds up the ones behind it; each result
//! reaches the daemon as its own event, never in the middle of another.

use std::collections::{BTreeMap, VecDeque};

use gfs_core::{Input, NodeId, SysfsFile, Table, Time, WriteError};

use super::trace::WriteRecord;
use super::{Event, World};
use crate::kernel_model::Admit;

/// One sysfs operation queued for a filesystem.
#[derive(Clone, Debug)]
pub(super) enum IoOp {
    Write { file: SysfsFile, value: i64 },
    Read { file: SysfsFile },
}

/// Each (node, filesystem)'s queue of operations, and when its last result was delivered.
#[derive(Default)]
pub(super) struct SysfsQueues {
    pub queued: BTreeMap<(NodeId, String), VecDeque<IoOp>>,
    pub last_result: BTreeMap<(NodeId, String), Time>,
}

impl World {
    pub(super) fn io_submit(&mut self, n: NodeId, table: &Table, op: IoOp) {
        let key = table.to_string();
        self.sysfs
            .queued
            .entry((n, key.clone()))
            .or_default()
            .push_back(op);
        self.io_run(n, &key);
    }

    /// Run the filesystem's queued operations in order while the head one can complete.
    pub(super) fn io_run(&mut self, n: NodeId, key: &str) {
        loop {
            let Some(op) = self
                .sysfs
                .queued
                .get(&(n, key.to_owned()))
                .and_then(|q| q.front())
            else {
                return;
            };
            let m = self.nodes[&n].mounts.get(key);
            // A write the kernel blocks stays at the head until the mount is far enough.
            let can_run = match op {
                IoOp::Write { file, value } => {
                    m.is_none_or(|m| !matches!(m.kernel.admit(*file, *value), Admit::WaitFor(_)))
                }
                IoOp::Read { .. } => true,
            };
            if !can_run {
                return;
            }
            let op = self
                .sysfs
                .queued
                .get_mut(&(n, key.to_owned()))
                .and_then(|q| q.pop_front())
                .expect("head");
            let Some(table) = self.tables.iter().find(|t| t.to_string() == key).cloned() else {
                return;
            };
            let input = match op {
                IoOp::Write { file, value } => {
                    let result = self.kernel_write(n, &table, file, value);
                    self.writes.push(WriteRecord {
                        time: self.now,
                        node: n,
                        table: key.to_owned(),
                        file,
                        value,
                        result,
                    });
                    self.log(format!(
                        "n{n} write {table} {}={value} -> {result:?}",
                        file.name()
                    ));
                    Input::WriteDone {
                        table,
                        file,
                        value,
                        result: result.map_err(WriteError::from_errno),
                    }
                }
                IoOp::Read { file } => {
                    let result = self.kernel_read(n, key, file);
                    self.log(format!("n{n} read {table} {} -> {result:?}", file.name()));
                    Input::ReadDone {
                        table,
                        file,
                        result,
                    }
                }
            };
            // Results come back in order, each as its own event.
            let last = self
                .sysfs
                .last_result
                .get(&(n, key.to_owned()))
                .copied()
                .unwrap_or(Time::ZERO);
            let at = self.now.after(self.rng.range(0, 3)).max(last);
            self.sysfs.last_result.insert((n, key.to_owned()), at);
            let incarnation = self.nodes[&n].daemon.as_ref().map_or(0, |d| d.incarnation);
            self.schedule(
                at.since(self.now),
                Event::IoDone {
                    node: n,
                    incarnation,
                    input,
                },
            );
        }
    }
}
