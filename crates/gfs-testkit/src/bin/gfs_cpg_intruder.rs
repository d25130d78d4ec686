//! `gfs_cpg_intruder`: a process that is not gfs_controld, in the daemons' CPG group.
//!
//! gfs_cpg_intruder [--group gfs:controld] [--fenced NODE] [--fence-ack NODE] [--failure N]
//!                  [--raw HEX]... [--hold-ms MS] [--end leave|exit|stay]
//!
//! Corosync lets any process that may use its IPC join any CPG group, so a node's daemon must
//! tell its peers from other processes by pid (gfs_controld(8), "peers are processes"). The
//! netns cluster tests run this tool inside a node's namespace (`Cluster::spawn_in_node`): it
//! joins the group, multicasts the forged messages asked for once corosync reports its own
//! join, waits `--hold-ms`, and then leaves cleanly (`leave`), exits without leaving, so that
//! corosync reports PROCDOWN as for a crashed daemon (`exit`), or stays until killed (`stay`).
//!
//! The forged reports are well formed (`gfs_core::wire`) and claim to come from the daemon of
//! the node the tool runs on, as that daemon would send them: only the sender's pid gives them
//! away. stdout gets one line per step for the test to wait on (`joined node=N pid=P`,
//! `sent TYPE bytes=B`, `left`); stderr gets what the group shows it (configuration changes,
//! deliveries). If corosync goes away the tool exits with an error, so it never outlives the
//! node it was started on.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use clap::{Parser, ValueEnum};
use gfs_core::wire::{self, Header, Message, PROTOCOL_MAX};
use rust_corosync::cpg;
use rust_corosync::{CsError, DispatchFlags};

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum End {
    /// cpg_leave, wait for our own leave, finalize: the others see a LEAVE.
    Leave,
    /// Exit without leaving: corosync reports PROCDOWN, as for a daemon killed with SIGKILL.
    Exit,
    /// Stay in the group until killed (or until corosync goes away).
    Stay,
}

#[derive(Parser)]
#[command(
    name = "gfs_cpg_intruder",
    about = "Join gfs_controld's CPG group as a foreign process (a test tool)"
)]
struct Cli {
    #[arg(long, default_value = "gfs:controld")]
    group: String,
    /// Multicast a FENCED claiming that NODE was fenced.
    #[arg(long, value_name = "NODE")]
    fenced: Option<u32>,
    /// Multicast a FENCE_ACK for NODE, as `gfs_control fence-ack NODE` makes a daemon send.
    #[arg(long, value_name = "NODE")]
    fence_ack: Option<u32>,
    /// The failure (configuration change) the forged reports answer; the default claims every
    /// failure up to now and later.
    #[arg(long, default_value_t = u64::MAX)]
    failure: u64,
    /// Multicast these bytes as they are (hex; repeatable), after the forged reports.
    #[arg(long, value_name = "HEX")]
    raw: Vec<String>,
    /// How long to stay after joining and sending, before `--end`.
    #[arg(long, default_value_t = 1000)]
    hold_ms: u64,
    #[arg(long, value_enum, default_value = "leave")]
    end: End,
}

/// What the callbacks saw. rust-corosync's callbacks are plain `fn`s called inside `dispatch`,
/// on this (only) thread: they queue here, the loop reads after each dispatch.
enum Event {
    ConfChg {
        members: Vec<(u32, u32)>,
        joined: Vec<(u32, u32)>,
        left: Vec<(u32, u32)>,
    },
    Deliver {
        nodeid: u32,
        pid: u32,
        payload: Vec<u8>,
    },
}

static EVENTS: Mutex<VecDeque<Event>> = Mutex::new(VecDeque::new());

fn queue(event: Event) {
    EVENTS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push_back(event);
}

fn on_deliver(
    _handle: &cpg::Handle,
    _group: String,
    nodeid: rust_corosync::NodeId,
    pid: u32,
    msg: &[u8],
    _len: usize,
) {
    queue(Event::Deliver {
        nodeid: nodeid.into(),
        pid,
        payload: msg.to_vec(),
    });
}

fn on_confchg(
    _handle: &cpg::Handle,
    _group: &str,
    members: Vec<cpg::Address>,
    left: Vec<cpg::Address>,
    joined: Vec<cpg::Address>,
) {
    let pairs = |list: &[cpg::Address]| list.iter().map(|a| (a.nodeid.into(), a.pid)).collect();
    queue(Event::ConfChg {
        members: pairs(&members),
        joined: pairs(&joined),
        left: pairs(&left),
    });
}

fn fact(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn peers(list: &[(u32, u32)]) -> String {
    let names: Vec<String> = list.iter().map(|(n, p)| format!("{n}/{p}")).collect();
    names.join(" ")
}

/// Runs libcpg's callbacks for whatever arrived within `wait`, then hands the events over.
fn pump(handle: &cpg::Handle, fd: i32, wait: Duration) -> Result<Vec<Event>> {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    let n = unsafe { libc::poll(&mut pfd, 1, wait.as_millis() as i32) };
    if n < 0 {
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            bail!("poll: {err}");
        }
    }
    if n > 0 {
        if pfd.revents & (libc::POLLHUP | libc::POLLERR) != 0 {
            bail!("corosync closed the connection");
        }
        cpg::dispatch(handle, DispatchFlags::All)
            .map_err(|e| anyhow::anyhow!("cpg_dispatch: {e}"))?;
    }
    let mut events = EVENTS.lock().unwrap_or_else(|e| e.into_inner());
    let events: Vec<Event> = events.drain(..).collect();
    for event in &events {
        match event {
            Event::ConfChg {
                members,
                joined,
                left,
            } => eprintln!(
                "confchg members=[{}] joined=[{}] left=[{}]",
                peers(members),
                peers(joined),
                peers(left)
            ),
            Event::Deliver {
                nodeid,
                pid,
                payload,
            } => match wire::decode(payload) {
                Ok((_, msg)) => eprintln!("deliver from {nodeid}/{pid}: {}", msg.name()),
                Err(e) => eprintln!("deliver from {nodeid}/{pid}: undecodable: {e}"),
            },
        }
    }
    Ok(events)
}

fn retry<T>(what: &str, mut call: impl FnMut() -> Result<T, CsError>) -> Result<T> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match call() {
            Err(CsError::CsErrTryAgain) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10))
            }
            other => return other.map_err(|e| anyhow::anyhow!("{what}: {e}")),
        }
    }
}

fn hex(text: &str) -> Result<Vec<u8>> {
    let text = text.trim();
    if !text.len().is_multiple_of(2) {
        bail!("odd number of hex digits");
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).context("not hex"))
        .collect()
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let pid = std::process::id();
    let model = cpg::ModelData::ModelV1(cpg::Model1Data {
        flags: cpg::Model1Flags::None,
        deliver_fn: Some(on_deliver),
        confchg_fn: Some(on_confchg),
        totem_confchg_fn: None,
    });
    let handle = retry("cpg_initialize", || cpg::initialize(&model, 0))?;
    let node: u32 = retry("cpg_local_get", || cpg::local_get(&handle))?.into();
    let fd = retry("cpg_fd_get", || cpg::fd_get(&handle))?;
    retry("cpg_join", || cpg::join(&handle, &cli.group))?;

    // Send only once corosync reports our join: a message multicast earlier would reach the
    // others before the join that makes us a member, which is not the case under test.
    let deadline = Instant::now() + Duration::from_secs(30);
    'join: loop {
        if Instant::now() > deadline {
            bail!("corosync did not report our join to {}", cli.group);
        }
        for event in pump(&handle, fd, Duration::from_millis(50))? {
            if let Event::ConfChg { joined, .. } = event {
                if joined.contains(&(node, pid)) {
                    break 'join;
                }
            }
        }
    }
    fact(&format!("joined node={node} pid={pid}"));

    let header = Header {
        version: PROTOCOL_MAX,
        sender: node,
        change: 0,
    };
    let mut messages = Vec::new();
    if let Some(nodeid) = cli.fenced {
        let msg = Message::Fenced {
            nodeid,
            failure: cli.failure,
        };
        messages.push((msg.name(), wire::encode(&header, &msg)));
    }
    if let Some(nodeid) = cli.fence_ack {
        let msg = Message::FenceAck {
            nodeid,
            failure: cli.failure,
        };
        messages.push((msg.name(), wire::encode(&header, &msg)));
    }
    for raw in &cli.raw {
        messages.push(("RAW", hex(raw).with_context(|| format!("--raw {raw}"))?));
    }
    for (name, bytes) in messages {
        retry("cpg_mcast_joined", || {
            cpg::mcast_joined(&handle, cpg::Guarantee::TypeAgreed, &bytes)
        })?;
        fact(&format!("sent {name} bytes={}", bytes.len()));
    }

    let hold_until = Instant::now() + Duration::from_millis(cli.hold_ms);
    while cli.end == End::Stay || Instant::now() < hold_until {
        pump(&handle, fd, Duration::from_millis(50))?;
    }
    match cli.end {
        End::Stay => unreachable!("stays until killed"),
        End::Exit => {
            // No cpg_leave, no cpg_finalize: corosync sees the IPC connection drop.
            fact("exiting without leaving");
            std::process::exit(0);
        }
        End::Leave => {
            retry("cpg_leave", || cpg::leave(&handle, &cli.group))?;
            let deadline = Instant::now() + Duration::from_secs(30);
            'leave: loop {
                if Instant::now() > deadline {
                    bail!("corosync did not report our leave from {}", cli.group);
                }
                for event in pump(&handle, fd, Duration::from_millis(50))? {
                    if let Event::ConfChg { left, .. } = event {
                        if left.contains(&(node, pid)) {
                            break 'leave;
                        }
                    }
                }
            }
            let _ = cpg::finalize(&handle);
            fact("left");
        }
    }
    Ok(())
}
