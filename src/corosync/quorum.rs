//! Quorum tracking: `quorum_initialize` + `quorum_trackstart(CS_TRACK_CHANGES)`, the fd driven
//! by a tokio task; changes arrive on a channel as [`QuorumChange`]s.

use rust_corosync::quorum;
use rust_corosync::{CsError, DispatchFlags, NodeId, TrackFlags};
use tokio::sync::mpsc::{self, UnboundedReceiver, UnboundedSender};
use tokio::sync::oneshot;

use super::conn::{Conn, LibHandle};
use super::registry::Registry;
use super::{describe, CorosyncError};

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
        let conn = Conn::new(handle, &runtime)?;
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
    conn: Conn<quorum::Handle>,
    mut raw: UnboundedReceiver<QuorumChange>,
    events: UnboundedSender<QuorumChange>,
    mut stop: oneshot::Receiver<()>,
) {
    loop {
        tokio::select! {
            biased;
            dispatched = conn.dispatch_when_readable(|| !raw.is_empty()) => {
                let result = match dispatched {
                    Ok(result) => result,
                    Err(e) => {
                        tracing::error!(error = %e, "polling the quorum fd failed; quorum tracking stops");
                        break;
                    }
                };
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

impl LibHandle for quorum::Handle {
    const SERVICE: &'static str = "quorum";
    const FD_GET: &'static str = "quorum_fd_get";

    fn fd_get(&self) -> Result<std::os::fd::RawFd, CsError> {
        quorum::fd_get(self)
    }

    fn dispatch(&self) -> Result<(), CsError> {
        quorum::dispatch(self, DispatchFlags::All)
    }

    fn forget(&self) {
        drop(REGISTRY.remove(self));
    }

    fn finalize(&self) -> Result<(), CsError> {
        quorum::finalize(self)
    }
}
