//! Kernel-format uevents sent on `NETLINK_KOBJECT_UEVENT`, multicast group 1, in the current
//! network namespace (needs CAP_NET_ADMIN over it).

use std::os::fd::{AsRawFd, OwnedFd};

use gfs_core::{format_uevent, KernelEvent};
use nix::errno::Errno;
use nix::sys::socket::{
    bind, sendto, socket, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType,
};

/// A socket that sends uevents the way the kernel does.
#[derive(Debug)]
pub struct UeventSender {
    fd: OwnedFd,
}

impl UeventSender {
    pub fn new() -> std::io::Result<UeventSender> {
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkKObjectUEvent,
        )?;
        bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0))?;
        Ok(UeventSender { fd })
    }

    /// Sends raw bytes as one datagram to group 1.
    pub fn send_raw(&self, bytes: &[u8]) -> std::io::Result<()> {
        let dest = NetlinkAddr::new(0, 1);
        loop {
            match sendto(self.fd.as_raw_fd(), bytes, &dest, MsgFlags::empty()) {
                Ok(n) if n == bytes.len() => return Ok(()),
                Ok(n) => {
                    return Err(std::io::Error::other(format!(
                        "short uevent send: {n} of {} bytes",
                        bytes.len()
                    )))
                }
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Sends `event`; `journal_id` adds `JOURNALID=` as the kernel does on every uevent once
    /// the jid is known.
    pub fn send(&self, event: &KernelEvent, journal_id: Option<i64>) -> std::io::Result<()> {
        self.send_raw(&render(event, journal_id))
    }
}

/// [`format_uevent`] plus `JOURNALID=<jid>` when given.
pub fn render(event: &KernelEvent, journal_id: Option<i64>) -> Vec<u8> {
    let mut bytes = format_uevent(event);
    if let Some(j) = journal_id {
        bytes.extend_from_slice(format!("JOURNALID={j}\0").as_bytes());
    }
    bytes
}

/// One-shot [`UeventSender::send_raw`].
pub fn send_uevent(bytes: &[u8]) -> std::io::Result<()> {
    UeventSender::new()?.send_raw(bytes)
}
