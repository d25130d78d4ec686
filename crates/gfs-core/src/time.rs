//! Virtual time. The core never reads a clock: every input carries `now`.

use serde::{Deserialize, Serialize};

/// Milliseconds on the driver's monotonic clock (the simulator starts at 0).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Time(pub u64);

impl Time {
    pub const ZERO: Time = Time(0);

    pub fn millis(self) -> u64 {
        self.0
    }

    pub fn after(self, ms: u64) -> Time {
        Time(self.0.saturating_add(ms))
    }

    pub fn since(self, earlier: Time) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

impl std::fmt::Display for Time {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{:03}s", self.0 / 1000, self.0 % 1000)
    }
}
