//! `gfs_soak`: a chaos soak on a real corosync cluster in network namespaces (root).
//!
//! ```text
//! gfs_soak [--seed N] [--cycles C] [--nodes N] [--filesystems F] [--bound-secs S]
//!          [--replay-ms MS] [--daemon-arg OPTION]...
//! ```
//! Prints the seed first, a line per cycle (fault, targets, times, checks) and a summary;
//! exits 1 when a safety rule was broken or a recovery hung. See `gfs_testkit::soak`.

use std::time::Duration;

use clap::Parser;
use gfs_testkit::cluster::missing_prerequisite;
use gfs_testkit::soak::{Soak, SoakOptions};

#[derive(Parser, Debug)]
#[command(
    name = "gfs_soak",
    about = "Chaos soak: random faults on a real corosync cluster"
)]
struct Args {
    /// The RNG seed (default: from the clock; printed first either way).
    #[arg(long)]
    seed: Option<u64>,
    /// Fault cycles to run.
    #[arg(long, default_value_t = 50)]
    cycles: u32,
    /// Cluster nodes (3 or more).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(3..=9))]
    nodes: u32,
    /// Filesystems mounted on every node.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=8))]
    filesystems: u32,
    /// Seconds every recovery must finish in, else it counts as a hang.
    #[arg(long, default_value_t = 60)]
    bound_secs: u64,
    /// Duration of one journal replay in the kernel simulators.
    #[arg(long, default_value_t = 300)]
    replay_ms: u64,
    /// An extra gfs_controld option for every daemon (repeatable), e.g. `--daemon-arg
    /// --enable_fencing=0` to see the checks report S1.
    #[arg(long = "daemon-arg", allow_hyphen_values = true)]
    daemon_args: Vec<String>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(why) = missing_prerequisite() {
        anyhow::bail!("gfs_soak cannot run: {why}");
    }
    let seed = args
        .seed
        .unwrap_or_else(|| gfs_testkit::now_ms() % 1_000_000);
    let mut soak = Soak::new(SoakOptions {
        seed,
        cycles: args.cycles,
        nodes: args.nodes,
        filesystems: args.filesystems,
        bound: Duration::from_secs(args.bound_secs),
        replay_ms: args.replay_ms,
        daemon_args: args.daemon_args,
    });
    let ok = soak.run()?.ok();
    // The cluster goes with the soak: exit(3) would skip its teardown.
    drop(soak);
    if !ok {
        eprintln!("gfs_soak: FAILED (seed {seed}): rerun with --seed {seed}");
        std::process::exit(1);
    }
    Ok(())
}
