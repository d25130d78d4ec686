//! `cargo bench --bench scale`: what many filesystems cost a node. A real 3-node corosync
//! cluster in network namespaces (`gfs_testkit::cluster`) mounts `GFS_SCALE_FS` (default 256)
//! filesystems on every node through `gfs_kernel_sim`; before and after, for each node, it
//! prints corosync's RSS, the libqb IPC files corosync has mapped (/dev/shm), and the
//! daemon's RSS and open file descriptors; then the daemon's wakeups (context switches) over
//! 10 s of idleness. Prints, does not assert (the cluster test `idle_daemon_sleeps` asserts the
//! wakeups).
//!
//! Needs root and corosync; builds the release binaries unless `GFS_BIN_DIR` names them.
//! Without root it prints why and exits 0, unless `CI` is set (then it fails).

use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use gfs_testkit::cluster::{bin_dir, missing_prerequisite, Cluster, ClusterOptions, NodeUsage};

const NODES: [u32; 3] = [1, 2, 3];
/// Mounts started at once per node.
const BATCH: usize = 32;
const IDLE: Duration = Duration::from_secs(10);

fn main() -> ExitCode {
    let ci = std::env::var_os("CI").is_some();
    let skip = |why: String| {
        if ci {
            eprintln!("bench scale: cannot run under CI: {why}");
            ExitCode::FAILURE
        } else {
            println!("bench scale: skipped: {why} (needs root and corosync)");
            ExitCode::SUCCESS
        }
    };
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return skip("not root (network namespaces need it)".into());
    }
    if std::env::var_os("GFS_BIN_DIR").is_none() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let built = Command::new(cargo)
            .args(["build", "--release", "--workspace", "--bins", "-q"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status();
        if !built.is_ok_and(|s| s.success()) {
            eprintln!(
                "bench scale: cargo build failed; using {}",
                bin_dir().display()
            );
        }
    }
    if let Some(why) = missing_prerequisite() {
        return skip(why);
    }
    match bench() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench scale: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn print_usage(label: &str, usage: &[(u32, NodeUsage)]) {
    println!("{label}");
    println!("  node  corosync RSS  corosync /dev/shm  daemon RSS  daemon fds");
    for (id, u) in usage {
        println!(
            "  {id:>4}  {:>12}  {:>17}  {:>10}  {:>10}",
            mib(u.corosync_rss_kib),
            mib(u.corosync_shm_kib),
            mib(u.daemon_rss_kib),
            u.daemon_fds
        );
    }
}

fn usage(c: &Cluster) -> Result<Vec<(u32, NodeUsage)>> {
    NODES.iter().map(|&id| Ok((id, c.usage(id)?))).collect()
}

/// Wakeups per second of each daemon over `IDLE`.
fn idle_wakeups(c: &Cluster) -> Result<Vec<(u32, f64)>> {
    let before: Vec<u64> = NODES
        .iter()
        .map(|&id| c.daemon_wakeups(id))
        .collect::<Result<_>>()?;
    std::thread::sleep(IDLE);
    NODES
        .iter()
        .zip(before)
        .map(|(&id, b)| {
            let after = c.daemon_wakeups(id)?;
            Ok((id, (after - b) as f64 / IDLE.as_secs_f64()))
        })
        .collect()
}

fn bench() -> Result<()> {
    let nfs: usize = std::env::var("GFS_SCALE_FS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let opts = ClusterOptions {
        nodes: 3,
        cluster_name: "gfsscale".into(),
        replay_ms: 50,
        ..ClusterOptions::default()
    };
    let c = Cluster::start(opts).context("bringing up the cluster")?;
    std::thread::sleep(Duration::from_secs(2));
    let before = usage(&c)?;
    let shm_before = shm_total_kib();
    let idle_before = idle_wakeups(&c)?;

    let started = Instant::now();
    let names: Vec<String> = (1..=nfs).map(|i| format!("fs{i}")).collect();
    for chunk in names.chunks(BATCH) {
        let mut children = Vec::new();
        for &id in &NODES {
            for fs in chunk {
                children.push((id, fs, c.mount_async(id, fs)?));
            }
        }
        for (id, fs, child) in children {
            let out = child.wait_with_output()?;
            if !out.status.success() {
                bail!(
                    "mount of {fs} on node {id} failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
        }
    }
    let mounted_in = started.elapsed();
    std::thread::sleep(Duration::from_secs(2));
    let after = usage(&c)?;
    let shm_after = shm_total_kib();
    let idle_after = idle_wakeups(&c)?;
    let ls_started = Instant::now();
    let ls = c.ls(1)?;
    let ls_took = ls_started.elapsed();
    let listed = ls.as_array().map_or(0, Vec::len);

    println!(
        "bench scale: 3 nodes, {nfs} filesystems mounted on each ({} mounts in {:.1} s)",
        nfs * NODES.len(),
        mounted_in.as_secs_f64()
    );
    print_usage("before (no filesystems)", &before);
    print_usage(&format!("after ({nfs} filesystems on every node)"), &after);
    println!("growth per node");
    for ((id, b), (_, a)) in before.iter().zip(&after) {
        // Shared memory corosync touched is part of its RSS already: not added twice.
        let extra = (a.corosync_rss_kib + a.daemon_rss_kib)
            .saturating_sub(b.corosync_rss_kib + b.daemon_rss_kib);
        println!(
            "  node {id}: corosync RSS {:+.1} MiB, /dev/shm {:+.1} MiB, daemon RSS {:+.1} MiB, \
             daemon fds {:+}; corosync + daemon RSS {:+.1} MiB",
            (a.corosync_rss_kib as f64 - b.corosync_rss_kib as f64) / 1024.0,
            (a.corosync_shm_kib as f64 - b.corosync_shm_kib as f64) / 1024.0,
            (a.daemon_rss_kib as f64 - b.daemon_rss_kib as f64) / 1024.0,
            a.daemon_fds as i64 - b.daemon_fds as i64,
            extra as f64 / 1024.0
        );
    }
    println!(
        "/dev/shm on the host (every cluster's libqb IPC files): {} before, {} after",
        mib(shm_before),
        mib(shm_after)
    );
    println!("idle daemon wakeups per second over {} s", IDLE.as_secs());
    for ((id, b), (_, a)) in idle_before.iter().zip(&idle_after) {
        println!("  node {id}: {b:.1} with no filesystems, {a:.1} with {nfs}");
    }
    println!(
        "gfs_control ls --json on node 1: {listed} filesystems in {} ms",
        ls_took.as_millis()
    );
    Ok(())
}

/// Allocated size of everything in /dev/shm (other processes' files included: compare the two).
fn shm_total_kib() -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir("/dev/shm")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.blocks() * 512 / 1024)
        .sum()
}
