//! What one node failure costs: daemon-group messages and causal message rounds until every
//! member is unblocked, measured on an instant in-memory cluster (no delays, no faults).
//!
//! Rounds are causal depth: a message sent while handling a delivery of depth d has depth d+1;
//! configuration changes, fencing results and kernel answers carry the depth of what caused them.

use std::collections::VecDeque;

use gfs_core::{
    ConfChg, Input, KernelEvent, KernelEventKind, LeaveReason, Node, NodeConfig, NodeId, Output,
    Peer, SysfsFile, Table, Time, DAEMON_GROUP,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecoveryCost {
    pub nodes: u32,
    pub filesystems: u32,
    /// Daemon-group messages multicast from the failure until every member is unblocked.
    pub messages: u64,
    /// Causal message rounds in that interval.
    pub rounds: u32,
    /// Core inputs handled over the whole run (mounts included).
    pub inputs: u64,
}

struct Cluster {
    nodes: Vec<Node>,
    now: Time,
    inputs: u64,
    messages: u64,
    max_depth: u32,
    blocked: Vec<usize>,
}

impl Cluster {
    fn run(&mut self, start: Vec<(usize, Input, u32)>) {
        let mut queue: VecDeque<(usize, Input, u32)> = start.into();
        while let Some((i, input, depth)) = queue.pop_front() {
            if i >= self.nodes.len() {
                continue;
            }
            self.now = self.now.after(1);
            self.inputs += 1;
            let now = self.now;
            let mut at = At {
                cluster: self,
                i,
                depth,
                queue: &mut queue,
            };
            let Ok(()) = gfs_core::drive(&mut at, now, input);
        }
    }
}

/// The instant cluster carrying out node `i`'s outputs for an input of causal depth `depth`.
struct At<'c> {
    cluster: &'c mut Cluster,
    i: usize,
    depth: u32,
    queue: &'c mut VecDeque<(usize, Input, u32)>,
}

impl gfs_core::Driver for At<'_> {
    type Error = std::convert::Infallible;

    fn node(&mut self) -> Option<&mut Node> {
        self.cluster.nodes.get_mut(self.i)
    }

    fn execute(&mut self, out: Output) -> Result<Option<Input>, Self::Error> {
        let (i, depth) = (self.i, self.depth);
        let c = &mut *self.cluster;
        let queue = &mut *self.queue;
        let me = c.nodes[i].nodeid();
        Ok(match out {
            Output::Mcast { group, payload } => {
                c.messages += 1;
                c.max_depth = c.max_depth.max(depth + 1);
                for j in 0..c.nodes.len() {
                    queue.push_back((
                        j,
                        Input::Deliver {
                            group: group.clone(),
                            sender: Peer::new(me, 0),
                            payload: payload.clone(),
                        },
                        depth + 1,
                    ));
                }
                None
            }
            Output::Write { table, file, value } => {
                if file == SysfsFile::Block {
                    if value == 1 {
                        c.blocked[i] += 1;
                    } else {
                        c.blocked[i] -= 1;
                    }
                }
                // The kernel answers at once: mounts complete, replays succeed.
                let kind = match file {
                    SysfsFile::Jid => Some(KernelEventKind::Online {
                        ro: false,
                        spectator: false,
                    }),
                    SysfsFile::Recover => Some(KernelEventKind::Recovery {
                        jid: value as u32,
                        done: true,
                    }),
                    _ => None,
                };
                if let Some(kind) = kind {
                    if file == SysfsFile::Jid {
                        // A first mounter reports FIRSTMOUNT=Done before going online.
                        queue.push_back((
                            i,
                            Input::Kernel(KernelEvent {
                                table: table.clone(),
                                kind: KernelEventKind::FirstMountDone,
                            }),
                            depth,
                        ));
                    }
                    queue.push_back((
                        i,
                        Input::Kernel(KernelEvent {
                            table: table.clone(),
                            kind,
                        }),
                        depth,
                    ));
                }
                c.inputs += 1;
                Some(Input::WriteDone {
                    table,
                    file,
                    value,
                    result: Ok(()),
                })
            }
            // dlm_controld (enable_fscontrol=1) accepts every registration.
            Output::DlmRegister { table } => {
                c.inputs += 1;
                Some(Input::DlmRegistered {
                    table,
                    result: Ok(()),
                })
            }
            _ => None,
        })
    }
}

/// Mount `filesystems` on all `nodes`, crash the last node, fence it, and measure the recovery.
pub fn recovery_cost(nodes: u32, filesystems: u32) -> RecoveryCost {
    let ids: Vec<NodeId> = (1..=nodes).collect();
    let mut c = Cluster {
        nodes: ids
            .iter()
            .map(|id| {
                let mut cfg = NodeConfig::new(*id, "bench");
                cfg.cluster_nodes = ids.clone();
                Node::new(cfg, Time::ZERO)
            })
            .collect(),
        now: Time::ZERO,
        inputs: 0,
        messages: 0,
        max_depth: 0,
        blocked: vec![0; nodes as usize],
    };
    let all = |input: &dyn Fn(usize) -> Input| -> Vec<(usize, Input, u32)> {
        (0..nodes as usize).map(|i| (i, input(i), 0)).collect()
    };
    let start = all(&|_| {
        ConfChg {
            group: DAEMON_GROUP.into(),
            members: ids.iter().map(|n| Peer::new(*n, 0)).collect(),
            joined: ids.iter().map(|n| Peer::new(*n, 0)).collect(),
            left: vec![],
        }
        .with_quorum(true)
    });
    c.run(start);
    for f in 1..=filesystems {
        let table = Table::parse(&format!("bench:fs{f}")).expect("table");
        c.run(all(&|_| {
            Input::Kernel(KernelEvent {
                table: table.clone(),
                kind: KernelEventKind::Add {
                    ro: false,
                    spectator: false,
                    kernel_managed: false,
                },
            })
        }));
    }
    // The last node fails; the survivors see it leave and learn it was fenced.
    let dead = nodes as usize - 1;
    c.nodes.truncate(dead);
    let survivors: Vec<NodeId> = ids[..dead].to_vec();
    let before = c.messages;
    c.max_depth = 0;
    let mut fail: Vec<(usize, Input, u32)> = (0..dead)
        .map(|i| {
            (
                i,
                ConfChg {
                    group: DAEMON_GROUP.into(),
                    members: survivors.iter().map(|n| Peer::new(*n, 0)).collect(),
                    joined: vec![],
                    left: vec![(Peer::new(nodes, 0), LeaveReason::NodeDown)],
                }
                .with_quorum(true),
                0,
            )
        })
        .collect();
    fail.extend((0..dead).map(|i| {
        (
            i,
            Input::Fenced {
                nodeid: nodes,
                at: Time(u64::MAX / 2),
            },
            0,
        )
    }));
    c.run(fail);
    assert!(
        c.blocked.iter().take(dead).all(|b| *b == 0),
        "every survivor is unblocked again"
    );
    RecoveryCost {
        nodes,
        filesystems,
        messages: c.messages - before,
        rounds: c.max_depth,
        inputs: c.inputs,
    }
}
