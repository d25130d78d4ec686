//! The command backend: runs `PROG <nodeid> <nodename>`; exit status 0 means fenced.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::{FenceError, FenceEvent, FenceOptions};

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

/// Longest piece of a fence program's stderr quoted in a failure reason.
const MAX_STDERR_IN_REASON: usize = 1024;

/// Starts the fencing program: `PROGRAM NODEID NAME`.
pub(super) fn start_command(
    program: &Path,
    nodeid: u32,
    name: Option<String>,
) -> Result<tokio::process::Child, FenceEvent> {
    tokio::process::Command::new(program)
        .arg(nodeid.to_string())
        .arg(name.unwrap_or_default())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        // A program that overruns the timeout is killed when its future is dropped.
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| FenceEvent::Failed {
            nodeid,
            reason: format!("cannot run {}: {e}", program.display()),
        })
}

/// Waits for the fencing program started by [`start_command`].
pub(super) async fn fence_with_command(
    child: tokio::process::Child,
    program: PathBuf,
    nodeid: u32,
    failed_at: SystemTime,
    options: FenceOptions,
) -> FenceEvent {
    let output = match tokio::time::timeout(options.timeout, child.wait_with_output()).await {
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
                reason: format!("waiting for {}: {e}", program.display()),
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
