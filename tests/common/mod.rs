//! Pieces shared by the integration tests: scratch directories, a fake daemon loop serving
//! canned answers on a real control socket, and a captured tracing log.
#![allow(dead_code)] // each test binary uses a different subset

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gfs_controld::control::client;
use gfs_controld::control::proto::{Reply, Request, VersionInfo};
use gfs_controld::control::server::{self, ControlRequest, ServeOptions};
use gfs_core::view::{
    FenceWaitView, FsView, JournalView, LocalMountView, MemberView, RecoveryTimeline, StatusView,
    TimelineEntry,
};
use gfs_core::MountMode;
use tokio::sync::mpsc;

/// A scratch directory removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        TempDir(scratch_dir(tag))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A new empty directory under the system's temporary directory.
pub fn scratch_dir(tag: &str) -> PathBuf {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "gfs-controld-test-{tag}-{}-{}-{}",
        std::process::id(),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// How long a test waits for the fake daemon's reply.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// A control server on a temporary socket, answered by a fake daemon loop on its own thread.
pub struct FakeDaemon {
    pub dir: PathBuf,
    pub socket: PathBuf,
    /// Requests that reached the daemon loop.
    pub handled: Arc<AtomicUsize>,
}

impl FakeDaemon {
    /// With the server's default options and the canned [`answer`]s.
    pub fn start(tag: &str) -> FakeDaemon {
        FakeDaemon::start_with(tag, ServeOptions::default(), answer)
    }

    pub fn start_with(
        tag: &str,
        options: ServeOptions,
        answer: fn(&Request) -> Reply,
    ) -> FakeDaemon {
        let dir = scratch_dir(tag);
        let socket = dir.join("run").join("gfs_controld.sock");
        let listener = server::bind(&socket).unwrap();
        let handled = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&handled);
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let (tx, mut rx) = mpsc::channel::<ControlRequest>(16);
                tokio::spawn(async move {
                    while let Some(ControlRequest { request, reply }) = rx.recv().await {
                        counter.fetch_add(1, Ordering::SeqCst);
                        let _ = reply.send(answer(&request));
                    }
                });
                let _ = server::serve_with(listener, tx, options).await;
            });
        });
        FakeDaemon {
            dir,
            socket,
            handled,
        }
    }

    /// One request through the library client.
    pub fn ask(&self, request: &Request) -> Reply {
        client::request(&self.socket, request, REPLY_TIMEOUT).unwrap()
    }
}

impl Drop for FakeDaemon {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn canned_status() -> StatusView {
    StatusView {
        nodeid: 1,
        cluster_name: "alpha".to_owned(),
        protocol_version: 1,
        protocol_max: 1,
        synced: true,
        quorate: true,
        members: vec![1, 2],
        stale_members: vec![],
        fence_waits: vec![FenceWaitView {
            nodeid: 3,
            failed_at_ms: 1_000,
            waiting_ms: 12_300,
            requested: true,
            last_error: Some("fence agent timed out".to_owned()),
        }],
        quorum_waits: vec![],
        filesystems: 1,
        recoveries: vec![
            RecoveryTimeline {
                change: 2,
                failed: vec![4],
                filesystems: vec!["fs1".to_owned()],
                started_ms: 500,
                finished_ms: Some(2_000),
                events: vec![
                    TimelineEntry {
                        at_ms: 500,
                        what: "node 4 failed".to_owned(),
                    },
                    TimelineEntry {
                        at_ms: 2_000,
                        what: "jid 2 replayed by node 1".to_owned(),
                    },
                ],
            },
            RecoveryTimeline {
                change: 4,
                failed: vec![3],
                filesystems: vec!["fs1".to_owned()],
                started_ms: 10_000,
                finished_ms: None,
                events: vec![TimelineEntry {
                    at_ms: 10_000,
                    what: "node 3 failed".to_owned(),
                }],
            },
        ],
    }
}

pub fn canned_filesystems() -> Vec<FsView> {
    vec![FsView {
        table: "alpha:fs1".to_owned(),
        name: "fs1".to_owned(),
        kernel_managed: false,
        state: "waiting for fencing of node 3".to_owned(),
        local: Some(LocalMountView {
            jid: Some(0),
            mode: MountMode::Rw,
            blocked: true,
            kernel_state: "online".to_owned(),
        }),
        members: vec![
            MemberView {
                nodeid: 1,
                jid: Some(0),
                mode: MountMode::Rw,
                state: "mounted".to_owned(),
            },
            MemberView {
                nodeid: 12,
                jid: None,
                mode: MountMode::Spectator,
                state: "mounting".to_owned(),
            },
        ],
        dirty_journals: vec![JournalView {
            jid: 1,
            owner: 3,
            replayer: None,
            attempts: 0,
            waiting_for: "fencing of node 3".to_owned(),
        }],
        first_mounter: Some(1),
    }]
}

/// What the daemon loop would answer, decided here from canned views.
pub fn answer(request: &Request) -> Reply {
    match request {
        Request::Status {} => Reply::Status(canned_status()),
        Request::Ls { fs: None } => Reply::Filesystems(canned_filesystems()),
        Request::Ls { fs: Some(name) } => Reply::Filesystems(
            canned_filesystems()
                .into_iter()
                .filter(|fs| &fs.name == name || &fs.table == name)
                .collect(),
        ),
        Request::Dump {} => Reply::Dump(vec![
            "1700000000.001 gfs_controld started".to_owned(),
            "1700000000.002 gfs_controld::daemon nodeid=3 node failed".to_owned(),
        ]),
        Request::FenceAck { nodeid: 3 } => {
            Reply::Message("node 3 acknowledged as fenced".to_owned())
        }
        Request::FenceAck { nodeid } => {
            Reply::Error(format!("node {nodeid} is not waiting for fencing"))
        }
        Request::Version {} => Reply::Version(VersionInfo::current()),
    }
}

/// Everything the test binary logs through `tracing` (INFO and up), captured once per process
/// (the global subscriber can be set only once).
#[derive(Clone, Default)]
pub struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

pub fn captured_log() -> &'static Captured {
    static LOG: std::sync::OnceLock<Captured> = std::sync::OnceLock::new();
    LOG.get_or_init(|| {
        let log = Captured::default();
        let me = log.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || me.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("one global subscriber");
        log
    })
}
