//! The real-kernel tier: three QEMU VMs with Debian's kernel (real gfs2 and dlm modules),
//! corosync, dlm_controld and the freshly built gfs_controld, on one shared disk
//! (gfs_testkit::vm). The cluster boots once; the scenarios run on it in sequence, each
//! asserting on the kernel's own evidence (kernel log lines, uevents, sysfs files, file
//! contents). A scenario that fails leaves the cluster to `reset` (a node that cannot unmount
//! is rebooted) and the next one runs; the test fails at the end, naming every failure and
//! the artifact directory.
//!
//! Needs root, the VM packages and `cargo build --release` binaries; skipped with a note
//! otherwise, except under CI, where a missing prerequisite fails the run.
//! `GFS_VM_SCENARIOS=2,3` runs a subset.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use gfs_testkit::now_ms;
use gfs_testkit::vm::evidence::{sysfs_write, Recovery};
use gfs_testkit::vm::{
    release_bin_dir, require_prerequisites, DlmMode, VmCluster, VmOptions, DEVICE, MOUNTPOINT,
};
use serde_json::Value;

type Scenario = fn(&mut VmCluster) -> Result<Option<Recovery>>;

/// In order; the kernel-managed one last, since it restarts dlm_controld in the other mode.
const SCENARIOS: &[(&str, &str, Scenario)] = &[
    ("1", "simultaneous mounts", s1_simultaneous_mounts),
    ("2", "crash with fsyncs", s2_crash_with_fsyncs_in_flight),
    ("3", "DLM ordering race", s3_dlm_ordering_race),
    ("4", "replayer dies", s4_replayer_dies_mid_replay),
    ("6", "withdraw", s6_withdraw),
    ("7", "spectator, ro, remount", s7_spectator_ro_remount),
    ("5", "kernel-managed", s5_kernel_managed),
];

/// The size of the S4 writer's files (journaled data).
const BULK: u32 = 196_608;

/// Failure detection (token 3000) plus fencing, replay and unblocking, with room for TCG.
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(150);

#[test]
fn real_kernel_scenarios() {
    let bin_dir = release_bin_dir();
    if !require_prerequisites("vm", &bin_dir) {
        return;
    }
    let wanted: Option<Vec<String>> = std::env::var("GFS_VM_SCENARIOS")
        .ok()
        .map(|s| s.split(',').map(|p| p.trim().to_owned()).collect());
    let started = Instant::now();
    let mut c = VmCluster::start(VmOptions::default())
        .unwrap_or_else(|e| panic!("the VM cluster did not come up: {e:#}"));
    let mut summary = format!(
        "VM tier: {} VMs (TCG, {} MiB each), kernel {}; booted in {:.1}s, cluster up (corosync quorate, \
         dlm_controld, gfs_controld synced) in {:.1}s\n\n",
        c.opts.nodes, c.opts.mem_mb, c.kver, c.boot_secs, c.up_secs
    );
    let mut rows = String::new();
    let mut failures = Vec::new();
    for (number, name, scenario) in SCENARIOS {
        if wanted
            .as_ref()
            .is_some_and(|w| !w.iter().any(|n| n == number))
        {
            continue;
        }
        let title = format!("{number} {name}");
        eprintln!("\n=== scenario {title}");
        *CURRENT.lock().unwrap_or_else(|e| e.into_inner()) = format!("scenario {title}");
        let t = Instant::now();
        let result = scenario(&mut c);
        let secs = t.elapsed().as_secs_f64();
        let verdict = match &result {
            Ok(_) => "PASS".to_owned(),
            Err(e) => format!("FAIL: {e:#}"),
        };
        eprintln!("=== scenario {title}: {verdict} ({secs:.0}s)");
        let _ = writeln!(summary, "scenario {title}: {verdict} ({secs:.0}s)");
        match result {
            Ok(Some(mut r)) => {
                r.scenario = title.clone();
                r.wall_secs = secs;
                let _ = writeln!(summary, "{}", r.render_timeline());
                rows.push_str(&r.table_row());
                rows.push('\n');
            }
            Ok(None) => {}
            Err(e) => {
                failures.push(format!("scenario {title}: {e:#}"));
                if let Err(e) = c.reset() {
                    failures.push(format!("reset after scenario {title}: {e:#}"));
                    break;
                }
            }
        }
        let _ = c.reset();
    }
    for n in NOTES.lock().unwrap_or_else(|e| e.into_inner()).iter() {
        let _ = writeln!(summary, "note: {n}");
    }
    let _ = writeln!(
        summary,
        "\nrecoveries (times from the kill)\n{}\n{rows}\ntotal {:.0}s\n{}",
        Recovery::TABLE_HEADER,
        started.elapsed().as_secs_f64(),
        c.artifacts_note()
    );
    let _ = std::fs::write(c.run_dir.join("summary.txt"), &summary);
    eprintln!("\n{summary}");
    assert!(
        failures.is_empty(),
        "{} scenario(s) failed:\n{}\n{}",
        failures.len(),
        failures.join("\n"),
        c.artifacts_note()
    );
}

// ----- helpers ---------------------------------------------------------------------------

fn nodes(c: &VmCluster) -> Vec<u32> {
    (1..=c.opts.nodes).collect()
}

fn jid(c: &VmCluster, id: u32) -> Result<u32> {
    c.lock_module(id, "jid")?
        .parse()
        .context("lock_module/jid is not a number")
}

fn ls(c: &VmCluster, id: u32) -> Result<Value> {
    let v = c.control(id, "ls")?;
    v.as_array()
        .and_then(|a| a.first())
        .cloned()
        .ok_or_else(|| anyhow!("gfs_control ls on node {id} lists no filesystem: {v}"))
}

/// Kernel log lines of node `id` since `since` that contain every one of `needles`.
fn kernel_has(c: &VmCluster, id: u32, since: u64, needles: &[&str]) -> Vec<String> {
    c.kernel_lines(id, since)
        .into_iter()
        .filter(|l| needles.iter().all(|n| l.text.contains(n)))
        .map(|l| l.text)
        .collect()
}

/// Waits until every survivor is unblocked, the daemons list no dirty journal and the
/// kernels replayed (or found clean) each journal of `jids` after `since`.
fn wait_recovered(c: &VmCluster, survivors: &[u32], jids: &[u32], since: u64) -> Result<()> {
    c.wait_until("journal recovery and unblock", RECOVERY_TIMEOUT, || {
        let replayed = jids.iter().all(|j| {
            survivors.iter().any(|&id| {
                c.uevent_lines(id, since)
                    .iter()
                    .any(|l| l.text.contains(&format!("JID={j} RECOVERY=Done")))
            })
        });
        replayed
            && survivors.iter().all(|&id| {
                c.lock_module(id, "block").is_ok_and(|b| b == "0")
                    && ls(c, id).is_ok_and(|fs| {
                        fs["dirty_journals"]
                            .as_array()
                            .is_some_and(|d| d.is_empty())
                    })
            })
    })
}

/// Every survivor wrote `block=1` after the kill and is unblocked now (its own poller).
fn check_blocked_then_unblocked(c: &VmCluster, survivors: &[u32], since: u64) -> Result<()> {
    for &id in survivors {
        let changes = c.block_changes(id, since);
        ensure!(
            changes.iter().any(|(_, v)| v == "1"),
            "node {id} never blocked after the failure (block changes: {changes:?})"
        );
        let now = c.lock_module(id, "block")?;
        ensure!(now == "0", "node {id} is still blocked (block={now})");
    }
    Ok(())
}

/// Exactly one survivor's kernel replayed `jid` (`Replaying journal`), and it said Done.
fn check_one_replayer(c: &VmCluster, survivors: &[u32], jid: u32, since: u64) -> Result<u32> {
    let replayers: Vec<u32> = survivors
        .iter()
        .copied()
        .filter(|&id| {
            !kernel_has(c, id, since, &[&format!("jid={jid}: Replaying journal")]).is_empty()
        })
        .collect();
    ensure!(
        replayers.len() == 1,
        "journal {jid} replayed by {replayers:?}, expected exactly one survivor"
    );
    let r = replayers[0];
    ensure!(
        !kernel_has(c, r, since, &[&format!("jid={jid}: Done")]).is_empty(),
        "node {r} replayed jid {jid} but its kernel never said Done"
    );
    Ok(r)
}

/// Notes for the summary (accepted fsck findings, and which scenario left them).
static NOTES: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

fn note(text: String) {
    eprintln!("note: {text}");
    NOTES.lock().unwrap_or_else(|e| e.into_inner()).push(text);
}

/// The lines a clean `fsck.gfs2 -n` prints (its progress).
fn fsck_progress_line(l: &str) -> bool {
    // A slow pass prints "NN percent complete." without a newline before its next line.
    let l = match l.find(" percent complete.") {
        Some(i) if l[..i].trim().chars().all(|c| c.is_ascii_digit()) => {
            &l[i + " percent complete.".len()..]
        }
        _ => l,
    };
    let l = l.trim();
    l.is_empty()
        || [
            "Initializing fsck",
            "Validating resource group index.",
            "Level 1 resource group check",
            "(level 1 passed)",
            "Starting pass",
            "Starting check_statfs",
            "Reconciling bitmaps.",
            "fsck.gfs2 complete",
        ]
        .iter()
        .any(|p| l.starts_with(p))
        || (l.contains(" completed in ") && l.ends_with('s'))
}

/// The findings of an `fsck.gfs2 -n` run besides the statfs file (empty: only statfs, or
/// nothing), and whether the statfs file was reported wrong.
fn fsck_findings(out: &str) -> (Vec<String>, bool) {
    let mut others = Vec::new();
    let mut statfs = false;
    let mut in_statfs = false;
    for l in out.lines() {
        if l.starts_with("The statfs file is wrong") {
            statfs = true;
            in_statfs = true;
            continue;
        }
        if in_statfs {
            // The block: current and calculated values, then "was not fixed".
            if l.starts_with("The statfs file was not fixed") {
                in_statfs = false;
            }
            continue;
        }
        if !fsck_progress_line(l) {
            others.push(l.to_owned());
        }
    }
    (others, statfs)
}

/// Unmounts everywhere still running, then `fsck.gfs2 -n` must be clean. One finding is
/// tolerated: a wrong statfs file. GFS2's statfs (free blocks, dinodes) is advisory: each
/// node batches its changes in its own statfs_change file and folds them into the master
/// file later, and a killed or withdrawn node's batch is folded in again or lost by its
/// journal's replay. That is noted with the scenario that left it, fixed with `fsck.gfs2
/// -y`, and a second `-n` must then be clean. Anything else fails.
fn unmount_and_fsck(c: &VmCluster, on: u32) -> Result<()> {
    for id in c.alive_nodes() {
        if c.is_mounted(id) {
            c.umount(id)?;
        }
    }
    let (rc, out) = c.fsck(on)?;
    if rc == 0 {
        return Ok(());
    }
    let (others, statfs) = fsck_findings(&out);
    ensure!(
        statfs && others.is_empty() && rc == 4,
        "fsck.gfs2 -n exited {rc}:\n{out}"
    );
    // "free: N (0x..)" and "dinodes: N (0x..)", current then calculated.
    let counter = |name: &str| -> Vec<&str> {
        out.lines()
            .filter_map(|l| l.strip_prefix(name))
            .filter_map(|v| v.split_whitespace().next())
            .collect()
    };
    let values = format!(
        "free {}, dinodes {}",
        counter("free:").join(" → "),
        counter("dinodes:").join(" → ")
    );
    let (rc_fix, fixed) = c.sh_rc(
        on,
        &format!("fsck.gfs2 -y {DEVICE} 2>&1"),
        Duration::from_secs(300),
    )?;
    ensure!(
        rc_fix <= 1,
        "fsck.gfs2 -y (fixing the statfs file) exited {rc_fix}:\n{fixed}"
    );
    let (rc2, out2) = c.fsck(on)?;
    ensure!(
        rc2 == 0,
        "fsck.gfs2 -n after fsck.gfs2 -y fixed the statfs file exited {rc2}:\n{out2}"
    );
    note(format!(
        "{}: fsck.gfs2 -n found only a wrong statfs file ({values}, current → calculated); \
         accepted (advisory counters), fsck.gfs2 -y exited {rc_fix}, and a second -n is clean",
        CURRENT.lock().unwrap_or_else(|e| e.into_inner())
    ));
    Ok(())
}

/// The scenario running (for the notes).
static CURRENT: std::sync::Mutex<String> = std::sync::Mutex::new(String::new());

fn kill(c: &mut VmCluster, id: u32) -> Result<u64> {
    for n in c.alive_nodes() {
        c.measure_clock(n)?;
    }
    let at = c.kill_vm(id)?;
    eprintln!("killed node {id}'s VM");
    Ok(at)
}

// ----- scenarios ---------------------------------------------------------------------------

/// All three mount at the same moment. While no mount has completed, the daemon tells every
/// mounter first=1 (the kernel's cluster-wide mount lock serialises them; each replays the
/// journals it can lock and skips live ones): no deadlock, distinct jids, every node wrote
/// first=1 before its jid and its kernel reported FIRSTMOUNT=Done, and the mounts' journal
/// checks did not overlap. Then each writes and the others read.
fn s1_simultaneous_mounts(c: &mut VmCluster) -> Result<Option<Recovery>> {
    let ids = nodes(c);
    for &id in &ids {
        c.measure_clock(id)?;
    }
    let since = now_ms();
    let results: Vec<(u32, Result<()>)> = std::thread::scope(|s| {
        let handles: Vec<_> = ids
            .iter()
            .map(|&id| {
                let c = &*c;
                s.spawn(move || (id, c.mount(id, "", Duration::from_secs(90))))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (id, r) in &results {
        if let Err(e) = r {
            bail!("node {id}: simultaneous mount did not finish (deadlock?): {e:#}");
        }
    }
    let jid_of: Vec<(u32, u32)> = ids
        .iter()
        .map(|&id| Ok((id, jid(c, id)?)))
        .collect::<Result<_>>()?;
    let mut jids: Vec<u32> = jid_of.iter().map(|(_, j)| *j).collect();
    jids.sort();
    jids.dedup();
    ensure!(
        jids.len() == ids.len(),
        "journal ids not distinct: {jid_of:?}"
    );
    // (node, start of its journal work, "first mount done") on the host's clock.
    let mut windows = Vec::new();
    for &(id, j) in &jid_of {
        ensure!(
            !kernel_has(c, id, since, &["dlm lockspace ops not used"]).is_empty(),
            "node {id}: the kernel did not use the userspace recovery path"
        );
        // The daemon's own record: first=1, then the jid, in that order.
        let writes: Vec<String> = c
            .daemon_lines(id, since)
            .into_iter()
            .map(|l| l.text)
            .filter(|t| t.contains("sysfs write"))
            .collect();
        let first_at = writes.iter().position(|t| sysfs_write(t, "first", "1"));
        let jid_at = writes
            .iter()
            .position(|t| sysfs_write(t, "jid", &j.to_string()));
        ensure!(
            matches!((first_at, jid_at), (Some(f), Some(k)) if f < k),
            "node {id}: the daemon did not write first=1 before jid={j}: {writes:?}"
        );
        let first = c.lock_module(id, "first")?;
        ensure!(first == "1", "node {id}: lock_module/first reads {first}");
        ensure!(
            c.uevent_lines(id, since)
                .iter()
                .any(|l| l.text.contains("FIRSTMOUNT=Done")),
            "node {id}'s kernel did not report FIRSTMOUNT=Done"
        );
        let kernel = c.kernel_lines(id, since);
        let start = kernel
            .iter()
            .find(|l| {
                l.text.contains("Trying to acquire journal glock")
                    || l.text.contains("already locked for use")
            })
            .map(|l| l.at_ms);
        let done = kernel
            .iter()
            .find(|l| l.text.contains("first mount done, others may mount"))
            .map(|l| l.at_ms);
        let (Some(start), Some(done)) = (start, done) else {
            bail!("node {id}: its kernel did not log a first mounter's journal checks");
        };
        // Each first mounter checks every journal: its own, and the others' (Done when it
        // could lock them, Busy when a live node holds them).
        for j in 0..ids.len() {
            ensure!(
                kernel
                    .iter()
                    .any(|l| l.text.contains(&format!("jid={j}: Done"))
                        || l.text.contains(&format!("jid={j}: Busy"))),
                "node {id} (a first mounter) did not look at journal {j}"
            );
        }
        windows.push((id, start, done));
    }
    // The mount lock serialises the first mounters' journal work. Guest clocks are mapped to
    // the host's within a few tens of ms, hence the tolerance.
    windows.sort_by_key(|w| w.1);
    let shown: Vec<String> = windows
        .iter()
        .map(|(id, s, d)| format!("node {id} +{}..+{} ms", s - since, d - since))
        .collect();
    for pair in windows.windows(2) {
        let ((a, _, a_done), (b, b_start, _)) = (pair[0], pair[1]);
        ensure!(
            b_start + 150 >= a_done,
            "the journal checks of nodes {a} and {b} overlapped: {shown:?}"
        );
    }
    for &id in &ids {
        c.sh(
            id,
            &format!("mkdir -p {MOUNTPOINT}/s1 && echo written-by-node{id} > {MOUNTPOINT}/s1/node{id} && sync"),
        )?;
    }
    for &id in &ids {
        for &other in &ids {
            let got = c.sh(id, &format!("cat {MOUNTPOINT}/s1/node{other}"))?;
            ensure!(
                got.trim() == format!("written-by-node{other}"),
                "node {id} reads {got:?} in node{other}'s file"
            );
        }
    }
    eprintln!("every node a first mounter; jids {jid_of:?}; serialised journal checks: {shown:?}");
    Ok(None)
}

/// kill -9 a VM while it fsyncs: survivors block, the victim is fenced, exactly one survivor
/// replays its journal, both unblock; everything fsync'ed reads back; fsck is clean.
fn s2_crash_with_fsyncs_in_flight(c: &mut VmCluster) -> Result<Option<Recovery>> {
    c.mount_all()?;
    let (victim, survivors) = (3, [1, 2]);
    let mut sums = Vec::new();
    for id in nodes(c) {
        sums.push((id, c.write_synced_files(id, &format!("s2/files{id}"), 20)?));
    }
    let vjid = jid(c, victim)?;
    let polls: Vec<_> = survivors
        .iter()
        .map(|&id| c.start_blockpoll(id))
        .collect::<Result<_>>()?;
    c.start_writer(victim, "s2/live", "s2")?;
    std::thread::sleep(Duration::from_secs(8));
    let kill_ms = kill(c, victim)?;
    let durable = c.writer_durable(victim, "s2");
    ensure!(durable > 0, "the victim's writer made no progress");
    wait_recovered(c, &survivors, &[vjid], kill_ms)?;
    let r = Recovery::collect(c, "", &[victim], &[vjid], &survivors, kill_ms);
    for p in &polls {
        c.stop_job(p);
    }
    check_blocked_then_unblocked(c, &survivors, kill_ms)?;
    ensure!(r.fenced_ms.is_some(), "node {victim} was never fenced");
    let replayer = check_one_replayer(c, &survivors, vjid, kill_ms)?;
    for &id in &survivors {
        let note = c.check_writer_data(id, "s2/live", durable)?;
        eprintln!("node {id}: {note}");
        for (owner, sum) in &sums {
            let got = c.read_synced_files(id, &format!("s2/files{owner}"))?;
            ensure!(
                &got == sum,
                "node {id}: node {owner}'s synced files changed"
            );
        }
    }
    c.sh(
        1,
        &format!("echo after-recovery > {MOUNTPOINT}/s2/after && sync"),
    )?;
    ensure!(c.sh(2, &format!("cat {MOUNTPOINT}/s2/after"))?.trim() == "after-recovery");
    eprintln!(
        "replayed by node {replayer}; {}",
        c.control_text(1, "status")?
    );
    unmount_and_fsck(c, 1)?;
    Ok(Some(r))
}

/// One survivor's gfs_controld is stopped across the failure. Its reader of the victim's
/// files must block until recovery and never see them missing or stale.
fn s3_dlm_ordering_race(c: &mut VmCluster) -> Result<Option<Recovery>> {
    c.mount_all()?;
    let (victim, survivors, stopped) = (3, [1, 2], 2);
    let vjid = jid(c, victim)?;
    let polls: Vec<_> = survivors
        .iter()
        .map(|&id| c.start_blockpoll(id))
        .collect::<Result<_>>()?;
    c.start_writer(victim, "s3/live", "s3")?;
    std::thread::sleep(Duration::from_secs(8));
    c.signal_service(stopped, "gfs_controld", "STOP")?;
    let kill_ms = kill(c, victim);
    // The reader starts only now, so the victim's last changes were never pulled out of it
    // by a lock demotion before it died.
    let reader = c.start_reader(stopped, "s3/live", "s3");
    std::thread::sleep(Duration::from_secs(20));
    c.signal_service(stopped, "gfs_controld", "CONT")?;
    let (kill_ms, reader) = (kill_ms?, reader?);
    let resumed_ms = now_ms();
    let durable = c.writer_durable(victim, "s3");
    wait_recovered(c, &survivors, &[vjid], kill_ms)?;
    std::thread::sleep(Duration::from_secs(2));
    c.stop_job(&reader);
    let r = Recovery::collect(c, "", &[victim], &[vjid], &survivors, kill_ms);
    for p in &polls {
        c.stop_job(p);
    }
    let log = c.log(stopped, "reader-s3.log");
    let mut bad = Vec::new();
    let mut reads = 0;
    let mut before_resume = 0;
    for l in log.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        let (Some(end), Some(lines), Some(rc1), Some(counter), Some(rc2)) = (
            f.get(1).and_then(|t| t.parse::<f64>().ok()),
            f.get(2).and_then(|v| v.strip_prefix("lines=")),
            f.get(3),
            f.get(4).and_then(|v| v.strip_prefix("counter=")),
            f.last(),
        ) else {
            continue;
        };
        reads += 1;
        if c.host_ms(stopped, end) < resumed_ms {
            before_resume += 1;
        }
        let lines: u64 = lines.parse().unwrap_or(0);
        let counter: u64 = counter.parse().unwrap_or(0);
        if *rc1 != "rc=0" || *rc2 != "rc=0" || lines < durable || counter < durable {
            bad.push(l.to_owned());
        }
    }
    ensure!(
        reads > 0,
        "the reader on node {stopped} never finished a read"
    );
    ensure!(
        bad.is_empty(),
        "node {stopped} (daemon stopped) read the victim's files missing or stale ({} of {reads} reads, \
         {durable} lines fsync'ed); first: {:?}",
        bad.len(),
        &bad[..bad.len().min(3)]
    );
    ensure!(
        before_resume == 0,
        "node {stopped} finished {before_resume} reads of the victim's files while its daemon was \
         stopped (it never blocked, so these bypassed recovery)"
    );
    check_blocked_then_unblocked(c, &survivors, kill_ms)?;
    check_one_replayer(c, &survivors, vjid, kill_ms)?;
    for &id in &survivors {
        c.check_writer_data(id, "s3/live", durable)?;
    }
    unmount_and_fsck(c, 1)?;
    Ok(Some(r))
}

/// qemu's throttle on the survivors' shared disk during S4 (iops, bytes/s): slows the
/// replay of the victim's journal (about 9 MB read) from half a second to seconds, so that
/// the replayer's death lands in the middle of it. Not slower: the kernel's journal head
/// lookup reads the whole 16 MB journal first (at 512 KiB/s it took 24 s).
const S4_THROTTLE: (u64, u64) = (300, 4 << 20);

/// The victim leaves many dirty blocks; the survivor that replays its journal is killed in
/// the middle of the replay; the last node replays both journals and loses nothing.
fn s4_replayer_dies_mid_replay(c: &mut VmCluster) -> Result<Option<Recovery>> {
    c.mount_all()?;
    let (victim, survivors) = (3, [1, 2]);
    let vjid = jid(c, victim)?;
    let jids: Vec<(u32, u32)> = survivors
        .iter()
        .map(|&id| Ok((id, jid(c, id)?)))
        .collect::<Result<_>>()?;
    let mut sums = Vec::new();
    for &id in &survivors {
        sums.push((id, c.write_synced_files(id, &format!("s4/files{id}"), 10)?));
    }
    // Journaled data (chattr +j on the directory): every fsync puts all of a 192 KiB file's
    // blocks in the journal, and the writer runs until the kill, so the journal is full of
    // blocks to replay.
    c.start_writer_sized(victim, "s4/live", "s4", BULK, true)?;
    std::thread::sleep(Duration::from_secs(10));
    let polls: Vec<_> = survivors
        .iter()
        .map(|&id| c.start_blockpoll(id))
        .collect::<Result<_>>()?;
    let kill_ms = kill(c, victim)?;
    let durable = c.writer_durable(victim, "s4");
    // Both survivors' disks are slowed before either can be told to replay (corosync needs
    // seconds to notice the death); the one that is not the replayer gets full speed back
    // as soon as the replayer is known.
    for &id in &survivors {
        c.throttle_disk(id, Some(S4_THROTTLE))?;
    }
    // A 3-node cluster left with 1 node is inquorate. As soon as the replayer is known
    // (the daemons' assignment, or its kernel reaching for the journal), the other survivor
    // gets a second vote (corosync-quorumtool -v: an operator's or a quorum device's part),
    // so that it stays quorate alone and can take the replay over. `reset` gives it back.
    let assigned = |c: &VmCluster| -> Option<u32> {
        survivors.iter().copied().find(|&id| {
            !kernel_has(
                c,
                id,
                kill_ms,
                &[&format!("jid={vjid}: Trying to acquire journal glock")],
            )
            .is_empty()
                || c.daemon_lines(id, kill_ms).iter().any(|l| {
                    l.text
                        .contains(&format!("assigned to replay the journal of node {victim}"))
                        && l.text.contains(&format!("nodeid={id}"))
                })
        })
    };
    let mut replayer = None;
    let deadline = Instant::now() + RECOVERY_TIMEOUT;
    while replayer.is_none() && Instant::now() < deadline {
        replayer = assigned(c);
        std::thread::sleep(Duration::from_millis(30));
    }
    let replayer =
        replayer.ok_or_else(|| anyhow!("nobody was assigned the replay of jid {vjid}"))?;
    let last = survivors
        .iter()
        .copied()
        .find(|&id| id != replayer)
        .unwrap_or(1);
    c.throttle_disk(last, None)?;
    c.set_votes(last, 2)?;
    // Kill the replayer as soon as its kernel starts replaying.
    let deadline = Instant::now() + RECOVERY_TIMEOUT;
    let replay_line = format!("jid={vjid}: Replaying journal");
    let replay_seen_ms = loop {
        if let Some(l) = c
            .kernel_lines(replayer, kill_ms)
            .into_iter()
            .find(|l| l.text.contains(&replay_line))
        {
            break l.at_ms;
        }
        ensure!(
            Instant::now() < deadline,
            "node {replayer} never started replaying jid {vjid}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let second_kill_ms = c.kill_vm(replayer)?;
    eprintln!(
        "killed the replayer node {replayer} {} ms after its kernel began replaying jid {vjid}",
        second_kill_ms.saturating_sub(replay_seen_ms)
    );
    let rjid = jids
        .iter()
        .find(|(id, _)| *id == replayer)
        .map(|(_, j)| *j)
        .unwrap_or(0);
    // Whether the replayer got its replay done before it died shows in the last node's
    // daemon log (the replayer's RECOVERED), whatever the replayer's own log kept.
    let finished_before_kill = |c: &VmCluster| {
        c.daemon_lines(last, kill_ms).iter().any(|l| {
            l.text
                .contains(&format!("journal of node {victim} replayed"))
                && l.text.contains(&format!("nodeid={replayer}"))
        })
    };
    c.wait_until("the last node's recovery", RECOVERY_TIMEOUT, || {
        let done = |j: u32| {
            c.uevent_lines(last, second_kill_ms)
                .iter()
                .any(|l| l.text.contains(&format!("JID={j} RECOVERY=Done")))
        };
        done(rjid)
            && (done(vjid) || finished_before_kill(c))
            && c.lock_module(last, "block").is_ok_and(|b| b == "0")
    })?;
    let r = Recovery::collect(
        c,
        "",
        &[victim, replayer],
        &[vjid, rjid],
        &[last, replayer],
        kill_ms,
    );
    for p in &polls {
        if p.node == last {
            c.stop_job(p);
        }
    }
    // What the replayer's kernel got through before it died (its log is on the host).
    let replayer_kernel: Vec<String> =
        kernel_has(c, replayer, kill_ms, &[&format!("jid={vjid}: ")]);
    let replayer_finished = finished_before_kill(c)
        || replayer_kernel
            .iter()
            .any(|l| l.contains("Journal replayed in"));
    let completed: Vec<u32> = [replayer, last]
        .into_iter()
        .filter(|&id| {
            !kernel_has(
                c,
                id,
                kill_ms,
                &[&format!("jid={vjid}: Journal replayed in")],
            )
            .is_empty()
        })
        .collect();
    if replayer_finished {
        note(format!(
            "scenario 4 inconclusive on timing: node {replayer} finished replaying jid {vjid} \
             before it was killed ({} ms after `Replaying journal`); its kernel's last lines: {:?}",
            second_kill_ms.saturating_sub(replay_seen_ms),
            replayer_kernel.iter().rev().take(3).collect::<Vec<_>>()
        ));
    } else {
        eprintln!(
            "mid-replay: node {replayer}'s kernel got to {:?} before the kill",
            replayer_kernel.last()
        );
        ensure!(
            !kernel_has(c, last, second_kill_ms, &[&format!("jid={vjid}: Done")]).is_empty(),
            "node {last} did not recover the victim's journal {vjid} after the replayer died"
        );
    }
    // Safety, however the kill landed: exactly one replay of the victim's journal ran to
    // its end, the replayer's own journal was recovered, both dead nodes were fenced.
    ensure!(
        completed.len() == 1,
        "the victim's journal {vjid} was replayed to the end by {completed:?}; expected exactly one node"
    );
    ensure!(
        !kernel_has(c, last, second_kill_ms, &[&format!("jid={rjid}: Done")]).is_empty(),
        "node {last} did not recover the replayer's journal {rjid}"
    );
    let fenced: Vec<u32> = c
        .fence_records()
        .iter()
        .filter(|f| f.at_ms >= kill_ms)
        .map(|f| f.nodeid)
        .collect();
    ensure!(
        fenced.contains(&victim) && fenced.contains(&replayer),
        "fenced after the failures: {fenced:?}; expected {victim} and {replayer}"
    );
    c.check_writer_data_sized(last, "s4/live", durable, BULK)?;
    for (owner, sum) in &sums {
        ensure!(
            &c.read_synced_files(last, &format!("s4/files{owner}"))? == sum,
            "node {owner}'s synced files changed"
        );
    }
    unmount_and_fsck(c, last)?;
    Ok(Some(r))
}

/// Daemon-managed control off: dlm_controld as shipped. The daemon must leave the
/// filesystem to the kernel (and say so); the kernel recovers a killed node by itself.
fn s5_kernel_managed(c: &mut VmCluster) -> Result<Option<Recovery>> {
    c.set_dlm_mode(DlmMode::KernelManaged)?;
    let since = now_ms();
    c.mount_all()?;
    let (victim, survivors) = (3, [1, 2]);
    for id in nodes(c) {
        ensure!(
            kernel_has(c, id, since, &["dlm lockspace ops not used"]).is_empty(),
            "node {id} fell back to userspace recovery with recover_callbacks=1"
        );
        let fs = ls(c, id)?;
        ensure!(
            fs["kernel_managed"] == true && fs["state"] == "kernel-managed",
            "node {id}: gfs_control ls does not show the filesystem as kernel-managed: state {}, kernel_managed {}",
            fs["state"],
            fs["kernel_managed"]
        );
    }
    let vjid = jid(c, victim)?;
    c.start_writer(victim, "s5/live", "s5")?;
    std::thread::sleep(Duration::from_secs(6));
    let kill_ms = kill(c, victim)?;
    let durable = c.writer_durable(victim, "s5");
    c.wait_until("the kernel's own recovery", RECOVERY_TIMEOUT, || {
        survivors
            .iter()
            .any(|&id| !kernel_has(c, id, kill_ms, &[&format!("jid={vjid}: Done")]).is_empty())
            && survivors.iter().all(|&id| {
                c.sh_rc(
                    id,
                    &format!("timeout 5 ls {MOUNTPOINT}/s5/live >/dev/null"),
                    Duration::from_secs(10),
                )
                .is_ok_and(|(rc, _)| rc == 0)
            })
    })?;
    let r = Recovery::collect(c, "", &[victim], &[vjid], &survivors, kill_ms);
    for &id in &survivors {
        let writes: Vec<String> = c
            .daemon_lines(id, kill_ms)
            .into_iter()
            .filter(|l| l.text.contains("sysfs write"))
            .map(|l| l.text)
            .collect();
        ensure!(
            writes.is_empty(),
            "node {id}'s daemon wrote to a kernel-managed filesystem: {writes:?}"
        );
        c.check_writer_data(id, "s5/live", durable)?;
    }
    unmount_and_fsck(c, 1)?;
    Ok(Some(r))
}

/// `echo 1 > withdraw` on one node: the others recover its journal and nobody hangs.
fn s6_withdraw(c: &mut VmCluster) -> Result<Option<Recovery>> {
    c.mount_all()?;
    let (withdrawn, others) = (3, [1, 2]);
    let wjid = jid(c, withdrawn)?;
    c.write_synced_files(withdrawn, "s6/files", 10)?;
    let since = now_ms();
    for n in c.alive_nodes() {
        c.measure_clock(n)?;
    }
    c.sh(withdrawn, &format!("echo 1 > {}/withdraw", c.sysfs()))?;
    c.wait_until(
        "the others to recover the withdrawn node's journal",
        RECOVERY_TIMEOUT,
        || {
            others
                .iter()
                .any(|&id| !kernel_has(c, id, since, &[&format!("jid={wjid}: Done")]).is_empty())
                && others.iter().all(|&id| {
                    c.lock_module(id, "block").is_ok_and(|b| b == "0")
                        && c.sh_rc(
                            id,
                            &format!(
                                "timeout 10 sh -c 'echo x > {MOUNTPOINT}/s6/after{id} && sync'"
                            ),
                            Duration::from_secs(20),
                        )
                        .is_ok_and(|(rc, _)| rc == 0)
                })
        },
    )?;
    let r = Recovery::collect(c, "", &[withdrawn], &[wjid], &others, since);
    ensure!(
        !kernel_has(c, withdrawn, since, &["withdraw"]).is_empty(),
        "node {withdrawn}'s kernel did not log the withdraw"
    );
    // Debian 6.1 cannot always unmount a withdrawn lock_dlm filesystem once its lockspace is
    // released (its glock work then fails with `lm_lock ret -22` forever): that node is
    // power-cycled instead, which is what an operator would do. Noted, not failed.
    if c.sh_rc(
        withdrawn,
        &format!("timeout 30 umount {MOUNTPOINT}"),
        Duration::from_secs(40),
    )?
    .0 != 0
    {
        eprintln!("note: the withdrawn node {withdrawn} cannot unmount; power-cycling it");
        c.power_cycle(withdrawn)?;
    }
    for &id in &others {
        let fs = ls(c, id)?;
        ensure!(
            fs["dirty_journals"]
                .as_array()
                .is_some_and(|d| d.is_empty()),
            "node {id} still lists dirty journals: {fs}"
        );
        c.read_synced_files(id, "s6/files")?;
    }
    c.mount(withdrawn, "", Duration::from_secs(120))
        .context("mounting again after the withdraw")?;
    unmount_and_fsck(c, 1)?;
    Ok(Some(r))
}

/// A spectator and a read-only mount next to read-write ones, then a remount ro→rw.
fn s7_spectator_ro_remount(c: &mut VmCluster) -> Result<Option<Recovery>> {
    let (rw, other) = ([1, 2], 3);
    for id in rw {
        c.mount(id, "", Duration::from_secs(120))?;
    }
    c.sh(
        1,
        &format!("mkdir -p {MOUNTPOINT}/s7 && echo hello > {MOUNTPOINT}/s7/f && sync"),
    )?;
    // A spectator cannot write `first`; hostdata=first=0 spares it the check of every
    // journal, which fails (EPERM) whenever a read-write node has written.
    c.mount(
        other,
        "spectator,hostdata=first=0",
        Duration::from_secs(120),
    )
    .context("spectator mount")?;
    let member = |c: &VmCluster| -> Result<Value> {
        let fs = ls(c, 1)?;
        fs["members"]
            .as_array()
            .and_then(|m| m.iter().find(|m| m["nodeid"] == other).cloned())
            .ok_or_else(|| anyhow!("node {other} is not a member: {fs}"))
    };
    let m = member(c)?;
    ensure!(
        m["mode"] == "spectator" && m["jid"].is_null(),
        "the spectator's membership: {m}"
    );
    ensure!(c.sh(other, &format!("cat {MOUNTPOINT}/s7/f"))?.trim() == "hello");
    let (rc, _) = c.sh_rc(
        other,
        &format!("echo x > {MOUNTPOINT}/s7/g"),
        Duration::from_secs(30),
    )?;
    ensure!(rc != 0, "a spectator could write");
    c.umount(other)?;
    c.mount(other, "ro", Duration::from_secs(120))
        .context("read-only mount")?;
    let m = member(c)?;
    ensure!(m["mode"] == "ro", "the read-only node's membership: {m}");
    let (rc, _) = c.sh_rc(
        other,
        &format!("echo x > {MOUNTPOINT}/s7/g"),
        Duration::from_secs(30),
    )?;
    ensure!(rc != 0, "a read-only mount could write");
    c.sh(other, &format!("mount -o remount,rw {MOUNTPOINT}"))
        .context("remount ro→rw")?;
    c.sh(
        other,
        &format!("echo from-remounted > {MOUNTPOINT}/s7/g && sync"),
    )?;
    ensure!(c.sh(1, &format!("cat {MOUNTPOINT}/s7/g"))?.trim() == "from-remounted");
    let jids: Vec<u32> = nodes(c)
        .iter()
        .map(|&id| jid(c, id))
        .collect::<Result<_>>()?;
    c.wait_until(
        "the daemons to see the remount",
        Duration::from_secs(20),
        || member(c).is_ok_and(|m| m["mode"] == "rw"),
    )
    .with_context(|| format!("after remount,rw the daemon shows {:?}", member(c).ok()))?;
    ensure!(
        jids.iter().collect::<std::collections::BTreeSet<_>>().len() == jids.len(),
        "journal ids after the remount: {jids:?}"
    );
    unmount_and_fsck(c, 1)?;
    Ok(None)
}

/// The fsck parser on real `fsck.gfs2 -n` output (gfs2-utils 3.5.0, from a VM run).
#[test]
fn fsck_progress_percentages_are_not_findings() {
    let out = "Starting pass1\n76 percent complete.Reconciling bitmaps.\nfsck.gfs2 complete\n";
    assert_eq!(fsck_findings(out), (Vec::new(), false));
    assert!(!fsck_progress_line("Block 5 is bad"));
}

#[test]
fn fsck_findings_tolerate_only_statfs() {
    let clean = "Initializing fsck\nValidating resource group index.\nLevel 1 resource group check: \
                 Checking if all rgrp and rindex values are good.\n(level 1 passed)\nStarting pass1\n\
                 Reconciling bitmaps.\nreconcile_bitmaps completed in 0.011s\npass1 completed in 0.054s\n\
                 Starting pass1b\npass1b completed in 0.000s\nStarting check_statfs\n\
                 check_statfs completed in 0.000s\nfsck.gfs2 complete\n";
    assert_eq!(fsck_findings(clean), (vec![], false));
    let statfs = clean.replace(
        "Starting check_statfs\n",
        "Starting check_statfs\nThe statfs file is wrong:\n\nCurrent statfs values:\n\
         blocks:  262100 (0x3ffd4)\nfree:    246429 (0x3c29d)\ndinodes: 227 (0xe3)\n\n\
         Calculated statfs values:\nblocks:  262100 (0x3ffd4)\nfree:    246480 (0x3c2d0)\n\
         dinodes: 216 (0xd8)\nThe statfs file was not fixed.\n",
    );
    assert_eq!(fsck_findings(&statfs), (vec![], true));
    let other = statfs.replace(
        "pass1 completed",
        "Block 1234 (0x4d2) has bad mode\npass1 completed",
    );
    assert_eq!(
        fsck_findings(&other),
        (vec!["Block 1234 (0x4d2) has bad mode".to_owned()], true)
    );
}
