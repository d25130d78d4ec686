//! The recovery timelines `gfs_control status` shows: one per failure (or overlapping
//! failures), with what happened when.

use super::*;

impl Node {
    pub(super) fn timeline_start(
        &mut self,
        change: u64,
        failed: NodeId,
        tables: &BTreeSet<String>,
    ) {
        let now = self.now.millis();
        if let Some(t) = self.timelines.iter_mut().find(|t| t.finished_ms.is_none()) {
            // Failures during a recovery fold into it.
            if !t.failed.contains(&failed) {
                t.failed.push(failed);
            }
            for fs in tables {
                if !t.filesystems.contains(fs) {
                    t.filesystems.push(fs.clone());
                }
            }
            t.events.push(TimelineEntry {
                at_ms: now,
                what: format!("node {failed} failed (change {change})"),
            });
            return;
        }
        self.timelines.push_back(RecoveryTimeline {
            change,
            failed: vec![failed],
            filesystems: tables.iter().cloned().collect(),
            started_ms: now,
            finished_ms: None,
            events: vec![TimelineEntry {
                at_ms: now,
                what: format!("node {failed} failed (change {change})"),
            }],
        });
        while self.timelines.len() > self.cfg.timeline_keep.max(1) {
            self.timelines.pop_front();
        }
    }

    pub(super) fn timeline_note(&mut self, _about: NodeId, what: String) {
        let now = self.now.millis();
        if let Some(t) = self
            .timelines
            .iter_mut()
            .rev()
            .find(|t| t.finished_ms.is_none())
        {
            t.events.push(TimelineEntry { at_ms: now, what });
        }
        self.timeline_maybe_finish();
    }

    pub(super) fn timeline_fs_note(&mut self, table: &str, what: String) {
        self.timeline_note(0, format!("{what} {table}"));
    }

    pub(super) fn timeline_maybe_finish(&mut self) {
        let all_clean = self.rep.fs.values().all(|fs| fs.dirty.is_empty());
        let all_unblocked = self.local.values().all(|l| !l.block_requested);
        if all_clean && all_unblocked {
            let now = self.now.millis();
            for t in self
                .timelines
                .iter_mut()
                .filter(|t| t.finished_ms.is_none())
            {
                t.finished_ms = Some(now);
                t.events.push(TimelineEntry {
                    at_ms: now,
                    what: "recovery complete".into(),
                });
            }
        }
    }
}
