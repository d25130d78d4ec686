//! Named scenarios: one per fault of SPEC §5 and per mount path, each a fixed script on the
//! simulator with exact expectations on what every kernel was told. Every safety checker
//! (S1–S7) runs after every step underneath, and each scenario ends with the liveness check.

use gfs_core::{MountMode, NodeId, SysfsFile};
use gfs_sim::{Scenario, SimConfig, WriteRecord};

const RW: MountMode = MountMode::Rw;

/// Every node mounts every filesystem read-write, one after the other.
fn mounted(nodes: u32, filesystems: u32) -> Scenario {
    let mut s = Scenario::new(nodes, filesystems, 7);
    for fs in 1..=filesystems {
        for n in 1..=nodes {
            s.mount(n, fs, RW);
        }
    }
    s.run_for(5_000);
    for fs in 1..=filesystems {
        for n in 1..=nodes {
            let k = s
                .kernel(n, fs)
                .unwrap_or_else(|| panic!("n{n} lost fs{fs}"));
            assert!(k.online, "n{n} fs{fs} not online: {k:?}\n{}", tail(&s));
        }
    }
    s
}

fn tail(s: &Scenario) -> String {
    let t = s.trace();
    t[t.len().saturating_sub(80)..].join("\n")
}

fn writes(s: &Scenario, node: NodeId, fs: u32, file: SysfsFile) -> Vec<&WriteRecord> {
    let table = s.table(fs);
    s.writes()
        .iter()
        .filter(|w| w.node == node && w.table == table && w.file == file)
        .collect()
}

fn values(s: &Scenario, node: NodeId, fs: u32, file: SysfsFile) -> Vec<i64> {
    writes(s, node, fs, file).iter().map(|w| w.value).collect()
}

fn jid(s: &Scenario, node: NodeId, fs: u32) -> i64 {
    s.kernel(node, fs)
        .and_then(|k| k.jid)
        .unwrap_or_else(|| panic!("n{node} has no jid on fs{fs}"))
}

/// Replays (node, jid) that ran for `recover` writes on a filesystem.
fn replays(s: &Scenario, fs: u32) -> Vec<(NodeId, u32, Option<bool>)> {
    let table = s.table(fs);
    s.replays()
        .iter()
        .filter(|r| r.table == table)
        .map(|r| (r.node, r.jid, r.done))
        .collect()
}

/// Run long enough for crashed nodes to reboot and rejoin, then demand liveness (L1).
fn settle(s: &mut Scenario, ms: u64) {
    s.run_for(ms.max(30_000));
    assert!(s.violation().is_none(), "{:?}\n{}", s.violation(), tail(s));
    let v = s.check_liveness().cloned();
    assert!(v.is_none(), "{v:?}\n{}", tail(s));
}

fn assert_unblocked(s: &Scenario, nodes: &[NodeId], fs: u32) {
    for n in nodes {
        let k = s.kernel(*n, fs).expect("mounted");
        assert!(!k.blocked, "n{n} still blocked on fs{fs}");
        assert_eq!(
            values(s, *n, fs, SysfsFile::Block).last(),
            Some(&0),
            "n{n} never unblocked fs{fs}"
        );
    }
}

#[test]
fn simultaneous_mounts_are_all_first_mounters_serialised_by_the_mount_lock() {
    // Every node mounts at once. The kernel holds the cluster-wide mount lock from before it
    // waits for `jid` to the end of its mount, so no `jid` may wait for another mount: each
    // node is told first=1 and its jid at once, and the kernels run one after the other (a
    // first mounter's kernel skips the journals live nodes hold).
    let mut s = Scenario::new(3, 1, 1);
    for n in 1..=3 {
        s.mount(n, 1, RW);
    }
    settle(&mut s, 5_000);
    for n in 1..=3 {
        assert_eq!(values(&s, n, 1, SysfsFile::First), vec![1], "n{n} first");
        let f = writes(&s, n, 1, SysfsFile::First)[0];
        let j = writes(&s, n, 1, SysfsFile::Jid)[0];
        assert!(f.time <= j.time, "first before jid");
    }
    let mut jids: Vec<i64> = (1..=3).map(|n| jid(&s, n, 1)).collect();
    jids.sort();
    assert_eq!(jids, vec![0, 1, 2]);
    // The mount lock went to each kernel once, and each mount ended before the next began.
    let locks: Vec<usize> = s
        .trace()
        .iter()
        .enumerate()
        .filter(|(_, l)| l.contains("mount lock acquired"))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(locks.len(), 3);
    assert!(s.replays().is_empty(), "no recover writes on a first mount");
}

#[test]
fn a_mount_after_a_completed_mount_is_told_first_0() {
    let mut s = Scenario::new(2, 1, 2);
    s.mount(1, 1, RW);
    s.run_for(3_000);
    s.mount(2, 1, RW);
    settle(&mut s, 5_000);
    assert_eq!(values(&s, 1, 1, SysfsFile::First), vec![1]);
    assert_eq!(values(&s, 2, 1, SysfsFile::First), vec![0]);
    assert!(s.kernel(2, 1).is_some_and(|k| k.online));
}

#[test]
fn node_crash_blocks_fences_replays_once_and_unblocks() {
    let mut s = mounted(3, 1);
    let dead_jid = jid(&s, 3, 1);
    s.crash(3);
    settle(&mut s, 10_000);
    for n in [1, 2] {
        assert_eq!(
            values(&s, n, 1, SysfsFile::Block),
            vec![1, 0],
            "n{n} block writes"
        );
    }
    // Exactly one replay of the dead node's journal, by the lowest eligible member.
    assert_eq!(replays(&s, 1), vec![(1, dead_jid as u32, Some(true))]);
    let recover = writes(&s, 1, 1, SysfsFile::Recover);
    assert_eq!(recover.len(), 1);
    // Both survivors had blocked before the replay began, and unblocked only after it ended.
    for n in [1, 2] {
        assert!(writes(&s, n, 1, SysfsFile::Block)[0].time <= recover[0].time);
        assert!(writes(&s, n, 1, SysfsFile::Block)[1].time > recover[0].time);
    }
    assert_unblocked(&s, &[1, 2], 1);
}

#[test]
fn one_member_fences_and_the_replayer_learns_it_from_fenced() {
    // n1 is the lowest member, so it runs the fencing backend; mounted read-only, it cannot
    // replay, so n2 replays and must wait for n1's FENCED.
    let mut s = Scenario::new(3, 1, 7);
    s.mount(2, 1, RW);
    s.mount(3, 1, RW);
    s.mount(1, 1, MountMode::Ro);
    s.run_for(5_000);
    let dead_jid = jid(&s, 3, 1) as u32;
    s.crash(3);
    settle(&mut s, 10_000);
    let requests: Vec<&String> = s
        .trace()
        .iter()
        .filter(|l| l.contains("fencing requested nodeid=3"))
        .collect();
    assert!(!requests.is_empty(), "{}", tail(&s));
    assert!(
        requests.iter().all(|l| l.contains(" n1 ")),
        "only n1 asks its backend: {requests:?}"
    );
    assert!(
        s.trace()
            .iter()
            .any(|l| l.contains(" n2 ") && l.contains("fenced (reported by node 1)")),
        "{}",
        tail(&s)
    );
    assert_eq!(replays(&s, 1), vec![(2, dead_jid, Some(true))]);
    assert_unblocked(&s, &[1, 2], 1);
}

#[test]
fn the_fencer_fences_for_a_mount_elsewhere() {
    // n3 (no mounts) crashes: it may have mounted on its side of a partition, so it must be
    // fenced before anyone writes a jid (after the startup grace period). n2 mounts; n1, which
    // mounts nothing, is the member that fences, and must do it for n2 rather than leave n2
    // waiting for n3 to come back.
    let mut s = Scenario::new(3, 1, 7);
    s.run_for(3_000);
    s.crash(3);
    s.run_for(500);
    s.mount(2, 1, RW);
    s.run_for(12_000);
    assert!(
        s.trace()
            .iter()
            .any(|l| l.contains(" n1 ") && l.contains("fencing requested nodeid=3")),
        "{}",
        tail(&s)
    );
    let k = s.kernel(2, 1).expect("mounting");
    assert!(k.online, "n2 still waits: {k:?}\n{}", tail(&s));
    settle(&mut s, 10_000);
}

#[test]
fn replayer_dies_mid_replay_and_another_replays_both_journals() {
    let mut s = mounted(4, 1);
    let (j3, j4) = (jid(&s, 3, 1) as u32, jid(&s, 4, 1) as u32);
    s.crash(4);
    // Wait until the chosen replayer has started.
    let mut replayer = None;
    for _ in 0..200 {
        s.run_for(20);
        if let Some((n, _, None)) = replays(&s, 1).first().copied() {
            replayer = Some(n);
            break;
        }
    }
    let replayer = replayer.expect("a replay started");
    assert_ne!(
        replayer, 3,
        "the test kills the replayer, which must not be node 3"
    );
    s.crash(replayer);
    settle(&mut s, 20_000);
    let survivors: Vec<NodeId> = [1, 2, 3].into_iter().filter(|n| *n != replayer).collect();
    let finished: Vec<(NodeId, u32)> = replays(&s, 1)
        .into_iter()
        .filter(|r| r.2 == Some(true))
        .map(|r| (r.0, r.1))
        .collect();
    assert!(
        finished
            .iter()
            .any(|(n, j)| *j == j4 && survivors.contains(n)),
        "journal of node 4 replayed by a survivor: {finished:?}"
    );
    assert_eq!(
        finished
            .iter()
            .filter(|(n, _)| !survivors.contains(n))
            .count(),
        0,
        "the dead replayer finished nothing"
    );
    assert!(
        finished.iter().all(|(_, j)| *j != j3),
        "node 3's journal is live and never replayed"
    );
    assert_eq!(
        finished.len(),
        2,
        "both dead nodes' journals replayed once each: {finished:?}"
    );
    assert_unblocked(&s, &survivors, 1);
}

#[test]
fn daemon_crash_is_a_failure_of_that_nodes_mounts() {
    let mut s = mounted(3, 1);
    let j3 = jid(&s, 3, 1) as u32;
    s.daemon_crash(3);
    settle(&mut s, 15_000);
    // The survivors had node 3 fenced (it stayed in corosync until then: removing it as well
    // would stall the ring and pacemaker's fencer); only then was its journal (still being
    // written by its live kernel until then) replayed.
    assert!(
        s.trace().iter().any(|l| l.contains("fencer: n3 fenced")),
        "node 3 fenced"
    );
    assert!(
        !s.trace()
            .iter()
            .any(|l| l.contains("asks corosync to kill")),
        "nobody asks corosync to remove node 3"
    );
    assert_eq!(replays(&s, 1), vec![(1, j3, Some(true))]);
    assert_unblocked(&s, &[1, 2], 1);
}

#[test]
fn daemon_crash_on_a_node_without_mounts_fences_nothing() {
    let mut s = mounted(3, 1);
    s.umount(3, 1);
    settle(&mut s, 5_000);
    s.daemon_crash(3);
    settle(&mut s, 15_000);
    assert!(
        !s.trace()
            .iter()
            .any(|l| l.contains("asks corosync to kill") || l.contains("fencer: n3")),
        "a daemon death on a node holding nothing neither removes nor fences it"
    );
    // Its daemon starts again and rejoins; the others never blocked.
    assert!(s.node(3).is_some_and(|n| n.is_synced()), "node 3 rejoined");
    for n in [1, 2] {
        assert!(
            values(&s, n, 1, SysfsFile::Block).is_empty(),
            "n{n} blocked"
        );
    }
    assert!(s.replays().is_empty());
}

#[test]
fn corosync_crash_is_treated_like_a_node_failure() {
    let mut s = mounted(3, 1);
    let j2 = jid(&s, 2, 1) as u32;
    s.corosync_crash(2);
    settle(&mut s, 15_000);
    assert_eq!(replays(&s, 1), vec![(1, j2, Some(true))]);
    assert_unblocked(&s, &[1, 3], 1);
}

#[test]
fn clean_unmount_needs_no_block_and_no_replay() {
    let mut s = mounted(3, 1);
    s.umount(3, 1);
    settle(&mut s, 5_000);
    assert!(s.kernel(3, 1).is_none());
    for n in [1, 2] {
        assert!(
            values(&s, n, 1, SysfsFile::Block).is_empty(),
            "n{n} blocked on a clean unmount"
        );
    }
    assert!(s.replays().is_empty());
    // The journal is free again for the next mounter.
    s.mount(3, 1, RW);
    settle(&mut s, 5_000);
    assert!(s.kernel(3, 1).is_some_and(|k| k.online));
}

#[test]
fn failed_replay_is_retried_by_another_member() {
    let mut s = mounted(3, 1);
    let j3 = jid(&s, 3, 1) as u32;
    s.fail_next_replay(1);
    s.crash(3);
    settle(&mut s, 15_000);
    assert_eq!(
        replays(&s, 1),
        vec![(1, j3, Some(false)), (2, j3, Some(true))]
    );
    assert_unblocked(&s, &[1, 2], 1);
}

#[test]
fn failed_replay_with_one_eligible_member_is_retried_after_a_pause() {
    let mut s = mounted(2, 1);
    let j2 = jid(&s, 2, 1) as u32;
    s.fail_next_replay(1);
    s.crash(2);
    settle(&mut s, 15_000);
    let r = replays(&s, 1);
    assert_eq!(r, vec![(1, j2, Some(false)), (1, j2, Some(true))]);
    let starts: Vec<_> = s.replays().iter().map(|r| r.started).collect();
    assert!(
        starts[1].since(starts[0]) >= 1000,
        "retry waits recover_retry_ms"
    );
}

#[test]
fn several_nodes_failing_at_once_are_recovered_together() {
    let mut s = mounted(5, 1);
    let (j4, j5) = (jid(&s, 4, 1) as u32, jid(&s, 5, 1) as u32);
    s.crash(4);
    s.crash(5);
    settle(&mut s, 15_000);
    let mut done: Vec<u32> = replays(&s, 1)
        .into_iter()
        .filter(|r| r.2 == Some(true))
        .map(|r| r.1)
        .collect();
    done.sort();
    assert_eq!(done, {
        let mut v = vec![j4, j5];
        v.sort();
        v
    });
    // Journals are spread over members rather than queued on one.
    let replayers: std::collections::BTreeSet<NodeId> =
        replays(&s, 1).into_iter().map(|r| r.0).collect();
    assert_eq!(replayers.len(), 2, "two journals, two replayers");
    for n in 1..=3 {
        assert_eq!(
            values(&s, n, 1, SysfsFile::Block),
            vec![1, 0],
            "one block/unblock cycle on n{n}"
        );
    }
}

#[test]
fn first_mounter_dying_mid_mount_lets_the_next_replay_only_after_fencing() {
    let mut s = Scenario::new(3, 1, 3);
    s.mount(1, 1, RW);
    s.mount(2, 1, RW);
    // Both are first mounters; kill whichever kernel takes the mount lock, in its mount.
    let mut holder = None;
    for _ in 0..2000 {
        s.run_for(1);
        holder = s
            .trace()
            .iter()
            .find(|l| l.contains("kernel: sim:fs1 mount lock acquired"))
            .map(|l| if l.contains(" n1 ") { 1 } else { 2 });
        if holder.is_some() {
            break;
        }
    }
    let dead = holder.expect("a kernel took the mount lock");
    let next = 3 - dead;
    s.crash(dead);
    settle(&mut s, 20_000);
    assert_eq!(values(&s, next, 1, SysfsFile::First), vec![1]);
    assert!(s.kernel(next, 1).is_some_and(|k| k.online));
    // The dead kernel's mount lock is freed by DLM recovery, which waits for the survivor to say
    // so, which it does only once the dead node is fenced (S1 for the kernel's own replay).
    let pos = |needle: &str| s.trace().iter().position(|l| l.contains(needle));
    let fenced = pos(&format!("fencer: n{dead} fenced")).expect("fenced");
    let recovered =
        pos(&format!("dlm: sim:fs1 recovered the locks of n{dead}")).expect("DLM recovery");
    let relocked = s
        .trace()
        .iter()
        .rposition(|l| l.contains("mount lock acquired"))
        .expect("lock");
    assert!(
        fenced < recovered,
        "DLM recovered the dead node before it was fenced\n{}",
        tail(&s)
    );
    assert!(
        recovered < relocked,
        "the survivor got the mount lock before DLM recovery"
    );
}

#[test]
fn node_failing_during_its_own_mount_has_its_journal_replayed() {
    let mut s = Scenario::new(3, 1, 4);
    s.mount(1, 1, RW);
    s.mount(2, 1, RW);
    s.run_for(5_000);
    s.mount(3, 1, RW);
    // Node 3 dies right after its kernel got its jid, while it replays its own journal.
    for _ in 0..100 {
        s.run_for(5);
        if !writes(&s, 3, 1, SysfsFile::Jid).is_empty() {
            break;
        }
    }
    let j3 = jid(&s, 3, 1) as u32;
    s.crash(3);
    settle(&mut s, 30_000);
    assert_eq!(replays(&s, 1), vec![(1, j3, Some(true))]);
    assert_unblocked(&s, &[1, 2], 1);
}

#[test]
fn mount_during_recovery_waits_until_journals_are_replayed() {
    let mut s = Scenario::new(4, 1, 5);
    for n in 1..=3 {
        s.mount(n, 1, RW);
    }
    s.run_for(5_000);
    s.crash(3);
    s.run_for(5);
    s.mount(4, 1, RW);
    settle(&mut s, 15_000);
    let replay_done = s
        .replays()
        .iter()
        .map(|r| r.started)
        .max()
        .expect("a replay");
    let jid4 = writes(&s, 4, 1, SysfsFile::Jid)[0];
    assert!(
        jid4.time > replay_done,
        "node 4 wrote its jid while recovery was running"
    );
    assert!(s.kernel(4, 1).is_some_and(|k| k.online));
    // Node 3's dirty journal was not handed to node 4.
    assert_ne!(jid4.value, replays(&s, 1)[0].1 as i64);
}

#[test]
fn unmount_during_recovery_hands_the_journal_on() {
    let mut s = mounted(4, 1);
    s.crash(4);
    s.run_for(5);
    s.umount(1, 1); // node 1 would have been the replayer
    settle(&mut s, 15_000);
    assert!(replays(&s, 1)
        .iter()
        .any(|r| r.2 == Some(true) && r.0 != 1 || r.0 == 1 && r.2 == Some(true)));
    assert_unblocked(&s, &[2, 3], 1);
}

#[test]
fn no_replay_without_quorum_until_it_returns() {
    let mut s = mounted(3, 1);
    // Two of three nodes die: the survivor is inquorate and must not replay.
    s.crash(2);
    s.crash(3);
    s.run_for(6_000);
    assert!(s.replays().is_empty(), "replayed without quorum");
    assert!(s.kernel(1, 1).is_some_and(|k| k.blocked));
    // The dead nodes reboot (8-20 s), quorum returns, node 1 replays both journals.
    settle(&mut s, 40_000);
    let done: Vec<u32> = replays(&s, 1)
        .into_iter()
        .filter(|r| r.2 == Some(true))
        .map(|r| r.1)
        .collect();
    assert_eq!(done.len(), 2);
    assert_unblocked(&s, &[1], 1);
}

#[test]
fn failing_fencing_is_retried_and_nothing_is_replayed_before_it_succeeds() {
    let mut s = mounted(3, 1);
    s.fail_next_fences(2);
    s.crash(3);
    settle(&mut s, 30_000);
    let failed = s
        .trace()
        .iter()
        .filter(|l| l.contains("fencing failed"))
        .count();
    assert!(failed >= 2, "two fencing failures seen");
    let fenced = s
        .trace()
        .iter()
        .position(|l| l.contains("fencer: n3 fenced"))
        .expect("fenced at last");
    let recover = s
        .trace()
        .iter()
        .position(|l| l.contains("recover="))
        .expect("replayed");
    assert!(fenced < recover);
}

#[test]
fn manual_fencing_waits_for_fence_ack() {
    let mut s = mounted(3, 1);
    s.manual_fencing(true);
    s.crash(3);
    // Long enough for everything but fencing, shorter than node 3's reboot (a node that rejoins
    // with no state proves its old kernel gone, which also releases the wait).
    s.run_for(6_000);
    assert!(
        s.replays().is_empty(),
        "replayed without fencing or acknowledgement"
    );
    let waits = s.node(1).expect("n1").status(s.now()).fence_waits;
    assert_eq!(waits.iter().map(|w| w.nodeid).collect::<Vec<_>>(), vec![3]);
    // An operator confirms node 3 is down; acknowledging a live member is refused.
    s.fence_ack(2, 1);
    assert!(s
        .trace()
        .iter()
        .any(|l| l.contains("refusing to acknowledge")));
    s.fence_ack(2, 3);
    settle(&mut s, 5_000);
    assert_eq!(replays(&s, 1).len(), 1);
    assert_unblocked(&s, &[1, 2], 1);
}

#[test]
fn minority_partition_replays_nothing_and_the_stale_side_is_not_readmitted() {
    let mut s = mounted(5, 1);
    s.manual_fencing(true);
    s.partition(&[&[1, 2, 3], &[4, 5]]);
    s.run_for(10_000);
    // Nobody can replay: the majority waits for fencing, the minority has no quorum.
    assert!(s.replays().is_empty());
    for n in 1..=5 {
        assert!(s.kernel(n, 1).is_some_and(|k| k.blocked), "n{n} blocked");
    }
    // The partition heals before fencing: both sides kept state. The bigger side keeps it;
    // nodes 4 and 5 are removed from the cluster instead of being readmitted (S7).
    s.heal();
    s.run_for(2_000);
    assert!(s
        .trace()
        .iter()
        .any(|l| l.contains("asks corosync to kill n4")));
    assert!(s
        .trace()
        .iter()
        .any(|l| l.contains("asks corosync to kill n5")));
    for n in [4, 5] {
        assert!(s.node(n).is_none(), "stale node n{n} still runs");
    }
    // An operator powers the stale nodes off and acknowledges it: the majority recovers.
    s.crash(4);
    s.crash(5);
    s.fence_ack(1, 4);
    s.fence_ack(1, 5);
    s.manual_fencing(false);
    settle(&mut s, 30_000);
    assert_eq!(
        replays(&s, 1).iter().filter(|r| r.2 == Some(true)).count(),
        2
    );
    assert_unblocked(&s, &[1, 2, 3], 1);
}

#[test]
fn two_filesystems_failures_hitting_both() {
    let mut s = mounted(4, 2);
    s.crash(4);
    settle(&mut s, 15_000);
    for fs in 1..=2 {
        assert_eq!(
            replays(&s, fs).iter().filter(|r| r.2 == Some(true)).count(),
            1,
            "fs{fs}"
        );
        assert_unblocked(&s, &[1, 2, 3], fs);
    }
    // One STOPPED per survivor covers both filesystems: with 3 survivors and 2 filesystems
    // recovery costs 3 + 2 messages, not 3·2 + 2.
    let stopped = s
        .trace()
        .iter()
        .filter(|l| l.contains("<- n1 Stopped"))
        .count();
    assert_eq!(
        stopped, 3,
        "one STOPPED from node 1, delivered to 3 members"
    );
}

#[test]
fn withdraw_is_replayed_by_others_and_acknowledged() {
    let mut s = mounted(3, 1);
    let j2 = jid(&s, 2, 1) as u32;
    s.withdraw(2, 1);
    settle(&mut s, 10_000);
    // Node 2 acknowledged (withdraw=1) once the others had blocked; its journal was replayed
    // without any fencing (the node is alive, its kernel stopped writing).
    assert_eq!(values(&s, 2, 1, SysfsFile::Withdraw), vec![1]);
    let ack = writes(&s, 2, 1, SysfsFile::Withdraw)[0].time;
    for n in [1, 3] {
        assert!(writes(&s, n, 1, SysfsFile::Block)[0].time <= ack);
    }
    assert!(replays(&s, 1)
        .iter()
        .any(|r| r.1 == j2 && r.2 == Some(true)));
    assert!(
        !s.trace().iter().any(|l| l.contains("fencer:")),
        "a withdraw needs no fencing"
    );
    assert_unblocked(&s, &[1, 3], 1);
}

#[test]
fn read_only_and_spectator_members_never_replay() {
    let mut s = Scenario::new(4, 1, 9);
    s.mount(2, 1, RW);
    s.run_for(3_000);
    s.mount(1, 1, MountMode::Ro);
    s.mount(3, 1, MountMode::Spectator);
    s.mount(4, 1, RW);
    s.run_for(5_000);
    // The spectator gets no journal: jid 0. Its kernel refuses `first` (the write only waits
    // for the DLM join); mounted with hostdata=first=0 it skips the journal check.
    let first = writes(&s, 3, 1, SysfsFile::First);
    assert_eq!(first.len(), 1);
    assert_eq!(
        first[0].result,
        Err(22),
        "a spectator's kernel refuses first"
    );
    assert_eq!(values(&s, 3, 1, SysfsFile::Jid), vec![0]);
    assert!(s.kernel(3, 1).is_some_and(|k| k.online));
    s.crash(4);
    settle(&mut s, 15_000);
    // Node 1 is the lowest node id but read-only; node 3 is a spectator: node 2 replays.
    assert_eq!(
        replays(&s, 1).into_iter().map(|r| r.0).collect::<Vec<_>>(),
        vec![2]
    );
}

#[test]
fn remount_read_only_hands_back_journals() {
    let mut s = mounted(3, 1);
    s.remount(1, 1, MountMode::Ro);
    s.run_for(1_000);
    s.crash(3);
    settle(&mut s, 15_000);
    assert_eq!(
        replays(&s, 1).into_iter().map(|r| r.0).collect::<Vec<_>>(),
        vec![2]
    );
    // And back to read-write: node 1 is eligible again.
    s.remount(1, 1, RW);
    s.run_for(1_000);
    s.crash(2);
    settle(&mut s, 40_000);
    assert!(replays(&s, 1).iter().any(|r| r.0 == 1 && r.2 == Some(true)));
}

#[test]
fn a_mount_that_finds_no_free_journal_fails_with_a_clear_error() {
    let mut cfg = SimConfig::new(11, 3, 1);
    cfg.faults = false;
    cfg.workload = false;
    cfg.trace = true;
    cfg.max_journals = 2;
    let mut s = Scenario::with_config(cfg);
    for n in 1..=3 {
        s.mount(n, 1, RW);
    }
    s.run_for(5_000);
    assert_eq!(
        values(&s, 3, 1, SysfsFile::Jid),
        vec![-87],
        "EUSERS written to jid"
    );
    assert!(s.kernel(3, 1).is_none(), "the mount failed");
    assert!(s
        .trace()
        .iter()
        .any(|l| l.contains("no free journal among 2: mount refused")));
    assert!(s.violation().is_none());
}

#[test]
fn mounts_and_unmounts_on_other_filesystems_carry_on_during_recovery() {
    let mut s = Scenario::new(4, 2, 13);
    for n in 1..=4 {
        s.mount(n, 1, RW);
    }
    s.mount(1, 2, RW);
    s.run_for(5_000);
    s.manual_fencing(true);
    s.crash(4);
    s.run_for(3_000);
    // fs1 waits for fencing of node 4, which holds no fs2 journal; but node 4 left uncleanly,
    // so new fs2 mounts wait for its fencing too (it might have mounted fs2 unseen).
    s.mount(2, 2, RW);
    s.umount(1, 2);
    s.run_for(3_000);
    assert!(writes(&s, 2, 2, SysfsFile::Jid).is_empty());
    s.fence_ack(1, 4);
    settle(&mut s, 10_000);
    assert!(s.kernel(2, 2).is_some_and(|k| k.online));
}

fn trace_pos(s: &Scenario, needle: &str) -> Option<usize> {
    s.trace().iter().position(|l| l.contains(needle))
}

#[test]
fn kernel_managed_filesystems_are_left_alone() {
    // Node 1's DLM offers recovery callbacks (dlm_controld's default): the kernel picks its
    // journal and recovers by itself; the daemon must never write to it.
    let mut s = Scenario::new(3, 1, 21);
    s.kernel_managed(1, true);
    s.mount(1, 1, RW);
    settle(&mut s, 5_000);
    assert!(
        s.writes().iter().all(|w| w.node != 1),
        "wrote to a kernel-managed mount: {:?}",
        s.writes()
    );
    let fs = s.node(1).unwrap().filesystems();
    assert!(fs[0].kernel_managed, "{fs:?}");
    assert_eq!(fs[0].state, "kernel-managed");
    assert!(s.kernel(1, 1).is_some_and(|k| k.online));
}

#[test]
fn ebusy_on_first_means_kernel_managed_and_leaves_the_group() {
    // recover_callbacks changed between the `add` uevent and the DLM join: the daemon took the
    // mount for daemon-managed, and the kernel answers EBUSY to `first`.
    let mut s = Scenario::new(3, 1, 22);
    s.kernel_managed(2, true);
    s.recover_callbacks_flip(2, true);
    s.mount(1, 1, RW);
    s.mount(2, 1, RW);
    settle(&mut s, 5_000);
    let first = writes(&s, 2, 1, SysfsFile::First);
    assert_eq!(first.len(), 1, "{}", tail(&s));
    assert_eq!(first[0].result, Err(16), "EBUSY");
    // `jid` was queued behind `first` and is refused the same way.
    assert!(writes(&s, 2, 1, SysfsFile::Jid)
        .iter()
        .all(|w| w.result == Err(16)));
    let fs = s.node(2).unwrap().filesystems();
    assert!(fs[0].kernel_managed);
    // The group no longer counts node 2 as a mounter.
    let rep = s.node(1).unwrap().replicated();
    let table = gfs_core::Table::parse(&s.table(1)).unwrap();
    assert!(!rep.fs[&table].mounters.contains_key(&2));
}

#[test]
fn without_enable_fscontrol_a_daemon_managed_mount_is_refused() {
    let mut s = Scenario::new(2, 1, 23);
    s.dlm_without_fscontrol();
    s.mount(1, 1, RW);
    s.run_for(3_000);
    assert_eq!(values(&s, 1, 1, SysfsFile::Jid), vec![-95], "EOPNOTSUPP");
    assert!(s.kernel(1, 1).is_none(), "the mount failed");
    assert!(
        trace_pos(&s, "enable_fscontrol=1").is_some(),
        "the error says how"
    );
}

#[test]
fn dlm_recovery_waits_until_every_survivor_blocked_and_the_node_is_fenced() {
    let mut s = mounted(3, 1);
    s.crash(3);
    settle(&mut s, 10_000);
    let recovered = trace_pos(&s, "dlm: sim:fs1 recovered the locks of n3").expect("recovery");
    let fenced = trace_pos(&s, "fencer: n3 fenced").expect("fenced");
    assert!(fenced < recovered, "DLM recovery before fencing");
    for n in [1, 2] {
        let blocked = trace_pos(&s, &format!("n{n} write sim:fs1 block=1")).expect("blocked");
        let notified =
            trace_pos(&s, &format!("n{n} dlm_controld: sim:fs1 notified for n3")).expect("notify");
        assert!(
            blocked < notified,
            "n{n} told dlm_controld before it blocked"
        );
        assert!(notified <= recovered);
    }
    assert_eq!(s.dlm_pending_recoveries(), 0);
}

#[test]
fn the_only_read_write_survivor_still_mounting_replays() {
    // Node 1 (rw) and node 2 (ro) are mounted; node 3 (rw) is mounting when node 1 dies. Node 3
    // must not be stopped mid-mount: it finishes its journal work and replays node 1's journal.
    let mut s = Scenario::new(3, 1, 24);
    s.mount(1, 1, RW);
    s.run_for(2_000);
    s.mount(2, 1, MountMode::Ro);
    s.run_for(2_000);
    s.mount(3, 1, RW);
    for _ in 0..500 {
        s.run_for(1);
        if !writes(&s, 3, 1, SysfsFile::Jid).is_empty() {
            break;
        }
    }
    let j1 = jid(&s, 1, 1) as u32;
    s.crash(1);
    settle(&mut s, 20_000);
    assert!(s.kernel(3, 1).is_some_and(|k| k.online));
    assert!(
        replays(&s, 1)
            .iter()
            .any(|r| r.0 == 3 && r.1 == j1 && r.2 == Some(true)),
        "{:?}",
        replays(&s, 1)
    );
    assert_unblocked(&s, &[2, 3], 1);
}

#[test]
fn a_spectator_next_to_a_mount_needs_hostdata_first_0() {
    let mut s = Scenario::new(3, 1, 25);
    s.mount(1, 1, RW);
    s.run_for(2_000);
    // Keeping the kernel's first=1 it would check every journal, and node 1's is live.
    s.mount_spectator_keeping_first(2, 1);
    s.run_for(2_000);
    assert_eq!(values(&s, 2, 1, SysfsFile::Jid), vec![-1], "EPERM");
    assert!(s.kernel(2, 1).is_none());
    assert!(trace_pos(&s, "hostdata=first=0").is_some());
    // With -o spectator,hostdata=first=0 it mounts.
    s.mount(3, 1, MountMode::Spectator);
    settle(&mut s, 5_000);
    assert!(s.kernel(3, 1).is_some_and(|k| k.online));
    assert_eq!(values(&s, 3, 1, SysfsFile::Jid), vec![0]);
}

#[test]
fn a_read_only_mount_is_refused_while_no_member_can_replay() {
    // Node 1 (rw) dies; node 2 (ro) cannot replay its journal. A read-only mount now would
    // hold the mount lock a read-write mounter needs: it is refused. A read-write mount goes
    // ahead and replays.
    let mut s = Scenario::new(4, 1, 26);
    s.manual_fencing(false);
    s.mount(1, 1, RW);
    s.run_for(2_000);
    s.mount(2, 1, MountMode::Ro);
    s.run_for(2_000);
    let j1 = jid(&s, 1, 1) as u32;
    s.crash(1);
    s.run_for(3_000);
    s.mount(3, 1, MountMode::Ro);
    s.run_for(3_000);
    assert_eq!(values(&s, 3, 1, SysfsFile::Jid), vec![-117], "EUCLEAN");
    s.mount(4, 1, RW);
    settle(&mut s, 20_000);
    assert!(replays(&s, 1)
        .iter()
        .any(|r| r.0 == 4 && r.1 == j1 && r.2 == Some(true)));
    assert_unblocked(&s, &[2, 4], 1);
}

#[test]
fn with_fencing_off_a_crashed_node_is_taken_as_fenced_and_its_journal_replayed() {
    // enable_fencing=0 is the core's `require_fencing` off: no fencing backend is asked, the
    // failed node counts as fenced when it failed, and recovery runs as usual.
    let mut cfg = SimConfig::new(7, 3, 1);
    cfg.faults = false;
    cfg.workload = false;
    cfg.fencing = false;
    let mut s = Scenario::with_config(cfg);
    for n in 1..=3 {
        s.mount(n, 1, RW);
    }
    s.run_for(5_000);
    let dead_jid = jid(&s, 3, 1) as u32;
    s.crash(3);
    settle(&mut s, 10_000);
    assert_eq!(replays(&s, 1), vec![(1, dead_jid, Some(true))]);
    assert_unblocked(&s, &[1, 2], 1);
    let trace = s.trace();
    assert!(
        !trace
            .iter()
            .any(|l| l.contains("fencing requested") || l.contains("fencer:")),
        "nobody asked a fencing backend:\n{}",
        tail(&s)
    );
    assert!(
        trace
            .iter()
            .any(|l| l.contains("fencing is off") && l.contains("nodeid=3")),
        "{}",
        tail(&s)
    );
}
