//! The daemon side of the control socket. It checks who is asking, parses the request and hands
//! it to the daemon loop, which owns the protocol core: nothing is decided here.

use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot, Semaphore};

use super::proto::{decode_request, encode_reply, Reply, Request, MAX_REQUEST_BYTES};
use crate::ratelimit::{RateLimit, Verdict};

/// A parsed request on its way to the daemon loop, with the channel for its answer.
#[derive(Debug)]
pub struct ControlRequest {
    pub request: Request,
    pub reply: oneshot::Sender<Reply>,
}

/// Limits applied to every connection.
#[derive(Clone, Copy, Debug)]
pub struct ServeOptions {
    /// How long a client may take to send its request line.
    pub read_timeout: Duration,
    /// How long the daemon loop may take to take the request and answer it.
    pub reply_timeout: Duration,
    /// How long a client may take to read the reply: one that never reads must not hold the
    /// reply's memory and its descriptor for as long as it lives.
    pub write_timeout: Duration,
    /// Connections served at once; more are refused at once (and logged at a bounded rate).
    pub max_connections: usize,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            read_timeout: Duration::from_secs(5),
            reply_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(5),
            max_connections: MAX_CONNECTIONS,
        }
    }
}

/// The default cap on concurrent control connections: `gfs_control` and the OCF agent's
/// monitor need a handful; the cap keeps descriptors for corosync and the kernel.
pub const MAX_CONNECTIONS: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("cannot create control socket directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} exists and is not a socket; refusing to remove it")]
    NotASocket { path: PathBuf },
    #[error("another daemon is already listening on {path}")]
    AlreadyRunning { path: PathBuf },
    #[error("cannot remove stale control socket {path}: {source}")]
    RemoveStale {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot bind control socket {path}: {source}")]
    Bind {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot set permissions of control socket {path}: {source}")]
    Permissions {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot register control socket {path} with the runtime: {source}")]
    Register {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// A bound control socket, not yet serving. Binding needs no async runtime, so the daemon can
/// fail early (before joining the cluster) when the socket is unusable.
#[derive(Debug)]
pub struct ControlListener {
    listener: std::os::unix::net::UnixListener,
    path: PathBuf,
}

impl ControlListener {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Creates the socket at `path`: the parent directory (0700) if missing, a stale socket from a
/// dead daemon removed, the new one restricted to its owner (0600).
pub fn bind(path: &Path) -> Result<ControlListener, ControlError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            create_private_dir(dir).map_err(|source| ControlError::CreateDir {
                path: dir.to_owned(),
                source,
            })?;
        }
    }
    remove_stale_socket(path)?;
    let listener =
        std::os::unix::net::UnixListener::bind(path).map_err(|source| ControlError::Bind {
            path: path.to_owned(),
            source,
        })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|source| {
        ControlError::Permissions {
            path: path.to_owned(),
            source,
        }
    })?;
    listener
        .set_nonblocking(true)
        .map_err(|source| ControlError::Bind {
            path: path.to_owned(),
            source,
        })?;
    Ok(ControlListener {
        listener,
        path: path.to_owned(),
    })
}

fn create_private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// A socket file left by a crashed daemon would make bind fail; one that still answers belongs
/// to a live daemon and must not be stolen.
fn remove_stale_socket(path: &Path) -> Result<(), ControlError> {
    let metadata = match std::fs::symlink_metadata(path) {
        Ok(metadata) => metadata,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(ControlError::RemoveStale {
                path: path.to_owned(),
                source,
            })
        }
    };
    if !metadata.file_type().is_socket() {
        return Err(ControlError::NotASocket {
            path: path.to_owned(),
        });
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(ControlError::AlreadyRunning {
            path: path.to_owned(),
        });
    }
    std::fs::remove_file(path).map_err(|source| ControlError::RemoveStale {
        path: path.to_owned(),
        source,
    })
}

/// Only root and the daemon's own user may talk to the daemon (fence-ack can make a journal
/// replay happen, SPEC S1).
pub fn peer_allowed(peer_uid: u32, daemon_euid: u32) -> bool {
    peer_uid == 0 || peer_uid == daemon_euid
}

/// Serves connections until the daemon loop drops its receiver.
pub async fn serve(
    listener: ControlListener,
    requests: mpsc::Sender<ControlRequest>,
) -> Result<(), ControlError> {
    serve_with(listener, requests, ServeOptions::default()).await
}

/// [`serve`] with explicit limits.
pub async fn serve_with(
    listener: ControlListener,
    requests: mpsc::Sender<ControlRequest>,
    options: ServeOptions,
) -> Result<(), ControlError> {
    let path = listener.path.clone();
    let listener =
        UnixListener::from_std(listener.listener).map_err(|source| ControlError::Register {
            path: path.clone(),
            source,
        })?;
    tracing::debug!(socket = %path.display(), "control socket listening");
    let slots = Arc::new(Semaphore::new(options.max_connections));
    let mut refusals = RateLimit::standard();
    let mut full = RateLimit::standard();
    let mut accept_errors = RateLimit::standard();
    // Closed to make room for one accept when the process runs out of descriptors, so that the
    // connection waiting in the backlog can be taken and closed instead of spinning on EMFILE.
    let mut reserve = std::fs::File::open("/dev/null").ok();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = requests.closed() => return Ok(()),
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                let out_of_fds =
                    matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE));
                if let Verdict::Log { suppressed } = accept_errors.check(Instant::now()) {
                    tracing::warn!(error = %e, suppressed, "control socket accept failed");
                }
                if out_of_fds && reserve.take().is_some() {
                    if let Ok(Ok((stream, _))) =
                        tokio::time::timeout(Duration::from_millis(10), listener.accept()).await
                    {
                        drop(stream);
                    }
                    reserve = std::fs::File::open("/dev/null").ok();
                } else {
                    // Back off instead of spinning, and keep serving.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                continue;
            }
        };
        // Checked here, where the log limit lives; the refusal is written without waiting.
        if let Err((refusal, uid, pid)) = check_peer(&stream) {
            if let Verdict::Log { suppressed } = refusals.check(Instant::now()) {
                tracing::warn!(
                    uid,
                    pid,
                    suppressed,
                    "control connection refused: {refusal}"
                );
            }
            let _ = stream.try_write(encode_reply(&Reply::Error(refusal)).as_bytes());
            continue;
        }
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            if let Verdict::Log { suppressed } = full.check(Instant::now()) {
                tracing::warn!(
                    limit = options.max_connections,
                    suppressed,
                    "control connection refused: {} connections are open already",
                    options.max_connections
                );
            }
            let busy = format!(
                "the daemon is serving {} connections already; try again",
                options.max_connections
            );
            let _ = stream.try_write(encode_reply(&Reply::Error(busy)).as_bytes());
            continue;
        };
        let requests = requests.clone();
        // One task per connection: a slow or stuck client cannot hold up the others.
        tokio::spawn(async move {
            if let Err(e) = handle_connection(stream, requests, options).await {
                tracing::debug!(error = %e, "control connection ended early");
            }
            drop(slot);
        });
    }
}

async fn handle_connection(
    stream: UnixStream,
    requests: mpsc::Sender<ControlRequest>,
    options: ServeOptions,
) -> io::Result<()> {
    let (read_half, mut write_half) = stream.into_split();
    let reply = match read_request(read_half, options.read_timeout).await {
        Err(refusal) => Reply::Error(refusal),
        Ok(request) => forward(request, &requests, options.reply_timeout).await,
    };
    if let Reply::Error(message) = &reply {
        tracing::debug!(error = %message, "control request refused");
    }
    let bytes = encode_reply(&reply);
    drop(reply);
    let write = async {
        write_half.write_all(bytes.as_bytes()).await?;
        write_half.shutdown().await
    };
    match tokio::time::timeout(options.write_timeout, write).await {
        Ok(result) => result,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "the client did not read the reply ({} bytes) within {} s",
                bytes.len(),
                options.write_timeout.as_secs()
            ),
        )),
    }
}

/// `Err` carries the refusal sent to the client, and the peer's uid and pid.
fn check_peer(stream: &UnixStream) -> Result<(), (String, Option<u32>, Option<i32>)> {
    let daemon_euid = nix::unistd::geteuid().as_raw();
    let credentials = stream.peer_cred().map_err(|e| {
        (
            format!("cannot read the peer credentials of the connection: {e}"),
            None,
            None,
        )
    })?;
    if peer_allowed(credentials.uid(), daemon_euid) {
        Ok(())
    } else {
        Err((
            "permission denied: gfs_control must run as root".to_owned(),
            Some(credentials.uid()),
            credentials.pid(),
        ))
    }
}

/// Reads one line of at most [`MAX_REQUEST_BYTES`] and parses it; `Err` carries the refusal.
async fn read_request(
    read_half: tokio::net::unix::OwnedReadHalf,
    read_timeout: Duration,
) -> Result<Request, String> {
    // One byte past the limit tells "too long" apart from "exactly at the limit".
    let mut reader = BufReader::new(read_half.take(MAX_REQUEST_BYTES as u64 + 1));
    let mut line = Vec::new();
    match tokio::time::timeout(read_timeout, reader.read_until(b'\n', &mut line)).await {
        Err(_) => return Err("timed out waiting for the request".to_owned()),
        Ok(Err(e)) => return Err(format!("cannot read the request: {e}")),
        Ok(Ok(_)) => {}
    }
    if line.len() > MAX_REQUEST_BYTES {
        return Err(format!("request is longer than {MAX_REQUEST_BYTES} bytes"));
    }
    decode_request(&line).map_err(|e| e.to_string())
}

async fn forward(
    request: Request,
    requests: &mpsc::Sender<ControlRequest>,
    reply_timeout: Duration,
) -> Reply {
    let name = request.name();
    let (reply_tx, reply_rx) = oneshot::channel();
    let exchange = async {
        requests
            .send(ControlRequest {
                request,
                reply: reply_tx,
            })
            .await
            .map_err(|_| "the daemon is shutting down".to_owned())?;
        reply_rx
            .await
            .map_err(|_| "the daemon dropped the request".to_owned())
    };
    match tokio::time::timeout(reply_timeout, exchange).await {
        Ok(Ok(reply)) => reply,
        Ok(Err(message)) => Reply::Error(message),
        Err(_) => Reply::Error(format!(
            "the daemon did not answer the {name} request within {} s",
            reply_timeout.as_secs()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_and_own_user_are_allowed() {
        assert!(peer_allowed(0, 0));
        assert!(peer_allowed(0, 1000));
        assert!(peer_allowed(1000, 1000));
        assert!(!peer_allowed(1000, 0));
        assert!(!peer_allowed(1001, 1000));
    }
}
