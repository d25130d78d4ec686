//! dlm_controld's fs-control handshake (cluster-3 gfs_controld's use of libdlmcontrol), over
//! dlm_controld's unix stream socket `dlmc_sock` (abstract by default).
//!
//! In daemon-managed mode (dlm_controld started with `enable_fscontrol=1`), dlm_controld does
//! not start DLM recovery of a failed node's locks in a registered lockspace until the
//! filesystem daemon says it has blocked the filesystem (FS_NOTIFIED). Without that, a survivor
//! could be granted the dead node's locks before its `block=1` and read blocks whose newer
//! contents sit in the unreplayed journal.
//!
//! One task owns the connection; the daemon loop talks to it through [`DlmControl`] and hears
//! back through a channel of [`DlmEvent`]s, so nothing here ever blocks the loop:
//! * `register`: FS_REGISTER with the lockspace name (the table's fs part). The first answer is
//!   reported once: `Ok`, `Err(EOPNOTSUPP)` (no `enable_fscontrol=1`), or `Err(ENOTCONN)`
//!   (dlm_controld not reachable).
//! * `unregister`: FS_UNREGISTER (no reply); pending notifies of the filesystem are dropped.
//! * `notify`: FS_NOTIFIED with the failed node's id; the answer goes back as
//!   [`DlmEvent::Notified`]. `-EAGAIN` (dlm_controld has not processed the failure yet) is for
//!   the core to retry: only it knows whether the node came back meanwhile, when a retry would
//!   count for the node's next failure.
//! * A dropped connection means dlm_controld restarted and forgot every registration: the task
//!   reconnects with backoff, registers every filesystem again and resends pending notifies.
//!
//! Replies may interleave; they are matched by command, name and (for FS_NOTIFIED) node id.

use std::collections::BTreeMap;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::Duration;

use gfs_core::dlmc::{self, Header, Reply};
use gfs_core::{NodeId, Table};
use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, UnixAddr};
use tokio::net::UnixStream;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Where dlm_controld listens: `@name` is an abstract socket, `/path` a socket file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DlmAddress {
    Abstract(String),
    Path(PathBuf),
}

impl DlmAddress {
    /// `@name` (abstract) or an absolute path.
    pub fn parse(text: &str) -> Result<DlmAddress, String> {
        let text = text.trim();
        let expected = || "@name of an abstract socket, or an absolute path".to_owned();
        if text.contains('\0') {
            return Err(expected());
        }
        if let Some(name) = text.strip_prefix('@') {
            // sun_path holds 108 bytes, the leading NUL included.
            if name.is_empty() || name.len() > 107 {
                return Err(expected());
            }
            return Ok(DlmAddress::Abstract(name.to_owned()));
        }
        if text.starts_with('/') && text.len() <= 107 {
            return Ok(DlmAddress::Path(PathBuf::from(text)));
        }
        Err(expected())
    }

    /// dlm_controld's own: the abstract socket `dlmc_sock`.
    pub fn dlm_controld() -> DlmAddress {
        DlmAddress::Abstract(dlmc::SOCKET_NAME.to_owned())
    }
}

impl std::fmt::Display for DlmAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DlmAddress::Abstract(name) => write!(f, "@{name}"),
            DlmAddress::Path(path) => write!(f, "{}", path.display()),
        }
    }
}

/// Timing of the adapter.
#[derive(Clone, Debug)]
pub struct DlmOptions {
    /// First reconnect delay after the connection dropped; doubles up to `reconnect_max`.
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
}

impl Default for DlmOptions {
    fn default() -> Self {
        DlmOptions {
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(5),
        }
    }
}

/// What the adapter tells the daemon loop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DlmEvent {
    /// The answer to [`DlmControl::register`], given once per registration.
    Registered {
        table: Table,
        result: Result<(), i32>,
    },
    /// The answer to [`DlmControl::notify`].
    Notified {
        table: Table,
        nodeid: NodeId,
        result: Result<(), i32>,
    },
}

#[derive(Debug)]
enum Command {
    Register(Table),
    Unregister(Table),
    Notify(Table, NodeId),
}

/// The daemon loop's handle; dropping it ends the adapter task and closes the connection.
#[derive(Clone, Debug)]
pub struct DlmControl {
    tx: mpsc::UnboundedSender<Command>,
}

impl DlmControl {
    /// Starts the adapter task (inside a tokio runtime). It connects when first needed.
    pub fn spawn(
        address: DlmAddress,
        options: DlmOptions,
    ) -> (DlmControl, mpsc::UnboundedReceiver<DlmEvent>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let task = Task {
            address,
            options,
            events: events_tx,
            conn: None,
            registered: BTreeMap::new(),
            notifies: BTreeMap::new(),
            stale_registers: BTreeMap::new(),
            stale_notifies: BTreeMap::new(),
            reconnect_at: None,
            backoff: Duration::ZERO,
            outage: None,
        };
        tokio::spawn(task.run(rx));
        (DlmControl { tx }, events_rx)
    }

    pub fn register(&self, table: Table) {
        let _ = self.tx.send(Command::Register(table));
    }

    pub fn unregister(&self, table: Table) {
        let _ = self.tx.send(Command::Unregister(table));
    }

    pub fn notify(&self, table: Table, nodeid: NodeId) {
        let _ = self.tx.send(Command::Notify(table, nodeid));
    }
}

struct Conn {
    stream: UnixStream,
    inbuf: Vec<u8>,
    outbuf: Vec<u8>,
}

struct Registration {
    table: Table,
    /// The daemon has had its answer.
    answered: bool,
    /// FS_REGISTER replies still due on this connection for this registration.
    awaiting: u32,
}

struct Notify {
    table: Table,
    in_flight: bool,
    /// When to send it (once connected).
    next_try: Option<Instant>,
    since: Instant,
}

/// When the adapter could not reach dlm_controld although it needed to.
struct Outage {
    since: Instant,
    last_report: Instant,
}

/// How often a continuing `-EAGAIN` or an unreachable dlm_controld is reported again.
const REPORT_EVERY: Duration = Duration::from_secs(10);

struct Task {
    address: DlmAddress,
    options: DlmOptions,
    events: mpsc::UnboundedSender<DlmEvent>,
    conn: Option<Conn>,
    /// Lockspace name → registration wanted (kept across reconnects).
    registered: BTreeMap<String, Registration>,
    /// (lockspace, node) → notify not yet acknowledged.
    notifies: BTreeMap<(String, NodeId), Notify>,
    /// Replies still due for registrations and notifies dropped since (unregister): ignored.
    stale_registers: BTreeMap<String, u32>,
    stale_notifies: BTreeMap<(String, NodeId), u32>,
    reconnect_at: Option<Instant>,
    backoff: Duration,
    outage: Option<Outage>,
}

async fn readable(conn: Option<&Conn>) -> std::io::Result<()> {
    match conn {
        Some(c) => c.stream.readable().await,
        None => std::future::pending().await,
    }
}

async fn writable(conn: Option<&Conn>) -> std::io::Result<()> {
    match conn {
        Some(c) if !c.outbuf.is_empty() => c.stream.writable().await,
        _ => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn errno_name(errno: i32) -> String {
    std::io::Error::from_raw_os_error(errno).to_string()
}

impl Task {
    async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        loop {
            let wake = self.next_wake();
            tokio::select! {
                biased;
                command = commands.recv() => match command {
                    Some(command) => self.command(command),
                    // The daemon is exiting.
                    None => return,
                },
                ready = readable(self.conn.as_ref()) => match ready {
                    Ok(()) => self.read(),
                    Err(e) => self.disconnected(&format!("waiting to read: {e}")),
                },
                ready = writable(self.conn.as_ref()) => match ready {
                    Ok(()) => self.flush(),
                    Err(e) => self.disconnected(&format!("waiting to write: {e}")),
                },
                () = sleep_until(wake) => self.timers(),
            }
        }
    }

    fn wants_connection(&self) -> bool {
        !self.registered.is_empty() || !self.notifies.is_empty()
    }

    fn next_wake(&self) -> Option<Instant> {
        if self.conn.is_none() {
            return self.reconnect_at.filter(|_| self.wants_connection());
        }
        self.notifies
            .values()
            .filter(|n| !n.in_flight)
            .filter_map(|n| n.next_try)
            .min()
    }

    fn command(&mut self, command: Command) {
        match command {
            Command::Register(table) => self.register(table),
            Command::Unregister(table) => self.unregister(table),
            Command::Notify(table, nodeid) => self.notify(table, nodeid),
        }
    }

    fn register(&mut self, table: Table) {
        let name = table.fs().to_owned();
        if let Some(old) = self.registered.remove(&name) {
            self.forget_register(&name, old.awaiting);
        }
        self.registered.insert(
            name.clone(),
            Registration {
                table,
                answered: false,
                awaiting: 0,
            },
        );
        // A fresh connection sends every registration itself.
        if self.conn.is_some() {
            self.send_register(&name);
        } else {
            self.ensure_connected();
        }
    }

    fn unregister(&mut self, table: Table) {
        let name = table.fs().to_owned();
        let ours = self.registered.get(&name).is_some_and(|r| r.table == table);
        if ours {
            if let Some(old) = self.registered.remove(&name) {
                self.forget_register(&name, old.awaiting);
            }
        }
        let dropped: Vec<(String, NodeId)> = self
            .notifies
            .keys()
            .filter(|(fs, _)| *fs == name)
            .cloned()
            .collect();
        for key in dropped {
            if let Some(n) = self.notifies.remove(&key) {
                tracing::info!(fs = %name, nodeid = key.1, "dropping a pending dlm_controld notify: the filesystem is unmounted");
                if n.in_flight {
                    *self.stale_notifies.entry(key).or_default() += 1;
                }
            }
        }
        if self.conn.is_some() {
            self.send(Header::fs_unregister(&name));
            tracing::info!(fs = %name, "unregistered from dlm_controld");
        }
    }

    fn forget_register(&mut self, name: &str, awaiting: u32) {
        if awaiting > 0 {
            *self.stale_registers.entry(name.to_owned()).or_default() += awaiting;
        }
    }

    fn notify(&mut self, table: Table, nodeid: NodeId) {
        let key = (table.fs().to_owned(), nodeid);
        if self.notifies.contains_key(&key) {
            tracing::debug!(fs = %key.0, nodeid, "dlm_controld notify already pending");
            return;
        }
        let now = Instant::now();
        self.notifies.insert(
            key.clone(),
            Notify {
                table,
                in_flight: false,
                next_try: Some(now),
                since: now,
            },
        );
        if self.conn.is_some() {
            self.send_notify(&key);
        } else {
            self.ensure_connected();
        }
    }

    /// Connects (sending every registration and pending notify) unless connected or waiting
    /// out a reconnect delay. Registrations not yet answered get `ENOTCONN` when dlm_controld
    /// cannot be reached.
    fn ensure_connected(&mut self) {
        if self.conn.is_some() {
            return;
        }
        let waiting = self.reconnect_at.is_some_and(|at| at > Instant::now());
        // A registration waiting for its first answer is not held for the reconnect delay.
        if !waiting || self.registered.values().any(|r| !r.answered) {
            self.connect();
        }
    }

    fn connect(&mut self) -> bool {
        match connect(&self.address) {
            Ok(stream) => {
                if let Some(outage) = self.outage.take() {
                    tracing::info!(
                        socket = %self.address,
                        down_ms = outage.since.elapsed().as_millis() as u64,
                        registrations = self.registered.len(),
                        notifies = self.notifies.len(),
                        "reconnected to dlm_controld; registering again and resending pending notifies"
                    );
                } else {
                    tracing::debug!(socket = %self.address, "connected to dlm_controld");
                }
                self.conn = Some(Conn {
                    stream,
                    inbuf: Vec::new(),
                    outbuf: Vec::new(),
                });
                self.reconnect_at = None;
                self.backoff = Duration::ZERO;
                let names: Vec<String> = self.registered.keys().cloned().collect();
                for name in names {
                    self.send_register(&name);
                }
                let keys: Vec<(String, NodeId)> = self.notifies.keys().cloned().collect();
                for key in keys {
                    self.send_notify(&key);
                }
                true
            }
            Err(e) => {
                self.connect_failed(&e);
                false
            }
        }
    }

    fn connect_failed(&mut self, e: &std::io::Error) {
        let now = Instant::now();
        // A registration waiting for its first answer is refused now rather than held.
        let unanswered: Vec<String> = self
            .registered
            .iter()
            .filter(|(_, r)| !r.answered)
            .map(|(name, _)| name.clone())
            .collect();
        for name in unanswered {
            if let Some(r) = self.registered.remove(&name) {
                tracing::error!(
                    fs = %name,
                    socket = %self.address,
                    error = %e,
                    "cannot register the filesystem with dlm_controld: it is not running or not \
                     reachable (daemon-managed gfs2 needs dlm_controld with enable_fscontrol=1)"
                );
                let _ = self.events.send(DlmEvent::Registered {
                    table: r.table,
                    result: Err(libc::ENOTCONN),
                });
            }
        }
        if !self.wants_connection() {
            self.reconnect_at = None;
            self.backoff = Duration::ZERO;
            self.outage = None;
            return;
        }
        match &mut self.outage {
            None => {
                tracing::warn!(socket = %self.address, error = %e, registrations = self.registered.len(), notifies = self.notifies.len(), "cannot reach dlm_controld; retrying");
                self.outage = Some(Outage {
                    since: now,
                    last_report: now,
                });
            }
            Some(outage) if now.duration_since(outage.last_report) >= REPORT_EVERY => {
                outage.last_report = now;
                tracing::error!(
                    socket = %self.address,
                    error = %e,
                    down_s = now.duration_since(outage.since).as_secs(),
                    registrations = self.registered.len(),
                    notifies = self.notifies.len(),
                    "dlm_controld is still unreachable: filesystems are not registered and DLM \
                     recovery of failed nodes may wait"
                );
            }
            Some(_) => {}
        }
        self.schedule_reconnect();
    }

    fn schedule_reconnect(&mut self) {
        self.backoff = if self.backoff.is_zero() {
            self.options.reconnect_min
        } else {
            (self.backoff * 2).min(self.options.reconnect_max)
        };
        self.reconnect_at = Some(Instant::now() + self.backoff);
    }

    fn disconnected(&mut self, why: &str) {
        if self.conn.take().is_none() {
            return;
        }
        for r in self.registered.values_mut() {
            r.awaiting = 0;
        }
        for n in self.notifies.values_mut() {
            n.in_flight = false;
            n.next_try = Some(Instant::now());
        }
        self.stale_registers.clear();
        self.stale_notifies.clear();
        if self.wants_connection() {
            tracing::warn!(
                socket = %self.address,
                reason = why,
                registrations = self.registered.len(),
                notifies = self.notifies.len(),
                "lost the connection to dlm_controld (restarted?): it forgot our registrations; \
                 reconnecting"
            );
            let now = Instant::now();
            self.outage = Some(Outage {
                since: now,
                last_report: now,
            });
            self.schedule_reconnect();
        } else {
            tracing::debug!(socket = %self.address, reason = why, "dlm_controld connection closed");
        }
    }

    fn send(&mut self, header: Result<Header, dlmc::DlmcError>) {
        let header = match header {
            Ok(h) => h,
            // Table names are validated to fit; never expected.
            Err(e) => {
                tracing::error!(error = %e, "cannot encode a dlm_controld request");
                return;
            }
        };
        if let Some(conn) = &mut self.conn {
            conn.outbuf.extend_from_slice(&header.encode());
        }
        self.flush();
    }

    fn send_register(&mut self, name: &str) {
        if self.conn.is_none() {
            return;
        }
        if let Some(r) = self.registered.get_mut(name) {
            r.awaiting += 1;
        }
        self.send(Header::fs_register(name));
    }

    fn send_notify(&mut self, key: &(String, NodeId)) {
        if self.conn.is_none() {
            return;
        }
        let Some(n) = self.notifies.get_mut(key) else {
            return;
        };
        if n.in_flight {
            return;
        }
        n.in_flight = true;
        n.next_try = None;
        self.send(Header::fs_notified(&key.0, key.1));
    }

    fn flush(&mut self) {
        let Some(conn) = &mut self.conn else {
            return;
        };
        while !conn.outbuf.is_empty() {
            match conn.stream.try_write(&conn.outbuf) {
                Ok(0) => return self.disconnected("wrote 0 bytes"),
                Ok(n) => {
                    conn.outbuf.drain(..n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return self.disconnected(&format!("write: {e}")),
            }
        }
    }

    fn read(&mut self) {
        let Some(conn) = &mut self.conn else {
            return;
        };
        let mut chunk = [0u8; 4096];
        loop {
            match conn.stream.try_read(&mut chunk) {
                Ok(0) => return self.disconnected("dlm_controld closed the connection"),
                Ok(n) => conn.inbuf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return self.disconnected(&format!("read: {e}")),
            }
        }
        loop {
            let Some(conn) = &mut self.conn else {
                return;
            };
            match dlmc::split_frame(&conn.inbuf) {
                None => return,
                Some(Err(e)) => {
                    tracing::error!(error = %e, "garbage from dlm_controld");
                    return self.disconnected("garbage on the connection");
                }
                Some(Ok((header, used))) => {
                    conn.inbuf.drain(..used);
                    self.reply(Reply::from_header(&header));
                }
            }
        }
    }

    fn reply(&mut self, reply: Reply) {
        match reply {
            Reply::Registered { name, result } => self.registered_reply(name, result),
            Reply::Notified {
                name,
                nodeid,
                result,
            } => self.notified_reply(name, nodeid, result),
            Reply::Other { command, name } => {
                tracing::debug!(command, fs = %name, "ignoring an unexpected dlm_controld reply")
            }
        }
    }

    fn registered_reply(&mut self, name: String, result: i32) {
        if let Some(stale) = self.stale_registers.get_mut(&name) {
            *stale -= 1;
            if *stale == 0 {
                self.stale_registers.remove(&name);
            }
            tracing::debug!(fs = %name, result, "stale FS_REGISTER reply ignored");
            return;
        }
        let Some(r) = self.registered.get_mut(&name) else {
            tracing::debug!(fs = %name, result, "FS_REGISTER reply for an unregistered filesystem");
            return;
        };
        r.awaiting = r.awaiting.saturating_sub(1);
        let first = !r.answered;
        r.answered = true;
        let table = r.table.clone();
        if result == 0 {
            if first {
                tracing::info!(fs = %name, "registered with dlm_controld: its DLM recovery of failed nodes waits for this daemon");
                let _ = self.events.send(DlmEvent::Registered {
                    table,
                    result: Ok(()),
                });
            } else {
                tracing::info!(fs = %name, "registered again with dlm_controld");
            }
            return;
        }
        let errno = -result;
        self.registered.remove(&name);
        if errno == libc::EOPNOTSUPP {
            tracing::error!(
                fs = %name,
                "dlm_controld refused to register the filesystem (EOPNOTSUPP): it runs without \
                 enable_fscontrol=1. Daemon-managed gfs2 needs enable_fscontrol=1 in \
                 /etc/dlm/dlm.conf on every node"
            );
        } else {
            tracing::error!(fs = %name, error = %errno_name(errno), "dlm_controld refused to register the filesystem");
        }
        if first {
            let _ = self.events.send(DlmEvent::Registered {
                table,
                result: Err(errno),
            });
        }
    }

    fn notified_reply(&mut self, name: String, nodeid: NodeId, result: i32) {
        let key = (name, nodeid);
        if let Some(stale) = self.stale_notifies.get_mut(&key) {
            *stale -= 1;
            if *stale == 0 {
                self.stale_notifies.remove(&key);
            }
            return;
        }
        let now = Instant::now();
        let Some(n) = self.notifies.remove(&key) else {
            tracing::debug!(fs = %key.0, nodeid, result, "FS_NOTIFIED reply with nothing pending");
            return;
        };
        let fs = key.0.as_str();
        match -result {
            0 => tracing::info!(
                fs,
                nodeid,
                waited_ms = now.duration_since(n.since).as_millis() as u64,
                "dlm_controld notified: fs blocked against node {nodeid}"
            ),
            libc::EAGAIN => tracing::debug!(
                fs,
                nodeid,
                "dlm_controld has not processed node {nodeid}'s failure yet (EAGAIN)"
            ),
            errno => {
                let why = match errno {
                    libc::ESRCH => "dlm_controld does not know the node",
                    libc::ENOENT => "dlm_controld has no such lockspace",
                    _ => "dlm_controld refused",
                };
                tracing::warn!(fs, nodeid, table = %n.table, error = %errno_name(errno), "{why}");
            }
        }
        let result = if result == 0 { Ok(()) } else { Err(-result) };
        let _ = self.events.send(DlmEvent::Notified {
            table: n.table,
            nodeid,
            result,
        });
    }

    fn timers(&mut self) {
        let now = Instant::now();
        if self.conn.is_none() {
            if self.reconnect_at.is_some_and(|at| at <= now) {
                self.reconnect_at = None;
                if self.wants_connection() {
                    self.connect();
                }
            }
            return;
        }
        let due: Vec<(String, NodeId)> = self
            .notifies
            .iter()
            .filter(|(_, n)| !n.in_flight && n.next_try.is_some_and(|t| t <= now))
            .map(|(k, _)| k.clone())
            .collect();
        for key in due {
            self.send_notify(&key);
        }
    }
}

/// A nonblocking connect: a unix stream connect completes at once or fails (`ECONNREFUSED`
/// when nobody listens, `EAGAIN` when the listener's backlog is full).
fn connect(address: &DlmAddress) -> std::io::Result<UnixStream> {
    let fd = socket::socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    let addr = match address {
        DlmAddress::Abstract(name) => UnixAddr::new_abstract(name.as_bytes())?,
        DlmAddress::Path(path) => UnixAddr::new(path)?,
    };
    loop {
        match socket::connect(fd.as_raw_fd(), &addr) {
            Ok(()) => break,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    UnixStream::from_std(std::os::unix::net::UnixStream::from(fd))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(
            DlmAddress::parse("@dlmc_sock"),
            Ok(DlmAddress::Abstract("dlmc_sock".into()))
        );
        assert_eq!(
            DlmAddress::parse("/run/x.sock"),
            Ok(DlmAddress::Path("/run/x.sock".into()))
        );
        for bad in ["", "@", "dlmc_sock", "relative/path", "@a\0b"] {
            assert!(DlmAddress::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(DlmAddress::dlm_controld().to_string(), "@dlmc_sock");
    }
}
