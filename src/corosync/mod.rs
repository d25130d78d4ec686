//! Thin async adapters around rust-corosync 3.2 (`rust_corosync`): CPG groups, quorum
//! tracking, a few cmap reads and cfg `kill_node`.
//!
//! # How callbacks reach the event loop
//!
//! rust-corosync calls our callbacks (plain `fn` pointers) from inside `dispatch`, while it
//! holds a global mutex over its own handle table. Calling back into the crate from there
//! (initialize, finalize, dropping an owning handle) would deadlock, so a callback here only
//! copies its arguments into a channel. The channel of a handle is found through a small
//! registry in this module (`registry`): a list of (handle clone, sender) pairs, compared
//! with the crate's `PartialEq for Handle`, which compares the library's u64 handle (that u64
//! itself is private in rust-corosync 3.2, and the context given to `initialize` is the
//! address of a temporary, so neither can be used as the key directly).
//!
//! Lock order: the crate's mutex may be held while a callback takes the registry lock, so
//! this module never calls into rust-corosync while holding the registry lock.
//!
//! # Driving the fds
//!
//! Each handle's fd belongs to the library: it is wrapped in [`tokio::io::unix::AsyncFd`]
//! through `LibFd`, which does not close it. When the fd is readable, `dispatch(All)` runs,
//! and readiness is cleared unless the fd is still readable after callbacks were delivered
//! (tokio is edge-triggered; libqb reads one notification byte per event, so a readable fd
//! after a productive dispatch means more events are queued). The `AsyncFd` is always
//! deregistered before the handle is finalized (which closes the fd).

mod conn;
mod cpg;
mod quorum;

pub mod cfg;
pub mod cmap;

use std::time::Duration;

use rust_corosync::CsError;

pub use self::cpg::{CpgEvent, CpgGroups};
pub use self::quorum::QuorumTracker;

/// What can go wrong talking to corosync.
#[derive(Debug, thiserror::Error)]
pub enum CorosyncError {
    /// The service could not be reached at all (corosync not running, not permitted, ...).
    #[error("corosync {service} service is not available: {}", meaning(*.source))]
    Unavailable {
        service: &'static str,
        #[source]
        source: CsError,
    },
    /// A library call returned an error code.
    #[error("corosync call {call} failed: {}", meaning(*.source))]
    Library {
        call: &'static str,
        #[source]
        source: CsError,
    },
    /// A call could not be made or gave something unusable (no runtime, a value of the wrong
    /// type, a handle already gone).
    #[error("corosync call {call} failed: {reason}")]
    Call { call: &'static str, reason: String },
    /// The CPG group is not joined (or is being left) by this process.
    #[error("CPG group {0:?} is not joined")]
    NotJoined(String),
    /// The CPG group is already joined by this process.
    #[error("CPG group {0:?} is already joined")]
    AlreadyJoined(String),
    /// The CPG group name cannot be used (empty, too long, or contains NUL).
    #[error("invalid CPG group name {name:?}: {reason}")]
    InvalidGroup { name: String, reason: &'static str },
}

impl CorosyncError {
    pub(crate) fn unavailable(service: &'static str, e: CsError) -> CorosyncError {
        CorosyncError::Unavailable { service, source: e }
    }

    pub(crate) fn call(call: &'static str, e: CsError) -> CorosyncError {
        CorosyncError::Library { call, source: e }
    }
}

/// What an error code means for an operator; the code itself is the error's source.
fn meaning(e: CsError) -> String {
    match hint(e) {
        "" => e.to_string(),
        hint => hint.to_owned(),
    }
}

/// A readable description of a corosync error code, with a hint for the common ones.
pub(crate) fn describe(e: CsError) -> String {
    match hint(e) {
        "" => format!("{e}"),
        hint => format!("{e} ({hint})"),
    }
}

/// A hint for the common error codes, or "".
fn hint(e: CsError) -> &'static str {
    match e {
        CsError::CsErrLibrary => "cannot talk to corosync; is it running?",
        CsError::CsErrTryAgain => "corosync is busy, try again",
        CsError::CsErrAccess => "permission denied by corosync",
        CsError::CsErrBadHandle => "the connection to corosync is gone",
        CsError::CsErrNotExist => "no such key or object",
        CsError::CsErrInvalidParam => "invalid parameter",
        CsError::CsErrNameTooLong => "name too long",
        CsError::CsErrExist => "already exists",
        CsError::CsErrTooBig => "message too big",
        CsError::CsErrNoMemory | CsError::CsErrNoResources => "out of resources",
        CsError::CsErrTimeout => "timed out",
        _ => "",
    }
}

/// `e` and its causes, as anyhow's `{:#}` prints them.
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// Retries `connect` every `interval` until it succeeds. The first failure (and then one in
/// about a minute, or whenever the error changes) is logged at warn level, the others at debug
/// level, so a long wait does not flood the log.
pub async fn connect_with_retry<T>(
    what: &str,
    interval: Duration,
    mut connect: impl FnMut() -> Result<T, CorosyncError>,
) -> T {
    let loud_every = (Duration::from_secs(60).as_millis() / interval.as_millis().max(1)).max(1);
    let mut attempt: u128 = 0;
    let mut last_error = String::new();
    loop {
        attempt += 1;
        match connect() {
            Ok(value) => {
                if attempt > 1 {
                    tracing::info!(service = what, attempt, "corosync is reachable again");
                } else {
                    tracing::info!(service = what, "connected to corosync");
                }
                return value;
            }
            Err(e) => {
                let message = with_causes(&e);
                if attempt == 1 || message != last_error || attempt % loud_every == 0 {
                    tracing::warn!(
                        service = what,
                        attempt,
                        "corosync is not reachable: {message}; retrying every {interval:?}"
                    );
                } else {
                    tracing::debug!(
                        service = what,
                        attempt,
                        "corosync is still not reachable: {message}"
                    );
                }
                last_error = message;
                tokio::time::sleep(interval).await;
            }
        }
    }
}

/// The handle -> channel registries that callbacks use (see the module documentation).
pub(crate) mod registry {
    use std::sync::{Mutex, MutexGuard};

    /// A list of (handle clone, value) pairs. Handles compare by the library's u64.
    pub(crate) struct Registry<H, V> {
        entries: Mutex<Vec<(H, V)>>,
    }

    impl<H: PartialEq, V: Clone> Registry<H, V> {
        pub(crate) const fn new() -> Registry<H, V> {
            Registry {
                entries: Mutex::new(Vec::new()),
            }
        }

        fn lock(&self) -> MutexGuard<'_, Vec<(H, V)>> {
            // A poisoned lock only means a panic elsewhere; the list itself stays consistent.
            self.entries.lock().unwrap_or_else(|p| p.into_inner())
        }

        /// Registers `handle` (a clone: dropping it must not finalize anything).
        pub(crate) fn insert(&self, handle: H, value: V) {
            let mut entries = self.lock();
            entries.retain(|(h, _)| *h != handle);
            entries.push((handle, value));
        }

        /// Removes `handle`; returns the removed entry so that it is dropped outside the lock.
        pub(crate) fn remove(&self, handle: &H) -> Option<(H, V)> {
            let mut entries = self.lock();
            let at = entries.iter().position(|(h, _)| h == handle)?;
            Some(entries.swap_remove(at))
        }

        /// The value registered for `handle`.
        pub(crate) fn get(&self, handle: &H) -> Option<V> {
            self.lock()
                .iter()
                .find(|(h, _)| h == handle)
                .map(|(_, v)| v.clone())
        }
    }
}
