//! The `gfs_control` side of the control socket. Blocking: the CLI makes one request and exits,
//! so it needs no async runtime.

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::proto::{decode_reply, encode_request, ProtoError, Reply, Request};

/// How long the CLI waits for the daemon by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Replies larger than this are not believed (a dump of a large ring is a few MiB at most).
const MAX_REPLY_BYTES: u64 = 256 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No socket, or nobody listening on it.
    #[error("gfs_controld is not running (cannot connect to {path}: {source})")]
    NotRunning {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("permission denied connecting to {path}: gfs_control must run as root")]
    PermissionDenied { path: PathBuf },
    #[error("talking to gfs_controld over {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("gfs_controld did not answer within {} s", .0.as_secs())]
    Timeout(Duration),
    #[error("gfs_controld closed the connection without answering")]
    NoReply,
    #[error("cannot understand gfs_controld's reply: {0}")]
    Protocol(#[from] ProtoError),
}

/// Sends `request` to the daemon listening on `socket` and waits for its reply.
pub fn request(socket: &Path, request: &Request, timeout: Duration) -> Result<Reply, ClientError> {
    let io_error = |source: io::Error| {
        if matches!(
            source.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        ) {
            ClientError::Timeout(timeout)
        } else {
            ClientError::Io {
                path: socket.to_owned(),
                source,
            }
        }
    };
    let mut stream = UnixStream::connect(socket).map_err(|source| match source.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => ClientError::NotRunning {
            path: socket.to_owned(),
            source,
        },
        io::ErrorKind::PermissionDenied => ClientError::PermissionDenied {
            path: socket.to_owned(),
        },
        _ => ClientError::Io {
            path: socket.to_owned(),
            source,
        },
    })?;
    stream.set_read_timeout(Some(timeout)).map_err(io_error)?;
    stream.set_write_timeout(Some(timeout)).map_err(io_error)?;
    match send_line(&mut stream, encode_request(request).as_bytes()) {
        Ok(()) => {}
        // Refused before the request was read (not allowed, or too many connections): the
        // daemon's answer is waiting to be read.
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
            ) => {}
        Err(e) => return Err(io_error(e)),
    }
    let mut line = Vec::new();
    BufReader::new(io::Read::take(&stream, MAX_REPLY_BYTES))
        .read_until(b'\n', &mut line)
        .map_err(io_error)?;
    if line.is_empty() {
        return Err(ClientError::NoReply);
    }
    // A reply is decoded against the request that asked for it: that fixes its payload type.
    Ok(decode_reply(&line, request)?)
}

fn send_line(stream: &mut UnixStream, line: &[u8]) -> io::Result<()> {
    stream.write_all(line)?;
    // Half-close: the daemon reads one line, and this tells it there is nothing more.
    stream.shutdown(std::net::Shutdown::Write)
}
