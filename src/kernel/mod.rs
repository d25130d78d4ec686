//! The kernel side of the daemon (SPEC §2): the GFS2 `lock_module/` sysfs files it writes (off
//! the event loop, through [`SysfsExecutor`]), the gfs2 kobject uevents it listens to on
//! `NETLINK_KOBJECT_UEVENT`, and the DLM's `recover_callbacks` setting that tells whether the
//! kernel or the daemon coordinates a filesystem's recovery.
//!
//! Thin IO adapters only: every protocol decision is made in [`gfs_core`]; parsing of uevents is
//! [`gfs_core::parse_uevent`]'s job.

mod configfs;
mod executor;
mod netlink;
mod sysfs;

pub use configfs::{recover_callbacks, RecoverCallbacks};
pub use executor::{SysfsDone, SysfsExecutor, SysfsOp, MAX_WORKERS, SLOW_OP};
pub use netlink::{netlink_sender_is_kernel, UeventListener, UeventSender};
pub use sysfs::{parse_mounted_ro, ExistingTable, SysfsWriter};

/// A failure of the kernel adapters themselves (not of a single uevent, not of a sysfs write:
/// [`SysfsWriter::write`] reports the raw errno so the caller can tell EBUSY from ENODEV).
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// Creating, configuring, binding or reading the netlink socket failed.
    #[error("NETLINK_KOBJECT_UEVENT socket: cannot {op}: {source}")]
    Socket {
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The socket's receive queue overflowed (ENOBUFS): the kernel dropped uevents we will never
    /// see. Not fatal: the socket keeps working, but the daemon's view may now be stale. Keep
    /// reading: the kernel drops every new uevent for this socket until its queue is drained.
    #[error(
        "uevent receive queue overflowed (ENOBUFS): kernel uevents were lost; \
         filesystem state may be stale"
    )]
    Overflow,
    /// The test kit's uevent socket (`uevent_test_socket`) could not be set up.
    #[error("uevent test socket {}: cannot {op}: {source}", path.display())]
    TestSocket {
        path: std::path::PathBuf,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
}

impl KernelError {
    fn socket(op: &'static str, errno: nix::errno::Errno) -> KernelError {
        KernelError::Socket {
            op,
            source: std::io::Error::from(errno),
        }
    }
}
