//! `gfs_cluster_demo`: the README's `make demo`. Brings up a 3-node corosync cluster in network
//! namespaces (corosync, gfs_kernel_sim and gfs_controld on each node), mounts a filesystem on
//! every node, kills one node, and prints the recovery as a timeline read from the kernels,
//! the fence agent and the daemons. Needs root. Tears everything down at the end.

use std::process::{Command, ExitCode};
use std::time::Duration;

use anyhow::{Context, Result};
use gfs_testkit::cluster::{bin_dir, missing_prerequisite, Cluster, ClusterOptions, TOKEN_MS};
use gfs_testkit::now_ms;

const FS: &str = "fs1";
const VICTIM: u32 = 3;
const SURVIVORS: [u32; 2] = [1, 2];

fn main() -> ExitCode {
    if let Some(why) = missing_prerequisite() {
        eprintln!("gfs_cluster_demo: cannot bring up a cluster here: {why}");
        return ExitCode::FAILURE;
    }
    match demo() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gfs_cluster_demo: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn demo() -> Result<()> {
    println!("gfs_controld demo: a 3-node corosync cluster on this machine\n");
    let started = now_ms();
    let opts = ClusterOptions {
        replay_ms: 500,
        ..ClusterOptions::default()
    };
    let mut c = Cluster::start(opts).context("bringing up the cluster")?;
    println!(
        "cluster up in {:.1}s: nodes 1-3 in network namespaces on a bridge (10.77.0.1-3), each with\n\
         corosync (knet, token {TOKEN_MS} ms), a GFS2 kernel simulator (sysfs through FUSE, netlink uevents) and\n\
         gfs_controld; fencing by an agent that kills the victim node's processes\n",
        (now_ms() - started) as f64 / 1000.0
    );

    let table = c.table(FS);
    println!("mount {table} on nodes 1, 2, 3");
    for id in 1..=3 {
        c.mount(id, FS)
            .with_context(|| format!("mounting on node {id}"))?;
        let t = c.kernel_table(id, FS)?;
        let first = if t["first"] == 1 {
            ", first mounter: replayed every journal, then FIRSTMOUNT=Done"
        } else {
            ""
        };
        println!("  node {id}: jid {}{first}", t["jid"]);
    }
    let victim_jid = c.kernel_table(VICTIM, FS)?["jid"].as_u64().unwrap_or(0);

    println!("\nkill -9 node {VICTIM} (its corosync, gfs_controld and kernel), which holds jid {victim_jid}");
    let t0 = now_ms();
    c.crash_node(VICTIM);
    c.wait_for("recovery", Duration::from_secs(60), |c| {
        SURVIVORS.iter().all(|&id| {
            c.kernel_table(id, FS)
                .map(|t| t["blocked"] == false)
                .unwrap_or(false)
        }) && SURVIVORS.iter().any(|&id| {
            c.kernel_table(id, FS)
                .map(|t| {
                    t["replays_done"]
                        .as_array()
                        .is_some_and(|r| r.iter().any(|j| j.as_u64() == Some(victim_jid)))
                })
                .unwrap_or(false)
        })
    })?;

    let mut events: Vec<(u64, String)> = Vec::new();
    for id in SURVIVORS {
        for (t, what) in membership_changes(&c, id) {
            if t >= t0 {
                events.push((t, format!("node {id}  corosync: {what}")));
            }
        }
        let status = c.kernel_status(id)?;
        for e in status["timeline"].as_array().into_iter().flatten() {
            let t = e["t_ms"].as_u64().unwrap_or(0);
            let what = e["what"].as_str().unwrap_or("");
            if t < t0 {
                continue;
            }
            let line = match what {
                "write block=1" => "kernel blocked (block=1)".to_owned(),
                "write block=0" => "kernel unblocked (block=0)".to_owned(),
                w if w.starts_with("write recover=") => {
                    format!("asked to replay jid {}", &w["write recover=".len()..])
                }
                w if w.starts_with("replay start jid=") => {
                    format!("replay of jid {} started", &w["replay start jid=".len()..])
                }
                w if w.starts_with("replay end jid=") => {
                    let rest = &w["replay end jid=".len()..];
                    let (jid, result) = rest.split_once(' ').unwrap_or((rest, ""));
                    format!("replay of jid {jid} finished: {result}")
                }
                w if w.starts_with("uevent change JID=") => {
                    format!("uevent {}", &w["uevent ".len()..])
                }
                _ => continue,
            };
            events.push((t, format!("node {id}  {line}")));
        }
    }
    for (t, nodeid) in c.fence_log() {
        if t >= t0 {
            events.push((
                t,
                format!("fence  node {nodeid} fenced (agent killed its processes)"),
            ));
        }
    }
    events.sort();
    println!("\nrecovery timeline (from the kill):");
    for (t, what) in &events {
        println!(
            "  {:>8}  {what}",
            format!("+{:.3}s", (t - t0) as f64 / 1000.0)
        );
    }
    if let Some((end, _)) = events.iter().rev().find(|(_, w)| w.contains("unblocked")) {
        let detected = events
            .iter()
            .find(|(_, w)| w.contains("corosync:"))
            .map(|(t, _)| t - t0)
            .unwrap_or(0);
        println!(
            "\nall survivors unblocked {:.3}s after the kill ({:.3}s of it corosync's failure detection)",
            (end - t0) as f64 / 1000.0,
            detected as f64 / 1000.0
        );
    }

    println!("\n$ gfs_control status   (on node 1)");
    let out = Command::new(bin_dir().join("gfs_control"))
        .arg("--socket")
        .arg(c.control_socket(1))
        .arg("status")
        .output()?;
    print!("{}", String::from_utf8_lossy(&out.stdout));
    println!("\n$ gfs_control ls   (on node 1)");
    let out = Command::new(bin_dir().join("gfs_control"))
        .arg("--socket")
        .arg(c.control_socket(1))
        .arg("ls")
        .output()?;
    print!("{}", String::from_utf8_lossy(&out.stdout));
    println!("\ntearing down the cluster");
    drop(c);
    Ok(())
}

/// `(unix ms, text)` of the daemon-group membership changes in node `id`'s daemon log.
fn membership_changes(c: &Cluster, id: u32) -> Vec<(u64, String)> {
    let log = std::fs::read_to_string(c.node_dir(id).join("gfs_controld.log")).unwrap_or_default();
    log.lines()
        .filter(|l| l.contains("CPG membership change group=gfs:controld"))
        .filter_map(|l| {
            let t = parse_rfc3339_ms(l.split_whitespace().next()?)?;
            let left = l.split("left=").nth(1).unwrap_or("").trim();
            Some((t, format!("membership change, left {left}")))
        })
        .collect()
}

/// `2026-11-25T14:29:38.462982Z` as unix milliseconds (tracing's UTC timestamps).
fn parse_rfc3339_ms(text: &str) -> Option<u64> {
    gfs_testkit::vm::evidence::parse_rfc3339(text).map(|s| (s * 1000.0) as u64)
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_tracing_timestamps() {
        assert_eq!(
            super::parse_rfc3339_ms("1970-01-02T00:00:01.500000Z"),
            Some(86_401_500)
        );
    }
}
