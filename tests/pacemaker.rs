//! The pacemaker tier: a real pacemaker 2.1 cluster of 3 nodes in network namespaces (see
//! `gfs_testkit::pacemaker`), with a fence device that kills a node's processes, running
//! gfs_controld as the clone of its OCF agent with `fencing=pacemaker`, and the GFS2 kernel
//! simulator on every node.
//!
//! One cluster, the scenarios in order (each node failure is followed by a reboot of the node):
//! 1. the clone starts on every node, its monitor is green, every daemon is synced;
//! 2. a node dies (its corosync is killed with SIGKILL): the lowest survivor's daemon asks
//!    pacemaker's fencer (its PID in pacemaker-fenced's log), or waits for pacemaker's own
//!    fence when its first look finds one under way; the node is fenced (pacemaker may merge
//!    the daemon's request with its own), the survivors replay and unblock;
//! 3. pacemaker fences a node before anyone notices (`stonith_admin --reboot`): the daemons
//!    take that fence from `stonith_api_time` and none makes pacemaker fence the node again
//!    (a request while pacemaker's fence is still pending is merged into it);
//! 4. the fence device fails several times: the daemon retries, `gfs_control status` shows
//!    the error meanwhile, and recovery follows the fence that worked;
//! 5. the clone is stopped on a node with a filesystem mounted: as the agent documents, the
//!    daemon refuses to exit, the stop times out and pacemaker fences the node; the survivors
//!    take that fence without asking for another and replay its journal. Then a clean stop of the clone with nothing mounted.
//!
//! Safety of the shared machine is checked along the way: no process of a node may hold
//! CAP_SYS_BOOT, and `killall` inside a node is the namespace-scoped wrapper.
//!
//! Assertions are on evidence: the fencer's log, the fence agent's log, the daemon's log and
//! `gfs_control status`, the kernel simulators' records. Never "exactly one fence": pacemaker
//! may run the agent a second time for a node that is already off (`killed=0`).
//!
//! Needs root, corosync, pacemaker and pacemaker-cli-utils, and the workspace binaries;
//! skipped with a note otherwise, except under CI, where a missing prerequisite fails the run.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use gfs_testkit::now_ms;
use gfs_testkit::pacemaker::{
    program_name, require_prerequisites, FenceRecord, PacemakerCluster, PacemakerOptions, CLONE,
    RESOURCE,
};
use serde_json::Value;

const FS: &str = "fs1";
const RECOVERY: Duration = Duration::from_secs(90);

/// The text a log file gained since `offset` bytes.
fn since(path: &Path, offset: u64) -> String {
    let text = fs::read(path).unwrap_or_default();
    String::from_utf8_lossy(text.get(offset as usize..).unwrap_or_default()).into_owned()
}

fn len(path: &Path) -> u64 {
    fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// Where every log stood when a scenario began.
struct Mark {
    t0: u64,
    /// The survivors' long-lived processes when the scenario began.
    survivors: Vec<(u32, String)>,
    pacemaker: Vec<u64>,
    daemon: Vec<u64>,
    fence: usize,
    started: Instant,
}

impl Mark {
    fn new(c: &PacemakerCluster, victim: u32) -> Mark {
        let survivors: Vec<u32> = c.ids().into_iter().filter(|&i| i != victim).collect();
        Mark {
            t0: now_ms(),
            survivors: long_lived(c, &survivors),
            pacemaker: c.ids().iter().map(|&i| len(&c.pacemaker_log(i))).collect(),
            daemon: c.ids().iter().map(|&i| len(&c.daemon_log(i))).collect(),
            fence: c.fence_log().len(),
            started: Instant::now(),
        }
    }

    /// Every node's pacemaker log since the mark.
    fn pacemaker(&self, c: &PacemakerCluster) -> String {
        c.ids()
            .iter()
            .map(|&i| since(&c.pacemaker_log(i), self.pacemaker[i as usize - 1]))
            .collect::<Vec<_>>()
            .join("")
    }

    fn daemon(&self, c: &PacemakerCluster, id: u32) -> String {
        since(&c.daemon_log(id), self.daemon[id as usize - 1])
    }

    fn fences(&self, c: &PacemakerCluster, target: u32) -> Vec<FenceRecord> {
        c.fence_log()
            .into_iter()
            .skip(self.fence)
            .filter(|r| r.target == format!("node{target}"))
            .collect()
    }

    fn secs(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }
}

fn jids(value: &Value) -> Vec<u64> {
    value
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default()
}

/// How often the survivors' kernels have replayed `jid`.
fn replays(c: &PacemakerCluster, survivors: &[u32], jid: u64) -> usize {
    survivors
        .iter()
        .map(|&id| {
            c.kernel_table(id, FS)
                .map(|t| {
                    jids(&t["replays_done"])
                        .iter()
                        .filter(|&&j| j == jid)
                        .count()
                })
                .unwrap_or(0)
        })
        .sum()
}

/// Lines of `log` naming the fencer's client `stonith-api.<pid>` asking to fence `target`.
fn daemon_requests(log: &str, pid: u32, target: u32) -> Vec<String> {
    let who = format!("Client stonith-api.{pid} wants to fence");
    log.lines()
        .filter(|l| l.contains(&who) && l.contains(&format!("node{target}")))
        .map(str::to_owned)
        .collect()
}

/// Waits until the victim's journal was replayed again on a survivor and every survivor is
/// unblocked with no fencing pending; then checks that no survivor wrote `recover` for it
/// before the first successful fence, and that the victim has no process left. Returns the
/// first successful fence.
fn assert_recovered(
    c: &mut PacemakerCluster,
    mark: &Mark,
    victim: u32,
    jid: u64,
    replays_before: usize,
) -> FenceRecord {
    let survivors: Vec<u32> = c.ids().into_iter().filter(|&i| i != victim).collect();
    let s = survivors.clone();
    c.wait_for("the survivors replayed and unblocked", RECOVERY, |c| {
        replays(c, &s, jid) > replays_before
            && s.iter().all(|&id| {
                c.kernel_table(id, FS)
                    .is_ok_and(|t| t["blocked"] == false && t["replaying"] == Value::Array(vec![]))
            })
            && c.status(s[0])
                .is_ok_and(|st| st["fence_waits"] == Value::Array(vec![]))
    })
    .unwrap_or_else(|e| panic!("{e:#}"));
    let fences = mark.fences(c, victim);
    let first_ok = fences
        .iter()
        .find(|r| r.ok())
        .cloned()
        .unwrap_or_else(|| panic!("node{victim} recovered without a fence: {fences:?}"));
    let recover = format!("write recover={jid}");
    for &id in &survivors {
        let status = c.kernel_status(id).unwrap();
        for e in status["timeline"].as_array().unwrap() {
            let at = e["t_ms"].as_u64().unwrap_or(0);
            if at >= mark.t0 && e["what"].as_str().is_some_and(|w| w.starts_with(&recover)) {
                assert!(
                    at >= first_ok.at_ms,
                    "node {id} wrote recover={jid} at {at}, before node{victim} was fenced at {}",
                    first_ok.at_ms
                );
            }
        }
        let violations = status["violations"].as_array().cloned().unwrap_or_default();
        assert!(violations.is_empty(), "node {id}'s kernel: {violations:?}");
    }
    assert!(
        c.pids(victim).is_empty(),
        "node{victim} still has processes after its fence"
    );
    // Fencing node `victim` touched no process of another node.
    assert_eq!(
        long_lived(c, &survivors),
        mark.survivors,
        "the survivors' processes changed across the fence of node{victim}"
    );
    // One power cut; a second run of the agent may only find the node off already.
    let cuts: Vec<_> = fences.iter().filter(|r| r.ok() && r.killed() > 0).collect();
    assert_eq!(cuts.len(), 1, "node{victim} cut more than once: {fences:?}");
    first_ok
}

/// Fails if a survivor's daemon (`daemons`, their PIDs) made pacemaker fence `victim` again
/// since `mark`, after pacemaker had fenced it on its own (`why`): on real hardware that is a
/// second power cycle. A request the fencer merged into its own fence still pending is no
/// second fence (the daemon waits for a pending fence only so long); one it ran is. Returns
/// how many requests were merged.
fn assert_no_second_fence(
    c: &PacemakerCluster,
    mark: &Mark,
    daemons: &[u32],
    victim: u32,
    why: &str,
) -> usize {
    let pcmk = mark.pacemaker(c);
    let mut merged = 0;
    for &pid in daemons {
        let asked = daemon_requests(&pcmk, pid, victim);
        let merges = pcmk
            .lines()
            .filter(|l| {
                l.contains("Merging fencing action")
                    && l.contains(&format!(
                        "targeting node{victim} originating from client stonith-api.{pid} "
                    ))
            })
            .count();
        assert!(
            asked.len() <= merges,
            "a daemon (pid {pid}) asked for a second fence of node{victim} after {why} \
             ({merges} of its requests merged into pacemaker's):\n{}\n{}",
            asked.join("\n"),
            c.diagnostics()
        );
        merged += merges;
    }
    merged
}

/// Whether the daemon's log says it waited for a fence pacemaker had under way.
fn waited_for_pacemaker(daemon_log: &str) -> bool {
    daemon_log
        .lines()
        .any(|l| l.contains("pacemaker is fencing node") && l.contains("already"))
}

/// The long-lived processes of the survivors: a fence of another node must not touch them.
fn long_lived(c: &PacemakerCluster, ids: &[u32]) -> Vec<(u32, String)> {
    const NAMES: [&str; 6] = [
        "sleep",
        "corosync",
        "pacemakerd",
        "gfs_controld",
        "gfs_kernel_sim",
        "gfs_dlm_sim",
    ];
    let mut found: Vec<(u32, String)> = ids
        .iter()
        .flat_map(|&id| c.pids(id))
        .filter_map(|pid| {
            let name = program_name(pid)?;
            NAMES.contains(&name.as_str()).then_some((pid, name))
        })
        .collect();
    found.sort();
    found
}

fn jid_of(c: &PacemakerCluster, id: u32) -> u64 {
    c.kernel_table(id, FS).unwrap()["jid"].as_u64().unwrap()
}

fn assert_safe(c: &PacemakerCluster) {
    let unsafe_procs = c.processes_with_sys_boot();
    assert!(
        unsafe_procs.is_empty(),
        "node processes that could reboot the machine: {unsafe_procs:?}"
    );
}

fn step(t: &Instant, what: &str) {
    eprintln!("[{:6.1} s] {what}", t.elapsed().as_secs_f64());
}

#[test]
fn pacemaker_tier() {
    if !require_prerequisites("pacemaker_tier") {
        return;
    }
    let t = Instant::now();
    let mut c = PacemakerCluster::start(PacemakerOptions::default())
        .unwrap_or_else(|e| panic!("the pacemaker cluster did not start: {e:#}"));
    step(
        &t,
        "3 nodes: corosync, pacemaker, the gfs_controld clone started, daemons synced",
    );

    // 1. The clone runs everywhere and its monitor is green on every node.
    let started = c.clone_started_on(1);
    assert_eq!(started, ["node1", "node2", "node3"], "clone: {started:?}");
    for id in c.ids() {
        let out = c
            .node_output(
                id,
                &["crm_resource", "--resource", RESOURCE, "--force-check"],
            )
            .unwrap_or_else(|e| panic!("monitor on node {id}: {e:#}"));
        assert!(out.contains("returned 0"), "node {id} monitor: {out}");
        let pid = c.daemon_pid(id).expect("a daemon on every node");
        let cmdline = fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        assert!(
            cmdline.contains("--fencing=pacemaker"),
            "node {id}'s daemon: {cmdline:?}"
        );
    }
    assert_safe(&c);
    // killall in a node is the namespace-scoped wrapper (a resource agent's `killall` must
    // never reach another node's daemon).
    if Path::new("/usr/bin/killall").exists() {
        let killall = c.node_output(1, &["cat", "/usr/bin/killall"]).unwrap();
        assert!(killall.contains("caller's network namespace"), "{killall}");
        // Every node runs a gfs_controld, so a host-wide killall -0 would succeed for
        // another node; inside node 1 it must see node 1's only.
        c.node_output(1, &["killall", "-0", "gfs_controld"])
            .unwrap();
    }
    step(
        &t,
        "clone started on every node, monitor ok, no CAP_SYS_BOOT",
    );

    for id in c.ids() {
        c.mount(id, FS)
            .unwrap_or_else(|e| panic!("mount on node {id}: {e:#}\n{}", c.diagnostics()));
    }

    // 2. A node dies: the daemon asks pacemaker's fencer.
    let victim = 3;
    let jid = jid_of(&c, victim);
    let replays_before = replays(&c, &[1, 2], jid);
    let asker = c.daemon_pid(1).unwrap();
    let mark = Mark::new(&c, victim);
    c.crash(victim).unwrap();
    let fence = assert_recovered(&mut c, &mark, victim, jid, replays_before);
    let pcmk = mark.pacemaker(&c);
    let asked = daemon_requests(&pcmk, asker, victim);
    let daemon_log = mark.daemon(&c, 1);
    // Pacemaker fences a lost node on its own too; a daemon whose first look finds that fence
    // already under way waits for it instead of asking (and asks once its grace is over).
    let waited = waited_for_pacemaker(&daemon_log);
    assert!(
        !asked.is_empty() || waited,
        "pacemaker-fenced never heard from node 1's daemon (pid {asker}), and the daemon did \
         not wait for pacemaker's own fence:\n{}",
        c.diagnostics()
    );
    assert!(
        daemon_log
            .lines()
            .any(|l| l.contains("node fenced") && l.contains("nodeid=3")),
        "node 1's daemon never took node 3 as fenced"
    );
    // Pacemaker schedules its own fence of the lost node too: it merges the two requests, or
    // runs the agent again for a node already off (asserted above: one power cut).
    let merged = pcmk
        .lines()
        .filter(|l| l.contains("Merging fencing action") && l.contains("node3"))
        .count();
    step(
        &t,
        &format!(
            "crash: fenced by {} after {} ms ({} agent runs, {merged} merged requests), recovered \
             after {:.1} s; daemon request: {}",
            fence.host,
            fence.at_ms - mark.t0,
            mark.fences(&c, victim).len(),
            mark.secs(),
            asked
                .first()
                .map_or("none, pacemaker's own fence was under way", |l| l.trim())
        ),
    );

    c.restart(victim)
        .unwrap_or_else(|e| panic!("restart: {e:#}"));
    c.mount(victim, FS).unwrap();
    step(&t, "node 3 rebooted, clone restarted there, fs1 mounted");

    // 3. Pacemaker fences first; the daemon must accept that fence and not ask for another.
    let jid = jid_of(&c, victim);
    let replays_before = replays(&c, &[1, 2], jid);
    let daemons: Vec<u32> = [1, 2].iter().filter_map(|&i| c.daemon_pid(i)).collect();
    let mark = Mark::new(&c, victim);
    let out = c
        .node_output(
            1,
            &[
                "stonith_admin",
                "--reboot",
                "node3",
                "--tolerance",
                "0s",
                "--timeout",
                "60",
            ],
        )
        .unwrap_or_else(|e| panic!("stonith_admin: {e:#}"));
    let fence = assert_recovered(&mut c, &mark, victim, jid, replays_before);
    // The daemon must take pacemaker's fence from its history and not ask for another. The
    // fencer records that fence only when the ring re-forms, the moment the daemons see the
    // node leave, so the daemon waits for a fence pacemaker has under way before it asks.
    let merged = assert_no_second_fence(&c, &mark, &daemons, victim, "pacemaker's own reboot");
    let waited = waited_for_pacemaker(&mark.daemon(&c, 1));
    assert!(
        mark.daemon(&c, 1)
            .lines()
            .any(|l| l.contains("node fenced") && l.contains("nodeid=3")),
        "node 1's daemon never took pacemaker's fence of node 3"
    );
    step(
        &t,
        &format!(
            "prefenced: agent ran {} ms after the request, no second fence (the daemon waited \
             for pacemaker's pending fence: {waited}; requests merged into it: {merged}), \
             recovered after {:.1} s {}",
            fence.at_ms - mark.t0,
            mark.secs(),
            out.trim()
        ),
    );

    c.restart(victim)
        .unwrap_or_else(|e| panic!("restart: {e:#}"));
    c.mount(victim, FS).unwrap();
    step(&t, "node 3 rebooted again");

    // 4. The fence device fails several times: the daemon retries and says so.
    let jid = jid_of(&c, victim);
    let replays_before = replays(&c, &[1, 2], jid);
    let asker = c.daemon_pid(1).unwrap();
    c.set_fence_failures(8).unwrap();
    let mark = Mark::new(&c, victim);
    c.crash(victim).unwrap();
    let mut reported: Option<String> = None;
    c.wait_for(
        "gfs_control status reporting the failed fencing",
        RECOVERY,
        |c| {
            if let Ok(st) = c.status(1) {
                for w in st["fence_waits"].as_array().into_iter().flatten() {
                    if w["nodeid"] == 3 {
                        if let Some(e) = w["last_error"].as_str() {
                            reported = Some(e.to_owned());
                        }
                    }
                }
            }
            reported.is_some() || mark.fences(c, victim).iter().any(|r| r.ok())
        },
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    let fence = assert_recovered(&mut c, &mark, victim, jid, replays_before);
    let reported = reported.unwrap_or_else(|| {
        panic!(
            "gfs_control status never showed a fencing error; fence log: {:?}",
            mark.fences(&c, victim)
        )
    });
    let failed_runs = mark
        .fences(&c, victim)
        .iter()
        .filter(|r| r.result.starts_with("failed-on-purpose"))
        .count();
    assert!(failed_runs >= 2, "the agent failed {failed_runs} times");
    let daemon_log = mark.daemon(&c, 1);
    let attempts = daemon_log
        .lines()
        .filter(|l| l.contains("fencing node") && l.contains("nodeid=3"))
        .count();
    let failures = daemon_log
        .lines()
        .filter(|l| l.contains("fencing failed") && l.contains("nodeid=3"))
        .count();
    assert!(
        attempts >= 2 && failures >= 1,
        "node 1's daemon: {attempts} attempts, {failures} failures"
    );
    let asked = daemon_requests(&mark.pacemaker(&c), asker, victim).len();
    assert!(asked >= 1, "the daemon never asked pacemaker");
    c.set_fence_failures(0).unwrap();
    step(
        &t,
        &format!(
            "fence device failed {failed_runs} times: daemon tried {attempts} times ({asked} kicks), \
             status said {reported:?}; fenced after {} ms, recovered after {:.1} s",
            fence.at_ms - mark.t0,
            mark.secs()
        ),
    );

    c.restart(victim)
        .unwrap_or_else(|e| panic!("restart: {e:#}"));
    c.mount(victim, FS).unwrap();
    step(&t, "node 3 rebooted again");

    // 5. Stopping the clone where a filesystem is mounted: the daemon refuses to exit, the
    // stop times out, pacemaker fences the node.
    let jid = jid_of(&c, victim);
    let replays_before = replays(&c, &[1, 2], jid);
    let stopping = c.daemon_pid(victim).unwrap();
    let daemons: Vec<u32> = [1, 2].iter().filter_map(|&i| c.daemon_pid(i)).collect();
    let mark = Mark::new(&c, victim);
    c.node_output(
        1,
        &[
            "crm_resource",
            "--ban",
            "--resource",
            CLONE,
            "--node",
            "node3",
        ],
    )
    .unwrap_or_else(|e| panic!("ban: {e:#}"));
    let half = Duration::from_secs(u64::from(c.opts.stop_timeout_s) / 2);
    std::thread::sleep(half);
    assert!(
        c.daemon_pid(victim) == Some(stopping),
        "node 3's daemon exited (or was killed) while fs1 is mounted there"
    );
    let fence = assert_recovered(&mut c, &mark, victim, jid, replays_before);
    let refused = since(&c.daemon_log(victim), mark.daemon[victim as usize - 1]);
    assert!(
        refused.contains("refusing to exit"),
        "node 3's daemon did not say why it stays:\n{refused}"
    );
    // Pacemaker's scheduler fenced node 3 because the stop failed, not for another reason.
    let pcmk = mark.pacemaker(&c);
    assert!(
        pcmk.lines().any(|l| l.contains("node3 will be fenced")
            && l.contains(&format!("{RESOURCE}:"))
            && l.contains("failed there")),
        "pacemaker never decided to fence node 3 for its failed stop"
    );
    let after = fence.at_ms - mark.t0;
    assert!(
        after >= u64::from(c.opts.stop_timeout_s) * 1000,
        "node 3 fenced {after} ms after the stop began, before the stop timed out"
    );
    // Pacemaker's fence for the failed stop is the survivors' evidence too: no second one.
    // (Its agent kills the daemon before corosync, so the survivors may see the daemon go a
    // token timeout before pacemaker records the fence; a request then is merged into it.)
    let merged =
        assert_no_second_fence(&c, &mark, &daemons, victim, "the fence for the failed stop");
    let waited = waited_for_pacemaker(&mark.daemon(&c, 1));
    step(
        &t,
        &format!(
            "stop with fs1 mounted: daemon stayed, fenced {after} ms after the ban, no second \
             fence (waited for pacemaker's pending fence: {waited}; requests merged into it: \
             {merged}), recovered after {:.1} s",
            mark.secs()
        ),
    );

    // A clean stop: nothing mounted, every instance stops and its daemon exits.
    for id in [1, 2] {
        c.umount(id, FS).unwrap();
    }
    c.node_output(
        1,
        &[
            "crm_resource",
            "--resource",
            CLONE,
            "--meta",
            "--set-parameter",
            "target-role",
            "--parameter-value",
            "Stopped",
        ],
    )
    .unwrap();
    c.wait_for("every daemon stopped", Duration::from_secs(60), |c| {
        [1, 2].iter().all(|&id| c.daemon_pid(id).is_none())
    })
    .unwrap_or_else(|e| panic!("{e:#}"));
    assert_safe(&c);
    step(&t, "clean stop of the clone without mounts");
    let total = t.elapsed();
    assert!(
        total < Duration::from_secs(300),
        "the tier took {total:?} (budget 5 min)"
    );
}
