//! A chaos soak on a real corosync cluster: seeded random faults, safety checks on the kernel
//! simulators' records after every fault, and a bound on every recovery.
//!
//! Each cycle starts from a healthy cluster (every node up, every filesystem mounted
//! everywhere), injects one fault chosen by a seeded RNG, waits until every surviving mounted
//! node is unblocked and every failed node's journals are replayed (else: a hang, with the
//! nodes' logs), checks SPEC S1–S4 and S8 on what the kernels, the fence agent and the
//! dlm_controld doubles recorded during the cycle ([`check_cycle`]), then repairs (heals links,
//! restarts what died, remounts). The faults come from a shuffled deck holding every kind once,
//! so every kind recurs every [`FaultKind::ALL`]`.len()` cycles.
//!
//! Reproducible from the printed seed as far as the choices go (kinds, targets, delays); the
//! real cluster's timing is not, which is what the soak is for.

use std::collections::BTreeMap;
use std::process::Child;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::cluster::{Cluster, ClusterOptions};
use crate::dlm_sim::DlmRecord;
use crate::now_ms;
use crate::proto::Entry;

/// A small seeded generator (SplitMix64): the soak's choices must replay from the seed alone.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }

    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.next_u64() as usize % items.len()]
    }

    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.next_u64() as usize % (i + 1);
            items.swap(i, j);
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum FaultKind {
    /// One node (or two, with five or more nodes) dies at once.
    NodeCrash,
    /// Only the daemon dies: PROCDOWN, the node is fenced.
    DaemonKill,
    /// Only corosync dies: the daemon loses its cluster.
    CorosyncKill,
    /// A minority loses its link; healed after the majority recovered.
    Partition,
    /// A minority loses its link under slow fencing and comes back before it is fenced: a
    /// stale merge.
    PartitionMerge,
    /// A node crash with the fence agent slow.
    SlowFence,
    /// A node crash with the fence agent failing its first runs.
    FailingFence,
    /// A node crash with the next replay on every survivor answering RECOVERY=Failed.
    ReplayFailure,
    /// A node crash while another node, unmounted before, mounts.
    MountDuringRecovery,
    /// A node crash while another node unmounts.
    UnmountDuringRecovery,
}

impl FaultKind {
    pub const ALL: [FaultKind; 10] = [
        FaultKind::NodeCrash,
        FaultKind::DaemonKill,
        FaultKind::CorosyncKill,
        FaultKind::Partition,
        FaultKind::PartitionMerge,
        FaultKind::SlowFence,
        FaultKind::FailingFence,
        FaultKind::ReplayFailure,
        FaultKind::MountDuringRecovery,
        FaultKind::UnmountDuringRecovery,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::NodeCrash => "node-crash",
            FaultKind::DaemonKill => "daemon-kill",
            FaultKind::CorosyncKill => "corosync-kill",
            FaultKind::Partition => "partition",
            FaultKind::PartitionMerge => "partition-merge",
            FaultKind::SlowFence => "slow-fence",
            FaultKind::FailingFence => "failing-fence",
            FaultKind::ReplayFailure => "replay-failure",
            FaultKind::MountDuringRecovery => "mount-during-recovery",
            FaultKind::UnmountDuringRecovery => "unmount-during-recovery",
        }
    }
}

#[derive(Clone, Debug)]
pub struct SoakOptions {
    pub seed: u64,
    pub cycles: u32,
    pub nodes: u32,
    pub filesystems: u32,
    /// Every fault must end with all survivors unblocked within this bound, else a hang.
    pub bound: Duration,
    pub replay_ms: u64,
    /// Extra daemon options (`--key=value`): `--enable_fencing=0` shows the checks catch S1.
    pub daemon_args: Vec<String>,
}

impl Default for SoakOptions {
    fn default() -> Self {
        SoakOptions {
            seed: 1,
            cycles: 50,
            nodes: 5,
            filesystems: 2,
            bound: Duration::from_secs(60),
            replay_ms: 300,
            daemon_args: Vec::new(),
        }
    }
}

/// What a run found.
#[derive(Clone, Debug, Default)]
pub struct SoakReport {
    pub seed: u64,
    pub cycles: u32,
    pub faults: BTreeMap<&'static str, u32>,
    /// From the fault to the last `block=0` (or replay) it caused, per cycle that recovered.
    pub recovery_ms: Vec<u64>,
    /// `cycle N (kind): rule: what`.
    pub violations: Vec<String>,
    /// Cycles whose recovery did not finish within the bound.
    pub hangs: Vec<u32>,
    /// Cycles after which the cluster could not be brought back to health in place (restart,
    /// sync, remount); it was rebuilt.
    pub repair_failures: Vec<u32>,
    /// Findings the kernel simulator reports that its own model causes, not the daemon.
    pub notes: Vec<String>,
}

impl SoakReport {
    pub fn ok(&self) -> bool {
        self.violations.is_empty() && self.hangs.is_empty() && self.repair_failures.is_empty()
    }

    pub fn median_ms(&self) -> Option<u64> {
        let mut v = self.recovery_ms.clone();
        v.sort_unstable();
        v.get(v.len() / 2).copied()
    }

    pub fn worst_ms(&self) -> Option<u64> {
        self.recovery_ms.iter().max().copied()
    }

    pub fn summary(&self) -> String {
        let faults: Vec<String> = self
            .faults
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        let ms = |v: Option<u64>| v.map(|m| format!("{m} ms")).unwrap_or_else(|| "-".into());
        format!(
            "soak summary: seed {} cycles {} | faults: {} | recovery median {} worst {} | \
             violations {} | hangs {} {:?} | repair failures {} {:?}",
            self.seed,
            self.cycles,
            faults.join(", "),
            ms(self.median_ms()),
            ms(self.worst_ms()),
            self.violations.len(),
            self.hangs.len(),
            self.hangs,
            self.repair_failures.len(),
            self.repair_failures
        )
    }
}

/// A failed node at the fault: its node id and the journals it held (table, jid).
#[derive(Clone, Debug)]
pub struct Victim {
    pub node: u32,
    pub journals: Vec<(String, u32)>,
}

/// Everything the checks need about one cycle.
#[derive(Clone, Debug, Default)]
pub struct CycleRecords {
    /// When the fault was injected (unix ms).
    pub fault_ms: u64,
    /// Records from the cycle's start on (setup included), per node.
    pub kernel: BTreeMap<u32, Vec<Entry>>,
    /// `(unix ms, node)` of every fencing done.
    pub fenced: Vec<(u64, u32)>,
    /// `(unix ms, node)` of every node the soak killed outright (its kernel died then).
    pub killed: Vec<(u64, u32)>,
    /// Each node's dlm_controld double's requests from the fault on.
    pub dlm: BTreeMap<u32, Vec<DlmRecord>>,
    pub victims: Vec<Victim>,
    /// (table, fs name) of every filesystem.
    pub tables: Vec<(String, String)>,
    /// (node, table) of every mount complete at the fault: S8 binds these (a node still
    /// mounting has no `jid` yet, so its kernel takes no locks until the daemon writes one).
    pub online_at_fault: Vec<(u32, String)>,
    /// When the check runs: open replays end here at the latest.
    pub now_ms: u64,
}

/// The number after `jid=` in a timeline line.
fn jid_in(what: &str) -> Option<u32> {
    let rest = &what[what.find("jid=")? + 4..];
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// A replay on one node: table, jid, start, end (open replays end at the node's death).
#[derive(Clone, Debug)]
struct Replay {
    node: u32,
    table: String,
    jid: u32,
    start: u64,
    end: u64,
    done: bool,
}

fn replays(r: &CycleRecords) -> Vec<Replay> {
    let mut out = Vec::new();
    for (&node, entries) in &r.kernel {
        let death_after = |t: u64| {
            r.killed
                .iter()
                .chain(r.fenced.iter())
                .filter(|&&(at, n)| n == node && at >= t)
                .map(|&(at, _)| at)
                .min()
                .unwrap_or(r.now_ms)
        };
        let mut open: BTreeMap<(String, u32), u64> = BTreeMap::new();
        for e in entries {
            if e.table.is_empty() && e.what.starts_with("serving ") {
                // A new kernel instance: the old one's replays ended with it.
                for ((table, jid), start) in std::mem::take(&mut open) {
                    let end = death_after(start).min(e.t_ms);
                    out.push(Replay {
                        node,
                        table,
                        jid,
                        start,
                        end,
                        done: false,
                    });
                }
            } else if e.what.starts_with("replay start jid=") {
                if let Some(jid) = jid_in(&e.what) {
                    open.insert((e.table.clone(), jid), e.t_ms);
                }
            } else if e.what.starts_with("replay end jid=") {
                if let Some(jid) = jid_in(&e.what) {
                    let start = open.remove(&(e.table.clone(), jid));
                    let done = e.what.ends_with(" Done");
                    out.push(Replay {
                        node,
                        table: e.table.clone(),
                        jid,
                        // A clean journal ends without a start: a point.
                        start: start.unwrap_or(e.t_ms),
                        end: e.t_ms,
                        done,
                    });
                }
            }
        }
        for ((table, jid), start) in open {
            out.push(Replay {
                node,
                table,
                jid,
                start,
                end: death_after(start),
                done: false,
            });
        }
    }
    out
}

/// The time every victim journal was replayed (Done on a node), if they all were.
pub fn all_replayed_at(r: &CycleRecords) -> Option<u64> {
    let reps = replays(r);
    let mut last = r.fault_ms;
    for v in &r.victims {
        for (table, jid) in &v.journals {
            let at = reps
                .iter()
                .filter(|p| p.done && &p.table == table && p.jid == *jid && p.end >= r.fault_ms)
                .map(|p| p.end)
                .min()?;
            last = last.max(at);
        }
    }
    Some(last)
}

/// The safety rules on one cycle's records; each finding is `RULE: what`, or `note: what` for
/// what the kernel simulator's model causes (see [`model_artifact`]).
pub fn check_cycle(r: &CycleRecords) -> Vec<String> {
    let mut found = Vec::new();
    let victim_ids: Vec<u32> = r.victims.iter().map(|v| v.node).collect();
    // The kernels' own findings: refused writes, writes to kernel-managed filesystems, a mount
    // completing over a dirty journal, a jid another live node holds (S4, S5).
    for (node, entries) in &r.kernel {
        for e in entries {
            if let Some(what) = e.what.strip_prefix("VIOLATION: ") {
                if model_artifact(r, e, what) {
                    found.push(format!(
                        "note: node {node} {}: {what} (before anyone saw the failure: the \
                         simulator frees a killed node's journal lock at once, the DLM only \
                         after recovery)",
                        e.table
                    ));
                } else {
                    found.push(format!("kernel: node {node} {}: {what}", e.table));
                }
            }
            if e.what.starts_with("block=0 while replaying") {
                found.push(format!("S3: node {node} {}: {}", e.table, e.what));
            }
        }
    }
    let reps = replays(r);
    // S2: no two nodes replay the same journal at the same time.
    for (i, a) in reps.iter().enumerate() {
        for b in &reps[i + 1..] {
            if a.node != b.node
                && a.table == b.table
                && a.jid == b.jid
                && a.start < b.end
                && b.start < a.end
            {
                found.push(format!(
                    "S2: {} jid {} replayed by node {} ({}..{}) and node {} ({}..{})",
                    a.table, a.jid, a.node, a.start, a.end, b.node, b.start, b.end
                ));
            }
        }
    }
    // S1: a failed node's journal is replayed only after that node was fenced, after the
    // fault; and no failed node (an inquorate minority, a node without corosync) replays.
    for v in &r.victims {
        let fenced_at = r
            .fenced
            .iter()
            .filter(|&&(t, n)| n == v.node && t >= r.fault_ms)
            .map(|&(t, _)| t)
            .min();
        for (table, jid) in &v.journals {
            for p in reps.iter().filter(|p| {
                &p.table == table && p.jid == *jid && p.start >= r.fault_ms && p.node != v.node
            }) {
                match fenced_at {
                    Some(f) if f <= p.start => {}
                    _ => found.push(format!(
                        "S1: {table} jid {jid} of node {} replayed by node {} at {} before its \
                         fencing ({fenced_at:?})",
                        v.node, p.node, p.start
                    )),
                }
            }
        }
    }
    for &node in &victim_ids {
        for e in r.kernel.get(&node).into_iter().flatten() {
            if e.t_ms >= r.fault_ms && e.end_ms.is_none() && e.what.starts_with("write recover=") {
                found.push(format!(
                    "S1: failed node {node} wrote {} for {} at {} (inquorate or cut off)",
                    e.what, e.table, e.t_ms
                ));
            }
        }
    }
    // S3: nobody writes block=0 for a filesystem while a failed node's journal of it waits.
    for (node, entries) in &r.kernel {
        for e in entries
            .iter()
            .filter(|e| e.t_ms >= r.fault_ms && e.end_ms.is_none() && e.what == "write block=0")
        {
            for v in &r.victims {
                for (table, jid) in v.journals.iter().filter(|(t, _)| *t == e.table) {
                    let replayed = reps.iter().any(|p| {
                        p.done
                            && &p.table == table
                            && p.jid == *jid
                            && p.end >= r.fault_ms
                            && p.end <= e.t_ms
                    });
                    if !replayed {
                        found.push(format!(
                            "S3: node {node} wrote block=0 for {table} at {} before jid {jid} of \
                             failed node {} was replayed",
                            e.t_ms, v.node
                        ));
                    }
                }
            }
        }
    }
    // S8: each survivor tells dlm_controld about a failed node only after its block=1 is in.
    for (node, log) in &r.dlm {
        for n in log.iter().filter(|n| {
            n.op == "notify"
                && n.t_ms >= r.fault_ms
                && n.nodeid.is_some_and(|id| victim_ids.contains(&id))
        }) {
            let Some(table) = r
                .tables
                .iter()
                .find(|(_, fs)| *fs == n.name)
                .map(|(t, _)| t)
            else {
                continue;
            };
            if !r.online_at_fault.contains(&(*node, table.clone())) {
                continue;
            }
            let blocked_at = r.kernel.get(node).and_then(|entries| {
                entries
                    .iter()
                    .filter(|e| {
                        &e.table == table
                            && e.what == "write block=1"
                            && e.result.as_deref() == Some("ok")
                            && e.t_ms >= r.fault_ms
                    })
                    .filter_map(|e| e.end_ms)
                    .min()
            });
            if blocked_at.is_none_or(|b| b > n.t_ms) {
                found.push(format!(
                    "S8: node {node} notified dlm_controld about node {:?} for {} at {} before \
                     its block=1 ({blocked_at:?})",
                    n.nodeid, n.name, n.t_ms
                ));
            }
        }
    }
    found
}

/// A kernel simulator's S5 finding ("a mount completes while a dirty journal nobody holds")
/// about failed nodes' journals, made before any survivor saw the failure (its first
/// `block=1`): the simulator's journal locks are file locks the OS drops when a killed node's
/// process dies, where the real DLM keeps a dead node's locks until its recovery, which waits
/// for the survivors' `block=1` (dlm_controld's handshake). No daemon can act before corosync
/// reports the failure; once it does, the mounted node blocks like every other member.
fn model_artifact(r: &CycleRecords, e: &Entry, what: &str) -> bool {
    let Some(list) = what
        .strip_prefix("S5: the mount completes while journals [")
        .and_then(|rest| rest.split(']').next())
    else {
        return false;
    };
    let detected = r
        .kernel
        .values()
        .flatten()
        .filter(|b| b.t_ms >= r.fault_ms && b.what == "write block=1")
        .map(|b| b.t_ms)
        .min()
        .unwrap_or(u64::MAX);
    let victims_journal = |jid: u32| {
        r.victims
            .iter()
            .any(|v| v.journals.contains(&(e.table.clone(), jid)))
    };
    let jids: Vec<Option<u32>> = list.split(',').map(|j| j.trim().parse().ok()).collect();
    e.t_ms >= r.fault_ms
        && e.t_ms < detected
        && !jids.is_empty()
        && jids.iter().all(|j| j.is_some_and(victims_journal))
}

/// S4 on the kernels' state: no two live mounters of a filesystem hold the same jid.
fn check_jids(c: &Cluster, nodes: &[u32], fss: &[String]) -> Vec<String> {
    let mut found = Vec::new();
    for fs in fss {
        let mut holders: BTreeMap<i64, Vec<u32>> = BTreeMap::new();
        for &id in nodes {
            if let Ok(t) = c.kernel_table(id, fs) {
                if t["mode"] != "spectator" && t["withdrawn"] != true {
                    if let Some(j) = t["jid"].as_i64().filter(|j| *j >= 0) {
                        holders.entry(j).or_default().push(id);
                    }
                }
            }
        }
        for (jid, ids) in holders.into_iter().filter(|(_, ids)| ids.len() > 1) {
            found.push(format!("S4: {fs} jid {jid} held by nodes {ids:?}"));
        }
    }
    found
}

/// One cycle's plan, drawn from the RNG before anything happens.
#[derive(Clone, Debug)]
struct Plan {
    kind: FaultKind,
    victims: Vec<u32>,
    /// Another node: unmounted before and mounting after the fault, or unmounting after it.
    other: Option<u32>,
    fs: String,
    /// How long after the fault the mount or unmount starts: before the failure is detected
    /// (~2 s at token 1000 ms), while the survivors block, fence or replay.
    start_after_ms: u64,
    fence_delay_ms: u64,
    fence_failures: u32,
}

impl Plan {
    fn describe(&self) -> String {
        let mut s = format!("{} victims={:?}", self.kind.name(), self.victims);
        if let Some(o) = self.other {
            s.push_str(&format!(
                " other=node{o} fs={} after={}ms",
                self.fs, self.start_after_ms
            ));
        }
        if self.fence_delay_ms > 0 {
            s.push_str(&format!(" fence_delay={}ms", self.fence_delay_ms));
        }
        if self.fence_failures > 0 {
            s.push_str(&format!(" fence_failures={}", self.fence_failures));
        }
        s
    }
}

pub struct Soak {
    pub opts: SoakOptions,
    rng: Rng,
    deck: Vec<FaultKind>,
    cluster: Option<Cluster>,
    fss: Vec<String>,
    killed: Vec<(u64, u32)>,
    pub report: SoakReport,
}

/// How long a repair step may take before the cluster is rebuilt instead.
const REPAIR: Duration = Duration::from_secs(90);

impl Soak {
    pub fn new(opts: SoakOptions) -> Soak {
        let fss = (1..=opts.filesystems).map(|i| format!("fs{i}")).collect();
        Soak {
            rng: Rng::new(opts.seed),
            report: SoakReport {
                seed: opts.seed,
                ..SoakReport::default()
            },
            opts,
            deck: Vec::new(),
            cluster: None,
            fss,
            killed: Vec::new(),
        }
    }

    fn cluster(&mut self) -> &mut Cluster {
        self.cluster.as_mut().expect("the cluster is up")
    }

    /// Starts a cluster and mounts every filesystem on every node.
    fn build(&mut self) -> Result<()> {
        self.cluster = None;
        let c = Cluster::start(ClusterOptions {
            nodes: self.opts.nodes,
            replay_ms: self.opts.replay_ms,
            cluster_name: "gfssoak".into(),
            daemon_args: self.opts.daemon_args.clone(),
            ..ClusterOptions::default()
        })?;
        self.cluster = Some(c);
        self.mount_everywhere()
    }

    fn mount_everywhere(&mut self) -> Result<()> {
        let c = self.cluster.as_ref().expect("the cluster is up");
        for id in 1..=self.opts.nodes {
            for fs in &self.fss {
                let mounted = c
                    .kernel_table(id, fs)
                    .map(|t| t["mounted"] == true)
                    .unwrap_or(false);
                if !mounted {
                    c.mount(id, fs)
                        .with_context(|| format!("mounting {fs} on node {id}"))?;
                }
            }
        }
        Ok(())
    }

    /// Runs every cycle; the report says what was found.
    pub fn run(&mut self) -> Result<&SoakReport> {
        println!(
            "soak: seed {} cycles {} nodes {} filesystems {} bound {}s",
            self.opts.seed,
            self.opts.cycles,
            self.opts.nodes,
            self.opts.filesystems,
            self.opts.bound.as_secs()
        );
        self.build().context("starting the cluster")?;
        for cycle in 1..=self.opts.cycles {
            self.cycle(cycle)?;
            self.report.cycles = cycle;
        }
        println!("{}", self.report.summary());
        for v in &self.report.violations {
            println!("violation: {v}");
        }
        for n in &self.report.notes {
            println!("{n}");
        }
        Ok(&self.report)
    }

    fn next_kind(&mut self) -> FaultKind {
        if self.deck.is_empty() {
            self.deck = FaultKind::ALL.to_vec();
            self.rng.shuffle(&mut self.deck);
        }
        self.deck.pop().expect("refilled")
    }

    fn plan(&mut self) -> Plan {
        let n = self.opts.nodes;
        let kind = self.next_kind();
        let nodes: Vec<u32> = (1..=n).collect();
        let first = self.rng.pick(&nodes);
        // At most as many failures as leave a quorate majority.
        let max_failed = (n - 1) / 2;
        let mut victims = vec![first];
        let several = matches!(
            kind,
            FaultKind::NodeCrash | FaultKind::Partition | FaultKind::PartitionMerge
        );
        if several && max_failed >= 2 && self.rng.range(0, 1) == 1 {
            let rest: Vec<u32> = nodes.iter().copied().filter(|&i| i != first).collect();
            victims.push(self.rng.pick(&rest));
        }
        victims.sort_unstable();
        let others: Vec<u32> = nodes
            .iter()
            .copied()
            .filter(|i| !victims.contains(i))
            .collect();
        let other = matches!(
            kind,
            FaultKind::MountDuringRecovery | FaultKind::UnmountDuringRecovery
        )
        .then(|| self.rng.pick(&others));
        let fs = self.rng.pick(&self.fss.iter().collect::<Vec<_>>()).clone();
        let fence_delay_ms = match kind {
            FaultKind::SlowFence => self.rng.range(2_000, 8_000),
            // Fencing must outlast the cut so that the minority merges back unfenced.
            FaultKind::PartitionMerge => 15_000,
            _ => 0,
        };
        let start_after_ms = if other.is_some() {
            self.rng.range(0, 3_000)
        } else {
            0
        };
        let fence_failures = match kind {
            FaultKind::FailingFence => self.rng.range(1, 3) as u32,
            _ => 0,
        };
        Plan {
            kind,
            victims,
            other,
            fs,
            start_after_ms,
            fence_delay_ms,
            fence_failures,
        }
    }

    /// (node, table) of every complete mount on `nodes`.
    fn online_tables(&self, nodes: &[u32]) -> Vec<(u32, String)> {
        let c = self.cluster.as_ref().expect("the cluster is up");
        let mut out = Vec::new();
        for &id in nodes {
            for fs in &self.fss {
                if c.kernel_table(id, fs).is_ok_and(|t| t["mounted"] == true) {
                    out.push((id, c.table(fs)));
                }
            }
        }
        out
    }

    /// The journals node `id` holds now (table, jid) of read-write mounts.
    fn journals_of(&self, id: u32) -> Vec<(String, u32)> {
        let c = self.cluster.as_ref().expect("the cluster is up");
        self.fss
            .iter()
            .filter_map(|fs| {
                let t = c.kernel_table(id, fs).ok()?;
                if t["mounted"] != true || t["mode"] != "rw" {
                    return None;
                }
                let jid = u32::try_from(t["jid"].as_i64()?).ok()?;
                Some((c.table(fs), jid))
            })
            .collect()
    }

    fn cycle(&mut self, cycle: u32) -> Result<()> {
        let plan = self.plan();
        *self.report.faults.entry(plan.kind.name()).or_default() += 1;
        let cycle_start = now_ms();
        self.killed.clear();
        let n = self.opts.nodes;
        // Setup before the fault.
        if plan.kind == FaultKind::MountDuringRecovery {
            let other = plan.other.expect("planned");
            let fs = plan.fs.clone();
            self.cluster().umount(other, &fs)?;
            // The clean leave settles before the fault, so the mount is a new one.
            self.cluster()
                .wait_for("the unmount to leave the group", REPAIR, |c| {
                    c.ls(1).is_ok_and(|ls| {
                        ls.as_array().into_iter().flatten().any(|f| {
                            f["name"] == fs.as_str()
                                && f["members"].as_array().map(|m| m.len()) == Some(n as usize - 1)
                        })
                    })
                })?;
        }
        let victims: Vec<Victim> = plan
            .victims
            .iter()
            .map(|&node| Victim {
                node,
                journals: self.journals_of(node),
            })
            .collect();
        let survivors: Vec<u32> = (1..=n).filter(|i| !plan.victims.contains(i)).collect();
        let online_at_fault = self.online_tables(&survivors);
        {
            let c = self.cluster();
            c.set_fence_delay(plan.fence_delay_ms)?;
            c.set_fence_failures(plan.fence_failures)?;
        }
        if plan.kind == FaultKind::ReplayFailure {
            for &id in &survivors {
                self.cluster()
                    .kernel(id, &["set", "--fail-next-replays", "1"])?;
            }
        }
        // The fault.
        let fault_ms = now_ms();
        let mut children: Vec<(String, Child)> = Vec::new();
        match plan.kind {
            FaultKind::DaemonKill => {
                for &v in &plan.victims {
                    self.cluster().kill_daemon(v);
                }
            }
            FaultKind::CorosyncKill => {
                for &v in &plan.victims {
                    self.cluster().kill_corosync(v);
                }
            }
            FaultKind::Partition | FaultKind::PartitionMerge => {
                for &v in &plan.victims {
                    self.cluster().set_link(v, false)?;
                }
            }
            _ => {
                for &v in &plan.victims {
                    self.cluster().crash_node(v);
                    self.killed.push((now_ms(), v));
                }
            }
        }
        match plan.kind {
            FaultKind::MountDuringRecovery => {
                let other = plan.other.expect("planned");
                std::thread::sleep(Duration::from_millis(plan.start_after_ms));
                let child = self.cluster().mount_async(other, &plan.fs)?;
                children.push((format!("mount {} on node {other}", plan.fs), child));
            }
            FaultKind::UnmountDuringRecovery => {
                let other = plan.other.expect("planned");
                std::thread::sleep(Duration::from_millis(plan.start_after_ms));
                let child = self.cluster().umount_async(other, &plan.fs)?;
                children.push((format!("umount {} on node {other}", plan.fs), child));
            }
            FaultKind::PartitionMerge => {
                // Back before the (slow) fencing: the majority finds a stale member.
                std::thread::sleep(Duration::from_secs(5));
                for &v in &plan.victims {
                    self.cluster().set_link(v, true)?;
                }
            }
            _ => {}
        }
        // Wait for the recovery.
        let mut records = CycleRecords {
            fault_ms,
            victims: victims.clone(),
            tables: self
                .fss
                .iter()
                .map(|fs| (self.cluster.as_ref().unwrap().table(fs), fs.clone()))
                .collect(),
            online_at_fault,
            ..CycleRecords::default()
        };
        let deadline = Instant::now() + self.opts.bound;
        let mut child_failures = Vec::new();
        let recovered = loop {
            children.retain_mut(|(what, child)| match child.try_wait() {
                Ok(Some(status)) => {
                    if !status.success() {
                        child_failures.push(format!("{what} failed ({status})"));
                    }
                    false
                }
                Ok(None) => true,
                Err(_) => false,
            });
            self.collect(&mut records, cycle_start, &survivors);
            if children.is_empty()
                && all_replayed_at(&records).is_some()
                && self.survivors_unblocked(&survivors)
            {
                break true;
            }
            if Instant::now() >= deadline {
                break false;
            }
            std::thread::sleep(Duration::from_millis(250));
        };
        self.collect(&mut records, cycle_start, &survivors);
        let mut findings = check_cycle(&records);
        findings.extend(check_jids(
            self.cluster.as_ref().unwrap(),
            &survivors,
            &self.fss,
        ));
        findings.extend(child_failures.into_iter().map(|f| format!("L1: {f}")));
        let first = |what: &str, nodes: &[u32]| {
            nodes
                .iter()
                .flat_map(|id| records.kernel.get(id).into_iter().flatten())
                .filter(|e| e.t_ms >= fault_ms && e.what == what)
                .map(|e| e.t_ms - fault_ms)
                .min()
        };
        let detected = first("write block=1", &survivors);
        let fenced = records
            .fenced
            .iter()
            .filter(|(t, n)| *t >= fault_ms && plan.victims.contains(n))
            .map(|(t, _)| t - fault_ms)
            .max();
        let line = format!(
            "cycle {cycle}: {} | block=1 +{} fenced +{}",
            plan.describe(),
            fmt_ms(detected),
            fmt_ms(fenced)
        );
        if recovered {
            // The last block=0 or replay the fault caused.
            let last_unblock = survivors
                .iter()
                .flat_map(|id| records.kernel.get(id).into_iter().flatten())
                .filter(|e| e.t_ms >= fault_ms && e.what == "write block=0")
                .filter_map(|e| e.end_ms)
                .max()
                .unwrap_or(fault_ms);
            let done = last_unblock
                .max(all_replayed_at(&records).unwrap_or(fault_ms))
                .saturating_sub(fault_ms);
            self.report.recovery_ms.push(done);
            println!(
                "{line} recovered +{done} ms | checks: {}",
                if findings.is_empty() {
                    "ok".to_owned()
                } else {
                    let notes = findings.iter().filter(|f| f.starts_with("note: ")).count();
                    format!("{} VIOLATIONS, {notes} notes", findings.len() - notes)
                }
            );
        } else {
            println!(
                "{line} | HANG: not recovered within {}s",
                self.opts.bound.as_secs()
            );
            eprintln!(
                "soak: cycle {cycle} hung (seed {}):\n{}",
                self.opts.seed,
                self.cluster.as_ref().unwrap().diagnostics()
            );
            self.report.hangs.push(cycle);
        }
        for f in findings {
            println!("  {f}");
            let line = format!("cycle {cycle} ({}): {f}", plan.kind.name());
            if f.starts_with("note: ") {
                self.report.notes.push(line);
            } else {
                self.report.violations.push(line);
            }
        }
        for (what, mut child) in children {
            let _ = child.kill();
            let _ = child.wait();
            eprintln!("soak: cycle {cycle}: {what} did not finish");
        }
        let repaired = if recovered {
            self.repair()
        } else {
            Err(anyhow::anyhow!("the fault's recovery hung"))
        };
        if let Err(e) = repaired {
            // A fresh cluster for the next cycle; this one's logs and records are kept.
            let kept = self.keep_logs(cycle);
            println!(
                "  cycle {cycle}: repair failed, cluster rebuilt (logs in {}): {e:#}",
                kept.display()
            );
            if recovered {
                eprintln!(
                    "soak: cycle {cycle}: repair failed: {e:#}\n{}",
                    self.cluster.as_ref().unwrap().diagnostics()
                );
            }
            self.report.repair_failures.push(cycle);
            self.build()
                .with_context(|| format!("cycle {cycle}: the cluster cannot be rebuilt"))?;
        }
        Ok(())
    }

    /// Copies the cluster's logs and records (not the FUSE mounts) to
    /// `$GFS_SOAK_KEEP_DIR` (default `target/soak`)`/seed-S/cycle-N/`.
    fn keep_logs(&self, cycle: u32) -> std::path::PathBuf {
        let base = std::env::var_os("GFS_SOAK_KEEP_DIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| "target/soak".into());
        let dest = base.join(format!("seed-{}/cycle-{cycle}", self.opts.seed));
        let c = self.cluster.as_ref().expect("the cluster is up");
        for id in 1..=self.opts.nodes {
            let to = dest.join(format!("n{id}"));
            let _ = std::fs::create_dir_all(&to);
            for entry in std::fs::read_dir(c.node_dir(id))
                .into_iter()
                .flatten()
                .flatten()
            {
                let name = entry.file_name();
                let keep = name.to_str().is_some_and(|n| {
                    n.ends_with(".log") || n.ends_with(".jsonl") || n.ends_with(".conf")
                });
                if keep {
                    let _ = std::fs::copy(entry.path(), to.join(&name));
                }
            }
        }
        for name in ["fence.log", "fence_fail.log"] {
            let _ = std::fs::copy(c.dir.join(name), dest.join(name));
        }
        dest
    }

    /// Reads every node's kernel records since the cycle started, the fence log and the
    /// survivors' dlm_controld logs.
    fn collect(&self, r: &mut CycleRecords, since: u64, survivors: &[u32]) {
        let c = self.cluster.as_ref().expect("the cluster is up");
        for id in 1..=self.opts.nodes {
            let entries: Vec<Entry> = c
                .kernel_records(id)
                .into_iter()
                .filter(|e| e.t_ms >= since)
                .collect();
            r.kernel.insert(id, entries);
        }
        r.fenced = c.fence_log();
        r.killed = self.killed.clone();
        r.dlm = survivors
            .iter()
            .map(|&id| {
                let log = c
                    .dlm_log(id)
                    .into_iter()
                    .filter(|d| d.t_ms >= r.fault_ms)
                    .collect();
                (id, log)
            })
            .collect();
        r.now_ms = now_ms();
    }

    fn survivors_unblocked(&self, survivors: &[u32]) -> bool {
        let c = self.cluster.as_ref().expect("the cluster is up");
        survivors.iter().all(|&id| {
            let Ok(status) = c.kernel_status(id) else {
                return false;
            };
            status["tables"]
                .as_array()
                .into_iter()
                .flatten()
                .all(|t| t["blocked"] != true)
        })
    }

    /// Back to a healthy cluster: links up, fencing normal, every node running and synced,
    /// every filesystem mounted everywhere.
    fn repair(&mut self) -> Result<()> {
        let n = self.opts.nodes;
        {
            let c = self.cluster();
            c.set_fence_delay(0)?;
            c.set_fence_failures(0)?;
            for id in 1..=n {
                c.set_link(id, true)?;
            }
        }
        // No fencing may still be on its way to a node about to start again.
        self.cluster().wait_for("no fencing pending", REPAIR, |c| {
            (1..=n).all(|id| {
                !c.daemon_alive(id)
                    || c.status(id)
                        .is_ok_and(|s| s["fence_waits"].as_array().is_none_or(|w| w.is_empty()))
            })
        })?;
        for id in 1..=n {
            let c = self.cluster();
            if !(c.corosync_alive(id) && c.daemon_alive(id)) {
                c.restart_node(id)?;
            }
        }
        self.cluster()
            .wait_for("every daemon synced", REPAIR, |c| {
                (1..=n).all(|id| {
                    c.status(id).is_ok_and(|s| {
                        s["synced"] == true
                            && s["members"].as_array().map(|m| m.len()) == Some(n as usize)
                    })
                })
            })?;
        for id in 1..=n {
            self.cluster()
                .kernel(id, &["set", "--fail-next-replays", "0"])?;
        }
        self.mount_everywhere()
    }
}

fn fmt_ms(v: Option<u64>) -> String {
    v.map(|m| format!("{m} ms")).unwrap_or_else(|| "-".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(t: u64, table: &str, what: &str) -> Entry {
        Entry {
            t_ms: t,
            t_us: t * 1000,
            table: table.into(),
            what: what.into(),
            result: None,
            end_ms: None,
            end_us: None,
        }
    }

    /// Node 3 (jid 2 of t:fs1) crashes at 1000 and is fenced at 2000; node 1 replays at
    /// 2100..2400; nodes 1 and 2 unblock at 2500.
    fn good() -> CycleRecords {
        let mut r = CycleRecords {
            fault_ms: 1000,
            fenced: vec![(2000, 3)],
            killed: vec![(1000, 3)],
            victims: vec![Victim {
                node: 3,
                journals: vec![("t:fs1".into(), 2)],
            }],
            tables: vec![("t:fs1".into(), "fs1".into())],
            online_at_fault: vec![(1, "t:fs1".into()), (2, "t:fs1".into())],
            now_ms: 3000,
            ..CycleRecords::default()
        };
        let mut block1 = entry(1500, "t:fs1", "write block=1");
        block1.result = Some("ok".into());
        block1.end_ms = Some(1501);
        r.kernel.insert(
            1,
            vec![
                entry(1500, "t:fs1", "write block=1"),
                block1.clone(),
                entry(2050, "t:fs1", "write recover=2"),
                entry(2100, "t:fs1", "replay start jid=2"),
                entry(2400, "t:fs1", "replay end jid=2 Done"),
                entry(2500, "t:fs1", "write block=0"),
            ],
        );
        r.kernel.insert(
            2,
            vec![
                entry(1500, "t:fs1", "write block=1"),
                block1,
                entry(2500, "t:fs1", "write block=0"),
            ],
        );
        r.dlm.insert(
            2,
            vec![DlmRecord {
                t_ms: 1600,
                op: "notify".into(),
                name: "fs1".into(),
                nodeid: Some(3),
                result: Some(0),
            }],
        );
        r
    }

    #[test]
    fn a_clean_recovery_passes() {
        let r = good();
        assert_eq!(check_cycle(&r), Vec::<String>::new());
        assert_eq!(all_replayed_at(&r), Some(2400));
    }

    #[test]
    fn each_broken_rule_is_reported() {
        let mut r = good();
        r.fenced = vec![(2200, 3)];
        assert!(check_cycle(&r).iter().any(|f| f.starts_with("S1:")));

        let mut r = good();
        r.kernel
            .get_mut(&2)
            .unwrap()
            .push(entry(2300, "t:fs1", "replay start jid=2"));
        assert!(check_cycle(&r).iter().any(|f| f.starts_with("S2:")));

        let mut r = good();
        r.kernel
            .get_mut(&2)
            .unwrap()
            .push(entry(2200, "t:fs1", "write block=0"));
        assert!(check_cycle(&r).iter().any(|f| f.starts_with("S3:")));

        let mut r = good();
        r.dlm.get_mut(&2).unwrap()[0].t_ms = 1400;
        assert!(check_cycle(&r).iter().any(|f| f.starts_with("S8:")));
        // A node still mounting at the fault has no jid: its kernel waits, S8 does not bind.
        r.online_at_fault.retain(|(n, _)| *n != 2);
        assert!(!check_cycle(&r).iter().any(|f| f.starts_with("S8:")));

        let mut r = good();
        r.kernel
            .insert(3, vec![entry(1200, "t:fs1", "write recover=0")]);
        assert!(check_cycle(&r)
            .iter()
            .any(|f| f.starts_with("S1: failed node 3")));

        let mut r = good();
        r.kernel.get_mut(&1).unwrap().push(entry(
            2600,
            "t:fs1",
            "VIOLATION: write jid=1 refused: EBUSY (the jid is already set)",
        ));
        assert!(check_cycle(&r).iter().any(|f| f.starts_with("kernel:")));
    }

    #[test]
    fn an_s5_finding_before_detection_about_a_victims_journal_is_a_note() {
        let mut r = good();
        let s5 = "VIOLATION: S5: the mount completes while journals [2] are dirty and no live \
                  node holds them (not replayed)";
        r.kernel.get_mut(&2).unwrap().push(entry(1200, "t:fs1", s5));
        let found = check_cycle(&r);
        assert!(found.iter().any(|f| f.starts_with("note: ")), "{found:?}");
        assert!(
            !found.iter().any(|f| f.starts_with("kernel: ")),
            "{found:?}"
        );
        // After the survivors blocked it is the daemon's doing.
        r.kernel.get_mut(&2).unwrap().last_mut().unwrap().t_ms = 1600;
        assert!(check_cycle(&r).iter().any(|f| f.starts_with("kernel: ")));
    }

    #[test]
    fn a_replay_cut_by_a_crash_ends_at_the_crash() {
        let mut r = good();
        // Node 2 started replaying jid 2 at 1900 and was killed at 2000: no overlap with
        // node 1's replay from 2100.
        r.kernel
            .get_mut(&2)
            .unwrap()
            .push(entry(1900, "t:fs1", "replay start jid=2"));
        r.killed.push((2000, 2));
        let found = check_cycle(&r);
        assert!(!found.iter().any(|f| f.starts_with("S2:")), "{found:?}");
        // Without the kill it would still be running at node 1's replay.
        r.killed.pop();
        assert!(check_cycle(&r).iter().any(|f| f.starts_with("S2:")));
    }

    #[test]
    fn the_rng_replays_from_its_seed() {
        let a: Vec<u64> = (0..5)
            .scan(Rng::new(7), |r, _| Some(r.next_u64()))
            .collect();
        let b: Vec<u64> = (0..5)
            .scan(Rng::new(7), |r, _| Some(r.next_u64()))
            .collect();
        assert_eq!(a, b);
    }
}
