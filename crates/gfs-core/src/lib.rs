//! The gfs_controld protocol as a pure, deterministic state machine.
//!
//! No IO, no clock, no threads: [`Input`]s go in through [`Node::handle`] with the current
//! [`Time`], [`Output`]s come out of [`Node::poll_output`], and the next deadline comes out of
//! [`Node::poll_timeout`]. The driver (the daemon or the simulator) executes outputs in order.

pub mod dlmc;
mod io;
mod time;
mod types;
pub mod uevent;
pub mod view;

pub use io::{Input, Level, LogRecord, Output};
pub use time::Time;
pub use types::*;
pub use uevent::{format_uevent, parse_uevent, KernelEvent, KernelEventKind, UeventError};

/// Journal ids are searched in `0..MAX_JOURNALS`.
pub const MAX_JOURNALS: u32 = 256;

mod node;
mod state;
pub mod wire;

pub use node::{Node, NodeConfig, Sabotage};
pub use state::{Dirty, FsState, MState, Member, Mounter, Replicated};
