//! Quorum tracking: `quorum_initialize` + `quorum_trackstart(CS_TRACK_CHANGES)`, the fd driven
//! by a tokio task; changes arrive on a channel as [`QuorumChange`]s.

use rust_corosync::quorum;
use rust_corosync::{CsError, DispatchFlags, NodeId, TrackFlags};
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc::{self, UnboundedReceiver, UnboundedSender};
use tokio::sync::oneshot;

use super::registry::Registry;
use super::{describe, register_lib_fd, still_readable, CorosyncError, LibFd};

/// One quorum notification: whether this partition is quorate, and who is in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuorumChange {
    pub quorate: bool,
    pub members: Vec<u32>,
}

static REGISTRY: Registry<quorum::Handle, UnboundedSender<QuorumChange>> = Registry::new();

fn on_quorum(handle: &quorum::Handle, quorate: bool, _ring: quorum::RingId, members: Vec<NodeId>) {
    if let Some(tx) = REGISTRY.get(handle) {
        let members = members.into_iter().map(u32::from).collect();
        let _ = tx.send(QuorumChange { quorate, members });
    }
}

/// Tracks the quorum state of this node's partition.
///
/// Quorum changes arrive on the receiver returned by [`QuorumTracker::new`]; when the quorum
/// handle dies (corosync went away) the receiver yields `None`, which the daemon must treat
/// as fatal. Dropping the tracker stops tracking and finalizes the handle.
pub struct QuorumTracker {
    /// A clone of the handle owned by the task (clones never finalize).
    handle: quorum::Handle,
    _stop: oneshot::Sender<()>,
}

impl QuorumTracker {
    /// quorum initialize + trackstart(changes); changes arrive on the receiver. Must be called
    /// inside a tokio runtime.
    pub fn new() -> Result<(QuorumTracker, UnboundedReceiver<QuorumChange>), CorosyncError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|e| CorosyncError::Call {
            call: "QuorumTracker::new",
            reason: format!("not inside a tokio runtime: {e}"),
        })?;
        let model = quorum::ModelData::ModelV1(quorum::Model1Data {
            flags: quorum::Model1Flags::None,
            quorum_notification_fn: Some(on_quorum),
            nodelist_notification_fn: None,
        });
        let (handle, _type) =
            quorum::initialize(&model, 0).map_err(|e| CorosyncError::unavailable("quorum", e))?;
        let (raw_tx, raw_rx) = mpsc::unbounded_channel();
        let (tx, rx) = mpsc::unbounded_channel();
        REGISTRY.insert(handle.clone(), raw_tx);
        let mut conn = Conn {
            afd: None,
            handle: Some(handle),
        };
        let fd =
            quorum::fd_get(conn.handle()).map_err(|e| CorosyncError::call("quorum_fd_get", e))?;
        {
            let _guard = runtime.enter();
            // SAFETY: the fd belongs to `conn`'s handle, and `Conn::drop` drops the AsyncFd
            // before finalizing that handle.
            conn.afd = Some(unsafe { register_lib_fd(fd) }?);
        }
        quorum::trackstart(conn.handle(), TrackFlags::Changes)
            .map_err(|e| CorosyncError::call("quorum_trackstart", e))?;
        let handle = conn.handle().clone();
        let (stop_tx, stop_rx) = oneshot::channel();
        runtime.spawn(drive(conn, raw_rx, tx, stop_rx));
        Ok((
            QuorumTracker {
                handle,
                _stop: stop_tx,
            },
            rx,
        ))
    }

    /// Synchronous `quorum_getquorate`.
    pub fn quorate(&self) -> Result<bool, CorosyncError> {
        quorum::getquorate(&self.handle).map_err(|e| CorosyncError::call("quorum_getquorate", e))
    }
}

async fn drive(
    conn: Conn,
    mut raw: UnboundedReceiver<QuorumChange>,
    events: UnboundedSender<QuorumChange>,
    mut stop: oneshot::Receiver<()>,
) {
    let afd = conn.afd.as_ref().expect("AsyncFd present until drop");
    loop {
        tokio::select! {
            biased;
            ready = afd.readable() => {
                let mut guard = match ready {
                    Ok(guard) => guard,
                    Err(e) => {
                        tracing::error!(error = %e, "polling the quorum fd failed; quorum tracking stops");
                        break;
                    }
                };
                let result = quorum::dispatch(conn.handle(), DispatchFlags::All);
                let delivered = !raw.is_empty();
                if !(delivered && still_readable(afd.get_ref().0)) {
                    guard.clear_ready();
                }
                // The core logs quorum changes.
                while let Ok(change) = raw.try_recv() {
                    if events.send(change).is_err() {
                        return;
                    }
                }
                match result {
                    Ok(()) | Err(CsError::CsErrTryAgain) => {}
                    Err(e) => {
                        tracing::error!(error = %describe(e), "quorum_dispatch failed; quorum tracking stops");
                        break;
                    }
                }
            }
            _ = &mut stop => break,
        }
    }
    // Dropping conn deregisters the fd and finalizes the handle; dropping `events` makes the
    // receiver yield None.
}

struct Conn {
    afd: Option<AsyncFd<LibFd>>,
    handle: Option<quorum::Handle>,
}

impl Conn {
    fn handle(&self) -> &quorum::Handle {
        self.handle
            .as_ref()
            .expect("quorum handle present until drop")
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        drop(self.afd.take());
        if let Some(handle) = self.handle.take() {
            drop(REGISTRY.remove(&handle));
            if let Err(e) = quorum::finalize(&handle) {
                tracing::debug!(error = %describe(e), "quorum_finalize failed");
            }
            drop(handle);
        }
    }
}
