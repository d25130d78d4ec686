//! The chaos soak's short form: five fault cycles (seeded random faults: node, daemon and
//! corosync kills, partitions with and without a merge, slow and failing fencing, failed
//! replays, mounts and unmounts during recovery) on a real 5-node corosync cluster, with the
//! safety checks on the kernel simulators' records after every fault and a 60 s bound on every
//! recovery. `make soak` runs the long form (`gfs_soak`, 50 cycles).
//!
//! Root, corosync and the workspace binaries: skipped with a note otherwise, except under CI,
//! where a missing prerequisite fails. `GFS_SOAK_SEED` replays a run (the seed is printed).

use std::time::Duration;

use gfs_testkit::cluster::require_prerequisites;
use gfs_testkit::soak::{Soak, SoakOptions};

#[test]
fn soak_five_fault_cycles_break_no_safety_rule_and_all_recover() {
    if !require_prerequisites("soak") {
        return;
    }
    let seed = std::env::var("GFS_SOAK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| gfs_testkit::now_ms() % 1_000_000);
    let mut soak = Soak::new(SoakOptions {
        seed,
        cycles: 5,
        nodes: 5,
        filesystems: 2,
        bound: Duration::from_secs(60),
        ..SoakOptions::default()
    });
    let report = soak
        .run()
        .unwrap_or_else(|e| panic!("soak (seed {seed}): {e:#}"))
        .clone();
    drop(soak);
    assert!(
        report.ok(),
        "soak (GFS_SOAK_SEED={seed}): {}\n{}",
        report.summary(),
        report.violations.join("\n")
    );
    assert_eq!(report.cycles, 5);
}
