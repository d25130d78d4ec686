//! Multi-node integration tests: real corosync in network namespaces, the real daemon, and a
//! kernel simulator per node sending real netlink uevents (SPEC §2). Each scenario asserts on
//! what the kernels saw (sysfs writes, replays, block state) and on the daemons' status.
//!
//! Needs root, corosync and the workspace binaries (`cargo build --workspace --bins`); skipped
//! with a note otherwise, except under CI, where a missing prerequisite fails the run.
//! Scenarios run one at a time: each brings up its own cluster and tears it down.

use std::sync::Mutex;
use std::time::Duration;

use gfs_testkit::cluster::{require_prerequisites, Cluster, ClusterOptions};
use serde_json::Value;

/// Clusters are CPU-hungry (2 cores here) and timing-sensitive: one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

const SETTLE: Duration = Duration::from_secs(40);

fn cluster(
    name: &str,
    nodes: u32,
    replay_ms: u64,
) -> Option<(std::sync::MutexGuard<'static, ()>, Cluster)> {
    let opts = ClusterOptions {
        nodes,
        replay_ms,
        ..ClusterOptions::default()
    };
    cluster_with(name, opts)
}

fn cluster_with(
    name: &str,
    opts: ClusterOptions,
) -> Option<(std::sync::MutexGuard<'static, ()>, Cluster)> {
    let guard = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    if !require_prerequisites(name) {
        return None;
    }
    let cluster =
        Cluster::start(opts).unwrap_or_else(|e| panic!("{name}: cluster did not start: {e:#}"));
    Some((guard, cluster))
}

fn timeline(t: &Value) -> Vec<(u64, String)> {
    t["timeline"]
        .as_array()
        .map(|events| {
            events
                .iter()
                .map(|e| {
                    (
                        e["t_ms"].as_u64().unwrap_or(0),
                        e["what"].as_str().unwrap_or("").to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The kernel simulator's timeline on node `id`.
fn events(c: &Cluster, id: u32) -> Vec<(u64, String)> {
    timeline(&c.kernel_status(id).unwrap())
}

/// Waits up to [`SETTLE`] for `done`, failing the test with the nodes' logs otherwise.
fn settle_until(c: &mut Cluster, what: &str, done: impl FnMut(&mut Cluster) -> bool) {
    c.wait_for(what, SETTLE, done)
        .unwrap_or_else(|e| panic!("{e:#}"));
}

/// The kernel simulator's table entry's field as a list of jids.
fn jids(value: &Value) -> Vec<u64> {
    value
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default()
}

fn jid_of(c: &Cluster, id: u32, fs: &str) -> u64 {
    c.kernel_table(id, fs).unwrap()["jid"].as_u64().unwrap()
}

fn mount_all(c: &Cluster, ids: &[u32], fs: &str) {
    for &id in ids {
        c.mount(id, fs)
            .unwrap_or_else(|e| panic!("mount {fs} on node {id}: {e:#}\n{}", c.diagnostics()));
    }
}

fn no_violations(c: &Cluster, ids: &[u32]) {
    for &id in ids {
        if let Ok(status) = c.kernel_status(id) {
            let violations = status["violations"].as_array().cloned().unwrap_or_default();
            assert!(
                violations.is_empty(),
                "node {id}'s kernel saw violations: {violations:?}\n{}",
                c.diagnostics()
            );
        }
    }
}

fn blocked(c: &Cluster, id: u32, fs: &str) -> bool {
    c.kernel_table(id, fs)
        .map(|t| t["blocked"] == true)
        .unwrap_or(false)
}

/// Every survivor unblocked and the filesystem's journal of each dead node replayed once.
fn wait_recovered(c: &mut Cluster, survivors: &[u32], fs: &str, dead_jids: &[u64]) {
    let fs_owned = fs.to_owned();
    let survivors_owned = survivors.to_vec();
    let dead = dead_jids.to_vec();
    settle_until(c, "recovery and unblock", move |c| {
        let replayed: Vec<u64> = survivors_owned
            .iter()
            .flat_map(|&id| {
                c.kernel_table(id, &fs_owned)
                    .map(|t| jids(&t["replays_done"]))
                    .unwrap_or_default()
            })
            .collect();
        dead.iter().all(|j| replayed.contains(j))
            && survivors_owned.iter().all(|&id| !blocked(c, id, &fs_owned))
    });
}

/// How many survivors replayed `jid` successfully (the kernels' own record).
fn replayers_of(c: &Cluster, survivors: &[u32], fs: &str, jid: u64) -> Vec<u32> {
    survivors
        .iter()
        .copied()
        .filter(|&id| {
            c.kernel_table(id, fs)
                .map(|t| jids(&t["replays_done"]).contains(&jid))
                .unwrap_or(false)
        })
        .collect()
}

#[test]
fn s1_three_nodes_mount_at_once_with_distinct_jids_as_first_mounters() {
    let Some((_guard, c)) = cluster("s1", 3, 300) else {
        return;
    };
    let children: Vec<_> = (1..=3)
        .map(|id| c.mount_async(id, "fs1").unwrap())
        .collect();
    for (i, child) in children.into_iter().enumerate() {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "mount on node {} failed: {}\n{}",
            i + 1,
            String::from_utf8_lossy(&out.stderr),
            c.diagnostics()
        );
    }
    let tables: Vec<Value> = (1..=3)
        .map(|id| c.kernel_table(id, "fs1").unwrap())
        .collect();
    let mut jids: Vec<u64> = tables.iter().map(|t| t["jid"].as_u64().unwrap()).collect();
    jids.sort();
    jids.dedup();
    assert_eq!(jids.len(), 3, "jids not distinct: {tables:?}");
    // Nobody's mount had completed when they were admitted: each is told first=1 at once (no
    // jid waits for another mount: the kernels' mount lock runs them one after the other),
    // writes `first` before `jid`, and reports FIRSTMOUNT=Done.
    for id in 1..=3u32 {
        let evs = events(&c, id);
        let at = |prefix: &str| {
            evs.iter()
                .find(|(_, what)| what.starts_with(prefix))
                .map(|(t, _)| *t)
                .unwrap_or_else(|| panic!("node {id}: no {prefix}: {evs:?}"))
        };
        assert!(
            at("write first=1") <= at("write jid="),
            "node {id}: first before jid"
        );
        assert!(
            evs.iter().any(|(_, what)| what.contains("FIRSTMOUNT=Done")),
            "node {id} mounted as a first mounter: {evs:?}"
        );
    }
    let ls = c.ls(1).unwrap();
    assert_eq!(ls[0]["members"].as_array().unwrap().len(), 3, "{ls}");
    no_violations(&c, &[1, 2, 3]);
}

#[test]
fn s2_node_crash_blocks_fences_replays_once_and_unblocks() {
    // dlm_controld answers the first two notifies -EAGAIN, as when it has not yet processed
    // the failure itself.
    let opts = ClusterOptions {
        nodes: 3,
        replay_ms: 300,
        dlm_eagain: 2,
        ..ClusterOptions::default()
    };
    let Some((_guard, mut c)) = cluster_with("s2", opts) else {
        return;
    };
    mount_all(&c, &[1, 2, 3], "fs1");
    let dead_jid = jid_of(&c, 3, "fs1");
    let crashed_at = now_ms();
    c.crash_node(3);
    wait_recovered(&mut c, &[1, 2], "fs1", &[dead_jid]);
    let replayers = replayers_of(&c, &[1, 2], "fs1", dead_jid);
    assert_eq!(
        replayers.len(),
        1,
        "exactly one replayer of jid {dead_jid}: {replayers:?}"
    );
    let fenced = c.fence_log();
    assert_eq!(
        fenced.iter().filter(|(_, n)| *n == 3).count(),
        1,
        "one member runs the fence agent and shares the result: {fenced:?}"
    );
    let fence_time = fenced
        .iter()
        .find(|(_, n)| *n == 3)
        .map(|(t, _)| *t)
        .expect("node 3 was fenced");
    assert!(fence_time >= crashed_at);
    let replayer = replayers[0];
    let recover_write = events(&c, replayer)
        .into_iter()
        .find(|(_, what)| what == &format!("write recover={dead_jid}"))
        .map(|(t, _)| t)
        .expect("recover written");
    assert!(
        recover_write >= fence_time,
        "replay at {recover_write} before fencing at {fence_time}"
    );
    for id in [1, 2] {
        let blocks: Vec<String> = events(&c, id)
            .into_iter()
            .map(|(_, w)| w)
            .filter(|w| w.starts_with("write block="))
            .collect();
        assert!(
            blocks.contains(&"write block=1".to_owned()),
            "node {id} blocked: {blocks:?}"
        );
    }
    // S8: each survivor registered fs1 with dlm_controld and told it about node 3 only after
    // its own block=1 (times: the kernel simulator's and the dlm_controld double's wall clocks).
    // The notify goes on (EAGAIN, every 500 ms) independently of the replay: wait for it.
    settle_until(&mut c, "both survivors to notify dlm_controld", |c| {
        [1, 2].iter().all(|&id| {
            c.dlm_log(id).iter().any(|r| {
                r.op == "notify" && r.name == "fs1" && r.nodeid == Some(3) && r.result == Some(0)
            })
        })
    });
    for id in [1, 2] {
        let block_at = events(&c, id)
            .into_iter()
            .find(|(_, what)| what == "write block=1")
            .map(|(t, _)| t)
            .expect("block=1 written");
        let log = c.dlm_log(id);
        assert!(
            log.iter()
                .any(|r| r.op == "register" && r.name == "fs1" && r.result == Some(0)),
            "node {id} registered fs1 with dlm_controld: {log:?}"
        );
        let notifies: Vec<_> = log
            .iter()
            .filter(|r| r.op == "notify" && r.name == "fs1" && r.nodeid == Some(3))
            .collect();
        assert!(
            notifies.iter().any(|r| r.result == Some(0)),
            "node {id} told dlm_controld it blocked fs1 against node 3: {log:?}\n{}",
            c.diagnostics()
        );
        assert!(
            notifies.len() >= 3,
            "node {id} asked again after -EAGAIN: {notifies:?}"
        );
        assert!(
            notifies.iter().all(|r| r.t_ms >= block_at),
            "node {id} notified dlm_controld before its block=1 at {block_at}: {notifies:?}"
        );
    }
    let status = c.status(1).unwrap();
    assert!(
        !status["recoveries"].as_array().unwrap().is_empty(),
        "timeline kept: {status}"
    );
    no_violations(&c, &[1, 2]);
}

#[test]
fn s3_replayer_dies_mid_replay_and_another_replays_both() {
    // Five nodes so that two failures keep quorum; three of them mount.
    let Some((_guard, mut c)) = cluster("s3", 5, 4000) else {
        return;
    };
    mount_all(&c, &[1, 2, 3], "fs1");
    let jid3 = jid_of(&c, 3, "fs1");
    c.crash_node(3);
    let mut replayer = 0;
    settle_until(&mut c, "a replay of node 3's journal to start", |c| {
        for id in [1, 2] {
            if c.kernel_table(id, "fs1")
                .map(|t| jids(&t["replaying"]).contains(&jid3))
                .unwrap_or(false)
            {
                replayer = id;
                return true;
            }
        }
        false
    });
    let jid_r = jid_of(&c, replayer, "fs1");
    c.crash_node(replayer);
    let last = if replayer == 1 { 2 } else { 1 };
    wait_recovered(&mut c, &[last], "fs1", &[jid3, jid_r]);
    // Nobody unblocked early: the last member's only block=0 comes after both replays.
    let events = events(&c, last);
    let done = |jid: u64| {
        events
            .iter()
            .find(|(_, w)| {
                w.contains(&format!("RECOVERY=Done JID={jid}"))
                    || w.contains(&format!("JID={jid} RECOVERY=Done"))
            })
            .map(|(t, _)| *t)
    };
    let unblock_after_first_block = events
        .iter()
        .skip_while(|(_, w)| w != "write block=1")
        .find(|(_, w)| w == "write block=0")
        .map(|(t, _)| *t)
        .expect("unblocked");
    for jid in [jid3, jid_r] {
        let t = done(jid).unwrap_or_else(|| panic!("node {last} replayed jid {jid}: {events:?}"));
        assert!(
            unblock_after_first_block >= t,
            "unblocked at {unblock_after_first_block} before jid {jid} was replayed at {t}"
        );
    }
    no_violations(&c, &[last]);
}

#[test]
fn s4_daemon_crash_is_a_failure_of_that_nodes_mounts() {
    let Some((_guard, mut c)) = cluster("s4", 3, 300) else {
        return;
    };
    mount_all(&c, &[1, 2, 3], "fs1");
    let jid3 = jid_of(&c, 3, "fs1");
    // A slow fence agent, so that whoever takes node 3 out can be told apart: the fencing
    // backend after the delay, or corosync at once (a kill_node request).
    c.set_fence_delay(5_000).unwrap();
    c.kill_daemon(3);
    settle_until(&mut c, "the survivors to wait for node 3's fencing", |c| {
        [1, 2].iter().all(|&id| {
            c.ls(id)
                .map(|ls| waits_for_fencing_of_3(&ls[0]))
                .unwrap_or(false)
        })
    });
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        c.fence_log().is_empty(),
        "the fence agent finished early: raise the delay"
    );
    assert!(
        c.corosync_alive(3),
        "node 3 was removed from corosync instead of waiting for its fence"
    );
    wait_recovered(&mut c, &[1, 2], "fs1", &[jid3]);
    let fenced_at = c
        .fence_log()
        .iter()
        .find(|(_, n)| *n == 3)
        .map(|(t, _)| *t)
        .expect("node 3 fenced through the backend before its journal was replayed");
    let replayer = replayers_of(&c, &[1, 2], "fs1", jid3)[0];
    let replay_at = events(&c, replayer)
        .into_iter()
        .find(|(_, w)| w == &format!("write recover={jid3}"))
        .map(|(t, _)| t)
        .expect("recover written");
    assert!(replay_at >= fenced_at, "replay before the fence");
    assert!(!c.corosync_alive(3), "fencing took the whole node down");
    assert!(!asked_corosync_to_remove(&c, &[1, 2]));
    assert_eq!(replayers_of(&c, &[1, 2], "fs1", jid3).len(), 1);
    no_violations(&c, &[1, 2]);
}

#[test]
fn s5_clean_unmount_needs_no_block_and_no_replay() {
    let Some((_guard, mut c)) = cluster("s5", 3, 300) else {
        return;
    };
    mount_all(&c, &[1, 2, 3], "fs1");
    c.umount(3, "fs1").unwrap();
    settle_until(&mut c, "node 3 gone from the group", |c| {
        c.ls(1)
            .map(|ls| ls[0]["members"].as_array().map(|m| m.len()) == Some(2))
            .unwrap_or(false)
    });
    std::thread::sleep(Duration::from_secs(1));
    for id in [1, 2] {
        let events = events(&c, id);
        assert!(
            !events.iter().any(|(_, w)| w == "write block=1"),
            "node {id} blocked: {events:?}"
        );
        assert!(
            !events.iter().any(|(_, w)| w.starts_with("write recover=")),
            "node {id} replayed: {events:?}"
        );
    }
    assert!(
        c.fence_log().is_empty(),
        "nobody fenced for a clean unmount"
    );
    no_violations(&c, &[1, 2]);
}

#[test]
fn s6_failed_replay_is_retried_and_succeeds() {
    let Some((_guard, mut c)) = cluster("s6", 3, 300) else {
        return;
    };
    mount_all(&c, &[1, 2, 3], "fs1");
    let jid3 = jid_of(&c, 3, "fs1");
    for id in [1, 2] {
        c.kernel(id, &["set", "--fail-next-replays", "1"]).unwrap();
    }
    c.crash_node(3);
    wait_recovered(&mut c, &[1, 2], "fs1", &[jid3]);
    let failed: usize = [1, 2]
        .iter()
        .map(|&id| {
            events(&c, id)
                .iter()
                .filter(|(_, w)| w.contains("RECOVERY=Failed"))
                .count()
        })
        .sum();
    assert!(failed >= 1, "a replay answered Failed");
    assert_eq!(
        replayers_of(&c, &[1, 2], "fs1", jid3).len(),
        1,
        "replayed successfully exactly once"
    );
    no_violations(&c, &[1, 2]);
}

#[test]
fn s7_isolated_node_replays_nothing_and_is_not_readmitted_stale() {
    let Some((_guard, mut c)) = cluster("s7", 3, 300) else {
        return;
    };
    mount_all(&c, &[1, 2, 3], "fs1");
    let jid3 = jid_of(&c, 3, "fs1");
    // Slow fencing, so that the link heals before node 3 is fenced: a stale merge.
    c.set_fence_delay(15_000).unwrap();
    c.set_link(3, false).unwrap();
    settle_until(&mut c, "both sides to block", |c| {
        blocked(c, 1, "fs1") && blocked(c, 3, "fs1")
    });
    settle_until(&mut c, "node 3 to lose quorum", |c| {
        c.status(3).map(|s| s["quorate"] == false).unwrap_or(false)
    });
    std::thread::sleep(Duration::from_secs(2));
    c.set_link(3, true).unwrap();
    // The merged node still holds its old state: the large side asks corosync to remove it.
    settle_until(
        &mut c,
        "the stale node to be removed from the cluster",
        |c| !c.corosync_alive(3),
    );
    assert!(
        c.fence_log().is_empty(),
        "removed by corosync before the slow fence finished"
    );
    wait_recovered(&mut c, &[1, 2], "fs1", &[jid3]);
    let events3 = timeline(&c.kernel_status(3).unwrap_or(Value::Null));
    assert!(
        !events3.iter().any(|(_, w)| w.starts_with("write recover=")),
        "the small side replayed: {events3:?}"
    );
    assert!(
        !events3.iter().any(|(_, w)| w == "write block=0"),
        "the small side unblocked: {events3:?}"
    );
    no_violations(&c, &[1, 2]);
}

#[test]
fn s8_two_filesystems_recover_together() {
    let Some((_guard, mut c)) = cluster("s8", 3, 300) else {
        return;
    };
    mount_all(&c, &[1, 2, 3], "fs1");
    mount_all(&c, &[1, 2, 3], "fs2");
    let jid_fs1 = jid_of(&c, 2, "fs1");
    let jid_fs2 = jid_of(&c, 2, "fs2");
    c.crash_node(2);
    wait_recovered(&mut c, &[1, 3], "fs1", &[jid_fs1]);
    wait_recovered(&mut c, &[1, 3], "fs2", &[jid_fs2]);
    assert_eq!(replayers_of(&c, &[1, 3], "fs1", jid_fs1).len(), 1);
    assert_eq!(replayers_of(&c, &[1, 3], "fs2", jid_fs2).len(), 1);
    no_violations(&c, &[1, 3]);
}

/// Sends `bytes` on netlink's uevent group in node `id`'s network namespace, from this
/// (userspace, root) process, as an attacker with CAP_NET_ADMIN there could.
fn spoof_uevent(c: &Cluster, id: u32, bytes: Vec<u8>) {
    let ns = format!("/run/netns/{}", c.netns(id));
    std::thread::spawn(move || {
        let file = std::fs::File::open(&ns).unwrap();
        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        gfs_testkit::uevent::send_uevent(&bytes).unwrap();
    })
    .join()
    .unwrap();
}

#[test]
fn s9_sigterm_is_refused_while_mounted_and_clean_after_unmount() {
    let Some((_guard, mut c)) = cluster("s9", 3, 300) else {
        return;
    };
    mount_all(&c, &[1, 2, 3], "fs1");
    // A `remove` from userspace on netlink would take the mount out of the group (and let
    // SIGTERM through below): only the kernel's uevents count.
    let table = gfs_testkit::uevent::render(
        &gfs_core::KernelEvent {
            table: gfs_core::Table::parse(&c.table("fs1")).unwrap(),
            kind: gfs_core::KernelEventKind::Remove,
        },
        Some(2),
    );
    spoof_uevent(&c, 3, table);
    settle_until(&mut c, "the spoofed uevent to be dropped", |c| {
        daemon_log(c, 3).contains("dropped a uevent not sent by the kernel")
    });
    // SIGHUP and SIGUSR1 are logged and ignored.
    c.signal_daemon(3, libc::SIGHUP).unwrap();
    c.signal_daemon(3, libc::SIGUSR1).unwrap();
    std::thread::sleep(Duration::from_secs(1));
    assert!(c.daemon_alive(3), "SIGHUP or SIGUSR1 killed the daemon");
    let log = daemon_log(&c, 3);
    assert!(log.contains("SIGHUP ignored"), "{log}");
    assert!(log.contains("SIGUSR1 ignored"), "{log}");
    c.signal_daemon(3, libc::SIGTERM).unwrap();
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        c.daemon_alive(3),
        "the daemon exited with a filesystem mounted"
    );
    let log = std::fs::read_to_string(c.node_dir(3).join("gfs_controld.log")).unwrap();
    assert!(log.contains("refusing to exit"), "{log}");
    c.umount(3, "fs1").unwrap();
    settle_until(&mut c, "node 3 gone from the group", |c| {
        c.ls(1)
            .map(|ls| ls[0]["members"].as_array().map(|m| m.len()) == Some(2))
            .unwrap_or(false)
    });
    c.signal_daemon(3, libc::SIGTERM).unwrap();
    settle_until(&mut c, "the daemon to exit", |c| c.daemon_exit(3).is_some());
    assert!(c.daemon_exit(3).unwrap().success());
    // A clean leave: the others neither block nor fence.
    settle_until(&mut c, "node 3 gone from the daemon group", |c| {
        c.status(1)
            .map(|s| s["members"].as_array().map(|m| m.len()) == Some(2))
            .unwrap_or(false)
    });
    std::thread::sleep(Duration::from_secs(1));
    assert!(c.fence_log().is_empty(), "a clean exit needs no fencing");
    for id in [1, 2] {
        assert!(!blocked(&c, id, "fs1"));
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// The kernel holds the cluster-wide mount glock from the end of its DLM join until its mount
/// ends, including the wait for `jid` (real-kernel.md §2, §6 #2). Node 1's join is slow, so
/// node 2's kernel takes the glock first; a daemon that picks node 1 as first mounter and holds
/// back node 2's `jid` until node 1's FIRSTMOUNT=Done deadlocks both mounts.
#[test]
fn s10_the_mount_glock_holder_gets_its_jid() {
    let Some((_guard, c)) = cluster("s10", 3, 300) else {
        return;
    };
    c.kernel(1, &["set", "--join-ms", "3000"]).unwrap();
    let slow = c.mount_async(1, "fs1").unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let fast = c.mount_async(2, "fs1").unwrap();
    for (id, child) in [(1, slow), (2, fast)] {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "mount on node {id} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            c.diagnostics()
        );
    }
    no_violations(&c, &[1, 2]);
}

/// A spectator cannot write `first`, so 6.1 makes it check that every journal is clean; a live
/// read-write node's journal is not: the mount fails with EPERM unless it has
/// `-o hostdata=first=0` (real-kernel.md §6 #5).
#[test]
fn s11_spectator_next_to_a_rw_mount_needs_hostdata_first0() {
    let Some((_guard, c)) = cluster("s11", 3, 300) else {
        return;
    };
    mount_all(&c, &[1], "fs1");
    let table = c.table("fs1");
    let refused = c.kernel(
        2,
        &["mount", &table, "--spectator", "--timeout-ms", "30000"],
    );
    let err = format!(
        "{:#}",
        refused.expect_err("a checking spectator mounts next to a rw node")
    );
    // The daemon refuses it (EPERM) before the kernel's own check would, and says why.
    assert!(err.contains("refused by jid=-1"), "{err}");
    let log = std::fs::read_to_string(c.node_dir(2).join("gfs_controld.log")).unwrap_or_default();
    assert!(
        log.contains("hostdata=first=0"),
        "the refusal says how to mount"
    );
    c.kernel(
        2,
        &[
            "mount",
            &table,
            "--spectator",
            "--hostdata-first0",
            "--timeout-ms",
            "30000",
        ],
    )
    .unwrap_or_else(|e| {
        panic!(
            "spectator with hostdata=first=0: {e:#}\n{}",
            c.diagnostics()
        )
    });
    assert_eq!(c.kernel_table(2, "fs1").unwrap()["mode"], "spectator");
}

/// After a remount rw→ro, `online` still says RDONLY=0 (6.1 computes it before the VFS applies
/// the new flags, real-kernel.md §6 #7). A read-only node cannot replay a dirty journal
/// (EROFS → Failed): recovery must still complete on the read-write node.
#[test]
fn s12_recovery_completes_after_a_remount_to_read_only() {
    let Some((_guard, mut c)) = cluster("s12", 3, 300) else {
        return;
    };
    mount_all(&c, &[1, 2, 3], "fs1");
    let table = c.table("fs1");
    c.kernel(2, &["remount", &table, "--ro"]).unwrap();
    let dead = jid_of(&c, 3, "fs1");
    c.crash_node(3);
    wait_recovered(&mut c, &[1, 2], "fs1", &[dead]);
    let replayed: Vec<u32> = [1, 2]
        .into_iter()
        .filter(|&id| {
            jids(&c.kernel_table(id, "fs1").unwrap()["journals_replayed"]).contains(&dead)
        })
        .collect();
    assert_eq!(replayed, vec![1], "the read-write node replays");
}

/// Withdraw: `offline`; the others block and replay the withdrawn node's journal; the
/// withdrawn node acknowledges with `withdraw=1`.
#[test]
fn s13_withdraw_is_replayed_by_a_peer_and_acknowledged() {
    let Some((_guard, mut c)) = cluster("s13", 3, 300) else {
        return;
    };
    mount_all(&c, &[1, 2, 3], "fs1");
    let jid3 = jid_of(&c, 3, "fs1");
    c.kernel(3, &["withdraw", &c.table("fs1")]).unwrap();
    wait_recovered(&mut c, &[1, 2], "fs1", &[jid3]);
    settle_until(&mut c, "node 3 to acknowledge its withdraw", |c| {
        c.kernel_table(3, "fs1")
            .map(|t| t["withdraw_acked"] == true)
            .unwrap_or(false)
    });
    let dirty = &c.kernel_table(1, "fs1").unwrap()["dirty"];
    assert!(
        !jids(dirty).contains(&jid3),
        "journal {jid3} replayed: {dirty}"
    );
    no_violations(&c, &[1, 2, 3]);
}

/// Node `id`'s daemon log so far.
fn daemon_log(c: &Cluster, id: u32) -> String {
    std::fs::read_to_string(c.node_dir(id).join("gfs_controld.log")).unwrap_or_default()
}

/// The lines of node `id`'s daemon log at info level or above (what an operator reads during
/// an outage) that contain every one of `words`.
fn operator_lines(c: &Cluster, id: u32, words: &[&str]) -> Vec<String> {
    daemon_log(c, id)
        .lines()
        .filter(|line| {
            [" INFO ", " WARN ", " ERROR "]
                .iter()
                .any(|l| line.contains(l))
        })
        .filter(|line| words.iter().all(|w| line.contains(w)))
        .map(str::to_owned)
        .collect()
}

/// The lines telling that this partition gained or lost quorum.
fn quorum_lines(c: &Cluster, id: u32) -> Vec<String> {
    [
        "quorum gained",
        "quorum lost",
        "quorum regained",
        "quorum changed",
    ]
    .iter()
    .flat_map(|fact| operator_lines(c, id, &[fact]))
    .collect()
}

// One fact, one line (the core logs protocol facts, adapters IO failures, the daemon what
// neither sees): a quorum change, a fence and a fencing failure were each logged three times.
#[test]
fn s20_quorum_fence_and_fencing_failure_are_each_logged_once() {
    let Some((_guard, mut c)) = cluster("s20", 3, 300) else {
        return;
    };
    mount_all(&c, &[1, 2, 3], "fs1");
    // Every count is checked before the test fails, so a failure shows all the duplicates.
    let mut problems = Vec::new();
    let mut expect_one = |what: String, lines: Vec<String>| {
        if lines.len() != 1 {
            problems.push(format!("{what}: {} lines {lines:#?}", lines.len()));
        }
    };
    for id in [1, 2, 3] {
        expect_one(
            format!("node {id}: quorum at startup"),
            quorum_lines(&c, id),
        );
    }
    let dead_jid = jid_of(&c, 3, "fs1");
    c.set_fence_failures(1).unwrap();
    c.crash_node(3);
    wait_recovered(&mut c, &[1, 2], "fs1", &[dead_jid]);
    assert_eq!(c.fence_failures().len(), 1, "the agent failed once");
    expect_one(
        "the fencing failure".to_owned(),
        [1, 2]
            .iter()
            .flat_map(|&id| operator_lines(&c, id, &["nodeid=3", "fenc", "failed"]))
            .collect(),
    );
    for id in [1, 2] {
        expect_one(
            format!("node {id}: node 3 fenced"),
            operator_lines(&c, id, &["nodeid=3", "fenced"]),
        );
        // Two nodes of three stay quorate: still the startup line only.
        expect_one(
            format!("node {id}: quorum after the crash"),
            quorum_lines(&c, id),
        );
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    no_violations(&c, &[1, 2]);
}

#[test]
fn s14_recover_callbacks_and_remount_mode_are_read_from_the_kernel() {
    let Some((_guard, mut c)) = cluster("s14", 2, 300) else {
        return;
    };
    // Node 1's DLM gives lockspaces recovery callbacks (dlm_controld's default): the kernel
    // manages the filesystem, the daemon must not write to it.
    std::fs::write(
        c.configfs_root(1).join("dlm/cluster/recover_callbacks"),
        "1\n",
    )
    .unwrap();
    let mut mount = c.mount_async(1, "km").unwrap();
    settle_until(&mut c, "node 1 to see fs km as kernel-managed", |c| {
        c.ls(1)
            .ok()
            .and_then(|ls| {
                ls.as_array()?
                    .iter()
                    .find(|f| f["name"] == "km")
                    .map(|f| f["kernel_managed"] == true)
            })
            .unwrap_or(false)
    });
    std::thread::sleep(Duration::from_millis(500));
    let table_km = c.table("km");
    let writes: Vec<(u64, String)> = timeline(&c.kernel_status(1).unwrap())
        .into_iter()
        .filter(|(_, what)| what.starts_with("write "))
        .collect();
    assert!(
        writes.is_empty(),
        "wrote to kernel-managed {table_km}: {writes:?}"
    );
    assert!(daemon_log(&c, 1).contains("kernel-managed mount"));
    let _ = mount.kill();
    let _ = mount.wait();

    // Node 2 mounts fs1 read-write, then remounts it read-only: as on the real kernel, the
    // remount's `online` carries the old RDONLY=0 and only the sysfs status shows the change.
    mount_all(&c, &[2], "fs1");
    assert!(daemon_log(&c, 2).contains("daemon-managed mount"));
    c.kernel(2, &["remount", &c.table("fs1"), "--ro"]).unwrap();
    settle_until(&mut c, "node 2 to read the new mode from status", |c| {
        daemon_log(c, 2).contains("the mount is now read-only")
    });
    no_violations(&c, &[1, 2]);
}

// ----- foreign processes in the daemon group (gfs_controld(8): peers are processes) ---------

/// A `gfs_cpg_intruder` running on a node: a process that is not gfs_controld, in
/// `gfs:controld`. Killed on drop, so a failing test does not leave it in the group.
struct Intruder {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    /// Its pid as corosync reports it to the group.
    pid: u32,
}

impl Intruder {
    /// Starts it on node `id` and waits until corosync has reported its join.
    fn start(c: &Cluster, id: u32, args: &[&str]) -> Intruder {
        let mut child = c
            .spawn_in_node(id, "gfs_cpg_intruder", args)
            .unwrap_or_else(|e| panic!("{e:#}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut intruder = Intruder {
            child,
            lines,
            pid: 0,
        };
        let joined = intruder.wait_line(c, "joined ");
        intruder.pid = joined
            .split_whitespace()
            .find_map(|w| w.strip_prefix("pid="))
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no pid in {joined:?}"));
        intruder
    }

    /// Waits for the next stdout line starting with `prefix` (each step prints one).
    fn wait_line(&mut self, c: &Cluster, prefix: &str) -> String {
        let deadline = std::time::Instant::now() + SETTLE;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.starts_with(prefix) => return line,
                Ok(_) => {}
                Err(_) => panic!(
                    "gfs_cpg_intruder never printed {prefix:?} (exit: {:?})\n{}",
                    self.child.try_wait(),
                    c.diagnostics()
                ),
            }
        }
    }

    fn wait_exit(&mut self) -> std::process::ExitStatus {
        self.child.wait().expect("wait for gfs_cpg_intruder")
    }

    fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Intruder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The daemons' log says they ignored `pid`'s join on `node` as a process that is not the node's
/// gfs_controld.
fn logged_foreign_join(c: &Cluster, id: u32, pid: u32, node: u32) -> bool {
    daemon_log(c, id).contains(&format!(
        "ignored join of process {pid} on node {node}: not the node's gfs_controld"
    ))
}

/// What `node`'s kernel simulator was told to write, in order (`write block=1`, ...).
fn writes(c: &Cluster, id: u32) -> Vec<(u64, String)> {
    events(c, id)
        .into_iter()
        .filter(|(_, w)| w.starts_with("write "))
        .collect()
}

fn status_members(c: &Cluster, id: u32) -> Vec<u64> {
    c.status(id)
        .map(|s| jids(&s["members"]))
        .unwrap_or_default()
}

/// `gfs_control ls`'s line for a filesystem whose recovery waits for node 3's fence.
fn waits_for_fencing_of_3(fs: &Value) -> bool {
    fs["state"]
        .as_str()
        .is_some_and(|s| s.ends_with("waiting for fencing of node 3"))
}

/// The daemons asked corosync to remove a node (cfg kill_node) instead of having it fenced.
fn asked_corosync_to_remove(c: &Cluster, ids: &[u32]) -> bool {
    ids.iter()
        .any(|&id| daemon_log(c, id).contains("asking corosync to remove node"))
}

/// Research finding P1/P2 (robustness.md D1): a process joining `gfs:controld` and leaving made
/// the others block fs1 forever waiting for a fence of a live node; one exiting without a leave
/// got a healthy node removed by corosync and fenced.
#[test]
fn s15_a_foreign_process_joining_leaving_or_exiting_changes_nothing() {
    let Some((_guard, mut c)) = cluster("s15", 3, 300) else {
        return;
    };
    mount_all(&c, &[1, 2, 3], "fs1");
    let writes_before: Vec<usize> = (1..=3).map(|id| writes(&c, id).len()).collect();

    // On node 2: joins, stays while another filesystem is mounted (the daemons' messages still
    // count), then leaves cleanly.
    let mut leaver = Intruder::start(&c, 2, &["--end", "leave", "--hold-ms", "2000"]);
    mount_all(&c, &[1, 3], "fs2");
    leaver.wait_line(&c, "left");
    assert!(leaver.wait_exit().success());
    // On node 3: joins and exits without leaving; corosync reports PROCDOWN, as for a daemon
    // killed with SIGKILL.
    let mut exiter = Intruder::start(&c, 3, &["--end", "exit", "--hold-ms", "500"]);
    exiter.wait_line(&c, "exiting");
    assert!(exiter.wait_exit().success());
    // A PROCDOWN reaches the daemons at once; the defect removed the node within about a
    // second. Give the daemons time to act on it.
    std::thread::sleep(Duration::from_secs(3));

    for id in 1..=3u32 {
        assert!(c.corosync_alive(id), "node {id}'s corosync was removed");
        assert!(c.daemon_alive(id), "node {id}'s daemon died");
        let status = c.status(id).unwrap();
        assert_eq!(status["synced"], true, "node {id}: {status}");
        assert_eq!(status_members(&c, id), vec![1, 2, 3], "node {id}: {status}");
        assert!(
            status["fence_waits"].as_array().is_some_and(Vec::is_empty),
            "node {id} waits for fencing: {status}"
        );
        let ls = c.ls(id).unwrap();
        for fs in ls.as_array().unwrap() {
            if fs["name"] == "fs1" {
                assert_eq!(fs["state"], "mounted", "node {id}: {fs}");
                assert_eq!(fs["members"].as_array().map(Vec::len), Some(3), "{fs}");
            }
        }
        // fs1 saw nothing at all: the writes since are fs2's mount (node 1 and 3) only.
        let new: Vec<(u64, String)> = writes(&c, id)
            .into_iter()
            .skip(writes_before[id as usize - 1])
            .collect();
        assert!(
            !new.iter()
                .any(|(_, w)| w.starts_with("write block=") || w.starts_with("write recover=")),
            "node {id} blocked or replayed: {new:?}"
        );
        assert!(
            logged_foreign_join(&c, id, leaver.pid, 2)
                && logged_foreign_join(&c, id, exiter.pid, 3),
            "node {id} did not log the foreign processes:\n{}",
            daemon_log(&c, id)
        );
        assert!(
            !daemon_log(&c, id).contains("malformed"),
            "node {id} dropped messages"
        );
    }
    assert!(c.fence_log().is_empty(), "fenced: {:?}", c.fence_log());
    assert!(!asked_corosync_to_remove(&c, &[1, 2, 3]));
    assert!(
        c.kernel_table(2, "fs2").is_err(),
        "node 2 never mounted fs2"
    );
    no_violations(&c, &[1, 2, 3]);
}

/// Research finding P4: a well-formed FENCED multicast by another process released a crashed
/// node's journal 17.7 s before the fence agent ran. Forged here from the fencing member's node
/// itself (node 1, where only the pid tells it from the daemon) and from node 2, each with a
/// FENCE_ACK too, all claiming every failure of node 3.
#[test]
fn s16_forged_fence_reports_release_no_journal_before_the_fence() {
    let Some((_guard, mut c)) = cluster("s16", 3, 300) else {
        return;
    };
    mount_all(&c, &[1, 2, 3], "fs1");
    let jid3 = jid_of(&c, 3, "fs1");
    // Long enough to cover the forgers' joins on a loaded machine.
    c.set_fence_delay(10_000).unwrap();
    c.crash_node(3);
    settle_until(&mut c, "the survivors to wait for node 3's fencing", |c| {
        [1, 2].iter().all(|&id| {
            c.ls(id)
                .map(|ls| waits_for_fencing_of_3(&ls[0]))
                .unwrap_or(false)
        })
    });
    let mut forgers = Vec::new();
    for node in [1, 2] {
        let mut forger = Intruder::start(
            &c,
            node,
            &["--fenced", "3", "--fence-ack", "3", "--hold-ms", "1000"],
        );
        forger.wait_line(&c, "sent FENCED");
        forger.wait_line(&c, "sent FENCE_ACK");
        forgers.push(forger);
    }
    for forger in &mut forgers {
        forger.wait_line(&c, "left");
    }
    // Each forger saw its reports delivered in the group's ordered stream, so every daemon got
    // them too.
    for (node, forger) in [1u32, 2].into_iter().zip(&forgers) {
        let seen = std::fs::read_to_string(c.node_dir(node).join("gfs_cpg_intruder.log"))
            .unwrap_or_default();
        for what in ["FENCED", "FENCE_ACK"] {
            assert!(
                seen.contains(&format!("deliver from {node}/{}: {what}", forger.pid)),
                "node {node}'s forger saw no {what} delivered:\n{seen}"
            );
        }
    }
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        c.fence_log().is_empty(),
        "the fence agent finished before the forged reports were judged: raise the delay"
    );
    for id in [1, 2] {
        let replays: Vec<_> = writes(&c, id)
            .into_iter()
            .filter(|(_, w)| w.starts_with("write recover="))
            .collect();
        assert!(
            replays.is_empty(),
            "node {id} replayed on a forged report: {replays:?}"
        );
        let ls = c.ls(id).unwrap();
        assert!(waits_for_fencing_of_3(&ls[0]), "node {id}: {ls}");
    }

    wait_recovered(&mut c, &[1, 2], "fs1", &[jid3]);
    let fenced_at = c
        .fence_log()
        .iter()
        .find(|(_, n)| *n == 3)
        .map(|(t, _)| *t)
        .expect("node 3 fenced");
    let replayers = replayers_of(&c, &[1, 2], "fs1", jid3);
    assert_eq!(replayers.len(), 1, "{replayers:?}");
    let replay_at = writes(&c, replayers[0])
        .into_iter()
        .find(|(_, w)| w == &format!("write recover={jid3}"))
        .map(|(t, _)| t)
        .expect("recover written");
    assert!(
        replay_at >= fenced_at,
        "replay started at {replay_at}, {} ms before the fence at {fenced_at}",
        fenced_at - replay_at
    );
    for id in [1, 2] {
        for (node, forger) in [1, 2].into_iter().zip(&forgers) {
            assert!(
                logged_foreign_join(&c, id, forger.pid, node),
                "node {id} did not log the forger on node {node}"
            );
        }
    }
    no_violations(&c, &[1, 2]);
}

/// Research finding P6: while another process was in the group, a restarted daemon could not
/// sync (its HELLOs were undecodable) until that process died. Here one such process stays on
/// the node that answers joiners (node 1) and one on the restarted node itself.
#[test]
fn s17_a_daemon_restarted_next_to_foreign_processes_syncs_promptly() {
    let Some((_guard, mut c)) = cluster("s17", 3, 300) else {
        return;
    };
    mount_all(&c, &[1, 2], "fs1");
    let mut stayers = vec![
        Intruder::start(&c, 1, &["--end", "stay"]),
        Intruder::start(&c, 3, &["--end", "stay"]),
    ];
    c.signal_daemon(3, libc::SIGTERM).unwrap();
    settle_until(&mut c, "node 3's daemon to exit", |c| {
        c.daemon_exit(3).is_some()
    });
    assert!(c.daemon_exit(3).unwrap().success());
    settle_until(&mut c, "node 3 gone from the daemon group", |c| {
        status_members(c, 1) == vec![1, 2]
    });

    let restarted = std::time::Instant::now();
    c.start_daemon(3).unwrap();
    settle_until(&mut c, "the restarted daemon to sync", |c| {
        c.status(3)
            .map(|s| s["synced"] == true && jids(&s["members"]) == vec![1, 2, 3])
            .unwrap_or(false)
    });
    let took = restarted.elapsed();
    eprintln!("s17: the restarted daemon synced {took:?} after its start");
    // It takes well under a second when idle; the bound leaves room for a loaded machine.
    assert!(took < Duration::from_secs(15), "synced only after {took:?}");

    mount_all(&c, &[3], "fs1");
    let mut all_jids: Vec<u64> = (1..=3).map(|id| jid_of(&c, id, "fs1")).collect();
    all_jids.sort();
    all_jids.dedup();
    assert_eq!(all_jids.len(), 3, "distinct jids");
    for id in 1..=3 {
        assert_eq!(status_members(&c, id), vec![1, 2, 3], "node {id}");
    }
    for stayer in &mut stayers {
        assert!(stayer.running(), "the foreign process was dropped from CPG");
    }
    assert!(c.fence_log().is_empty(), "fenced: {:?}", c.fence_log());
    no_violations(&c, &[1, 2, 3]);
}

/// Research finding S5 (robustness.md D5): a daemon killed on a node that held no mount got
/// that node's corosync killed by its peers, and the restarted daemon could not reach corosync.
#[test]
fn s18_a_daemon_killed_on_a_node_without_mounts_fences_nothing() {
    let Some((_guard, mut c)) = cluster("s18", 3, 300) else {
        return;
    };
    mount_all(&c, &[1, 2], "fs1");
    c.kill_daemon(3);
    settle_until(&mut c, "node 3 gone from the daemon group", |c| {
        status_members(c, 1) == vec![1, 2] && status_members(c, 2) == vec![1, 2]
    });
    // The defect removed the node about a second after the PROCDOWN.
    std::thread::sleep(Duration::from_secs(4));
    assert!(c.corosync_alive(3), "node 3's corosync was removed");
    assert!(c.fence_log().is_empty(), "fenced: {:?}", c.fence_log());
    assert!(!asked_corosync_to_remove(&c, &[1, 2]));
    for id in [1, 2] {
        let status = c.status(id).unwrap();
        assert!(
            status["fence_waits"].as_array().is_some_and(Vec::is_empty),
            "node {id} waits for fencing: {status}"
        );
        assert!(
            !writes(&c, id).iter().any(|(_, w)| w == "write block=1"),
            "node {id} blocked"
        );
        assert!(
            daemon_log(&c, id).contains("holds no gfs2 mount: nothing to fence"),
            "node {id}"
        );
    }

    c.start_daemon(3).unwrap();
    settle_until(&mut c, "the restarted daemon to sync", |c| {
        c.status(3)
            .map(|s| s["synced"] == true && jids(&s["members"]) == vec![1, 2, 3])
            .unwrap_or(false)
    });
    mount_all(&c, &[3], "fs1");
    let mut all_jids: Vec<u64> = (1..=3).map(|id| jid_of(&c, id, "fs1")).collect();
    all_jids.sort();
    all_jids.dedup();
    assert_eq!(all_jids.len(), 3, "distinct jids");
    assert!(c.fence_log().is_empty(), "fenced: {:?}", c.fence_log());
    no_violations(&c, &[1, 2, 3]);
}

/// An idle daemon sleeps (no periodic tick), and a fencing that hangs is reported by the core's
/// own timer at `fence_warn` while `gfs_control status` shows the wait growing.
#[test]
fn s19_idle_daemon_sleeps_and_a_hanging_fence_is_reported() {
    let opts = ClusterOptions {
        nodes: 3,
        replay_ms: 100,
        daemon_args: vec!["--fence_warn=2s".into()],
        ..ClusterOptions::default()
    };
    let Some((_guard, mut c)) = cluster_with("s19", opts) else {
        return;
    };
    mount_all(&c, &[1, 2, 3], "fs1");
    // Past the remount-mode reads 0.1, 0.5 and 2 s after `online`.
    std::thread::sleep(Duration::from_secs(3));
    // Two windows: a periodic tick shows in both, while a late one-off event (a timer fired
    // late on a loaded machine) shows in one at most.
    let mut windows = Vec::new();
    for _ in 0..2 {
        let before = c.daemon_wakeups(1).unwrap();
        std::thread::sleep(Duration::from_secs(10));
        windows.push(c.daemon_wakeups(1).unwrap().saturating_sub(before));
    }
    // The daemon used to wake twice a second for a fence check; now only for events.
    assert!(
        windows.iter().min().is_some_and(|&w| w <= 10),
        "wakeups in two windows of 10 s of idleness: {windows:?}"
    );

    c.set_fence_delay(60_000).unwrap();
    c.crash_node(3);
    let log = c.node_dir(1).join("gfs_controld.log");
    let warnings = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("for node 3 to be fenced"))
            .count()
    };
    let waited = |c: &Cluster| {
        c.status(1).ok().and_then(|s| {
            s["fence_waits"]
                .as_array()?
                .iter()
                .find(|w| w["nodeid"] == 3)?["waiting_ms"]
                .as_u64()
        })
    };
    settle_until(&mut c, "node 1 waits for node 3's fencing", |c| {
        waited(c).is_some()
    });
    let first = waited(&c).unwrap();
    std::thread::sleep(Duration::from_secs(5));
    let later = waited(&c).expect("still waiting");
    assert!(
        later >= first + 4_000,
        "status showed {first} ms, then {later} ms"
    );
    assert!(
        warnings() >= 2,
        "{} fence_warn errors in {} ms",
        warnings(),
        later
    );
}
