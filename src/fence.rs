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

use std::collections::HashSet;
use std::ffi::{c_char, c_int, CString};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc::UnboundedSender;

/// Sonames tried, in order, for pacemaker's fencing library.
pub const STONITH_LIBRARIES: &[&str] = &["libstonithd.so.26", "libstonithd.so"];

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

    /// Parses a configuration value: `auto`, `pacemaker`, `manual`, or the absolute path of a
    /// fence program.
    pub fn from_setting(value: &str) -> Result<FenceMode, FenceError> {
        match value.trim() {
            "auto" => Ok(FenceMode::detect()),
            "pacemaker" => Ok(FenceMode::Pacemaker),
            "manual" => Ok(FenceMode::Manual),
            path if path.starts_with('/') => Ok(FenceMode::Command(PathBuf::from(path))),
            other => Err(FenceError::BadSetting(other.to_owned())),
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
    #[error("invalid fencing setting {0:?}: expected auto, pacemaker, manual or an absolute program path")]
    BadSetting(String),
    #[error("fence program {}: {reason}", path.display())]
    BadProgram { path: PathBuf, reason: String },
}

/// A fence program must exist and be executable when the daemon starts: a typo would otherwise
/// surface only at the first node failure, with filesystems blocked while fencing retries.
pub fn check_program(path: &std::path::Path) -> Result<(), FenceError> {
    use std::os::unix::fs::PermissionsExt;
    let bad = |reason: String| FenceError::BadProgram {
        path: path.to_owned(),
        reason,
    };
    let meta = std::fs::metadata(path).map_err(|e| bad(e.to_string()))?;
    if !meta.is_file() {
        return Err(bad("not a regular file".to_owned()));
    }
    if meta.permissions().mode() & 0o111 == 0 {
        return Err(bad("not executable".to_owned()));
    }
    // The mode bits may allow it while the filesystem does not (noexec).
    nix::unistd::access(path, nix::unistd::AccessFlags::X_OK)
        .map_err(|e| bad(format!("not executable: {e}")))
}

/// Starts fencing requests and reports their outcome.
pub struct Fencer {
    mode: FenceMode,
    backend: Backend,
    options: FenceOptions,
    events: UnboundedSender<FenceEvent>,
    /// Nodes with a request under way: a repeated request joins it instead of piling up kicks.
    in_flight: Arc<Mutex<HashSet<u32>>>,
}

enum Backend {
    Pacemaker(Arc<Stonith>),
    Command(PathBuf),
    Manual,
}

impl Fencer {
    /// Prepares `mode` (loading libstonithd for pacemaker); outcomes go to `events`.
    pub fn new(
        mode: FenceMode,
        options: FenceOptions,
        events: UnboundedSender<FenceEvent>,
    ) -> Result<Fencer, FenceError> {
        let backend = match &mode {
            FenceMode::Pacemaker => Backend::Pacemaker(Arc::new(Stonith::load(STONITH_LIBRARIES)?)),
            FenceMode::Command(program) => Backend::Command(program.clone()),
            FenceMode::Manual => Backend::Manual,
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
        if let Backend::Manual = self.backend {
            tracing::warn!(
                nodeid,
                node = %label,
                "node {nodeid} ({label}) must be fenced by hand: once it is certainly down, confirm \
                 with `gfs_control fence-ack {nodeid}`; journal recovery waits until then"
            );
            return;
        }
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
        tracing::info!(nodeid, node = %label, mode = %self.mode, "fencing node");
        let events = self.events.clone();
        let options = self.options;
        match &self.backend {
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
                runtime.spawn(async move {
                    let event = fence_with_command(program, nodeid, name, failed_at, options).await;
                    claim.finish(&events, event);
                });
            }
            Backend::Manual => {}
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
        match &event {
            FenceEvent::Fenced { nodeid, at } => {
                tracing::info!(nodeid, at = ?at, "node fenced");
            }
            FenceEvent::Failed { nodeid, reason } => {
                tracing::warn!(nodeid, reason = %reason, "fencing failed");
            }
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

/// The fence time as evidence for a failure at `failed_at`, if it is one.
///
/// `time_t` has whole seconds, so a fence in the same second as the failure cannot be ordered
/// against it; like dlm_controld we count it (a node cannot fail, be fenced and fail again
/// within one second), and report the failure time itself so the core's `at >= failed_at`
/// check holds.
fn fence_time_after(last_fenced: i64, failed_at: SystemTime) -> Option<SystemTime> {
    let fenced_secs = u64::try_from(last_fenced).ok().filter(|&secs| secs > 0)?;
    let failed_secs = failed_at
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    (fenced_secs >= failed_secs)
        .then(|| (UNIX_EPOCH + Duration::from_secs(fenced_secs)).max(failed_at))
}

async fn fence_with_pacemaker(
    stonith: Arc<Stonith>,
    nodeid: u32,
    name: Option<String>,
    failed_at: SystemTime,
    options: FenceOptions,
) -> FenceEvent {
    // A name with an interior NUL cannot be passed; the nodeid alone is enough for pacemaker.
    let name = name.and_then(|n| CString::new(n).ok());
    let last_fenced = |stonith: Arc<Stonith>, name: Option<CString>| async move {
        tokio::task::spawn_blocking(move || stonith.last_fenced(nodeid, name.as_deref()))
            .await
            .unwrap_or(0)
    };
    // Pacemaker may have fenced the node on its own already.
    let last = last_fenced(Arc::clone(&stonith), name.clone()).await;
    if let Some(at) = fence_time_after(last, failed_at) {
        return FenceEvent::Fenced { nodeid, at };
    }
    let timeout_secs = c_int::try_from(options.timeout.as_secs()).unwrap_or(c_int::MAX);
    let kick_stonith = Arc::clone(&stonith);
    let kick_name = name.clone();
    let kicked = tokio::task::spawn_blocking(move || {
        kick_stonith.kick(
            nodeid,
            kick_name.as_deref(),
            timeout_secs,
            options.power_off,
        )
    })
    .await;
    match kicked {
        Ok(0) => {}
        Ok(rc) => {
            return FenceEvent::Failed {
                nodeid,
                reason: format!(
                    "stonith_api_kick returned {rc} ({})",
                    std::io::Error::from_raw_os_error(rc.saturating_abs())
                ),
            }
        }
        Err(e) => {
            return FenceEvent::Failed {
                nodeid,
                reason: format!("stonith_api_kick did not complete: {e}"),
            }
        }
    }
    // The kick succeeded; the fence is evidence only once pacemaker's history records it.
    let deadline = tokio::time::Instant::now() + options.timeout;
    loop {
        let last = last_fenced(Arc::clone(&stonith), name.clone()).await;
        if let Some(at) = fence_time_after(last, failed_at) {
            return FenceEvent::Fenced { nodeid, at };
        }
        if tokio::time::Instant::now() >= deadline {
            return FenceEvent::Failed {
                nodeid,
                reason: format!(
                    "pacemaker accepted the fence request but recorded no fencing after the \
                     failure within {} s (last fenced at {last})",
                    options.timeout.as_secs()
                ),
            };
        }
        tokio::time::sleep(options.retry).await;
    }
}

/// Longest piece of a fence program's stderr quoted in a failure reason.
const MAX_STDERR_IN_REASON: usize = 1024;

async fn fence_with_command(
    program: PathBuf,
    nodeid: u32,
    name: Option<String>,
    failed_at: SystemTime,
    options: FenceOptions,
) -> FenceEvent {
    let mut command = tokio::process::Command::new(&program);
    command
        .arg(nodeid.to_string())
        .arg(name.unwrap_or_default())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        // A program that overruns the timeout is killed when its future is dropped.
        .kill_on_drop(true);
    let output = match tokio::time::timeout(options.timeout, command.output()).await {
        Err(_) => {
            return FenceEvent::Failed {
                nodeid,
                reason: format!(
                    "{} did not finish within {} s",
                    program.display(),
                    options.timeout.as_secs()
                ),
            }
        }
        Ok(Err(e)) => {
            return FenceEvent::Failed {
                nodeid,
                reason: format!("cannot run {}: {e}", program.display()),
            }
        }
        Ok(Ok(output)) => output,
    };
    if output.status.success() {
        // The program ran after the failure was seen, so its success is later than the
        // failure even if the wall clock stepped back meanwhile.
        return FenceEvent::Fenced {
            nodeid,
            at: SystemTime::now().max(failed_at),
        };
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stderr = stderr.trim();
    let tail_start = stderr
        .char_indices()
        .map(|(i, _)| i)
        .find(|&i| stderr.len() - i <= MAX_STDERR_IN_REASON)
        .unwrap_or(stderr.len());
    let mut reason = format!("{} failed ({})", program.display(), output.status);
    if !stderr.is_empty() {
        reason.push_str(": ");
        reason.push_str(&stderr[tail_start..]);
    }
    FenceEvent::Failed { nodeid, reason }
}

// The two entry points of libstonithd that dlm_controld also uses, as declared in pacemaker's
// public header `crm/stonith-ng.h`:
//   int    stonith_api_kick(uint32_t nodeid, const char *uname, int timeout, bool off);
//   time_t stonith_api_time(uint32_t nodeid, const char *uname, bool in_progress);
// kick: fences the node (off: power off rather than reboot), waiting up to `timeout` seconds;
// 0 on success, a negative errno-style code otherwise. time: the time of the node's last
// completed fencing (0 when none), or, with `in_progress`, of one under way.
type StonithKickFn = unsafe extern "C" fn(u32, *const c_char, c_int, bool) -> c_int;
type StonithTimeFn = unsafe extern "C" fn(u32, *const c_char, bool) -> libc::time_t;

struct Stonith {
    kick: StonithKickFn,
    time: StonithTimeFn,
    /// Keeps the code behind the two function pointers mapped.
    _library: libloading::Library,
}

impl Stonith {
    fn load(candidates: &[&str]) -> Result<Stonith, FenceError> {
        let mut reasons = Vec::new();
        for soname in candidates {
            // SAFETY: loading runs the library's initialisers; libstonithd's are those of an
            // ordinary C library (dlm_controld dlopens it the same way).
            let library = match unsafe { libloading::Library::new(soname) } {
                Ok(library) => library,
                Err(e) => {
                    reasons.push(e.to_string());
                    continue;
                }
            };
            // SAFETY: the symbol types match the prototypes quoted above; the pointers are
            // copied out and stay valid because the library is kept with them.
            let symbols = unsafe {
                library
                    .get::<StonithKickFn>(b"stonith_api_kick\0")
                    .map(|kick| *kick)
                    .and_then(|kick| {
                        library
                            .get::<StonithTimeFn>(b"stonith_api_time\0")
                            .map(|time| (kick, *time))
                    })
            };
            match symbols {
                Ok((kick, time)) => {
                    return Ok(Stonith {
                        kick,
                        time,
                        _library: library,
                    })
                }
                Err(e) => reasons.push(format!("{soname}: {e}")),
            }
        }
        Err(FenceError::LibraryUnavailable {
            tried: candidates.join(", "),
            reason: reasons.join("; "),
        })
    }

    /// Blocking: talks to pacemaker's fencer.
    fn last_fenced(&self, nodeid: u32, name: Option<&std::ffi::CStr>) -> i64 {
        let name = name.map_or(std::ptr::null(), |n| n.as_ptr());
        // SAFETY: the prototype matches; `name` is NUL-terminated or null (allowed when the
        // nodeid is given) and outlives the call.
        #[allow(clippy::useless_conversion)] // time_t is i32 on some 32-bit targets
        i64::from(unsafe { (self.time)(nodeid, name, false) })
    }

    /// Blocking for up to `timeout_secs`.
    fn kick(
        &self,
        nodeid: u32,
        name: Option<&std::ffi::CStr>,
        timeout_secs: c_int,
        off: bool,
    ) -> c_int {
        let name = name.map_or(std::ptr::null(), |n| n.as_ptr());
        // SAFETY: as in `last_fenced`.
        unsafe { (self.kick)(nodeid, name, timeout_secs, off) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
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
        let (tx, mut rx) = mpsc::unbounded_channel();
        let failed_at = SystemTime::now();

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
    fn only_a_fence_at_or_after_the_failure_counts() {
        let failed_at = UNIX_EPOCH + Duration::from_millis(1_000_500);
        assert_eq!(fence_time_after(0, failed_at), None);
        assert_eq!(fence_time_after(-1, failed_at), None);
        assert_eq!(fence_time_after(999, failed_at), None);
        // Same second: counted, reported as the failure time itself.
        assert_eq!(fence_time_after(1_000, failed_at), Some(failed_at));
        assert_eq!(
            fence_time_after(1_002, failed_at),
            Some(UNIX_EPOCH + Duration::from_secs(1_002))
        );
    }

    #[test]
    fn settings_parse() {
        assert_eq!(
            FenceMode::from_setting("manual").unwrap(),
            FenceMode::Manual
        );
        assert_eq!(
            FenceMode::from_setting("pacemaker").unwrap(),
            FenceMode::Pacemaker
        );
        assert_eq!(
            FenceMode::from_setting("/usr/sbin/fence-it").unwrap(),
            FenceMode::Command(PathBuf::from("/usr/sbin/fence-it"))
        );
        assert!(FenceMode::from_setting("relative/path").is_err());
    }
}
