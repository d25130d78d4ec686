//! The host's connection to one guest agent: qemu's unix socket behind the VM's
//! virtio-serial port. One connection per VM, shared by every caller: requests go out under
//! a lock, and a reader thread hands each reply to the caller waiting for its id. When the VM
//! dies the socket closes and every waiting caller gets an error at once.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{channel, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use super::proto::{Op, Reply, Request};

type Pending = Arc<Mutex<Option<HashMap<u64, Sender<Reply>>>>>;

pub struct AgentConn {
    writer: Mutex<UnixStream>,
    /// `None` once the connection is closed.
    pending: Pending,
    next_id: AtomicU64,
}

impl AgentConn {
    pub fn connect(socket: &Path) -> Result<AgentConn> {
        let stream = UnixStream::connect(socket)
            .with_context(|| format!("connecting to {}", socket.display()))?;
        let pending: Pending = Arc::new(Mutex::new(Some(HashMap::new())));
        let reader = stream.try_clone()?;
        let pending_r = Arc::clone(&pending);
        std::thread::spawn(move || {
            for line in BufReader::new(reader).lines() {
                let Ok(line) = line else { break };
                let Ok(reply) = serde_json::from_str::<Reply>(&line) else {
                    continue;
                };
                let mut p = pending_r.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(tx) = p.as_mut().and_then(|m| m.remove(&reply.id)) {
                    let _ = tx.send(reply);
                }
            }
            // Closed: dropping the senders wakes every waiting caller.
            pending_r.lock().unwrap_or_else(|e| e.into_inner()).take();
        });
        Ok(AgentConn {
            writer: Mutex::new(stream),
            pending,
            next_id: AtomicU64::new(1),
        })
    }

    pub fn is_closed(&self) -> bool {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_none()
    }

    /// Sends `op` and waits up to `wait` for its reply.
    pub fn request(&self, op: Op, wait: Duration) -> Result<Reply> {
        let id = self.next_id.fetch_add(1, Ordering::SeqCst);
        let (tx, rx) = channel();
        {
            let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            let map = p
                .as_mut()
                .ok_or_else(|| anyhow!("the VM's agent connection is closed (VM dead?)"))?;
            map.insert(id, tx);
        }
        let mut line = serde_json::to_string(&Request { id, op })?;
        line.push('\n');
        self.writer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .write_all(line.as_bytes())
            .context("writing to the VM's agent")?;
        match rx.recv_timeout(wait) {
            Ok(reply) => Ok(reply),
            Err(RecvTimeoutError::Timeout) => {
                if let Some(m) = self
                    .pending
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .as_mut()
                {
                    m.remove(&id);
                }
                bail!("no reply from the VM's agent within {wait:?}")
            }
            Err(RecvTimeoutError::Disconnected) => {
                bail!("the VM's agent connection closed (VM dead?)")
            }
        }
    }

    /// Waits until the agent answers (the guest has booted), up to `timeout`.
    pub fn wait_ready(&self, timeout: Duration) -> Result<Reply> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.request(Op::Clock, Duration::from_secs(2)) {
                Ok(reply) => return Ok(reply),
                Err(e) if Instant::now() >= deadline => {
                    return Err(e.context(format!("agent not up after {timeout:?}")))
                }
                Err(e) if self.is_closed() => return Err(e),
                Err(_) => {}
            }
        }
    }
}
