//! The line protocol between the host harness and the guest agent (`gfs_vm_agent`), spoken
//! over the virtio-serial port [`PORT_NAME`]: one JSON object per line each way. Requests
//! carry an id; the agent runs each in its own thread and answers with the same id, so a
//! command that blocks (a mount waiting for its journal id) never holds up the next one.

use serde::{Deserialize, Serialize};

/// The virtio-serial port's name (qemu `virtserialport,name=`).
pub const PORT_NAME: &str = "gfsvm.ctl";
/// The 9p mount tag of the node's host-side log directory, mounted read-write at [`LOG_DIR`].
pub const LOG_TAG: &str = "gfsvmlog";
/// Where a guest writes everything the host must keep, also after the VM is killed.
pub const LOG_DIR: &str = "/var/log/gfsvm";
/// TCP port of the host's fence service on the bridge.
pub const FENCE_PORT: u16 = 7777;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Request {
    pub id: u64,
    pub op: Op,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// `bash -c cmd`, its output (stdout and stderr together) and exit status; killed with its
    /// process group after `timeout_ms` (status 124).
    Sh { cmd: String, timeout_ms: u64 },
    /// `bash -c cmd` in the background, in a session of its own, output appended to
    /// `LOG_DIR/<log>`; the reply carries its pid.
    Spawn { cmd: String, log: String },
    /// The guest's clocks, to map its time stamps onto the host's.
    Clock,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Reply {
    pub id: u64,
    pub rc: i32,
    #[serde(default)]
    pub out: String,
    #[serde(default)]
    pub pid: Option<u32>,
    /// CLOCK_REALTIME and CLOCK_MONOTONIC in microseconds, read together (Clock).
    #[serde(default)]
    pub wall_us: Option<u64>,
    #[serde(default)]
    pub mono_us: Option<u64>,
}
