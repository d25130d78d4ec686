//! Blocking client for the simulator's unix socket.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use crate::proto::{Request, Response};

/// Sends one request and waits for its reply (`timeout`: `None` waits forever, as `mount` does).
pub fn request(
    socket: &Path,
    req: &Request,
    timeout: Option<Duration>,
) -> anyhow::Result<Response> {
    let mut stream = UnixStream::connect(socket)
        .map_err(|e| anyhow::anyhow!("cannot connect to {}: {e}", socket.display()))?;
    stream.set_read_timeout(timeout)?;
    let mut line = serde_json::to_string(req)?;
    line.push('\n');
    stream.write_all(line.as_bytes())?;
    let mut reply = String::new();
    BufReader::new(stream).read_line(&mut reply)?;
    if reply.is_empty() {
        anyhow::bail!("the simulator closed the connection without a reply");
    }
    Ok(serde_json::from_str(&reply)?)
}
