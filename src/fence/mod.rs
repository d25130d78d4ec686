//! Fencing backends. The core asks with `Output::Fence { nodeid, failed_at }` and needs to hear
//! back that the node was fenced at or after `failed_at` (SPEC S1) or that fencing failed. This
//! module knows nothing of the core: [`Fencer::request`] starts the work, and the outcome
//! arrives as a [`FenceEvent`] on the channel given to [`Fencer::new`]; the daemon converts
//! times to the core's clock.
//!
//! Backends:
//! - **Pacemaker**: libstonithd, loaded at run time so that the daemon also runs where
//!   pacemaker is not installed. Like dlm_controld, it asks for the node's last fence time
//!   (`stonith_api_time`) and requests fencing (`stonith_api_kick`).
//! - **Command**: runs `PROG <nodeid> <nodename>`; exit status 0 means fenced.
//! - **Manual**: nothing is done; an operator must confirm with `gfs_control fence-ack`, which
//!   goes to the core directly.

mod command;
mod pacemaker;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc::UnboundedSender;

use crate::config::FenceSetting;
use command::{fence_with_command, start_command};
use pacemaker::{fence_with_pacemaker, Stonith};

pub use command::check_program;
pub use pacemaker::{PACEMAKER_FENCE_GRACE, PACEMAKER_FENCE_POLL, STONITH_LIBRARIES};

/// How nodes get fenced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FenceMode {
    Pacemaker,
    Command(PathBuf),
    Manual,
}

impl FenceMode {
    /// `auto`: pacemaker when its fencing library can be loaded, else manual.
    pub fn detect() -> FenceMode {
        Self::detect_from(STONITH_LIBRARIES)
    }

    fn detect_from(candidates: &[&str]) -> FenceMode {
        match Stonith::load(candidates) {
            Ok(_) => FenceMode::Pacemaker,
            Err(_) => FenceMode::Manual,
        }
    }

    /// The mode the `fencing` setting names; `auto` is detected now.
    pub fn from_setting(setting: &FenceSetting) -> FenceMode {
        match setting {
            FenceSetting::Auto => FenceMode::detect(),
            FenceSetting::Pacemaker => FenceMode::Pacemaker,
            FenceSetting::Manual => FenceMode::Manual,
            FenceSetting::Program(path) => FenceMode::Command(path.clone()),
        }
    }
}

impl std::fmt::Display for FenceMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FenceMode::Pacemaker => f.write_str("pacemaker"),
            FenceMode::Command(program) => write!(f, "command {}", program.display()),
            FenceMode::Manual => f.write_str("manual"),
        }
    }
}

/// The outcome of one fencing request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FenceEvent {
    /// `nodeid` was fenced at `at`, which is at or after the failure it was requested for.
    Fenced {
        nodeid: u32,
        at: SystemTime,
    },
    Failed {
        nodeid: u32,
        reason: String,
    },
}

/// Timing of the pacemaker and command backends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FenceOptions {
    /// Pacemaker: how often to ask for the last fence time after a successful kick.
    pub retry: Duration,
    /// How long one fencing attempt may take (the kick's timeout, the program's run time, and
    /// the wait for pacemaker to record the fence) before it counts as failed.
    pub timeout: Duration,
    /// Pacemaker: power the node off instead of rebooting it.
    pub power_off: bool,
}

impl Default for FenceOptions {
    fn default() -> Self {
        FenceOptions {
            retry: Duration::from_secs(5),
            timeout: Duration::from_secs(300),
            power_off: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FenceError {
    #[error("cannot load pacemaker's fencing library (tried {tried}): {reason}")]
    LibraryUnavailable { tried: String, reason: String },
    #[error("fence program {}: {reason}", path.display())]
    BadProgram { path: PathBuf, reason: String },
}

/// Starts fencing requests and reports their outcome.
pub struct Fencer {
    mode: FenceMode,
    /// None: manual, nothing to run.
    backend: Option<Backend>,
    options: FenceOptions,
    events: UnboundedSender<FenceEvent>,
    /// Nodes with a request under way: a repeated request joins it instead of piling up kicks.
    in_flight: Arc<Mutex<HashSet<u32>>>,
}

enum Backend {
    Pacemaker(Arc<Stonith>),
    Command(PathBuf),
}

impl Fencer {
    /// Prepares `mode` (loading libstonithd for pacemaker); outcomes go to `events`.
    pub fn new(
        mode: FenceMode,
        options: FenceOptions,
        events: UnboundedSender<FenceEvent>,
    ) -> Result<Fencer, FenceError> {
        let backend = match &mode {
            FenceMode::Pacemaker => Some(Backend::Pacemaker(Arc::new(Stonith::load(
                STONITH_LIBRARIES,
            )?))),
            FenceMode::Command(program) => Some(Backend::Command(program.clone())),
            FenceMode::Manual => None,
        };
        Ok(Fencer {
            mode,
            backend,
            options,
            events,
            in_flight: Arc::new(Mutex::new(HashSet::new())),
        })
    }

    pub fn mode(&self) -> &FenceMode {
        &self.mode
    }

    /// Asks for `nodeid` (called `name` in corosync, when known) to be fenced because it failed
    /// at `failed_at`. Returns at once; must be called from within a tokio runtime.
    pub fn request(&mut self, nodeid: u32, name: Option<String>, failed_at: SystemTime) {
        let label = name.as_deref().unwrap_or("?").to_owned();
        let Some(backend) = &self.backend else {
            tracing::warn!(
                nodeid,
                node = %label,
                "node {nodeid} ({label}) must be fenced by hand: once it is certainly down, confirm \
                 with `gfs_control fence-ack {nodeid}`; journal recovery waits until then"
            );
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            let _ = self.events.send(FenceEvent::Failed {
                nodeid,
                reason: "fencing requested outside the async runtime".to_owned(),
            });
            return;
        };
        let claim = match InFlight::claim(&self.in_flight, nodeid) {
            Some(claim) => claim,
            None => {
                tracing::debug!(nodeid, "fencing already under way, request joined");
                return;
            }
        };
        // The core logs the request; this adds the backend's view of it.
        tracing::debug!(nodeid, node = %label, mode = %self.mode, "fencing node");
        let events = self.events.clone();
        let options = self.options;
        match backend {
            Backend::Pacemaker(stonith) => {
                let stonith = Arc::clone(stonith);
                runtime.spawn(async move {
                    let event =
                        fence_with_pacemaker(stonith, nodeid, name, failed_at, options).await;
                    claim.finish(&events, event);
                });
            }
            Backend::Command(program) => {
                let program = program.clone();
                // Started here, not in the task: on the daemon's current-thread runtime the task
                // first runs when the loop is idle again, which after a failure is after every
                // filesystem's `block=1` has been handed out, and fencing is the longest step.
                let child = start_command(&program, nodeid, name);
                runtime.spawn(async move {
                    let event = match child {
                        Ok(child) => {
                            fence_with_command(child, program, nodeid, failed_at, options).await
                        }
                        Err(event) => event,
                    };
                    claim.finish(&events, event);
                });
            }
        }
    }
}

/// A node's place in the in-flight set, released when its outcome is sent (or its task dies).
struct InFlight {
    set: Arc<Mutex<HashSet<u32>>>,
    nodeid: u32,
}

impl InFlight {
    fn claim(set: &Arc<Mutex<HashSet<u32>>>, nodeid: u32) -> Option<InFlight> {
        let inserted = set
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(nodeid);
        inserted.then(|| InFlight {
            set: Arc::clone(set),
            nodeid,
        })
    }

    /// Released before sending, so that the core's retry after a failure is not swallowed.
    fn finish(self, events: &UnboundedSender<FenceEvent>, event: FenceEvent) {
        drop(self);
        // The core logs the outcome (one line per fact); the wall-clock time is the backend's.
        if let FenceEvent::Fenced { nodeid, at } = &event {
            tracing::debug!(nodeid, at = ?at, "node fenced");
        }
        // A closed channel means the daemon is shutting down: nobody is left to tell.
        let _ = events.send(event);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.set
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(&self.nodeid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::time::UNIX_EPOCH;
    use tokio::sync::mpsc;

    fn scratch_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "gfs-controld-fence-{tag}-{}-{}",
            std::process::id(),
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn write_script(dir: &std::path::Path, name: &str, body: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    fn options() -> FenceOptions {
        FenceOptions {
            retry: Duration::from_millis(10),
            timeout: Duration::from_secs(20),
            power_off: false,
        }
    }

    // Both outcomes in one test: writing an executable while another test thread forks can
    // make its exec fail with ETXTBSY.
    #[tokio::test]
    async fn command_mode_reports_the_programs_outcome() {
        let dir = scratch_dir("command");
        let succeeds = write_script(&dir, "fence-ok", "exit 0");
        let fails = write_script(
            &dir,
            "fence-fail",
            "echo \"cannot reach $2 (node $1)\" >&2\nexit 1",
        );
        let marks = write_script(&dir, "fence-mark", "touch \"$(dirname \"$0\")/started\"");
        let (tx, mut rx) = mpsc::unbounded_channel();
        let failed_at = SystemTime::now();

        // The program starts within `request`, not when the loop next yields to the runtime
        // (this test's thread never yields while it waits: no task can run).
        let mut fencer = Fencer::new(FenceMode::Command(marks), options(), tx.clone()).unwrap();
        fencer.request(2, Some("node2".to_owned()), failed_at);
        let started = dir.join("started");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !started.exists() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(
            started.exists(),
            "the fence program did not start before the loop yielded"
        );
        assert!(matches!(
            rx.recv().await.unwrap(),
            FenceEvent::Fenced { nodeid: 2, .. }
        ));

        let mut fencer = Fencer::new(FenceMode::Command(succeeds), options(), tx.clone()).unwrap();
        fencer.request(3, Some("node3".to_owned()), failed_at);
        match rx.recv().await.unwrap() {
            FenceEvent::Fenced { nodeid, at } => {
                assert_eq!(nodeid, 3);
                assert!(at >= failed_at);
            }
            other => panic!("expected Fenced, got {other:?}"),
        }

        let mut fencer = Fencer::new(FenceMode::Command(fails), options(), tx.clone()).unwrap();
        fencer.request(4, Some("node4".to_owned()), failed_at);
        match rx.recv().await.unwrap() {
            FenceEvent::Failed { nodeid, reason } => {
                assert_eq!(nodeid, 4);
                assert!(reason.contains("exit status: 1"), "{reason}");
                assert!(reason.contains("cannot reach node4 (node 4)"), "{reason}");
            }
            other => panic!("expected Failed, got {other:?}"),
        }

        // A missing program is a failure to report, not a crash.
        let mut fencer = Fencer::new(
            FenceMode::Command(dir.join("no-such-program")),
            options(),
            tx,
        )
        .unwrap();
        fencer.request(5, None, failed_at);
        assert!(matches!(
            rx.recv().await.unwrap(),
            FenceEvent::Failed { nodeid: 5, .. }
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn manual_mode_waits_for_the_operator() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut fencer = Fencer::new(FenceMode::Manual, options(), tx).unwrap();
        fencer.request(2, Some("node2".to_owned()), SystemTime::now());
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn detection_falls_back_to_manual_without_pacemaker() {
        assert_eq!(
            FenceMode::detect_from(&["libgfs-controld-no-such-library.so.0"]),
            FenceMode::Manual
        );
        assert!(matches!(
            Stonith::load(&["libgfs-controld-no-such-library.so.0"]),
            Err(FenceError::LibraryUnavailable { .. })
        ));
    }

    #[test]
    fn settings_name_modes() {
        let mode = |value: &str| FenceMode::from_setting(&FenceSetting::parse(value).unwrap());
        assert_eq!(mode("manual"), FenceMode::Manual);
        assert_eq!(mode("pacemaker"), FenceMode::Pacemaker);
        assert_eq!(
            mode(" /usr/sbin/fence-it "),
            FenceMode::Command(PathBuf::from("/usr/sbin/fence-it"))
        );
        assert!(FenceSetting::parse("relative/path").is_err());
    }
}
