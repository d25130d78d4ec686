//! `cargo bench -p gfs-sim`: figures, not assertions.
//!
//! Prints, for one node failure with 16 members and 1, 16 and 256 filesystems, the daemon-group
//! messages and causal rounds until every member is unblocked (the historical daemon needed a
//! START per member per filesystem plus results: N·F + F or more), then measures how many core
//! events per second one daemon handles.

use std::time::Instant;

use criterion::{criterion_group, Criterion};
use gfs_sim::cost::recovery_cost;

fn figures() {
    println!("one node failure, 16 members:");
    println!(
        "{:>12} {:>10} {:>8} {:>14} {:>14}",
        "filesystems", "messages", "rounds", "N+F target", "historical"
    );
    for f in [1u32, 16, 256] {
        let c = recovery_cost(16, f);
        println!(
            "{:>12} {:>10} {:>8} {:>14} {:>14}",
            f,
            c.messages,
            c.rounds,
            16 + f,
            (16 - 1) * f + f
        );
    }
    // Events per second: the whole 16-node, 256-filesystem run (mounts, failure, recovery)
    // divided by the core inputs all daemons handled.
    let start = Instant::now();
    let c = recovery_cost(16, 256);
    let secs = start.elapsed().as_secs_f64();
    println!(
        "core throughput: {} inputs in {:.3} s = {:.0} events/s (16 daemons, 256 filesystems, one thread)",
        c.inputs,
        secs,
        c.inputs as f64 / secs
    );
}

fn bench(c: &mut Criterion) {
    c.bench_function(
        "recovery 16 nodes x 16 filesystems (mount, fail, recover)",
        |b| b.iter(|| recovery_cost(16, 16)),
    );
    c.bench_function("simulated seed (3-7 nodes, faults)", |b| {
        let mut seed = 0;
        b.iter(|| {
            seed += 1;
            gfs_sim::run(gfs_sim::sweep_config(seed, None, None))
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10);
    targets = bench
}

fn main() {
    figures();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
