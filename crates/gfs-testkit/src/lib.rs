//! Test tools for gfs_controld (not packaged).
//!
//! * [`proto`]: the JSON request/reply lines spoken between `gfs_kernel_sim` clients and its
//!   server (one request line, one reply line per connection), and the `status --json` shape.
//! * [`uevent`]: sending kernel-format uevents on `NETLINK_KOBJECT_UEVENT` group 1.
//! * [`client`]: a blocking client for the simulator's unix socket.
//! * [`dlm_sim`]: a test double of dlm_controld's fs-control socket (`gfs_dlm_sim`).
//! * [`cluster`]: a real corosync cluster in network namespaces, with kernel simulators.
//! * [`pacemaker`]: a real pacemaker cluster in network namespaces running gfs_controld as
//!   its OCF clone with pacemaker fencing.
//! * [`soak`]: a chaos soak on that cluster: seeded random faults, safety checks on the records.
//! * [`vm`]: the real-kernel tier: QEMU VMs with Debian's gfs2 and dlm on a shared disk.

pub mod client;
pub mod cluster;
pub mod dlm_sim;
pub mod pacemaker;
pub mod proto;
pub mod soak;
pub mod uevent;
pub mod vm;

/// Wall-clock milliseconds since the Unix epoch (the timeline's clock).
/// Wall-clock microseconds since the epoch.
pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
