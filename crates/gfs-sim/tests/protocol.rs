//! The core driven directly on a tiny in-memory bus: bad input is rejected with a log record and
//! changes nothing; protocol versions are negotiated; kernel edge cases are handled.

use gfs_core::wire::{self, Header, Message};
use gfs_core::{
    parse_uevent, Input, KernelEvent, KernelEventKind, LeaveReason, Level, Node, NodeConfig,
    Output, Peer, SysfsFile, Table, Time, DAEMON_GROUP,
};

/// Nodes in one CPG configuration; every multicast is delivered to all, in order.
struct Bus {
    nodes: Vec<Node>,
    now: Time,
    logs: Vec<(u32, Level, String)>,
    writes: Vec<(u32, SysfsFile, i64)>,
    replies: Vec<Result<String, String>>,
    /// Every multicast, by sender node.
    sent: Vec<(u32, Vec<u8>)>,
    /// Fencing requests and removals asked of the driver.
    fences: Vec<(u32, u32)>,
    kills: Vec<(u32, u32)>,
    /// Each node's daemon process.
    pids: std::collections::BTreeMap<u32, u32>,
}

impl Bus {
    fn new(configs: Vec<NodeConfig>) -> Bus {
        let ids: Vec<u32> = configs.iter().map(|c| c.nodeid).collect();
        let pids = configs.iter().map(|c| (c.nodeid, c.pid)).collect();
        let mut bus = Bus {
            nodes: configs
                .into_iter()
                .map(|c| Node::new(c, Time::ZERO))
                .collect(),
            now: Time::ZERO,
            logs: Vec::new(),
            writes: Vec::new(),
            replies: Vec::new(),
            sent: Vec::new(),
            fences: Vec::new(),
            kills: Vec::new(),
            pids,
        };
        let mut start = Vec::new();
        for i in 0..bus.nodes.len() {
            start.push((i, Input::Quorum { quorate: true }));
        }
        // A configuration change reaches every member before any later message.
        for i in 0..bus.nodes.len() {
            start.push((
                i,
                Input::ConfChg {
                    group: DAEMON_GROUP.into(),
                    members: peers(&ids),
                    joined: peers(&ids),
                    left: vec![],
                },
            ));
        }
        bus.inputs(start);
        bus
    }

    fn input(&mut self, i: usize, input: Input) {
        self.inputs(vec![(i, input)]);
    }

    /// Feed inputs, then deliver every resulting multicast to everyone, in order, until quiet.
    fn inputs(&mut self, inputs: Vec<(usize, Input)>) {
        let mut pending = inputs;
        while !pending.is_empty() {
            let mut next = Vec::new();
            for (i, input) in pending {
                self.now = self.now.after(1);
                self.nodes[i].handle(self.now, input);
                let id = self.nodes[i].nodeid();
                let me = Peer::new(id, self.pids[&id]);
                while let Some(out) = self.nodes[i].poll_output() {
                    match out {
                        Output::Mcast { group, payload } => {
                            self.sent.push((id, payload.clone()));
                            for j in 0..self.nodes.len() {
                                next.push((
                                    j,
                                    Input::Deliver {
                                        group: group.clone(),
                                        sender: me,
                                        payload: payload.clone(),
                                    },
                                ));
                            }
                        }
                        Output::Log(r) => self.logs.push((id, r.level, r.message)),
                        Output::Write { table, file, value } => {
                            self.writes.push((id, file, value));
                            next.push((
                                i,
                                Input::WriteDone {
                                    table,
                                    file,
                                    value,
                                    result: Ok(()),
                                },
                            ));
                        }
                        Output::Reply { result, .. } => self.replies.push(result),
                        Output::Fence { nodeid, .. } => self.fences.push((id, nodeid)),
                        Output::KillNode { nodeid, .. } => self.kills.push((id, nodeid)),
                        // dlm_controld with enable_fscontrol=1 accepts every registration.
                        Output::DlmRegister { table } => next.push((
                            i,
                            Input::DlmRegistered {
                                table,
                                result: Ok(()),
                            },
                        )),
                        _ => {}
                    }
                }
            }
            pending = next;
        }
    }

    /// A new daemon process starts (it joins with the next configuration change).
    fn start(&mut self, cfg: NodeConfig) {
        self.pids.insert(cfg.nodeid, cfg.pid);
        self.nodes.push(Node::new(cfg, self.now));
    }

    /// A configuration change of the daemon group, delivered to every node on the bus.
    fn confchg(&mut self, members: Vec<Peer>, joined: Vec<Peer>, left: Vec<(Peer, LeaveReason)>) {
        let inputs = (0..self.nodes.len())
            .map(|i| {
                (
                    i,
                    Input::ConfChg {
                        group: DAEMON_GROUP.into(),
                        members: members.clone(),
                        joined: joined.clone(),
                        left: left.clone(),
                    },
                )
            })
            .collect();
        self.inputs(inputs);
    }

    /// A message from `sender` (any process), delivered to every node on the bus.
    fn deliver(&mut self, sender: Peer, payload: Vec<u8>) {
        let inputs = (0..self.nodes.len())
            .map(|i| {
                (
                    i,
                    Input::Deliver {
                        group: DAEMON_GROUP.into(),
                        sender,
                        payload: payload.clone(),
                    },
                )
            })
            .collect();
        self.inputs(inputs);
    }

    /// Node index `i` mounts `alpha:fs1` read-write and its kernel completes the mount.
    fn mount(&mut self, i: usize) {
        self.input(i, add("alpha:fs1"));
        self.input(
            i,
            kernel(KernelEventKind::Online {
                ro: false,
                spectator: false,
            }),
        );
    }

    fn recover_writes(&self) -> Vec<(u32, i64)> {
        self.writes
            .iter()
            .filter(|(_, f, _)| *f == SysfsFile::Recover)
            .map(|(n, _, v)| (*n, *v))
            .collect()
    }

    fn logged(&self, what: &str) -> bool {
        self.logs.iter().any(|(_, _, m)| m.contains(what))
    }

    fn digests(&self) -> Vec<Option<u64>> {
        self.nodes.iter().map(|n| n.replicated_digest()).collect()
    }
}

/// Daemons run as process `1000 + nodeid` in these tests.
fn daemon(id: u32) -> Peer {
    Peer::new(id, 1000 + id)
}

fn peers(ids: &[u32]) -> Vec<Peer> {
    ids.iter().map(|id| daemon(*id)).collect()
}

fn cfg(id: u32) -> NodeConfig {
    let mut c = NodeConfig::new(id, "alpha");
    c.pid = 1000 + id;
    c
}

fn kernel(kind: KernelEventKind) -> Input {
    Input::Kernel(KernelEvent {
        table: Table::parse("alpha:fs1").unwrap(),
        kind,
    })
}

/// A process on node 2 that is not its gfs_controld.
const INTRUDER: Peer = Peer {
    nodeid: 2,
    pid: 7777,
};

fn fenced(nodeid: u32, failure: u64, sender: u32) -> Vec<u8> {
    wire::encode(
        &Header {
            version: 1,
            sender,
            change: 0,
        },
        &Message::Fenced { nodeid, failure },
    )
}

fn mounted_bus(n: u32) -> Bus {
    let mut bus = Bus::new((1..=n).map(cfg).collect());
    for i in 0..n as usize {
        bus.mount(i);
    }
    bus
}

/// Node 3 of a mounted 3-node bus crashes; the survivors block and wait for its fencing.
fn node3_crashed() -> Bus {
    let mut bus = mounted_bus(3);
    bus.nodes.truncate(2);
    bus.confchg(
        peers(&[1, 2]),
        vec![],
        vec![(daemon(3), LeaveReason::NodeDown)],
    );
    assert_eq!(bus.fences, vec![(1, 3)], "the lowest member fences node 3");
    assert!(bus.recover_writes().is_empty(), "no replay before fencing");
    bus
}

#[test]
fn a_foreign_process_joining_and_leaving_changes_nothing() {
    let mut bus = mounted_bus(3);
    let before = bus.digests();
    let blocks = bus.writes.len();
    let all = |extra: bool| {
        let mut m = peers(&[1, 2, 3]);
        if extra {
            m.push(INTRUDER);
        }
        m
    };
    bus.confchg(all(true), vec![INTRUDER], vec![]);
    assert_eq!(bus.digests(), before, "a foreign join changes no state");
    // While it is joined, HELLOs stay decodable and count.
    assert!(!bus.logged("malformed"));
    bus.confchg(all(false), vec![], vec![(INTRUDER, LeaveReason::Leave)]);
    assert_eq!(bus.digests(), before, "a foreign leave changes no state");
    assert_eq!(bus.writes.len(), blocks, "nobody blocked");
    assert!(bus.fences.is_empty() && bus.kills.is_empty());
    assert!(bus.logged("not the node's gfs_controld"));
    for n in &bus.nodes {
        assert!(
            n.filesystems()[0].state.contains("mounted"),
            "{:?}",
            n.filesystems()[0].state
        );
    }
}

#[test]
fn a_foreign_process_exiting_fences_nothing() {
    let mut bus = mounted_bus(3);
    let before = bus.digests();
    let mut with = peers(&[1, 2, 3]);
    with.push(INTRUDER);
    bus.confchg(with, vec![INTRUDER], vec![]);
    bus.confchg(
        peers(&[1, 2, 3]),
        vec![],
        vec![(INTRUDER, LeaveReason::ProcDown)],
    );
    assert_eq!(bus.digests(), before);
    assert!(bus.fences.is_empty(), "fenced: {:?}", bus.fences);
    assert!(bus.kills.is_empty(), "removed: {:?}", bus.kills);
    assert!(!bus
        .writes
        .iter()
        .any(|(_, f, v)| *f == SysfsFile::Block && *v == 1));
}

#[test]
fn a_forged_fenced_is_ignored() {
    let mut bus = node3_crashed();
    // From a foreign process of node 2, claiming every failure of node 3.
    bus.deliver(INTRUDER, fenced(3, u64::MAX, 2));
    assert!(
        bus.recover_writes().is_empty(),
        "replay started on a forged FENCED"
    );
    // From node 2's daemon, which does not run the fencing backend (node 1 does).
    bus.deliver(daemon(2), fenced(3, u64::MAX, 2));
    assert!(
        bus.recover_writes().is_empty(),
        "replay started on a FENCED from a non-fencer"
    );
    assert!(bus.logged("runs the fencing backend"));
    // The fencer's own report counts.
    let now = bus.now;
    bus.input(0, Input::Fenced { nodeid: 3, at: now });
    assert_eq!(
        bus.recover_writes().len(),
        1,
        "replay after the real fencing"
    );
}

#[test]
fn a_stale_fenced_of_an_earlier_failure_is_ignored() {
    let mut bus = node3_crashed();
    let now = bus.now;
    bus.input(0, Input::Fenced { nodeid: 3, at: now });
    let first_fenced = bus
        .sent
        .iter()
        .rev()
        .find(|(n, p)| *n == 1 && matches!(wire::decode(p), Ok((_, Message::Fenced { .. }))))
        .map(|(_, p)| p.clone())
        .expect("node 1 reported the fencing");
    let (replayer, jid) = bus.recover_writes()[0];
    let i = bus
        .nodes
        .iter()
        .position(|n| n.nodeid() == replayer)
        .unwrap();
    bus.input(
        i,
        kernel(KernelEventKind::Recovery {
            jid: jid as u32,
            done: true,
        }),
    );
    // Node 3 comes back with a new daemon, mounts, and fails again.
    bus.start(cfg(3));
    bus.confchg(peers(&[1, 2, 3]), vec![daemon(3)], vec![]);
    assert!(bus.nodes[2].is_synced());
    bus.mount(2);
    bus.nodes.truncate(2);
    let replays = bus.recover_writes().len();
    bus.confchg(
        peers(&[1, 2]),
        vec![],
        vec![(daemon(3), LeaveReason::NodeDown)],
    );
    // The report of the first failure, delivered again, must not count for the second.
    bus.deliver(daemon(1), first_fenced);
    assert_eq!(
        bus.recover_writes().len(),
        replays,
        "replay on a stale FENCED"
    );
    assert!(bus.logged("stale FENCED"));
}

#[test]
fn a_daemon_death_without_mounts_fences_nothing() {
    let mut bus = Bus::new(vec![cfg(1), cfg(2), cfg(3)]);
    bus.nodes.truncate(2);
    bus.confchg(
        peers(&[1, 2]),
        vec![],
        vec![(daemon(3), LeaveReason::ProcDown)],
    );
    assert!(bus.fences.is_empty(), "fenced: {:?}", bus.fences);
    assert!(bus.kills.is_empty(), "removed: {:?}", bus.kills);
    // Its next daemon joins as any new daemon does.
    bus.start(cfg(3));
    bus.confchg(peers(&[1, 2, 3]), vec![daemon(3)], vec![]);
    assert!(bus.nodes[2].is_synced());
    assert!(bus.fences.is_empty());
}

#[test]
fn a_daemon_death_under_mounts_fences_the_node_without_removing_it() {
    let mut bus = mounted_bus(3);
    bus.nodes.truncate(2);
    bus.confchg(
        peers(&[1, 2]),
        vec![],
        vec![(daemon(3), LeaveReason::ProcDown)],
    );
    assert_eq!(bus.fences, vec![(1, 3)]);
    assert!(bus.kills.is_empty(), "removed: {:?}", bus.kills);
    assert!(bus.recover_writes().is_empty());
}

#[test]
fn a_restarted_daemon_syncs_while_a_foreign_process_is_joined() {
    let mut bus = Bus::new(vec![cfg(1), cfg(2), cfg(3)]);
    let intruder = Peer::new(3, 7777);
    bus.confchg(
        vec![daemon(1), daemon(2), daemon(3), intruder],
        vec![intruder],
        vec![],
    );
    bus.nodes.truncate(2);
    bus.confchg(
        vec![daemon(1), daemon(2), intruder],
        vec![],
        vec![(daemon(3), LeaveReason::Leave)],
    );
    let mut again = cfg(3);
    again.pid = 4242;
    bus.start(again);
    let new3 = Peer::new(3, 4242);
    bus.confchg(
        vec![daemon(1), daemon(2), intruder, new3],
        vec![new3],
        vec![],
    );
    assert!(
        bus.nodes[2].is_synced(),
        "the new daemon got the state: {:?}",
        bus.logs
    );
    let d = bus.digests();
    assert!(d.windows(2).all(|w| w[0] == w[1]), "all agree");
    // The intruder leaving now is not the daemon leaving.
    bus.confchg(
        vec![daemon(1), daemon(2), new3],
        vec![],
        vec![(intruder, LeaveReason::ProcDown)],
    );
    assert_eq!(bus.digests(), d);
    assert!(bus.fences.is_empty() && bus.kills.is_empty());
}

fn add(table: &str) -> Input {
    Input::Kernel(KernelEvent {
        table: Table::parse(table).unwrap(),
        kind: KernelEventKind::Add {
            ro: false,
            spectator: false,
            kernel_managed: false,
        },
    })
}

#[test]
fn three_nodes_form_one_group_and_agree() {
    let bus = Bus::new(vec![cfg(1), cfg(2), cfg(3)]);
    let d = bus.digests();
    assert!(d.iter().all(|x| x.is_some()), "all synced");
    assert!(d.windows(2).all(|w| w[0] == w[1]), "all agree");
    assert_eq!(bus.nodes[0].status().protocol_version, 1);
}

#[test]
fn malformed_and_forged_messages_are_logged_and_change_nothing() {
    let mut bus = Bus::new(vec![cfg(1), cfg(2)]);
    let before = bus.digests();
    for junk in [
        vec![],
        vec![0xff; 7],
        vec![0u8; 64],
        b"GFSC garbage".to_vec(),
    ] {
        bus.input(
            0,
            Input::Deliver {
                group: DAEMON_GROUP.into(),
                sender: daemon(2),
                payload: junk,
            },
        );
    }
    // A well-formed message whose header claims another sender.
    let forged = wire::encode(
        &Header {
            version: 1,
            sender: 1,
            change: 0,
        },
        &Message::Stopped { epoch: 9 },
    );
    bus.input(
        0,
        Input::Deliver {
            group: DAEMON_GROUP.into(),
            sender: daemon(2),
            payload: forged,
        },
    );
    assert_eq!(bus.digests(), before);
    let warnings = bus
        .logs
        .iter()
        .filter(|(_, l, m)| *l == Level::Warn && m.contains("dropped"))
        .count();
    assert_eq!(warnings, 5);
}

#[test]
fn malformed_uevents_are_rejected_by_the_parser() {
    for raw in [
        &b""[..],
        b"\0\0\0",
        b"add@/fs/gfs2/a:b\0ACTION=add\0",
        b"\xff\xfe",
    ] {
        assert!(parse_uevent(raw).is_err());
    }
}

#[test]
fn a_filesystem_of_another_cluster_is_refused_with_ebadr() {
    let mut bus = Bus::new(vec![cfg(1)]);
    bus.input(0, add("beta:fs1"));
    assert_eq!(bus.writes, vec![(1, SysfsFile::Jid, -53)]);
    assert!(bus
        .logs
        .iter()
        .any(|(_, l, m)| *l == Level::Error && m.contains("belongs to cluster")));
}

#[test]
fn a_kernel_that_coordinates_recovery_itself_is_left_alone() {
    let mut bus = Bus::new(vec![cfg(1)]);
    bus.input(
        0,
        Input::Kernel(KernelEvent {
            table: Table::parse("alpha:fs1").unwrap(),
            kind: KernelEventKind::Add {
                ro: false,
                spectator: false,
                kernel_managed: true,
            },
        }),
    );
    assert!(bus.writes.is_empty());
    let fs = bus.nodes[0].filesystems();
    assert!(fs[0].kernel_managed);
    assert_eq!(fs[0].state, "kernel-managed");
    assert!(bus.nodes[0].can_shutdown());
}

#[test]
fn a_lone_node_mounts_first_and_can_shut_down_only_when_unmounted() {
    let mut bus = Bus::new(vec![cfg(1)]);
    bus.input(0, add("alpha:fs1"));
    assert_eq!(
        bus.writes,
        vec![(1, SysfsFile::First, 1), (1, SysfsFile::Jid, 0)]
    );
    assert!(!bus.nodes[0].can_shutdown());
    let t = Table::parse("alpha:fs1").unwrap();
    bus.input(
        0,
        Input::Kernel(KernelEvent {
            table: t.clone(),
            kind: KernelEventKind::Remove,
        }),
    );
    assert!(bus.nodes[0].can_shutdown());
}

#[test]
fn fence_ack_is_refused_for_members_and_accepted_for_others() {
    let mut bus = Bus::new(vec![cfg(1), cfg(2)]);
    bus.input(
        0,
        Input::FenceAck {
            request: 1,
            nodeid: 2,
        },
    );
    bus.input(
        0,
        Input::FenceAck {
            request: 2,
            nodeid: 7,
        },
    );
    assert!(bus.replies[0].as_ref().is_err_and(|e| e.contains("member")));
    assert!(bus.replies[1].is_ok());
}

#[test]
fn a_newer_daemon_talks_the_older_version_and_upgrades_when_it_leaves() {
    let mut new = cfg(1);
    new.proto_max = 2;
    let mut bus = Bus::new(vec![new, cfg(2)]);
    assert_eq!(
        bus.nodes[0].status().protocol_version,
        1,
        "mixed cluster runs version 1"
    );
    assert_eq!(bus.nodes[1].status().protocol_version, 1);
    // Messages of the running version are stamped with it.
    bus.input(0, add("alpha:fs1"));
    // The old daemon leaves cleanly: the group renegotiates to the newest common version.
    bus.nodes.truncate(1);
    bus.input(
        0,
        Input::ConfChg {
            group: DAEMON_GROUP.into(),
            members: peers(&[1]),
            joined: vec![],
            left: vec![(daemon(2), LeaveReason::Leave)],
        },
    );
    assert_eq!(bus.nodes[0].status().protocol_version, 2);
}

#[test]
fn a_daemon_that_cannot_speak_the_groups_version_stays_out() {
    let mut old = cfg(1);
    old.proto_max = 1;
    let mut picky = cfg(2);
    picky.proto_min = 2;
    picky.proto_max = 2;
    let bus = Bus::new(vec![old, picky]);
    assert!(
        bus.nodes[1].is_stale(),
        "a daemon needing version 2 must not join a version 1 group"
    );
    assert!(bus
        .logs
        .iter()
        .any(|(id, l, m)| *id == 2 && *l == Level::Error && m.contains("needs at least 2")));
}
