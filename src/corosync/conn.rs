//! One connection to a corosync service (CPG, quorum): its library handle and the handle's fd
//! registered with tokio, driven and torn down the same way for every service.

use std::os::fd::{AsRawFd, RawFd};

use rust_corosync::CsError;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use super::{describe, CorosyncError};

/// The calls [`Conn`] makes on a service's library handle.
pub(crate) trait LibHandle {
    /// The service's name in log lines and errors: `cpg`, `quorum`.
    const SERVICE: &'static str;
    /// `cpg_fd_get`, `quorum_fd_get`: for errors.
    const FD_GET: &'static str;
    fn fd_get(&self) -> Result<RawFd, CsError>;
    /// `dispatch(All)`: runs the callbacks of everything queued.
    fn dispatch(&self) -> Result<(), CsError>;
    /// Forgets the handle's callback channel (its registry entry).
    fn forget(&self);
    fn finalize(&self) -> Result<(), CsError>;
}

/// A handle and its registration with tokio, torn down in the safe order: deregister the fd,
/// forget the callback channel, then finalize (which closes the fd).
pub(crate) struct Conn<H: LibHandle> {
    afd: Option<AsyncFd<LibFd>>,
    handle: Option<H>,
}

impl<H: LibHandle> Conn<H> {
    /// Takes `handle` (its callback channel already registered) and registers its fd with
    /// `runtime`; on error the handle is finalized.
    pub(crate) fn new(
        handle: H,
        runtime: &tokio::runtime::Handle,
    ) -> Result<Conn<H>, CorosyncError> {
        let mut conn = Conn {
            afd: None,
            handle: Some(handle),
        };
        let fd = conn
            .handle()
            .fd_get()
            .map_err(|e| CorosyncError::call(H::FD_GET, e))?;
        let _guard = runtime.enter();
        // SAFETY: the fd belongs to `conn`'s handle, and `Conn::drop` drops the AsyncFd before
        // finalizing that handle.
        conn.afd = Some(unsafe { register_lib_fd(fd) }?);
        Ok(conn)
    }

    pub(crate) fn handle(&self) -> &H {
        // Some until drop.
        self.handle.as_ref().expect("handle present until drop")
    }

    /// Waits until the fd is readable, then dispatches. Readiness is cleared unless the
    /// dispatch `delivered` callbacks and the fd is still readable: tokio is edge-triggered and
    /// libqb reads one notification byte per event, so a readable fd after a productive
    /// dispatch means more is queued. Cancel-safe: nothing happens before the fd is readable.
    pub(crate) async fn dispatch_when_readable(
        &self,
        delivered: impl FnOnce() -> bool,
    ) -> std::io::Result<Result<(), CsError>> {
        let afd = self.afd.as_ref().expect("AsyncFd present until drop");
        let mut guard = afd.readable().await?;
        let result = self.handle().dispatch();
        if !(delivered() && still_readable(afd.get_ref().0)) {
            guard.clear_ready();
        }
        Ok(result)
    }
}

impl<H: LibHandle> Drop for Conn<H> {
    fn drop(&mut self) {
        drop(self.afd.take());
        if let Some(handle) = self.handle.take() {
            handle.forget();
            if let Err(e) = handle.finalize() {
                tracing::debug!(error = %describe(e), "{}_finalize failed", H::SERVICE);
            }
            // Dropping the owning handle finalizes again; the second call fails harmlessly.
            drop(handle);
        }
    }
}

/// A library-owned fd, registered with tokio without taking ownership (never closed here).
#[derive(Clone, Copy, Debug)]
struct LibFd(RawFd);

impl AsRawFd for LibFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

/// Registers a library-owned fd with the current tokio runtime, for readability only.
///
/// # Safety
///
/// `fd` must stay open, and be the same file description, until the returned `AsyncFd` is
/// dropped: callers drop it before finalizing the handle that owns the fd.
unsafe fn register_lib_fd(fd: RawFd) -> Result<AsyncFd<LibFd>, CorosyncError> {
    // SAFETY: upheld by the caller.
    unsafe { AsyncFd::register_with_interest(LibFd(fd), Interest::READABLE) }.map_err(|e| {
        CorosyncError::Call {
            call: "AsyncFd::register",
            reason: e.to_string(),
        }
    })
}

/// Whether `fd` has something to read right now (non-blocking `poll`).
fn still_readable(fd: RawFd) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, timeout 0: poll only inspects the fd.
    let n = unsafe { libc::poll(&mut pfd, 1, 0) };
    n > 0 && pfd.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0
}
