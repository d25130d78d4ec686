//! The gfs_controld protocol as a pure, deterministic state machine.
//!
//! No IO, no clock, no threads: [`Input`]s go in through [`Node::handle`] with the current
//! [`Time`], [`Output`]s come out of [`Node::poll_output`], and the next deadline comes out of
//! [`Node::poll_timeout`].
//!
//! # Run loop
//!
//! Every driver (the daemon, the simulator, the protocol tests) runs the same loop through
//! [`drive`]: feed one input, execute each output in the order the core produced it (a result
//! the driver has at once is fed back before the next output), then sleep until the next input
//! or the deadline. Orderings that matter (a fencing request before the log lines and writes of
//! the same failure) are the core's own output order, not the driver's.
//!
//! ```
//! use gfs_core::{drive, Driver, Input, Node, NodeConfig, Output, Time};
//!
//! struct Shell {
//!     node: Node,
//!     joined: Vec<String>,
//! }
//!
//! impl Driver for Shell {
//!     type Error = std::io::Error;
//!     fn node(&mut self) -> Option<&mut Node> {
//!         Some(&mut self.node)
//!     }
//!     fn execute(&mut self, output: Output) -> Result<Option<Input>, std::io::Error> {
//!         match output {
//!             Output::JoinGroup { group } => self.joined.push(group), // cpg_join
//!             Output::Log(record) => println!("{record}"),            // tracing
//!             _ => {} // mcast, sysfs writes, fencing: their results come back as inputs
//!         }
//!         Ok(None)
//!     }
//! }
//!
//! let mut shell = Shell { node: Node::new(NodeConfig::new(1, "alpha"), Time::ZERO), joined: vec![] };
//! gfs_core::drain(&mut shell, Time::ZERO)?; // the join a new node starts with
//! // The event loop: CPG, quorum, uevents, sysfs and fencing results, and the deadline.
//! for (now, input) in [(Time(5), Input::Quorum { quorate: true }), (Time(9), Input::Timeout)] {
//!     drive(&mut shell, now, input)?;
//!     let _wake_at: Option<Time> = shell.node.poll_timeout(); // arm the timer
//! }
//! assert_eq!(shell.joined, ["gfs:controld"]);
//! # Ok::<(), std::io::Error>(())
//! ```

pub mod dlmc;
pub mod errno;
mod io;
mod time;
mod types;
pub mod uevent;
pub mod view;

pub use io::{ConfChg, Input, Level, LogRecord, Output, WriteError};
pub use time::Time;
pub use types::*;
pub use uevent::{format_uevent, parse_uevent, KernelEvent, KernelEventKind, UeventError};

/// Journal ids are searched in `0..MAX_JOURNALS`.
pub const MAX_JOURNALS: u32 = 256;

mod driver;
mod node;
mod state;
pub mod wire;

pub use driver::{drain, drive, Driver};
#[cfg(feature = "sabotage")]
pub use node::Sabotage;
pub use node::{Node, NodeConfig};
/// The replicated state's internals, for the simulator's checkers and the wire tests.
#[doc(hidden)]
pub use state::{Dirty, FsState, MState, Member, Mounter, Replicated};
