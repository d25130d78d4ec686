//! The recovery timelines `gfs_control status` shows: one per failure (or overlapping
//! failures), with what happened when.

use std::collections::{BTreeSet, VecDeque};

use super::Node;
use crate::time::Time;
use crate::types::{NodeId, Table};
use crate::view::{RecoveryTimeline, TimelineEntry};

/// The latest `keep` recoveries, the unfinished one last.
#[derive(Debug)]
pub(super) struct Timelines {
    list: VecDeque<RecoveryTimeline>,
    keep: usize,
}

impl Timelines {
    pub(super) fn new(keep: usize) -> Timelines {
        Timelines {
            list: VecDeque::new(),
            keep: keep.max(1),
        }
    }

    pub(super) fn all(&self) -> impl Iterator<Item = &RecoveryTimeline> {
        self.list.iter()
    }

    /// `failed` failed at change `change`, leaving journals of `tables` dirty. Failures during
    /// a recovery fold into it.
    fn start(&mut self, now: Time, change: u64, failed: NodeId, tables: &BTreeSet<Table>) {
        let now = now.millis();
        let entry = TimelineEntry {
            at_ms: now,
            what: format!("node {failed} failed (change {change})"),
        };
        if let Some(t) = self.list.iter_mut().find(|t| t.finished_ms.is_none()) {
            if !t.failed.contains(&failed) {
                t.failed.push(failed);
            }
            for fs in tables.iter().map(Table::to_string) {
                if !t.filesystems.contains(&fs) {
                    t.filesystems.push(fs);
                }
            }
            t.events.push(entry);
            return;
        }
        self.list.push_back(RecoveryTimeline {
            change,
            failed: vec![failed],
            filesystems: tables.iter().map(Table::to_string).collect(),
            started_ms: now,
            finished_ms: None,
            events: vec![entry],
        });
        while self.list.len() > self.keep {
            self.list.pop_front();
        }
    }

    /// A step of the recovery in progress (none: nothing to note).
    fn note(&mut self, now: Time, what: String) {
        if let Some(t) = self.list.iter_mut().rev().find(|t| t.finished_ms.is_none()) {
            t.events.push(TimelineEntry {
                at_ms: now.millis(),
                what,
            });
        }
    }

    fn finish(&mut self, now: Time) {
        let now = now.millis();
        for t in self.list.iter_mut().filter(|t| t.finished_ms.is_none()) {
            t.finished_ms = Some(now);
            t.events.push(TimelineEntry {
                at_ms: now,
                what: "recovery complete".into(),
            });
        }
    }
}

impl Node {
    pub(super) fn timeline_start(&mut self, change: u64, failed: NodeId, tables: &BTreeSet<Table>) {
        self.timelines.start(self.now, change, failed, tables);
    }

    /// Notes a step, and ends the recovery once every journal is clean and nothing blocked.
    pub(super) fn timeline_note(&mut self, what: String) {
        self.timelines.note(self.now, what);
        let all_clean = self.rep.fs.values().all(|fs| fs.dirty.is_empty());
        let all_unblocked = self.local.values().all(|l| !l.block_requested);
        if all_clean && all_unblocked {
            self.timelines.finish(self.now);
        }
    }

    pub(super) fn timeline_fs_note(&mut self, table: &Table, what: &str) {
        self.timeline_note(format!("{what} {table}"));
    }
}
