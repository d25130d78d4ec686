//! A log rate limit for lines that someone else can make us write (refused control
//! connections, uevents from userspace): a flood must not push useful history out of the
//! journal or the `gfs_control dump` ring.

use std::time::{Duration, Instant};

/// At most `burst` lines per `window`; the first line allowed after a window in which lines
/// were held back says how many.
#[derive(Debug)]
pub struct RateLimit {
    window: Duration,
    burst: u32,
    started: Option<Instant>,
    used: u32,
    suppressed: u64,
}

/// Whether to log now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Log; `suppressed` lines were held back since the last line logged.
    Log { suppressed: u64 },
    /// Stay quiet (counted).
    Quiet,
}

impl RateLimit {
    pub const fn new(window: Duration, burst: u32) -> RateLimit {
        RateLimit {
            window,
            burst,
            started: None,
            used: 0,
            suppressed: 0,
        }
    }

    /// Ten lines per ten seconds: enough to name a few distinct offenders.
    pub const fn standard() -> RateLimit {
        RateLimit::new(Duration::from_secs(10), 10)
    }

    /// One more line at `now`.
    pub fn check(&mut self, now: Instant) -> Verdict {
        let fresh = self
            .started
            .is_none_or(|start| now.saturating_duration_since(start) >= self.window);
        if fresh {
            self.started = Some(now);
            self.used = 0;
        }
        if self.used < self.burst {
            self.used += 1;
            let suppressed = std::mem::take(&mut self.suppressed);
            Verdict::Log { suppressed }
        } else {
            self.suppressed += 1;
            Verdict::Quiet
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_quiet_then_reports_what_was_held_back() {
        let mut limit = RateLimit::new(Duration::from_secs(10), 3);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(limit.check(t0), Verdict::Log { suppressed: 0 });
        }
        for _ in 0..1000 {
            assert_eq!(limit.check(t0 + Duration::from_secs(5)), Verdict::Quiet);
        }
        assert_eq!(
            limit.check(t0 + Duration::from_secs(10)),
            Verdict::Log { suppressed: 1000 }
        );
        assert_eq!(
            limit.check(t0 + Duration::from_secs(11)),
            Verdict::Log { suppressed: 0 }
        );
    }
}
