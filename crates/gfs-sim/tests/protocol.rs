//! The core driven directly on a tiny in-memory bus: bad input is rejected with a log record and
//! changes nothing; protocol versions are negotiated; kernel edge cases are handled.

use gfs_core::wire::{self, Header, Message};
use gfs_core::{
    parse_uevent, Input, KernelEvent, KernelEventKind, Level, Node, NodeConfig, Output, Peer,
    SysfsFile, Table, Time, DAEMON_GROUP,
};

/// Nodes in one CPG configuration; every multicast is delivered to all, in order.
struct Bus {
    nodes: Vec<Node>,
    now: Time,
    logs: Vec<(u32, Level, String)>,
    writes: Vec<(u32, SysfsFile, i64)>,
    replies: Vec<Result<String, String>>,
}

impl Bus {
    fn new(configs: Vec<NodeConfig>) -> Bus {
        let ids: Vec<u32> = configs.iter().map(|c| c.nodeid).collect();
        let mut bus = Bus {
            nodes: configs
                .into_iter()
                .map(|c| Node::new(c, Time::ZERO))
                .collect(),
            now: Time::ZERO,
            logs: Vec::new(),
            writes: Vec::new(),
            replies: Vec::new(),
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
                while let Some(out) = self.nodes[i].poll_output() {
                    match out {
                        Output::Mcast { group, payload } => {
                            for j in 0..self.nodes.len() {
                                next.push((
                                    j,
                                    Input::Deliver {
                                        group: group.clone(),
                                        sender: daemon(id),
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
            left: vec![(daemon(2), gfs_core::LeaveReason::Leave)],
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
