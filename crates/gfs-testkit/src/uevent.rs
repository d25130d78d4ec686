//! Kernel-format uevents sent on `NETLINK_KOBJECT_UEVENT`, multicast group 1, in the current
//! network namespace (needs CAP_NET_ADMIN over it), or to a daemon's `uevent_test_socket`.
//!
//! gfs_controld trusts only uevents the kernel sent (netlink port id 0), so those sent here on
//! netlink are dropped by it: the kernel simulator sends to the daemon's test socket instead.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use gfs_core::{format_uevent, KernelEvent, KernelEventKind};
use nix::errno::Errno;
use nix::sys::socket::{
    bind, sendto, socket, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType,
    SockaddrLike, UnixAddr,
};

/// A socket that sends uevents laid out as the kernel does.
#[derive(Debug)]
pub struct UeventSender {
    target: Target,
}

#[derive(Debug)]
enum Target {
    Netlink(OwnedFd),
    /// A thread sends to the test socket: a unix datagram send blocks while the receiver's
    /// queue is full (the kernel's multicast never does), and the caller may hold locks the
    /// receiver waits for.
    Test(std::sync::mpsc::Sender<Vec<u8>>),
}

impl UeventSender {
    /// Sends on netlink, from userspace (gfs_controld drops these).
    pub fn new() -> std::io::Result<UeventSender> {
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkKObjectUEvent,
        )?;
        bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0))?;
        Ok(UeventSender {
            target: Target::Netlink(fd),
        })
    }

    /// Sends to the unix datagram socket `path` (a daemon's `uevent_test_socket`), in order,
    /// from a thread of its own.
    pub fn to_test_socket(path: &Path) -> std::io::Result<UeventSender> {
        let fd = unix_datagram()?;
        let dest = UnixAddr::new(path)?;
        let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
        std::thread::Builder::new()
            .name("uevent-sender".into())
            .spawn(move || {
                for bytes in rx {
                    if let Err(e) = send_test(&fd, &dest, &bytes) {
                        eprintln!("uevent to the test socket not sent: {e}");
                    }
                }
            })?;
        Ok(UeventSender {
            target: Target::Test(tx),
        })
    }

    /// Sends raw bytes as one datagram to group 1 (or queues it for the test socket).
    pub fn send_raw(&self, bytes: &[u8]) -> std::io::Result<()> {
        match &self.target {
            Target::Netlink(fd) => send_all(fd, bytes, &NetlinkAddr::new(0, 1)),
            Target::Test(queue) => queue
                .send(bytes.to_vec())
                .map_err(|_| std::io::Error::other("the uevent sender thread is gone")),
        }
    }

    /// Sends `event`; `journal_id` adds `JOURNALID=` as the kernel does on every uevent once
    /// the jid is known.
    pub fn send(&self, event: &KernelEvent, journal_id: Option<i64>) -> std::io::Result<()> {
        self.send_raw(&render(event, journal_id))
    }

    /// Sends `event` laid out as the kernel does ([`render_kernel`]).
    pub fn send_kernel(&self, event: &KernelEvent, vars: &KernelVars) -> std::io::Result<()> {
        self.send_raw(&render_kernel(event, vars))
    }
}

/// What the 6.1 kernel appends to every gfs2 uevent after the caller's variables.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelVars {
    /// `JOURNALID=`: once the jid is known (never on `add`).
    pub journal_id: Option<i64>,
    /// `UUID=`: the superblock's UUID, upper-case as `%pUB` prints it.
    pub uuid: Option<String>,
    /// `SEQNUM=`: the kernel's uevent counter.
    pub seqnum: u64,
}

/// A gfs2 uevent laid out as the 6.1 kernel sends it: `ACTION@DEVPATH`, `ACTION`, `DEVPATH`,
/// `SUBSYSTEM`, the caller's variables (`RDONLY`/`SPECTATOR`, `JID`/`RECOVERY`,
/// `FIRSTMOUNT`), then the kset's `LOCKTABLE`, `LOCKPROTO`, `JOURNALID`, `UUID`, and `SEQNUM`
/// last (lib/kobject_uevent.c, fs/gfs2/sys.c `gfs2_uevent`).
pub fn render_kernel(event: &KernelEvent, vars: &KernelVars) -> Vec<u8> {
    let table = event.table.to_string();
    let devpath = format!("/fs/gfs2/{table}");
    let flags = |ro: bool, spectator: bool| {
        vec![
            format!("RDONLY={}", ro as u8),
            format!("SPECTATOR={}", spectator as u8),
        ]
    };
    let (action, caller): (&str, Vec<String>) = match &event.kind {
        KernelEventKind::Add { ro, spectator, .. } => ("add", flags(*ro, *spectator)),
        KernelEventKind::Online { ro, spectator } => ("online", flags(*ro, *spectator)),
        KernelEventKind::FirstMountDone => ("change", vec!["FIRSTMOUNT=Done".into()]),
        KernelEventKind::Recovery { jid, done } => (
            "change",
            vec![
                format!("JID={jid}"),
                format!("RECOVERY={}", if *done { "Done" } else { "Failed" }),
            ],
        ),
        KernelEventKind::Offline => ("offline", vec![]),
        KernelEventKind::Remove => ("remove", vec![]),
    };
    let mut fields = vec![
        format!("{action}@{devpath}"),
        format!("ACTION={action}"),
        format!("DEVPATH={devpath}"),
        "SUBSYSTEM=gfs2".to_owned(),
    ];
    fields.extend(caller);
    fields.push(format!("LOCKTABLE={table}"));
    fields.push("LOCKPROTO=lock_dlm".to_owned());
    if let Some(j) = vars.journal_id {
        fields.push(format!("JOURNALID={j}"));
    }
    if let Some(uuid) = &vars.uuid {
        fields.push(format!("UUID={uuid}"));
    }
    fields.push(format!("SEQNUM={}", vars.seqnum));
    let mut out = Vec::new();
    for f in fields {
        out.extend_from_slice(f.as_bytes());
        out.push(0);
    }
    out
}

/// [`format_uevent`] plus `JOURNALID=<jid>` when given.
pub fn render(event: &KernelEvent, journal_id: Option<i64>) -> Vec<u8> {
    let mut bytes = format_uevent(event);
    if let Some(j) = journal_id {
        bytes.extend_from_slice(format!("JOURNALID={j}\0").as_bytes());
    }
    bytes
}

/// One-shot [`UeventSender::send_raw`] on netlink.
pub fn send_uevent(bytes: &[u8]) -> std::io::Result<()> {
    UeventSender::new()?.send_raw(bytes)
}

/// Sends one datagram to a daemon's test socket, now (blocks while its queue is full).
pub fn send_test_uevent(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    send_test(&unix_datagram()?, &UnixAddr::new(path)?, bytes)
}

fn unix_datagram() -> std::io::Result<OwnedFd> {
    Ok(socket(
        AddressFamily::Unix,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?)
}

fn send_test(fd: &OwnedFd, dest: &UnixAddr, bytes: &[u8]) -> std::io::Result<()> {
    match send_all(fd, bytes, dest) {
        // Nobody listening: the kernel's multicast does not fail then either.
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::ENOENT) | Some(libc::ECONNREFUSED)
            ) =>
        {
            Ok(())
        }
        other => other,
    }
}

fn send_all(fd: &OwnedFd, bytes: &[u8], dest: &dyn SockaddrLike) -> std::io::Result<()> {
    loop {
        match sendto(fd.as_raw_fd(), bytes, dest, MsgFlags::empty()) {
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
