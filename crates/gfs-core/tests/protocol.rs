//! The core driven directly on a tiny in-memory bus: bad input is rejected with a log record and
//! changes nothing; protocol versions are negotiated; kernel edge cases are handled.

use gfs_core::wire::{self, Header, Message};
use gfs_core::{
    parse_uevent, ConfChg, Driver, Input, KernelEvent, KernelEventKind, LeaveReason, Level, Node,
    NodeConfig, Output, Peer, SysfsFile, Table, Time, WriteError, DAEMON_GROUP,
};

/// Nodes in one CPG configuration; every multicast is delivered to all, in order.
struct Bus {
    nodes: Vec<Node>,
    now: Time,
    logs: Vec<(u32, Level, String)>,
    writes: Vec<(u32, SysfsFile, i64)>,
    /// Writes the kernel refuses: (nodeid, file) → why.
    refuse: Vec<((u32, SysfsFile), WriteError)>,
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
            refuse: Vec::new(),
            replies: Vec::new(),
            sent: Vec::new(),
            fences: Vec::new(),
            kills: Vec::new(),
            pids,
        };
        // A configuration change reaches every member before any later message.
        let start = (0..bus.nodes.len())
            .map(|i| (i, confchg(peers(&ids), peers(&ids), vec![], true)))
            .collect();
        bus.inputs(start);
        bus
    }

    fn input(&mut self, i: usize, input: Input) {
        self.inputs(vec![(i, input)]);
    }

    /// Feed inputs, then deliver every resulting multicast to everyone, in order, until quiet.
    /// Each node is driven by the core's one drive rule: a write's or registration's result is
    /// fed back at once, before the node's next output.
    fn inputs(&mut self, inputs: Vec<(usize, Input)>) {
        let mut pending = inputs;
        while !pending.is_empty() {
            let mut next = Vec::new();
            for (i, input) in pending {
                self.now = self.now.after(1);
                let now = self.now;
                let mut stop = Stop {
                    bus: self,
                    i,
                    next: &mut next,
                };
                let Ok(()) = gfs_core::drive(&mut stop, now, input);
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
                    confchg(members.clone(), joined.clone(), left.clone(), true),
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

    /// Let time pass to `until`, feeding `Input::Timeout` to each node when its
    /// `poll_timeout` comes (as a driver's timer would), and nothing else.
    fn advance_to(&mut self, until: Time) {
        loop {
            let due = self
                .nodes
                .iter()
                .enumerate()
                .filter_map(|(i, n)| n.poll_timeout().map(|t| (t, i)))
                .filter(|(t, _)| *t <= until)
                .min();
            let Some((t, i)) = due else {
                self.now = self.now.max(until);
                return;
            };
            // `inputs` steps the clock by 1 ms before each input.
            self.now = Time(t.millis().max(self.now.millis() + 1) - 1);
            self.input(i, Input::Timeout);
        }
    }

    fn digests(&self) -> Vec<Option<u64>> {
        self.nodes.iter().map(|n| n.replicated_digest()).collect()
    }
}

/// The bus carrying out one node's outputs.
struct Stop<'b> {
    bus: &'b mut Bus,
    i: usize,
    /// Deliveries for the next round.
    next: &'b mut Vec<(usize, Input)>,
}

impl Driver for Stop<'_> {
    type Error = std::convert::Infallible;

    fn node(&mut self) -> Option<&mut Node> {
        self.bus.nodes.get_mut(self.i)
    }

    fn execute(&mut self, out: Output) -> Result<Option<Input>, Self::Error> {
        let bus = &mut *self.bus;
        let id = bus.nodes[self.i].nodeid();
        let me = Peer::new(id, bus.pids[&id]);
        Ok(match out {
            Output::Mcast { group, payload } => {
                bus.sent.push((id, payload.clone()));
                for j in 0..bus.nodes.len() {
                    self.next.push((
                        j,
                        Input::Deliver {
                            group: group.clone(),
                            sender: me,
                            payload: payload.clone(),
                        },
                    ));
                }
                None
            }
            Output::Log(r) => {
                bus.logs.push((id, r.level, r.message));
                None
            }
            Output::Write { table, file, value } => {
                bus.writes.push((id, file, value));
                let result = match bus.refuse.iter().find(|(k, _)| *k == (id, file)) {
                    Some((_, errno)) => Err(*errno),
                    None => Ok(()),
                };
                Some(Input::WriteDone {
                    table,
                    file,
                    value,
                    result,
                })
            }
            Output::Reply { result, .. } => {
                bus.replies.push(result);
                None
            }
            Output::Fence { nodeid, .. } => {
                bus.fences.push((id, nodeid));
                None
            }
            Output::KillNode { nodeid, .. } => {
                bus.kills.push((id, nodeid));
                None
            }
            // dlm_controld with enable_fscontrol=1 accepts every registration.
            Output::DlmRegister { table } => Some(Input::DlmRegistered {
                table,
                result: Ok(()),
            }),
            _ => None,
        })
    }
}

/// A daemon-group configuration change, with the quorum read as it arrives.
fn confchg(
    members: Vec<Peer>,
    joined: Vec<Peer>,
    left: Vec<(Peer, LeaveReason)>,
    quorate: bool,
) -> Input {
    ConfChg {
        group: DAEMON_GROUP.into(),
        members,
        joined,
        left,
    }
    .with_quorum(quorate)
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
    // The intruder keeps node 3 in the CPG group, not among the daemons `status` shows.
    for n in &bus.nodes {
        assert_eq!(
            n.status(bus.now).members,
            vec![1, 2],
            "status of node {}",
            n.nodeid()
        );
    }
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

/// The group's fencer fenced a failed node; then the lowest node's daemon (no mounts) restarts
/// and, synced from the others, becomes the fencer while the failed node stays away (its
/// corosync may be back, its daemon not yet). The new fencer must take the group's word for the
/// fence, not fence the node again after `startup_fence_delay` (chaos soak, seed 301 cycle 5),
/// nor wait for a fence it never saw.
#[test]
fn a_member_that_syncs_later_does_not_fence_again_what_the_group_saw_fenced() {
    let mut bus = Bus::new(vec![cfg(1), cfg(2), cfg(3), cfg(4)]);
    for i in 1..4 {
        bus.input(i, add("alpha:fs1"));
        bus.input(i, online("alpha:fs1"));
    }
    bus.nodes.truncate(3);
    bus.confchg(
        peers(&[1, 2, 3]),
        vec![],
        vec![(daemon(4), LeaveReason::NodeDown)],
    );
    assert_eq!(bus.fences, vec![(1, 4)], "node 1 runs the fencing backend");
    let at = bus.now;
    bus.input(0, Input::Fenced { nodeid: 4, at });
    bus.fences.clear();
    // Node 1's daemon, holding nothing, exits cleanly and starts again.
    bus.nodes.remove(0);
    bus.confchg(
        peers(&[2, 3]),
        vec![],
        vec![(daemon(1), LeaveReason::Leave)],
    );
    let mut again = cfg(1);
    again.pid = 5001;
    bus.start(again);
    let restarted = bus.nodes.len() - 1;
    let new1 = Peer::new(1, 5001);
    bus.confchg(vec![new1, daemon(2), daemon(3)], vec![new1], vec![]);
    assert!(bus.nodes[restarted].is_synced(), "{:?}", bus.logs);
    let later = Time(bus.now.millis() + 3 * cfg(1).startup_fence_delay_ms);
    bus.advance_to(later);
    assert!(
        bus.fences.is_empty(),
        "fenced again by the member that synced later: {:?}",
        bus.fences
    );
    for n in &bus.nodes {
        let status = n.status(bus.now);
        assert!(
            status.fence_waits.is_empty(),
            "node {} waits for a fence the group saw: {:?}",
            n.nodeid(),
            status.fence_waits
        );
    }
    let d = bus.digests();
    assert!(d.windows(2).all(|w| w[0] == w[1]), "all agree");
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
    assert_eq!(bus.nodes[0].status(bus.now).protocol_version, 1);
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
        &Message::Stopped {
            epoch: 9,
            tables: vec![],
        },
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
        bus.nodes[0].status(bus.now).protocol_version,
        1,
        "mixed cluster runs version 1"
    );
    assert_eq!(bus.nodes[1].status(bus.now).protocol_version, 1);
    // Messages of the running version are stamped with it.
    bus.input(0, add("alpha:fs1"));
    // The old daemon leaves cleanly: the group renegotiates to the newest common version.
    bus.nodes.truncate(1);
    bus.input(
        0,
        confchg(
            peers(&[1]),
            vec![],
            vec![(daemon(2), LeaveReason::Leave)],
            true,
        ),
    );
    assert_eq!(bus.nodes[0].status(bus.now).protocol_version, 2);
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

fn uevent(table: &str, kind: KernelEventKind) -> Input {
    Input::Kernel(KernelEvent {
        table: Table::parse(table).unwrap(),
        kind,
    })
}

fn online(table: &str) -> Input {
    uevent(
        table,
        KernelEventKind::Online {
            ro: false,
            spectator: false,
        },
    )
}

/// Every node of the bus mounts `table`, node 1 first.
fn mount_everywhere(bus: &mut Bus, table: &str) {
    for i in 0..bus.nodes.len() {
        bus.input(i, add(table));
        bus.input(i, online(table));
    }
    for n in &bus.nodes {
        let fs = n.filesystems();
        assert!(
            fs[0].members.iter().all(|m| m.state == "mounted"),
            "n{} {:?}",
            n.nodeid(),
            fs[0].members
        );
    }
}

/// Node 3 of three fails with fs1 mounted everywhere; the survivors' fencing never answers.
fn node_3_fails(quorate_after: bool) -> Bus {
    let mut bus = Bus::new(vec![cfg(1), cfg(2), cfg(3)]);
    mount_everywhere(&mut bus, "alpha:fs1");
    bus.nodes.truncate(2);
    let mut inputs = Vec::new();
    for i in 0..2 {
        inputs.push((
            i,
            confchg(
                peers(&[1, 2]),
                vec![],
                vec![(daemon(3), LeaveReason::NodeDown)],
                quorate_after,
            ),
        ));
    }
    bus.inputs(inputs);
    bus
}

#[test]
fn a_hanging_fence_is_reported_by_a_core_timer_and_status_shows_the_real_wait() {
    let mut bus = node_3_fails(true);
    let failed = bus.now;
    let warn = cfg(1).fence_warn_ms;
    let warnings = |bus: &Bus| {
        bus.logs
            .iter()
            .filter(|(id, l, m)| {
                *id == 1 && *l == Level::Error && m.contains("for node 3 to be fenced")
            })
            .count()
    };
    // Nothing arrives while fencing hangs: time passes only through the core's own deadlines.
    assert!(bus.nodes[0]
        .poll_timeout()
        .is_some_and(|t| t <= failed.after(warn)));
    bus.advance_to(failed.after(warn - 10));
    assert_eq!(warnings(&bus), 0, "warned early");
    let early = bus.nodes[0].status(bus.now).fence_waits;
    assert_eq!(early.len(), 1);
    assert!(early[0].waiting_ms >= warn - 20, "{early:?}");
    // A status asked later shows the later wait, though the core saw no input since.
    let later = bus.nodes[0].status(failed.after(warn + 5_000)).fence_waits;
    assert!(later[0].waiting_ms >= warn + 4_990, "{later:?}");
    bus.advance_to(failed.after(warn + 10));
    assert_eq!(warnings(&bus), 1, "{:?}", bus.logs);
    assert!(bus
        .logs
        .iter()
        .any(|(_, _, m)| m.contains("gfs_control fence-ack 3")));
    // Repeated every fence_warn, not every input.
    bus.advance_to(failed.after(3 * warn + 100));
    assert_eq!(warnings(&bus), 3);
    // Fenced: no more warnings and no more deadlines for it.
    bus.input(
        0,
        Input::Fenced {
            nodeid: 3,
            at: bus.now,
        },
    );
    bus.advance_to(failed.after(10 * warn));
    assert_eq!(warnings(&bus), 3);
    assert!(bus.nodes[0].status(bus.now).fence_waits.is_empty());
}

#[test]
fn an_inquorate_partition_says_it_waits_for_quorum_not_fencing() {
    let mut bus = node_3_fails(false);
    let lost = bus.now;
    let status = bus.nodes[1].status(bus.now);
    assert!(status.fence_waits.is_empty(), "{status:?}");
    assert_eq!(status.quorum_waits, vec![3]);
    let fs = bus.nodes[1].filesystems();
    assert_eq!(fs[0].state, "recovering jid 2: waiting for quorum");
    assert_eq!(fs[0].dirty_journals[0].waiting_for, "quorum");
    let warn = cfg(1).fence_warn_ms;
    bus.advance_to(lost.after(warn + 10));
    let said: Vec<&String> = bus
        .logs
        .iter()
        .filter(|(_, l, _)| *l == Level::Error)
        .map(|(_, _, m)| m)
        .collect();
    assert!(!said.is_empty(), "no warning while inquorate");
    for m in said {
        assert!(m.contains("for quorum"), "{m}");
        assert!(!m.contains("fence-ack"), "{m}");
    }
    // Quorum returns: now it is a wait for fencing, counted from then.
    bus.inputs(vec![
        (0, Input::Quorum { quorate: true }),
        (1, Input::Quorum { quorate: true }),
    ]);
    let back = bus.now;
    let waits = bus.nodes[0].status(back.after(1_000)).fence_waits;
    assert_eq!(waits.len(), 1);
    assert!(waits[0].waiting_ms <= 1_002, "{waits:?}");
}

#[test]
fn a_mount_whose_sysfs_directory_vanished_is_dropped_everywhere() {
    let mut bus = Bus::new(vec![cfg(1), cfg(2)]);
    // The kernel's directory is gone before the daemon's `jid` write (the `remove` uevent was
    // lost, or the `add` was not a real mount).
    bus.refuse.push(((1, SysfsFile::Jid), WriteError::Gone));
    bus.input(0, add("alpha:ghost"));
    for n in &bus.nodes {
        assert!(
            n.filesystems().is_empty(),
            "n{} still lists {:?}",
            n.nodeid(),
            n.filesystems()
        );
    }
    assert!(bus.nodes[0].can_shutdown());
    let digests = bus.digests();
    assert_eq!(digests[0], digests[1]);
    // Another node can then mount it as a first mounter.
    bus.input(1, add("alpha:ghost"));
    assert!(bus.writes.contains(&(2, SysfsFile::First, 1)));
}

#[test]
fn with_fencing_off_a_failed_node_counts_as_fenced_when_it_failed() {
    let configs = (1..=3)
        .map(|id| NodeConfig {
            require_fencing: false,
            ..cfg(id)
        })
        .collect();
    let mut bus = Bus::new(configs);
    for i in 0..3 {
        bus.mount(i);
    }
    bus.nodes.truncate(2);
    bus.confchg(
        peers(&[1, 2]),
        vec![],
        vec![(daemon(3), LeaveReason::NodeDown)],
    );
    assert!(bus.fences.is_empty(), "no backend is asked");
    assert!(bus.logged("fencing is off"), "{:?}", bus.logs);
    assert_eq!(
        bus.recover_writes().len(),
        1,
        "node 3's journal is replayed"
    );
}
