//! A test double of dlm_controld's `dlmc_sock`, as far as a filesystem daemon uses it
//! (fs-control: FS_REGISTER, FS_UNREGISTER, FS_NOTIFIED; `gfs_core::dlmc`).
//!
//! * FS_REGISTER is answered 0, or `-EOPNOTSUPP` without fs-control (as dlm_controld without
//!   `enable_fscontrol=1`).
//! * FS_NOTIFIED is answered `-EAGAIN` for the first `eagain` tries of each (lockspace, node)
//!   (dlm_controld has not processed the failure yet), then 0; the node id is echoed in
//!   `option` as dlm_controld does.
//! * FS_UNREGISTER has no reply.
//!
//! Every request is recorded with the wall-clock time in ms ([`crate::now_ms`], the kernel
//! simulator's timeline clock), in memory and, if asked, appended as a JSON line to a file.
//! Used in-process by the adapter tests and as the `gfs_dlm_sim` binary by the netns cluster.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use gfs_core::dlmc::{self, Command, Header};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinSet;

#[derive(Clone, Debug)]
pub struct DlmSimOptions {
    /// Answer FS_REGISTER with 0 (true) or `-EOPNOTSUPP` (false).
    pub fscontrol: bool,
    /// FS_NOTIFIED answers `-EAGAIN` this many times per (lockspace, node) before 0.
    pub eagain: u32,
    /// Append every record to this file as a JSON line.
    pub log: Option<PathBuf>,
}

impl Default for DlmSimOptions {
    fn default() -> Self {
        DlmSimOptions {
            fscontrol: true,
            eagain: 0,
            log: None,
        }
    }
}

/// One request the double received.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DlmRecord {
    /// Wall-clock ms when it arrived.
    pub t_ms: u64,
    /// `register`, `unregister` or `notify`.
    pub op: String,
    pub name: String,
    #[serde(default)]
    pub nodeid: Option<u32>,
    /// What was answered (none for `unregister`).
    #[serde(default)]
    pub result: Option<i32>,
}

/// Reads the JSON lines a double wrote with `--log`.
pub fn read_log(path: &Path) -> Vec<DlmRecord> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect()
}

/// Binds `@name` (abstract, in the caller's network namespace) or a socket path.
pub fn bind(address: &str) -> std::io::Result<std::os::unix::net::UnixListener> {
    let listener = match address.strip_prefix('@') {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
            std::os::unix::net::UnixListener::bind_addr(&addr)?
        }
        None => {
            let _ = std::fs::remove_file(address);
            std::os::unix::net::UnixListener::bind(address)?
        }
    };
    listener.set_nonblocking(true)?;
    Ok(listener)
}

struct State {
    options: DlmSimOptions,
    records: Vec<DlmRecord>,
    notify_tries: HashMap<(String, u32), u32>,
}

impl State {
    fn record(&mut self, op: &str, name: &str, nodeid: Option<u32>, result: Option<i32>) {
        let record = DlmRecord {
            t_ms: crate::now_ms(),
            op: op.to_owned(),
            name: name.to_owned(),
            nodeid,
            result,
        };
        if let Some(path) = &self.options.log {
            let line = serde_json::to_string(&record).unwrap_or_default();
            let written = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .and_then(|mut f| writeln!(f, "{line}"));
            if let Err(e) = written {
                eprintln!("gfs_dlm_sim: cannot append to {}: {e}", path.display());
            }
        }
        self.records.push(record);
    }

    /// The reply to `request`, if it has one.
    fn answer(&mut self, request: &Header) -> Option<Header> {
        let name = request.name_str();
        match request.command {
            Command::FsRegister => {
                let result = if self.options.fscontrol {
                    0
                } else {
                    -libc::EOPNOTSUPP
                };
                self.record("register", &name, None, Some(result));
                Some(Header::reply(Command::FsRegister, &request.name, result, 0))
            }
            Command::FsUnregister => {
                self.record("unregister", &name, None, None);
                None
            }
            Command::FsNotified => {
                let nodeid = request.data as u32;
                let tries = self.notify_tries.entry((name.clone(), nodeid)).or_default();
                *tries += 1;
                let result = if *tries <= self.options.eagain {
                    -libc::EAGAIN
                } else {
                    0
                };
                self.record("notify", &name, Some(nodeid), Some(result));
                Some(Header::reply(
                    Command::FsNotified,
                    &request.name,
                    result,
                    nodeid,
                ))
            }
            Command::Other(code) => {
                eprintln!("gfs_dlm_sim: unknown command {code} for {name:?}");
                None
            }
        }
    }
}

/// A running double; dropping it stops it and closes every connection (as a dlm_controld
/// that dies).
pub struct DlmSim {
    state: Arc<Mutex<State>>,
    server: tokio::task::JoinHandle<()>,
}

impl DlmSim {
    /// Serves `address` on the current tokio runtime.
    pub fn start(address: &str, options: DlmSimOptions) -> std::io::Result<DlmSim> {
        let listener = UnixListener::from_std(bind(address)?)?;
        let state = Arc::new(Mutex::new(State {
            options,
            records: Vec::new(),
            notify_tries: HashMap::new(),
        }));
        let server = tokio::spawn(serve(listener, state.clone()));
        Ok(DlmSim { state, server })
    }

    /// Every request so far.
    pub fn records(&self) -> Vec<DlmRecord> {
        lock(&self.state).records.clone()
    }
}

impl Drop for DlmSim {
    fn drop(&mut self) {
        // Dropping the server task drops its JoinSet, which aborts every connection.
        self.server.abort();
    }
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

/// Serves until the process ends (the binary) or the task is aborted ([`DlmSim`]).
pub async fn run(address: &str, options: DlmSimOptions) -> std::io::Result<()> {
    let listener = UnixListener::from_std(bind(address)?)?;
    let state = Arc::new(Mutex::new(State {
        options,
        records: Vec::new(),
        notify_tries: HashMap::new(),
    }));
    serve(listener, state).await;
    Ok(())
}

async fn serve(listener: UnixListener, state: Arc<Mutex<State>>) {
    let mut clients = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    clients.spawn(client(stream, state.clone()));
                }
                Err(e) => eprintln!("gfs_dlm_sim: accept: {e}"),
            },
            Some(_) = clients.join_next() => {}
        }
    }
}

async fn client(mut stream: UnixStream, state: Arc<Mutex<State>>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        while let Some(frame) = dlmc::split_frame(&buf) {
            let (request, used) = match frame {
                Ok(f) => f,
                // dlm_controld drops such a client too.
                Err(e) => {
                    eprintln!("gfs_dlm_sim: bad request: {e}");
                    return;
                }
            };
            buf.drain(..used);
            let reply = lock(&state).answer(&request);
            if let Some(reply) = reply {
                if stream.write_all(&reply.encode()).await.is_err() {
                    return;
                }
            }
        }
    }
}
