//! gfs_controld's IO shell: thin adapters that feed the sans-IO protocol core ([`gfs_core`])
//! with events from corosync, the kernel, fencing and operators, and carry out its actions.
//! No protocol decision is made here.

pub mod args;
mod clock;
pub mod config;
pub mod control;
pub mod corosync;
pub mod daemon;
pub mod dlm;
pub mod fence;
pub mod kernel;
pub mod logging;
pub mod process;
pub mod ratelimit;
pub mod startup;
pub mod systemd;
