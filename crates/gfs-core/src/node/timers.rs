//! The core's deadlines: every one a [`Timer`], so `poll_timeout` and `Input::Timeout` are
//! one table (quinn's `connection/timer.rs`).

use super::*;

impl Node {
    /// The earliest moment this node wants `Input::Timeout`.
    pub fn poll_timeout(&self) -> Option<Time> {
        let retries = self.local.values().flat_map(|l| {
            l.retry_at
                .values()
                .copied()
                .chain(l.dlm_retry.values().copied())
        });
        let fences = self.fence.values().filter_map(|f| f.retry_at);
        let startup = (!self.rep.must_fence.is_empty() && self.is_synced())
            .then(|| self.synced_at.after(self.cfg.startup_fence_delay_ms))
            .filter(|t| *t > self.now);
        let warnings = self
            .fence_waits()
            .into_iter()
            .filter_map(|(_, f)| self.fence_warn_due(f));
        retries
            .chain(fences)
            .chain(self.quorum_hold_until)
            .chain(startup)
            .chain(warnings)
            .min()
    }
}
