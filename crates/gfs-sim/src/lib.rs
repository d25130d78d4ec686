//! A deterministic simulator for gfs_controld.
//!
//! It drives many [`gfs_core::Node`]s through a model of corosync CPG with the same guarantees
//! (agreed order within a partition, every configuration change at the same point of every
//! member's stream, partitions and merges), a votequorum model, a fencing oracle and a GFS2
//! kernel model per node and filesystem. Everything follows from one seed. After every step it
//! checks the safety rules S1–S7 of SPEC.md; after the faults stop it checks liveness (L1).

mod rng;
mod world;

pub use rng::Rng;
pub use world::{
    run, KernelView, Outcome, ReplayRecord, Rule, Scenario, SimConfig, Violation, WriteRecord,
};

pub mod cost;
pub mod demo;

/// The configuration a sweep uses for `seed`: node and filesystem counts drawn from the seed
/// unless fixed (3–7 nodes, 1–4 filesystems).
pub fn sweep_config(seed: u64, nodes: Option<u32>, filesystems: Option<u32>) -> SimConfig {
    let mut rng = Rng::new(seed.wrapping_mul(0x2545_F491_4F6C_DD1D));
    let n = nodes.unwrap_or_else(|| rng.range(3, 7) as u32);
    let f = filesystems.unwrap_or_else(|| rng.range(1, 4) as u32);
    SimConfig::new(seed, n, f)
}
