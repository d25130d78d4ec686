//! gfs2 kobject uevents over `NETLINK_KOBJECT_UEVENT` (protocol 15), multicast group 1, and the
//! test kit's stand-in for it (`uevent_test_socket`).

use std::io::IoSliceMut;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

use gfs_core::{parse_uevent, KernelEvent, UeventError};
use nix::errno::Errno;
use nix::sys::socket::{
    bind, recvmsg, setsockopt, socket, sockopt, AddressFamily, ControlMessageOwned, MsgFlags,
    NetlinkAddr, SockFlag, SockProtocol, SockType, SockaddrLike, UnixAddr, UnixCredentials,
};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use super::KernelError;
use crate::ratelimit::{RateLimit, Verdict};

/// The kernel's uevent multicast group (udev's own re-broadcasts use group 2 and are ignored).
const UEVENT_GROUP: u32 = 1;
/// Receive-buffer size asked for (best effort): a burst of uevents at mount time must not
/// overflow it.
const RCVBUF: usize = 8 << 20;
/// The kernel's uevent buffer is 2 KiB; anything larger is not a kernel uevent.
const MAX_UEVENT: usize = 16 << 10;

/// Who sent a datagram, as the socket reported it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UeventSender {
    /// The netlink port id of the sender (0 is the kernel); `None` on the test socket.
    pub port: Option<u32>,
    /// `SCM_CREDENTIALS`: pid and uid of the sender, when the kernel attached them.
    pub pid: Option<i32>,
    pub uid: Option<u32>,
}

/// A netlink uevent counts only when the kernel sent it: port id 0 and credentials of uid 0, as
/// udev checks. Userspace holding CAP_NET_ADMIN in our network namespace can multicast to the
/// uevent group with its own port id, and must not be able to claim that a journal was replayed.
pub fn netlink_sender_is_kernel(sender: &UeventSender) -> bool {
    sender.port == Some(0) && sender.uid == Some(0)
}

/// On the test socket, only root or the daemon's own user (the socket is 0600 anyway).
fn test_sender_allowed(sender: &UeventSender, daemon_euid: u32) -> bool {
    matches!(sender.uid, Some(uid) if uid == 0 || uid == daemon_euid)
}

/// Listens to gfs2 uevents in the current network namespace.
///
/// Only the kernel's own uevents are used (see [`netlink_sender_is_kernel`]); any other sender
/// is dropped with a rate-limited warning naming it. The kernel simulator of the test kit is a
/// userspace process, so it sends to a unix datagram socket instead, which exists only when
/// `uevent_test_socket` is set ([`UeventListener::bind_with_test_socket`]).
pub struct UeventListener {
    fd: AsyncFd<OwnedFd>,
    test: Option<TestSocket>,
    buf: Vec<u8>,
    refused: u64,
    accepted: u64,
    refusal_log: RateLimit,
    daemon_euid: u32,
}

struct TestSocket {
    fd: AsyncFd<OwnedFd>,
    path: PathBuf,
}

impl Drop for TestSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl std::fmt::Debug for UeventListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UeventListener")
            .field("fd", &self.fd.get_ref().as_raw_fd())
            .field("test_socket", &self.test.as_ref().map(|t| t.path.clone()))
            .field("refused", &self.refused)
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

fn register(fd: OwnedFd) -> Result<AsyncFd<OwnedFd>, KernelError> {
    // SAFETY: `fd` is an open socket owned by the `AsyncFd` for its whole life; `OwnedFd`
    // always returns the same descriptor and closes it only when dropped.
    unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }.map_err(|e| {
        KernelError::Socket {
            op: "register with the tokio reactor",
            source: e.into_parts().1,
        }
    })
}

/// Which socket a datagram came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    Netlink,
    Test,
}

impl UeventListener {
    /// Opens a nonblocking uevent socket bound to group 1. Must be called inside a tokio runtime.
    pub fn bind() -> Result<UeventListener, KernelError> {
        let fd = uevent_socket()?;
        // SO_RCVBUFFORCE needs CAP_NET_ADMIN; fall back to SO_RCVBUF (capped by rmem_max).
        if setsockopt(&fd, sockopt::RcvBufForce, &RCVBUF).is_err() {
            let _ = setsockopt(&fd, sockopt::RcvBuf, &RCVBUF);
        }
        // Without credentials no datagram would pass the sender check.
        setsockopt(&fd, sockopt::PassCred, &true)
            .map_err(|e| KernelError::socket("set SO_PASSCRED", e))?;
        bind(
            fd.as_raw_fd(),
            &NetlinkAddr::new(0, 1 << (UEVENT_GROUP - 1)),
        )
        .map_err(|e| KernelError::socket("bind to multicast group 1", e))?;
        Ok(UeventListener {
            fd: register(fd)?,
            test: None,
            buf: vec![0; MAX_UEVENT],
            refused: 0,
            accepted: 0,
            refusal_log: RateLimit::standard(),
            daemon_euid: nix::unistd::geteuid().as_raw(),
        })
    }

    /// [`UeventListener::bind`], and also a unix datagram socket at `path` (0600; a stale socket
    /// there is replaced) that takes uevents in the kernel's format from local root processes.
    /// For the test kit's kernel simulator only: it lets a process claim kernel events.
    pub fn bind_with_test_socket(path: &Path) -> Result<UeventListener, KernelError> {
        let mut listener = UeventListener::bind()?;
        let test_err = |op: &'static str| {
            move |e: Errno| KernelError::TestSocket {
                path: path.to_owned(),
                op,
                source: std::io::Error::from(e),
            }
        };
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            if !meta.file_type().is_socket() {
                return Err(KernelError::TestSocket {
                    path: path.to_owned(),
                    op: "replace",
                    source: std::io::Error::other("exists and is not a socket"),
                });
            }
            let _ = std::fs::remove_file(path);
        }
        let fd = socket(
            AddressFamily::Unix,
            SockType::Datagram,
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
            None,
        )
        .map_err(test_err("create"))?;
        setsockopt(&fd, sockopt::PassCred, &true).map_err(test_err("set SO_PASSCRED"))?;
        let _ = setsockopt(&fd, sockopt::RcvBuf, &RCVBUF);
        let addr = UnixAddr::new(path).map_err(test_err("name"))?;
        bind(fd.as_raw_fd(), &addr).map_err(test_err("bind"))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|e| {
            KernelError::TestSocket {
                path: path.to_owned(),
                op: "chmod",
                source: e,
            }
        })?;
        tracing::error!(
            socket = %path.display(),
            "uevent_test_socket is set: uevents are also taken from local processes on this \
             socket. This is for the test kit's kernel simulator only; never set it on a real \
             cluster"
        );
        listener.test = Some(TestSocket {
            fd: register(fd)?,
            path: path.to_owned(),
        });
        Ok(listener)
    }

    /// How many datagrams were dropped because their sender was not the kernel (or, on the
    /// test socket, not root).
    pub fn refused(&self) -> u64 {
        self.refused
    }

    /// How many datagrams passed the sender check (of any subsystem).
    pub fn accepted(&self) -> u64 {
        self.accepted
    }

    /// The next gfs2 lock_dlm uevent.
    ///
    /// * `Err(KernelError::Overflow)`: uevents were lost (ENOBUFS); the socket still works, call
    ///   again. Any other outer `Err` is a broken socket.
    /// * `Ok(Err(UeventError::Malformed))`: a gfs2 uevent that did not parse (or was truncated).
    /// * Uevents of other subsystems and of `lock_nolock` filesystems are skipped here, and so
    ///   is every datagram not sent by the kernel (logged, counted in [`Self::refused`]).
    ///
    /// Cancel-safe: nothing is kept across an `.await` except socket readiness, and a datagram
    /// is consumed only by the same poll that returns it.
    pub async fn next(&mut self) -> Result<Result<KernelEvent, UeventError>, KernelError> {
        loop {
            let (source, len, truncated, sender) = {
                let netlink = &self.fd;
                let test = self.test.as_ref().map(|t| &t.fd);
                let buf = &mut self.buf;
                // Whichever is readable first; the datagram is read in the same poll.
                let ready = tokio::select! {
                    guard = netlink.readable() => guard.map(|g| (Source::Netlink, g)),
                    guard = async {
                        match test {
                            Some(fd) => fd.readable().await,
                            None => std::future::pending().await,
                        }
                    } => guard.map(|g| (Source::Test, g)),
                };
                let (source, mut guard) = ready.map_err(|source| KernelError::Socket {
                    op: "wait for readiness",
                    source,
                })?;
                let res = guard.try_io(|fd| match source {
                    Source::Netlink => {
                        receive::<NetlinkAddr>(fd.as_raw_fd(), buf, |a| Some(a.pid()))
                    }
                    Source::Test => receive::<UnixAddr>(fd.as_raw_fd(), buf, |_| None),
                });
                match res {
                    Err(_would_block) => continue,
                    Ok(Ok((len, truncated, sender))) => (source, len, truncated, sender),
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
                }
            };
            let data = &self.buf[..len];
            tracing::trace!(
                source = ?source,
                port = sender.port,
                pid = sender.pid,
                uid = sender.uid,
                len,
                "uevent {:?}",
                String::from_utf8_lossy(data)
            );
            let allowed = match source {
                Source::Netlink => netlink_sender_is_kernel(&sender),
                Source::Test => test_sender_allowed(&sender, self.daemon_euid),
            };
            if !allowed {
                self.refused += 1;
                let summary = summarize(data);
                if let Verdict::Log { suppressed } = self.refusal_log.check(Instant::now()) {
                    tracing::warn!(
                        port = sender.port,
                        pid = sender.pid,
                        uid = sender.uid,
                        suppressed,
                        "dropped a uevent not sent by the kernel: {summary}"
                    );
                }
                continue;
            }
            self.accepted += 1;
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

/// One datagram with its sender: (length, truncated, sender).
fn receive<A: SockaddrLike>(
    fd: RawFd,
    buf: &mut [u8],
    port: impl Fn(&A) -> Option<u32>,
) -> std::io::Result<(usize, bool, UeventSender)> {
    let mut iov = [IoSliceMut::new(buf)];
    let mut cmsg = nix::cmsg_space!(UnixCredentials);
    let msg = recvmsg::<A>(fd, &mut iov, Some(&mut cmsg), MsgFlags::empty())
        .map_err(std::io::Error::from)?;
    let mut sender = UeventSender {
        port: msg.address.as_ref().and_then(&port),
        pid: None,
        uid: None,
    };
    if let Ok(cmsgs) = msg.cmsgs() {
        for c in cmsgs {
            if let ControlMessageOwned::ScmCredentials(creds) = c {
                sender.pid = Some(creds.pid());
                sender.uid = Some(creds.uid());
            }
        }
    }
    Ok((msg.bytes, msg.flags.contains(MsgFlags::MSG_TRUNC), sender))
}

/// The first field of a uevent (`ACTION@DEVPATH`), cut short and printable, for a log line.
fn summarize(data: &[u8]) -> String {
    let first = data.split(|b| *b == 0).next().unwrap_or_default();
    let text: String = String::from_utf8_lossy(first)
        .chars()
        .take(120)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    format!("{text:?} ({} bytes)", data.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_port_zero_with_root_credentials_is_the_kernel() {
        let kernel = UeventSender {
            port: Some(0),
            pid: Some(0),
            uid: Some(0),
        };
        assert!(netlink_sender_is_kernel(&kernel));
        for other in [
            UeventSender {
                port: Some(4242),
                ..kernel
            },
            UeventSender {
                uid: Some(65534),
                ..kernel
            },
            UeventSender {
                uid: None,
                pid: None,
                ..kernel
            },
            UeventSender {
                port: None,
                ..kernel
            },
        ] {
            assert!(!netlink_sender_is_kernel(&other), "{other:?}");
        }
    }

    #[test]
    fn test_socket_takes_root_and_own_user_only() {
        let from = |uid| UeventSender {
            port: None,
            pid: Some(1),
            uid,
        };
        assert!(test_sender_allowed(&from(Some(0)), 1000));
        assert!(test_sender_allowed(&from(Some(1000)), 1000));
        assert!(!test_sender_allowed(&from(Some(1001)), 1000));
        assert!(!test_sender_allowed(&from(None), 0));
    }
}
