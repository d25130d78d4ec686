//! The corosync adapters against a real, single-node corosync 3 running in a network namespace
//! of its own (libqb's IPC uses abstract unix sockets, which belong to a network namespace).
//!
//! The client side runs on a dedicated thread that enters the namespace with `setns` and uses a
//! current-thread tokio runtime, so every corosync call happens on that thread.
//!
//! Needs root and `corosync`; otherwise the test is skipped with a note, unless `CI` is set, in
//! which case it fails.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use gfs_controld::corosync::{self, cmap, CorosyncError, CpgEvent, CpgGroups, QuorumTracker};
use gfs_core::{Input, LeaveReason};
use tokio::sync::mpsc::UnboundedReceiver;

/// Totem token timeout for the test cluster (ms), kept in one place.
const TOKEN_MS: u32 = 300;
/// Messages multicast in the flood.
const FLOOD: usize = 2000;

/// Why the environment cannot run the test, if it cannot.
fn missing_prerequisite() -> Option<String> {
    if !nix::unistd::Uid::effective().is_root() {
        return Some("not running as root".into());
    }
    for tool in ["corosync", "ip", "unshare"] {
        let found = std::env::var_os("PATH")
            .map(|paths| std::env::split_paths(&paths).any(|d| d.join(tool).is_file()))
            .unwrap_or(false)
            || Path::new("/usr/sbin").join(tool).is_file();
        if !found {
            return Some(format!("`{tool}` is not installed"));
        }
    }
    None
}

/// Returns false (after printing a note) when the test must be skipped; panics under CI.
fn prerequisites_met(test: &str) -> bool {
    match missing_prerequisite() {
        None => true,
        Some(why) if std::env::var_os("CI").is_some() => {
            panic!("{test}: cannot run under CI: {why} (needs root and corosync)")
        }
        Some(why) => {
            eprintln!("SKIPPED {test}: {why} (needs root and corosync; set CI to make this fatal)");
            false
        }
    }
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A network namespace with a running corosync. Dropping it kills corosync (by PID) and
/// deletes the namespace and the scratch directory, also when the test failed.
struct Cluster {
    ns: String,
    cluster_name: String,
    dir: PathBuf,
    corosync: Option<Child>,
}

impl Cluster {
    fn start() -> Cluster {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let seq = SEQ.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let ns = format!("gfsca{pid}-{seq}");
        let dir = std::env::temp_dir().join(format!("gfs-corosync-adapter-{pid}-{seq}"));
        let mut cluster = Cluster {
            ns: ns.clone(),
            cluster_name: format!("gfsca{seq}"),
            dir: dir.clone(),
            corosync: None,
        };
        // From here on, Drop cleans up whatever was created.
        std::fs::create_dir_all(&dir).expect("scratch directory");
        run(Command::new("ip").args(["netns", "add", &ns])).expect("ip netns add");
        run(Command::new("ip").args(["netns", "exec", &ns, "ip", "link", "set", "lo", "up"]))
            .expect("lo up");
        let conf = dir.join("corosync.conf");
        std::fs::write(&conf, corosync_conf(&cluster.cluster_name)).expect("write corosync.conf");
        let log = File::create(dir.join("corosync.log")).expect("corosync log");
        let script = format!(
            "mount -t tmpfs none /var/lib/corosync && mount -t tmpfs none /run && exec corosync -f -c {}",
            conf.display()
        );
        let child = Command::new("ip")
            .args(["netns", "exec", &ns, "unshare", "-m", "sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("start corosync");
        cluster.corosync = Some(child);
        cluster
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("corosync.log")).unwrap_or_default()
    }

    /// Kills corosync by PID (SIGKILL) and reaps it.
    fn kill_corosync(&mut self) {
        if let Some(mut child) = self.corosync.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops corosync by PID: SIGTERM, then SIGKILL after a bounded wait.
    fn stop_corosync(&mut self) {
        let Some(mut child) = self.corosync.take() else {
            return;
        };
        if let Ok(pid) = i32::try_from(child.id()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- corosync log ({}) ----\n{}", self.ns, self.log());
        }
        self.stop_corosync();
        let _ = run(Command::new("ip").args(["netns", "del", &self.ns]));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn corosync_conf(cluster_name: &str) -> String {
    format!(
        "totem {{
    version: 2
    cluster_name: {cluster_name}
    transport: knet
    token: {TOKEN_MS}
    token_coefficient: 0
    crypto_cipher: none
    crypto_hash: none
}}
nodelist {{
    node {{
        ring0_addr: 127.0.0.1
        name: node1
        nodeid: 1
    }}
}}
quorum {{
    provider: corosync_votequorum
}}
logging {{
    to_stderr: yes
    to_syslog: no
    to_logfile: no
}}
"
    )
}

/// Runs `body` on a new thread inside namespace `ns`, with a current-thread runtime, and
/// bounded by `limit`.
fn in_netns<F, Fut>(ns: &str, limit: Duration, body: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    let path = format!("/var/run/netns/{ns}");
    let thread = std::thread::Builder::new()
        .name(format!("client-{ns}"))
        .spawn(move || {
            let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                .unwrap_or_else(|e| panic!("setns {path}: {e}"));
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                tokio::time::timeout(limit, body())
                    .await
                    .unwrap_or_else(|_| panic!("client part did not finish within {limit:?}"))
            });
        })
        .expect("spawn client thread");
    if let Err(panic) = thread.join() {
        std::panic::resume_unwind(panic);
    }
}

/// The next CPG event, or a panic after `limit`.
async fn next_event(
    events: &mut UnboundedReceiver<CpgEvent>,
    limit: Duration,
    what: &str,
) -> CpgEvent {
    match tokio::time::timeout(limit, events.recv()).await {
        Ok(Some(event)) => event,
        Ok(None) => panic!("CPG event channel closed while waiting for {what}"),
        Err(_) => panic!("no CPG event within {limit:?} while waiting for {what}"),
    }
}

/// Waits for a confchg of `group` that satisfies `pred`; deliveries in between are returned.
async fn wait_confchg(
    events: &mut UnboundedReceiver<CpgEvent>,
    group: &str,
    what: &str,
    pred: impl Fn(&[u32], &[u32], &[(u32, LeaveReason)]) -> bool,
) -> Vec<CpgEvent> {
    let mut others = Vec::new();
    loop {
        match next_event(events, Duration::from_secs(10), what).await {
            CpgEvent::ConfChg(c)
                if c.group == group
                    && pred(
                        &c.members.iter().map(|p| p.nodeid).collect::<Vec<_>>(),
                        &c.joined.iter().map(|p| p.nodeid).collect::<Vec<_>>(),
                        &c.left
                            .iter()
                            .map(|(p, r)| (p.nodeid, *r))
                            .collect::<Vec<_>>(),
                    ) =>
            {
                return others
            }
            CpgEvent::Lost { group, reason } => {
                panic!("lost {group} while waiting for {what}: {reason}")
            }
            other => others.push(other),
        }
    }
}

fn payload(group: u8, i: usize) -> Vec<u8> {
    // Sizes vary from 16 bytes to about 64 KiB (GFS_CA_FLOOD_MAX) so that corosync answers
    // TRY_AGAIN now and then (seen with RUST_LOG=gfs_controld=trace).
    let len = 16 + (i * 37) % flood_max();
    let mut p = vec![group; len];
    p[..8].copy_from_slice(&(i as u64).to_be_bytes());
    p
}

#[test]
fn adapters_against_real_corosync() {
    if !prerequisites_met("adapters_against_real_corosync") {
        return;
    }
    // RUST_LOG=gfs_controld=trace shows the adapters at work.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let mut cluster = Cluster::start();
    let expected_name = cluster.cluster_name.clone();
    let ns = cluster.ns.clone();
    let corosync_pid = nix::unistd::Pid::from_raw(
        i32::try_from(cluster.corosync.as_ref().expect("corosync started").id()).expect("pid"),
    );

    in_netns(&ns, Duration::from_secs(120), move || async move {
        // corosync needs a moment to start: the retry helper waits for it.
        let name = tokio::time::timeout(
            Duration::from_secs(30),
            corosync::connect_with_retry("cmap", Duration::from_millis(100), cmap::cluster_name),
        )
        .await
        .expect("corosync did not come up within 30 s");
        assert_eq!(name, expected_name);
        assert_eq!(
            cmap::nodes().expect("nodes"),
            vec![(1, Some("node1".to_string()))]
        );

        let (quorum, mut quorum_events) = QuorumTracker::new().expect("quorum tracker");
        let deadline = Instant::now() + Duration::from_secs(15);
        while !quorum.quorate().expect("quorate") {
            assert!(
                Instant::now() < deadline,
                "a single-node cluster did not become quorate"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        let (mut cpg, mut events) = CpgGroups::new();
        assert_eq!(cpg.local_nodeid().expect("local nodeid"), 1);
        let (a, b) = ("gfs:test:a", "gfs:test:b");
        cpg.join(a).expect("join a");
        cpg.join(b).expect("join b");
        assert!(matches!(cpg.join(a), Err(CorosyncError::AlreadyJoined(_))));
        assert!(matches!(
            cpg.join(""),
            Err(CorosyncError::InvalidGroup { .. })
        ));
        assert_eq!(cpg.joined(), vec![a.to_string(), b.to_string()]);
        for group in [a, b] {
            let stray = wait_confchg(&mut events, group, "our own join", |members, joined, _| {
                members.contains(&1) && joined.contains(&1)
            })
            .await;
            assert!(
                stray.iter().all(|e| matches!(e, CpgEvent::ConfChg(_))),
                "unexpected events before our join: {stray:?}"
            );
        }

        // A flood on both groups, queued at once: everything arrives, in order per group.
        let started = Instant::now();
        for i in 0..FLOOD {
            cpg.mcast(a, payload(b'a', i)).expect("mcast a");
            if i % 4 == 0 {
                cpg.mcast(b, payload(b'b', i / 4)).expect("mcast b");
            }
        }
        let (mut next_a, mut next_b) = (0usize, 0usize);
        while next_a < FLOOD || next_b < FLOOD / 4 {
            match next_event(&mut events, Duration::from_secs(20), "the flood").await {
                CpgEvent::Deliver(Input::Deliver {
                    group,
                    sender,
                    payload: p,
                }) => {
                    // corosync reports the sending process, not only its node.
                    assert_eq!(sender, gfs_core::Peer::new(1, std::process::id()));
                    let (next, tag) = if group == a {
                        (&mut next_a, b'a')
                    } else if group == b {
                        (&mut next_b, b'b')
                    } else {
                        panic!("delivery in unknown group {group}");
                    };
                    assert_eq!(
                        p,
                        payload(tag, *next),
                        "message {} of {group} out of order or damaged",
                        *next
                    );
                    *next += 1;
                }
                other => panic!("unexpected event during the flood: {other:?}"),
            }
        }
        eprintln!(
            "flood: {FLOOD} + {} messages delivered in {:?}",
            FLOOD / 4,
            started.elapsed()
        );

        // Leaving b: the leave follows a last message, and we see our own clean leave.
        cpg.mcast(b, b"last".to_vec()).expect("mcast before leave");
        cpg.leave(b).expect("leave b");
        assert_eq!(cpg.joined(), vec![a.to_string()]);
        assert!(matches!(
            cpg.mcast(b, b"late".to_vec()),
            Err(CorosyncError::NotJoined(_))
        ));
        assert!(matches!(cpg.leave(b), Err(CorosyncError::NotJoined(_))));
        // Joining b again at once (before our leave confchg arrived): the new membership waits
        // for the old one to end, so the leave is seen before the new join, and a message
        // queued on the new membership goes out after its join.
        cpg.join(b).expect("join b again");
        cpg.mcast(b, b"again".to_vec())
            .expect("mcast on the new membership");
        assert_eq!(cpg.joined(), vec![a.to_string(), b.to_string()]);
        let before = wait_confchg(&mut events, b, "our own leave", |members, _, left| {
            left.contains(&(1, LeaveReason::Leave)) && !members.contains(&1)
        })
        .await;
        assert_eq!(
            before,
            vec![CpgEvent::Deliver(Input::Deliver {
                group: b.to_string(),
                sender: gfs_core::Peer::new(1, std::process::id()),
                payload: b"last".to_vec()
            })]
        );
        let before = wait_confchg(&mut events, b, "our join again", |members, joined, _| {
            members == [1] && joined == [1]
        })
        .await;
        assert_eq!(
            before,
            Vec::new(),
            "events between our leave and our new join"
        );
        match next_event(&mut events, Duration::from_secs(10), "a message on b").await {
            CpgEvent::Deliver(Input::Deliver { group, payload, .. }) => {
                assert_eq!((group.as_str(), payload.as_slice()), (b, &b"again"[..]))
            }
            other => panic!("unexpected event: {other:?}"),
        }
        cpg.mcast(a, b"still here".to_vec()).expect("mcast a");
        match next_event(&mut events, Duration::from_secs(10), "a message on a").await {
            CpgEvent::Deliver(Input::Deliver { group, payload, .. }) => {
                assert_eq!(
                    (group.as_str(), payload.as_slice()),
                    (a, &b"still here"[..])
                )
            }
            other => panic!("unexpected event: {other:?}"),
        }

        assert!(quorum.quorate().expect("quorate"));
        while let Ok(change) = quorum_events.try_recv() {
            assert!(
                change.quorate,
                "quorum tracking reported an inquorate partition"
            );
            assert!(!change.members.is_empty(), "the membership comes along");
        }

        // corosync dies: every handle reports it.
        nix::sys::signal::kill(corosync_pid, nix::sys::signal::Signal::SIGKILL)
            .expect("kill corosync");
        let mut lost: Vec<String> = Vec::new();
        while lost.len() < 2 {
            let event = next_event(
                &mut events,
                Duration::from_secs(10),
                "Lost after corosync died",
            )
            .await;
            if let CpgEvent::Lost { group, reason } = event {
                assert!(!reason.is_empty());
                lost.push(group);
            }
        }
        lost.sort();
        assert_eq!(lost, vec![a.to_string(), b.to_string()]);
        assert_eq!(cpg.joined(), Vec::<String>::new());
        let closed = tokio::time::timeout(Duration::from_secs(10), async {
            while quorum_events.recv().await.is_some() {}
        })
        .await;
        assert!(
            closed.is_ok(),
            "the quorum channel did not close after corosync died"
        );
        assert!(quorum.quorate().is_err());
        assert!(matches!(
            cmap::cluster_name(),
            Err(CorosyncError::Unavailable { .. })
        ));
        drop(cpg);
        drop(quorum);
    });

    cluster.kill_corosync();
}

#[tokio::test(flavor = "current_thread")]
async fn connect_with_retry_retries_until_success() {
    let mut attempts = 0;
    let value = tokio::time::timeout(
        Duration::from_secs(5),
        corosync::connect_with_retry("test", Duration::from_millis(10), || {
            attempts += 1;
            if attempts < 3 {
                Err(CorosyncError::Unavailable {
                    service: "test",
                    source: rust_corosync::CsError::CsErrLibrary,
                })
            } else {
                Ok(attempts)
            }
        }),
    )
    .await
    .expect("connect_with_retry did not return");
    assert_eq!(value, 3);
}

fn flood_max() -> usize {
    std::env::var("GFS_CA_FLOOD_MAX")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64 * 1024)
}
