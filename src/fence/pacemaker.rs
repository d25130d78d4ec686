//! The pacemaker backend: libstonithd, loaded at run time so that the daemon also runs where
//! pacemaker is not installed. Like dlm_controld, it asks for the node's last fence time
//! (`stonith_api_time`) and requests fencing (`stonith_api_kick`).

use std::ffi::{c_char, c_int, CString};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{FenceError, FenceEvent, FenceOptions};

/// Sonames tried, in order, for pacemaker's fencing library.
pub const STONITH_LIBRARIES: &[&str] = &["libstonithd.so.26", "libstonithd.so"];

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

/// Pacemaker: how long to leave a fence that pacemaker already has under way for a failed node
/// before asking for one ourselves. Pacemaker fences a lost node on its own, and its fencer
/// records a fence that cut a node off only when the corosync ring re-forms, the moment we see
/// the node leave; a request in that gap would power-cycle the node a second time. A kick made
/// after this grace while pacemaker's fence is still pending is merged into it by the fencer.
pub const PACEMAKER_FENCE_GRACE: Duration = Duration::from_secs(1);

/// Pacemaker: how often the fencing history is read while pacemaker's own fence is pending.
pub const PACEMAKER_FENCE_POLL: Duration = Duration::from_millis(100);

/// One look at a node's entries in pacemaker's fencing history.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FenceHistory {
    /// `stonith_api_time(.., in_progress=false)`: the last completed fence, 0 for none.
    last_fenced: i64,
    /// `stonith_api_time(.., in_progress=true)` was non-zero: a fence of the node is pending.
    pending: bool,
}

/// What to do before the first `stonith_api_kick` for a failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BeforeKick {
    /// Pacemaker fenced the node after the failure: no request needed.
    Fenced(SystemTime),
    /// Pacemaker is fencing the node: look again after [`PACEMAKER_FENCE_POLL`].
    Wait,
    /// Nothing counts and nothing is under way (or the grace is over): ask pacemaker.
    Kick,
}

/// The decision before the first kick, `waited` after the first look at the history.
fn before_kick(history: FenceHistory, failed_at: SystemTime, waited: Duration) -> BeforeKick {
    if let Some(at) = fence_time_after(history.last_fenced, failed_at) {
        BeforeKick::Fenced(at)
    } else if history.pending && waited < PACEMAKER_FENCE_GRACE {
        BeforeKick::Wait
    } else {
        BeforeKick::Kick
    }
}

/// A completed fence that does not count for `failed_at` (it came before the failure), if
/// `last_fenced` is one: a repeated fence must have its reason in the log.
fn uncounted_fence(last_fenced: i64, failed_at: SystemTime) -> Option<i64> {
    (last_fenced > 0 && fence_time_after(last_fenced, failed_at).is_none()).then_some(last_fenced)
}

/// An operator's reading of a failed `stonith_api_kick`, with pacemaker's raw return code.
/// The codes are those of pacemaker's fencer (`stonith__result2rc`), negated.
fn kick_failure(rc: c_int) -> String {
    let meaning = match -rc {
        libc::ENODATA => "no fence device could fence the node (every device tried failed)",
        libc::ETIME | libc::ETIMEDOUT => "fencing timed out",
        libc::ENODEV => "no fence device is configured that can fence the node",
        libc::EHOSTUNREACH => {
            "pacemaker's fencer could not be reached or lost the operation (it restarted)"
        }
        libc::ENOTCONN
        | libc::ECONNREFUSED
        | libc::ECONNRESET
        | libc::ECONNABORTED
        | libc::ECOMM
        | libc::EPIPE => "pacemaker's fencer is not reachable (is pacemaker running on this node?)",
        libc::ENOENT => "the fence agent is not installed where pacemaker ran it",
        libc::EACCES | libc::EPERM => {
            "pacemaker's fencer refused the request (permissions, or the device's secrets missing)"
        }
        libc::ECANCELED => "the fence operation was cancelled",
        libc::EOPNOTSUPP => "the fence device does not support the requested action",
        libc::EINVAL | libc::EPROTO => "pacemaker's fencer rejected the request as invalid",
        _ => "",
    };
    let raw = std::io::Error::from_raw_os_error(rc.saturating_abs());
    if meaning.is_empty() {
        format!("stonith_api_kick returned {rc} ({raw})")
    } else {
        format!("stonith_api_kick returned {rc}: {meaning} ({raw})")
    }
}

/// Logs a completed fence that does not count for the failure, once per value.
fn note_uncounted(nodeid: u32, last_fenced: i64, failed_at: SystemTime, noted: &mut Option<i64>) {
    let Some(at) = uncounted_fence(last_fenced, failed_at) else {
        return;
    };
    if *noted == Some(at) {
        return;
    }
    *noted = Some(at);
    let failed_secs = failed_at
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    tracing::info!(
        nodeid,
        last_fenced = at,
        failed_at = failed_secs,
        "pacemaker last fenced node {nodeid} at {at}, before its failure at {failed_secs} \
         (unix seconds): that fence does not count, the node must be fenced again"
    );
}

pub(super) async fn fence_with_pacemaker<A: FencerApi>(
    stonith: Arc<A>,
    nodeid: u32,
    name: Option<String>,
    failed_at: SystemTime,
    options: FenceOptions,
) -> FenceEvent {
    // A name with an interior NUL cannot be passed; the nodeid alone is enough for pacemaker.
    let name = name.and_then(|n| CString::new(n).ok());
    let query = |in_progress: bool| {
        let stonith = Arc::clone(&stonith);
        let name = name.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                stonith.fence_time(nodeid, name.as_deref(), in_progress)
            })
            .await
            .unwrap_or(0)
        }
    };
    let mut noted = None;
    // Pacemaker may have fenced the node on its own already, or be doing so.
    let first_look = tokio::time::Instant::now();
    let mut said_waiting = false;
    loop {
        // Pending asked first: a fence that completes between the two questions is then
        // seen as completed, never as neither.
        let pending = query(true).await > 0;
        let last_fenced = query(false).await;
        tracing::debug!(
            nodeid,
            last_fenced,
            pending,
            "pacemaker's fencing history of node {nodeid}: last fenced at {last_fenced}, a fence \
             under way: {pending}"
        );
        note_uncounted(nodeid, last_fenced, failed_at, &mut noted);
        let history = FenceHistory {
            last_fenced,
            pending,
        };
        match before_kick(history, failed_at, first_look.elapsed()) {
            BeforeKick::Fenced(at) => return FenceEvent::Fenced { nodeid, at },
            BeforeKick::Wait => {
                if !said_waiting {
                    said_waiting = true;
                    tracing::info!(
                        nodeid,
                        "pacemaker is fencing node {nodeid} already: waiting up to {} ms for \
                         its result before asking for a fence",
                        PACEMAKER_FENCE_GRACE.as_millis()
                    );
                }
                tokio::time::sleep(PACEMAKER_FENCE_POLL).await;
            }
            BeforeKick::Kick => {
                if said_waiting {
                    tracing::info!(
                        nodeid,
                        pending,
                        "pacemaker's own fence of node {nodeid} is not recorded after {} ms: \
                         asking for a fence",
                        first_look.elapsed().as_millis()
                    );
                }
                break;
            }
        }
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
                reason: kick_failure(rc),
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
        let last = query(false).await;
        if let Some(at) = fence_time_after(last, failed_at) {
            return FenceEvent::Fenced { nodeid, at };
        }
        note_uncounted(nodeid, last, failed_at, &mut noted);
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

// The two entry points of libstonithd that dlm_controld also uses, as declared in pacemaker's
// public header `crm/stonith-ng.h`:
//   int    stonith_api_kick(uint32_t nodeid, const char *uname, int timeout, bool off);
//   time_t stonith_api_time(uint32_t nodeid, const char *uname, bool in_progress);
// kick: fences the node (off: power off rather than reboot), waiting up to `timeout` seconds;
// 0 on success, a negative errno-style code otherwise. time: the time of the node's last
// completed fencing (0 when none); with `in_progress`, the current time if any entry of the
// node's fencing history is neither done nor failed (a fence under way), else 0. Both give 0
// when the fencer cannot be reached.
type StonithKickFn = unsafe extern "C" fn(u32, *const c_char, c_int, bool) -> c_int;
type StonithTimeFn = unsafe extern "C" fn(u32, *const c_char, bool) -> libc::time_t;

/// Pacemaker's fencer as the pacemaker backend uses it: libstonithd, or a stand-in in tests.
pub(super) trait FencerApi: Send + Sync + 'static {
    /// `stonith_api_time`. Blocking: talks to pacemaker's fencer.
    fn fence_time(&self, nodeid: u32, name: Option<&std::ffi::CStr>, in_progress: bool) -> i64;
    /// `stonith_api_kick`. Blocking for up to `timeout_secs`.
    fn kick(
        &self,
        nodeid: u32,
        name: Option<&std::ffi::CStr>,
        timeout_secs: c_int,
        off: bool,
    ) -> c_int;
}

pub(super) struct Stonith {
    kick: StonithKickFn,
    time: StonithTimeFn,
    /// Keeps the code behind the two function pointers mapped.
    _library: libloading::Library,
}

impl Stonith {
    pub(super) fn load(candidates: &[&str]) -> Result<Stonith, FenceError> {
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
}

impl FencerApi for Stonith {
    fn fence_time(&self, nodeid: u32, name: Option<&std::ffi::CStr>, in_progress: bool) -> i64 {
        let name = name.map_or(std::ptr::null(), |n| n.as_ptr());
        // SAFETY: the prototype matches; `name` is NUL-terminated or null (allowed when the
        // nodeid is given) and outlives the call.
        #[allow(clippy::useless_conversion)] // time_t is i32 on some 32-bit targets
        i64::from(unsafe { (self.time)(nodeid, name, in_progress) })
    }

    fn kick(
        &self,
        nodeid: u32,
        name: Option<&std::ffi::CStr>,
        timeout_secs: c_int,
        off: bool,
    ) -> c_int {
        let name = name.map_or(std::ptr::null(), |n| n.as_ptr());
        // SAFETY: as in `fence_time`.
        unsafe { (self.kick)(nodeid, name, timeout_secs, off) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn options() -> FenceOptions {
        FenceOptions {
            retry: Duration::from_millis(10),
            timeout: Duration::from_secs(20),
            power_off: false,
        }
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
    fn pacemakers_own_fence_is_awaited_before_the_first_kick() {
        let failed_at = UNIX_EPOCH + Duration::from_millis(1_000_500);
        let history = |last_fenced, pending| FenceHistory {
            last_fenced,
            pending,
        };
        let early = Duration::from_millis(20);
        // Recorded after the failure (same second included): taken, whatever else is pending.
        for pending in [false, true] {
            assert_eq!(
                before_kick(history(1_000, pending), failed_at, early),
                BeforeKick::Fenced(failed_at)
            );
            assert_eq!(
                before_kick(
                    history(1_003, pending),
                    failed_at,
                    PACEMAKER_FENCE_GRACE * 2
                ),
                BeforeKick::Fenced(UNIX_EPOCH + Duration::from_secs(1_003))
            );
        }
        // Pacemaker's fence under way but not yet recorded (the fencer finalizes it when the
        // ring re-forms): wait for it, within the grace.
        assert_eq!(
            before_kick(history(0, true), failed_at, Duration::ZERO),
            BeforeKick::Wait
        );
        assert_eq!(
            before_kick(history(990, true), failed_at, early),
            BeforeKick::Wait
        );
        assert_eq!(
            before_kick(
                history(990, true),
                failed_at,
                PACEMAKER_FENCE_GRACE - Duration::from_millis(1)
            ),
            BeforeKick::Wait
        );
        // The grace is bounded: pacemaker merges a kick into its pending fence.
        assert_eq!(
            before_kick(history(0, true), failed_at, PACEMAKER_FENCE_GRACE),
            BeforeKick::Kick
        );
        // Nothing recorded after the failure and nothing under way: ask at once.
        assert_eq!(
            before_kick(history(0, false), failed_at, Duration::ZERO),
            BeforeKick::Kick
        );
        assert_eq!(
            before_kick(history(999, false), failed_at, Duration::ZERO),
            BeforeKick::Kick
        );
    }

    /// Pacemaker's fencer as the daemon sees it: a fence of the node pending until
    /// `recorded_after`, then completed at `fenced_at` (unix seconds; 0: none; with no
    /// `recorded_after`, completed from the start); `kick_rc` for every kick, and a successful
    /// kick records a fence now.
    struct FakeFencer {
        start: std::time::Instant,
        recorded_after: Option<Duration>,
        fenced_at: i64,
        kick_rc: c_int,
        looks: Mutex<u32>,
        kicks: Mutex<u32>,
    }

    impl FakeFencer {
        fn new(recorded_after: Option<Duration>, fenced_at: i64, kick_rc: c_int) -> Arc<Self> {
            Arc::new(FakeFencer {
                start: std::time::Instant::now(),
                recorded_after,
                fenced_at,
                kick_rc,
                looks: Mutex::new(0),
                kicks: Mutex::new(0),
            })
        }

        fn recorded(&self) -> bool {
            self.recorded_after
                .is_some_and(|after| self.start.elapsed() >= after)
        }

        fn counts(&self) -> (u32, u32) {
            (*self.looks.lock().unwrap(), *self.kicks.lock().unwrap())
        }
    }

    impl FencerApi for FakeFencer {
        fn fence_time(&self, _: u32, _: Option<&std::ffi::CStr>, in_progress: bool) -> i64 {
            if in_progress {
                *self.looks.lock().unwrap() += 1;
                return match (self.recorded_after, self.recorded()) {
                    (Some(_), false) => 2_000_000_000,
                    _ => 0,
                };
            }
            if *self.kicks.lock().unwrap() > 0 && self.kick_rc == 0 {
                unix_secs(SystemTime::now())
            } else if self.recorded() || self.recorded_after.is_none() {
                self.fenced_at
            } else {
                0
            }
        }

        fn kick(&self, _: u32, _: Option<&std::ffi::CStr>, _: c_int, _: bool) -> c_int {
            *self.kicks.lock().unwrap() += 1;
            self.kick_rc
        }
    }

    fn unix_secs(t: SystemTime) -> i64 {
        t.duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
    }

    // The race of pacemaker's own fence: the fencer has the fence pending when the daemon
    // first looks, and records it a moment later; asking again would cut the node twice.
    #[tokio::test]
    async fn pacemakers_pending_fence_is_taken_without_a_kick() {
        let failed_at = SystemTime::now();
        let fencer = FakeFencer::new(Some(Duration::from_millis(150)), unix_secs(failed_at), 0);
        let event = fence_with_pacemaker(Arc::clone(&fencer), 3, None, failed_at, options()).await;
        assert_eq!(
            event,
            FenceEvent::Fenced {
                nodeid: 3,
                at: failed_at
            }
        );
        let (looks, kicks) = fencer.counts();
        assert_eq!(kicks, 0, "kicked although pacemaker's fence was under way");
        assert!(looks >= 2, "{looks} looks");
    }

    #[tokio::test]
    async fn nothing_under_way_is_kicked_at_once() {
        let failed_at = SystemTime::now();
        // An old fence, before the failure; the kick's fence is recorded right away.
        let fencer = FakeFencer::new(None, unix_secs(failed_at) - 3600, 0);
        let event = fence_with_pacemaker(Arc::clone(&fencer), 3, None, failed_at, options()).await;
        assert!(
            matches!(event, FenceEvent::Fenced { nodeid: 3, at } if at >= failed_at),
            "{event:?}"
        );
        assert_eq!(fencer.counts(), (1, 1), "(looks, kicks)");
    }

    #[tokio::test]
    async fn a_fence_pending_beyond_the_grace_is_kicked() {
        let failed_at = SystemTime::now();
        let fencer = FakeFencer::new(Some(Duration::from_secs(3600)), 0, -libc::ENODATA);
        let started = std::time::Instant::now();
        let event = fence_with_pacemaker(Arc::clone(&fencer), 3, None, failed_at, options()).await;
        assert!(started.elapsed() >= PACEMAKER_FENCE_GRACE);
        let (looks, kicks) = fencer.counts();
        assert_eq!(kicks, 1);
        assert!(looks >= 2, "{looks} looks");
        match event {
            FenceEvent::Failed { nodeid: 3, reason } => {
                assert!(reason.contains("no fence device could fence"), "{reason}");
                assert!(reason.contains("-61"), "{reason}");
            }
            other => panic!("expected Failed, got {other:?}"),
        }
    }

    #[test]
    fn an_earlier_fence_is_reported_as_not_counted() {
        let failed_at = UNIX_EPOCH + Duration::from_millis(1_000_500);
        assert_eq!(uncounted_fence(0, failed_at), None);
        assert_eq!(uncounted_fence(-1, failed_at), None);
        assert_eq!(uncounted_fence(999, failed_at), Some(999));
        assert_eq!(uncounted_fence(1_000, failed_at), None);
        let mut noted = None;
        note_uncounted(3, 999, failed_at, &mut noted);
        assert_eq!(noted, Some(999));
        note_uncounted(3, 1_000, failed_at, &mut noted);
        assert_eq!(noted, Some(999));
    }

    #[test]
    fn kick_failures_are_told_in_pacemakers_terms() {
        let reason = kick_failure(-libc::ENODATA);
        assert!(
            reason.starts_with("stonith_api_kick returned -61: "),
            "{reason}"
        );
        assert!(
            reason.contains("no fence device could fence the node"),
            "{reason}"
        );
        for rc in [libc::ETIME, libc::ETIMEDOUT] {
            let reason = kick_failure(-rc);
            assert!(reason.contains("timed out"), "{reason}");
            assert!(reason.contains(&format!("returned -{rc}")), "{reason}");
        }
        assert!(kick_failure(-libc::ENODEV).contains("no fence device is configured"));
        for rc in [libc::EHOSTUNREACH, libc::ENOTCONN, libc::ECONNREFUSED] {
            let reason = kick_failure(-rc);
            assert!(
                reason.contains("fencer") && reason.contains("reach"),
                "{reason}"
            );
        }
        // Unknown codes keep the number and the system's wording.
        let reason = kick_failure(-201);
        assert!(
            reason.starts_with("stonith_api_kick returned -201 ("),
            "{reason}"
        );
    }
}
