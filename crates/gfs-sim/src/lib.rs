//! A deterministic simulator for gfs_controld.
//!
//! It drives many [`gfs_core::Node`]s through a model of corosync CPG with the same guarantees
//! (agreed order within a partition, every configuration change at the same point of every
//! member's stream, partitions and merges), a votequorum model, a fencing oracle and a GFS2
//! kernel model per node and filesystem. Everything follows from one seed. After every step it
//! checks the safety rules S1–S7 of SPEC.md; after the faults stop it checks liveness (L1).

pub mod errno;
pub mod kernel_model;
mod rng;
mod world;

pub use kernel_model::KernelModel;
pub use rng::Rng;
pub use world::{
    run, KernelView, Outcome, ReplayRecord, Rule, Scenario, SimConfig, Violation, WriteRecord,
    WORKLOAD_QUIET_MS,
};

pub mod cost;
pub mod demo;

/// The configuration a sweep uses for `seed`: node and filesystem counts drawn from the seed
/// unless fixed (3–7 nodes, 1–4 filesystems).
pub fn sweep_config(seed: u64, nodes: Option<u32>, filesystems: Option<u32>) -> SimConfig {
    sweep_config_in(
        seed,
        nodes.map_or((3, 7), |n| (n, n)),
        filesystems.map_or((1, 4), |f| (f, f)),
    )
}

/// A seed's configuration with its node and filesystem counts drawn from inclusive ranges.
pub fn sweep_config_in(seed: u64, nodes: (u32, u32), filesystems: (u32, u32)) -> SimConfig {
    let mut rng = Rng::new(seed.wrapping_mul(0x2545_F491_4F6C_DD1D));
    let n = rng.range(u64::from(nodes.0), u64::from(nodes.1)) as u32;
    let f = rng.range(u64::from(filesystems.0), u64::from(filesystems.1)) as u32;
    SimConfig::new(seed, n, f)
}
