//! gfs2 kobject uevents over `NETLINK_KOBJECT_UEVENT` (protocol 15), multicast group 1.

use std::io::IoSliceMut;
use std::os::fd::{AsRawFd, OwnedFd};

use gfs_core::{parse_uevent, KernelEvent, UeventError};
use nix::errno::Errno;
use nix::sys::socket::{
    bind, recvmsg, sendto, setsockopt, socket, sockopt, AddressFamily, MsgFlags, NetlinkAddr,
    SockFlag, SockProtocol, SockType,
};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use super::KernelError;

/// The kernel's uevent multicast group (udev's own re-broadcasts use group 2 and are ignored).
const UEVENT_GROUP: u32 = 1;
/// Receive-buffer size asked for (best effort): a burst of uevents at mount time must not
/// overflow it.
const RCVBUF: usize = 8 << 20;
/// The kernel's uevent buffer is 2 KiB; anything larger is not a kernel uevent.
const MAX_UEVENT: usize = 16 << 10;

/// Listens to gfs2 uevents in the current network namespace.
///
/// Senders: a real kernel sends with netlink port id 0. The kernel simulator used in tests is a
/// userspace process and sends with its own port id. Both are accepted: the kernel only lets
/// a process holding CAP_NET_ADMIN over *this* network namespace send to the uevent multicast
/// group, and uevents sent by userspace in another namespace never reach this socket, so a
/// non-zero sender is a privileged local process (udevd rebroadcasts on group 2, not here).
pub struct UeventListener {
    fd: AsyncFd<OwnedFd>,
    buf: Vec<u8>,
}

impl std::fmt::Debug for UeventListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UeventListener")
            .field("fd", &self.fd.get_ref().as_raw_fd())
            .finish()
    }
}

fn uevent_socket() -> Result<OwnedFd, KernelError> {
    socket(
        AddressFamily::Netlink,
        SockType::Datagram,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkKObjectUEvent,
    )
    .map_err(|e| KernelError::socket("create", e))
}

impl UeventListener {
    /// Opens a nonblocking uevent socket bound to group 1. Must be called inside a tokio runtime.
    pub fn bind() -> Result<UeventListener, KernelError> {
        let fd = uevent_socket()?;
        // SO_RCVBUFFORCE needs CAP_NET_ADMIN; fall back to SO_RCVBUF (capped by rmem_max).
        if setsockopt(&fd, sockopt::RcvBufForce, &RCVBUF).is_err() {
            let _ = setsockopt(&fd, sockopt::RcvBuf, &RCVBUF);
        }
        bind(
            fd.as_raw_fd(),
            &NetlinkAddr::new(0, 1 << (UEVENT_GROUP - 1)),
        )
        .map_err(|e| KernelError::socket("bind to multicast group 1", e))?;
        // SAFETY: `fd` is an open socket owned by the `AsyncFd` for its whole life; `OwnedFd`
        // always returns the same descriptor and closes it only when dropped.
        let fd =
            unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }.map_err(|e| {
                KernelError::Socket {
                    op: "register with the tokio reactor",
                    source: e.into_parts().1,
                }
            })?;
        Ok(UeventListener {
            fd,
            buf: vec![0; MAX_UEVENT],
        })
    }

    /// The next gfs2 lock_dlm uevent.
    ///
    /// * `Err(KernelError::Overflow)`: uevents were lost (ENOBUFS); the socket still works, call
    ///   again. Any other outer `Err` is a broken socket.
    /// * `Ok(Err(UeventError::Malformed))`: a gfs2 uevent that did not parse (or was truncated).
    /// * Uevents of other subsystems and of `lock_nolock` filesystems are skipped here.
    ///
    /// Cancel-safe: nothing is kept across an `.await` except socket readiness, and a datagram
    /// is consumed only by the same poll that returns it.
    pub async fn next(&mut self) -> Result<Result<KernelEvent, UeventError>, KernelError> {
        loop {
            let mut guard = self
                .fd
                .readable()
                .await
                .map_err(|source| KernelError::Socket {
                    op: "wait for readiness",
                    source,
                })?;
            let buf = &mut self.buf;
            let res = guard.try_io(|fd| {
                let mut iov = [IoSliceMut::new(buf)];
                match recvmsg::<NetlinkAddr>(fd.as_raw_fd(), &mut iov, None, MsgFlags::empty()) {
                    Ok(msg) => Ok((
                        msg.bytes,
                        msg.flags.contains(MsgFlags::MSG_TRUNC),
                        msg.address.map(|a| a.pid()),
                    )),
                    Err(e) => Err(std::io::Error::from(e)),
                }
            });
            let (len, truncated, sender) = match res {
                Err(_would_block) => continue,
                Ok(Ok(v)) => v,
                Ok(Err(e)) => match e.raw_os_error().map(Errno::from_raw) {
                    Some(Errno::ENOBUFS) => return Err(KernelError::Overflow),
                    Some(Errno::EINTR) | Some(Errno::EAGAIN) => continue,
                    _ => {
                        return Err(KernelError::Socket {
                            op: "receive",
                            source: e,
                        })
                    }
                },
            };
            let data = &self.buf[..len];
            tracing::trace!(
                sender = sender.unwrap_or(0),
                len,
                "uevent {:?}",
                String::from_utf8_lossy(data)
            );
            if truncated {
                if data.windows(9).any(|w| w == b"/fs/gfs2/") {
                    return Ok(Err(UeventError::Malformed(format!(
                        "uevent longer than {MAX_UEVENT} bytes (truncated)"
                    ))));
                }
                continue;
            }
            match parse_uevent(data) {
                Ok(ev) => return Ok(Ok(ev)),
                Err(UeventError::NotGfs2Dlm) => continue,
                Err(e) => return Ok(Err(e)),
            }
        }
    }
}

/// Sends `bytes` as one uevent datagram to group 1 of `NETLINK_KOBJECT_UEVENT` in the current
/// network namespace, the way the kernel does. Needs CAP_NET_ADMIN over that namespace.
pub fn send_uevent(bytes: &[u8]) -> Result<(), KernelError> {
    let fd = uevent_socket()?;
    bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0))
        .map_err(|e| KernelError::socket("bind the sender", e))?;
    let dest = NetlinkAddr::new(0, 1 << (UEVENT_GROUP - 1));
    loop {
        match sendto(fd.as_raw_fd(), bytes, &dest, MsgFlags::empty()) {
            Ok(n) if n == bytes.len() => return Ok(()),
            Ok(n) => {
                return Err(KernelError::ShortSend {
                    len: bytes.len(),
                    sent: n,
                })
            }
            Err(Errno::EINTR) | Err(Errno::EAGAIN) => continue,
            Err(e) => return Err(KernelError::socket("send", e)),
        }
    }
}
