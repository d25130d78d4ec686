//! The daemon's clocks: the core's millisecond clock and the wall clock the fencing backends
//! and logs use.

use std::time::{Duration, Instant, SystemTime};

use gfs_core::Time;

/// Converts between wall-clock time (fencing backends, logs) and the core's millisecond clock,
/// which starts at 0 when the daemon starts and never goes backwards.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    start: Instant,
    start_wall: SystemTime,
}

impl Clock {
    pub fn new() -> Clock {
        Clock {
            start: Instant::now(),
            start_wall: SystemTime::now(),
        }
    }

    pub fn now(&self) -> Time {
        Time(self.start.elapsed().as_millis() as u64)
    }

    pub fn instant(&self, t: Time) -> Instant {
        self.start + Duration::from_millis(t.millis())
    }

    pub fn wall(&self, t: Time) -> SystemTime {
        self.start_wall + Duration::from_millis(t.millis())
    }

    /// A wall-clock time on the core's clock. Times before the daemon started map to 0, which
    /// is never "after a failure" the core saw, so an old fence cannot satisfy a new failure.
    pub fn core_time(&self, at: SystemTime) -> Time {
        Time(
            at.duration_since(self.start_wall)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_maps_old_fences_to_zero() {
        let clock = Clock::new();
        let before = clock.start_wall - Duration::from_secs(60);
        assert_eq!(clock.core_time(before), Time(0));
        let later = clock.wall(Time(1500));
        assert_eq!(clock.core_time(later), Time(1500));
    }
}
