//! Logging: tracing events to stderr (journald captures it under systemd) at the configured
//! level, and every event down to debug into an in-memory ring that `gfs_control dump` prints,
//! as `dlm_tool dump` does, so that the story of a failure is there even when the log level
//! was low.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::io::IsTerminal;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::filter::{EnvFilter, LevelFilter};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    #[error("invalid log level {level:?}: {reason}")]
    InvalidLevel { level: String, reason: String },
    #[error("a global tracing subscriber is already installed")]
    AlreadyInitialised,
}

/// The last N log lines, oldest first. Clones share the same ring.
#[derive(Clone, Debug)]
pub struct DebugRing {
    inner: Arc<RingInner>,
}

#[derive(Debug)]
struct RingInner {
    capacity: usize,
    lines: Mutex<VecDeque<String>>,
}

impl DebugRing {
    /// A ring keeping at most `capacity` lines (0 keeps nothing).
    pub fn new(capacity: usize) -> DebugRing {
        DebugRing {
            inner: Arc::new(RingInner {
                capacity,
                lines: Mutex::new(VecDeque::with_capacity(capacity.min(4096))),
            }),
        }
    }

    pub fn capacity(&self) -> usize {
        self.inner.capacity
    }

    pub fn push(&self, line: String) {
        if self.inner.capacity == 0 {
            return;
        }
        let mut lines = self.locked();
        while lines.len() >= self.inner.capacity {
            lines.pop_front();
        }
        lines.push_back(line);
    }

    /// A copy of the ring's lines, oldest first.
    pub fn lines(&self) -> Vec<String> {
        self.locked().iter().cloned().collect()
    }

    /// The newest lines that fit in `max_bytes`, oldest first, after a line saying how many
    /// older ones were left out (if any): what `gfs_control dump` gets, so a huge ring cannot
    /// make every dump reply huge.
    pub fn lines_within(&self, max_bytes: usize) -> Vec<String> {
        let lines = self.locked();
        let mut used = 0;
        let mut kept = 0;
        for line in lines.iter().rev() {
            used += line.len() + 1;
            if used > max_bytes {
                break;
            }
            kept += 1;
        }
        let skipped = lines.len() - kept;
        let mut out = Vec::with_capacity(kept + 1);
        if skipped > 0 {
            out.push(format!(
                "({skipped} older lines not shown: a dump is limited to {max_bytes} bytes)"
            ));
        }
        out.extend(lines.iter().skip(skipped).cloned());
        out
    }

    /// A tracing layer that writes every event it sees into this ring.
    pub fn layer(&self) -> RingLayer {
        RingLayer { ring: self.clone() }
    }

    /// A panic in some other thread while holding the lock leaves the lines intact: keep using
    /// them rather than losing the log when it matters most.
    fn locked(&self) -> MutexGuard<'_, VecDeque<String>> {
        self.inner
            .lines
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Formats each event as `<unix secs>.<ms> <target> <field=value ...> <message>`.
#[derive(Clone, Debug)]
pub struct RingLayer {
    ring: DebugRing,
}

impl<S: Subscriber> Layer<S> for RingLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let mut fields = FieldCollector::default();
        event.record(&mut fields);
        let mut line = format!(
            "{}.{:03} {}",
            now.as_secs(),
            now.subsec_millis(),
            event.metadata().target()
        );
        line.push_str(&fields.fields);
        if !fields.message.is_empty() {
            line.push(' ');
            line.push_str(&fields.message);
        }
        self.ring.push(line);
    }
}

#[derive(Default)]
struct FieldCollector {
    message: String,
    /// ` key=value` for every field but the message, in the order they were recorded.
    fields: String,
}

impl Visit for FieldCollector {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            let _ = write!(self.fields, " {}={}", field.name(), value);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.fields, " {}={:?}", field.name(), value);
        }
    }
}

/// Builds the stderr filter: `RUST_LOG` when set, else `level` (`error`, `warn`, `info`,
/// `debug`, `trace`, or any tracing filter directive).
fn stderr_filter(level: &str) -> Result<EnvFilter, LoggingError> {
    if let Ok(directives) = std::env::var(EnvFilter::DEFAULT_ENV) {
        if !directives.trim().is_empty() {
            return EnvFilter::try_new(&directives).map_err(|e| LoggingError::InvalidLevel {
                level: directives,
                reason: e.to_string(),
            });
        }
    }
    EnvFilter::try_new(level).map_err(|e| LoggingError::InvalidLevel {
        level: level.to_owned(),
        reason: e.to_string(),
    })
}

/// Installs the global subscriber: stderr at `level` (overridden by `RUST_LOG`), and a debug
/// ring of `ring_lines` lines that records debug events whatever the stderr level.
pub fn init(level: &str, ring_lines: usize) -> Result<DebugRing, LoggingError> {
    let filter = stderr_filter(level)?;
    let stderr = std::io::stderr();
    // journald stamps every line itself and shows escape codes verbatim.
    let under_journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let ansi = stderr.is_terminal() && !under_journald;
    let ring = DebugRing::new(ring_lines);
    let stderr_layer = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_target(true);
    let stderr_layer = if under_journald {
        stderr_layer.without_time().boxed()
    } else {
        stderr_layer.boxed()
    };
    tracing_subscriber::registry()
        .with(stderr_layer.with_filter(filter))
        .with(ring.layer().with_filter(LevelFilter::DEBUG))
        .try_init()
        .map_err(|_| LoggingError::AlreadyInitialised)?;
    Ok(ring)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_ring(capacity: usize, body: impl FnOnce()) -> DebugRing {
        let ring = DebugRing::new(capacity);
        let subscriber =
            tracing_subscriber::registry().with(ring.layer().with_filter(LevelFilter::DEBUG));
        tracing::subscriber::with_default(subscriber, body);
        ring
    }

    #[test]
    fn the_ring_keeps_the_newest_lines_in_order() {
        let ring = with_ring(3, || {
            for i in 0..5 {
                tracing::info!("event {i}");
            }
        });
        let lines = ring.lines();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].ends_with(" event 2"), "{lines:?}");
        assert!(lines[1].ends_with(" event 3"), "{lines:?}");
        assert!(lines[2].ends_with(" event 4"), "{lines:?}");
    }

    #[test]
    fn lines_carry_time_target_fields_and_message() {
        let ring = with_ring(10, || {
            tracing::debug!(fs = "fs1", nodeid = 2u32, jid = 1u32, "journal replayed");
        });
        let lines = ring.lines();
        assert_eq!(lines.len(), 1);
        let line = &lines[0];
        let (stamp, rest) = line.split_once(' ').unwrap();
        let (secs, millis) = stamp.split_once('.').unwrap();
        assert!(secs.parse::<u64>().unwrap() > 1_600_000_000);
        assert_eq!(millis.len(), 3);
        assert_eq!(
            rest,
            "gfs_controld::logging::tests fs=fs1 nodeid=2 jid=1 journal replayed"
        );
    }

    #[test]
    fn debug_is_recorded_trace_is_not() {
        let ring = with_ring(10, || {
            tracing::trace!("too fine");
            tracing::debug!("kept");
        });
        assert_eq!(ring.lines().len(), 1);
    }

    #[test]
    fn a_dump_keeps_the_newest_lines_within_its_limit() {
        let ring = DebugRing::new(1000);
        for i in 0..1000 {
            ring.push(format!("line {i:04}"));
        }
        // Each line is 9 bytes plus a newline: 100 bytes hold the newest ten.
        let dump = ring.lines_within(100);
        assert_eq!(dump.len(), 11, "{dump:?}");
        assert!(dump[0].contains("990 older lines not shown"), "{}", dump[0]);
        assert_eq!(dump[1], "line 0990");
        assert_eq!(dump[10], "line 0999");
        assert_eq!(ring.lines_within(1 << 20), ring.lines());
    }

    #[test]
    fn a_zero_sized_ring_keeps_nothing() {
        let ring = with_ring(0, || tracing::info!("dropped"));
        assert!(ring.lines().is_empty());
    }

    #[test]
    fn clones_share_the_ring() {
        let ring = DebugRing::new(2);
        let clone = ring.clone();
        clone.push("a".to_owned());
        assert_eq!(ring.lines(), vec!["a".to_owned()]);
    }

    #[test]
    fn a_bad_level_is_refused() {
        // Only meaningful without RUST_LOG, which would take precedence.
        if std::env::var_os("RUST_LOG").is_none() {
            assert!(stderr_filter("loud=[").is_err());
            assert!(stderr_filter("debug").is_ok());
        }
    }
}
