//! The safety rules S1–S8 and the liveness rule L1 of SPEC §4, as functions of the simulated
//! cluster's state: each returns the violation it finds. The kernel model, the DLM model and the
//! driver call them at the moment a rule can break (a replay starts, a mount takes its journal,
//! a daemon unblocks, the DLM grants a dead node's locks, a stream entry is processed); the
//! world records the first violation and stops.

use std::collections::{BTreeMap, BTreeSet};

use gfs_core::{NodeId, Time};

use super::journal::JournalTruth;
use super::mount::{Mount, MountStep};
use super::SimNode;
use gfs_core::MountMode;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Rule {
    S1,
    S2,
    S3,
    S4,
    S5,
    S6,
    S7,
    S8,
    L1,
}

impl std::fmt::Display for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self {
            Rule::S1 => "S1 fencing",
            Rule::S2 => "S2 one replayer",
            Rule::S3 => "S3 no early unblock",
            Rule::S4 => "S4 unique journals",
            Rule::S5 => "S5 first mounter",
            Rule::S6 => "S6 agreement",
            Rule::S7 => "S7 merge",
            Rule::S8 => "S8 DLM ordering",
            Rule::L1 => "L1 liveness",
        };
        f.write_str(s)
    }
}

/// A broken rule. A checker leaves `time` and `step` at zero; the world stamps them when it
/// records the violation.
#[derive(Clone, Debug)]
pub struct Violation {
    pub rule: Rule,
    pub time: Time,
    pub step: u64,
    pub detail: String,
}

impl Violation {
    fn new(rule: Rule, detail: String) -> Violation {
        Violation {
            rule,
            time: Time::ZERO,
            step: 0,
            detail,
        }
    }
}

/// S4: a mounter takes journal `jid` of `key`: no other live kernel may be using it.
pub(super) fn unique_journal(
    n: NodeId,
    key: &str,
    jid: u32,
    journal: &JournalTruth,
) -> Option<Violation> {
    let h = journal.user().filter(|h| *h != n)?;
    Some(Violation::new(
        Rule::S4,
        format!("n{n} mounts {key} with jid {jid}, held by n{h}'s live kernel"),
    ))
}

/// S5: a mount that does not replay every journal (`first=0`) must not start while a journal
/// is dirty and no live daemon knows to have it replayed.
pub(super) fn first_mounter(
    n: NodeId,
    key: &str,
    jid: u32,
    journals: &BTreeMap<(String, u32), JournalTruth>,
    nodes: &BTreeMap<NodeId, SimNode>,
) -> Option<Violation> {
    // Known: dirty in the group's state, or its writer still a mounter there (the group has yet
    // to hear of that failure or withdraw, and will recover it).
    let table = gfs_core::Table::parse(key).ok();
    let group_knows = |jj: u32| {
        nodes.values().filter_map(|x| x.daemon.as_ref()).any(|d| {
            d.core.is_synced()
                && table
                    .as_ref()
                    .and_then(|t| d.core.replicated().fs.get(t))
                    .is_some_and(|fs| {
                        fs.dirty.contains_key(&jj)
                            || fs.mounters.values().any(|m| m.jid == Some(jj))
                    })
        })
    };
    let ((_, jj), x) = journals.iter().find(|((k, jj), x)| {
        k == key && *jj != jid && x.dirty && x.known_by.is_empty() && !group_knows(*jj)
    })?;
    let (owner, holder) = (x.dirty_owner, x.holder);
    Some(Violation::new(
        Rule::S5,
        format!("n{n} mounts {key} with first=0 while jid {jj} is dirty and no daemon will replay it (writer {owner:?}, holder {holder:?})"),
    ))
}

/// What the replay checks need to know of the fencing oracle: when each node was last fenced,
/// and when an operator last acknowledged it.
pub(super) struct FenceHistory<'a> {
    pub fenced: &'a BTreeMap<NodeId, Time>,
    pub acked: &'a BTreeMap<NodeId, Time>,
    /// The daemons run with fencing off (`enable_fencing=0`): they take a failed node as fenced
    /// when it failed, which is safe exactly when its kernel really died then.
    pub off: bool,
}

/// A replay of `jid` of `key` starts on `n`.
pub(super) struct ReplayStart<'a> {
    pub n: NodeId,
    pub key: &'a str,
    pub jid: u32,
    /// A first mounter's replay inside its mount (under the mount lock, before anyone uses the
    /// filesystem): neither quorum nor blocked peers are needed.
    pub at_mount: bool,
    /// The replayer's view of quorum.
    pub quorate: bool,
    pub cluster_nodes: u32,
}

/// S1 (fenced after it failed, quorate), S2 (one replayer) and the barrier part of S3 (every
/// other kernel using the filesystem blocked), when a replay starts.
pub(super) fn replay_start(
    r: &ReplayStart<'_>,
    j: &JournalTruth,
    nodes: &BTreeMap<NodeId, SimNode>,
    fences: &FenceHistory<'_>,
) -> Option<Violation> {
    let ReplayStart { n, key, jid, .. } = *r;
    if let Some(o) = j.replaying.iter().find(|o| **o != n) {
        return Some(Violation::new(
            Rule::S2,
            format!("n{n} replays {key} jid {jid} while n{o} replays it"),
        ));
    }
    if let Some((h, _)) = j.holder {
        if h != n && !j.holder_withdrawn {
            return Some(Violation::new(
                Rule::S1,
                format!("n{n} replays {key} jid {jid} while n{h}'s kernel still runs with it"),
            ));
        }
    }
    if j.dirty && !j.dirty_withdrawn {
        if let Some((owner, owner_boot)) = j.dirty_owner {
            let o = &nodes[&owner];
            let died = o.kernel_dead_at.filter(|_| o.boot == owner_boot);
            let safe = o.boot > owner_boot
                || (o.kernel_killed_by_fence && o.boot == owner_boot)
                || (fences.off && died.is_some())
                || died.is_some_and(|t| {
                    fences.fenced.get(&owner).is_some_and(|f| *f >= t)
                        || fences.acked.get(&owner).is_some_and(|a| *a >= t)
                });
            if !safe {
                return Some(Violation::new(Rule::S1, format!("n{n} replays {key} jid {jid} of n{owner}, which was not fenced after it failed")));
            }
        }
    }
    if !r.at_mount && !r.quorate && r.cluster_nodes > 1 {
        return Some(Violation::new(
            Rule::S1,
            format!("n{n} replays {key} jid {jid} in an inquorate partition"),
        ));
    }
    if !r.at_mount {
        // Every other live kernel using the filesystem must be blocked while a journal is
        // replayed, or it could be granted the dead node's blocks before they are repaired.
        let unblocked = nodes.values().find(|x| {
            x.id != n
                && x.mounts.get(key).is_some_and(|m| {
                    !m.kernel.blocked
                        && !m.kernel.kernel_managed
                        && matches!(
                            m.state,
                            MountStep::Online | MountStep::MountRest | MountStep::InitJournal
                        )
                })
        });
        if let Some(o) = unblocked {
            let o = o.id;
            return Some(Violation::new(
                Rule::S3,
                format!("n{n} replays {key} jid {jid} while n{o}'s kernel holds it unblocked"),
            ));
        }
    }
    None
}

/// S3: `n` wrote `block=0` for `key` while a failed member's journal its daemon knows of is not
/// replayed.
pub(super) fn unblock(
    n: NodeId,
    key: &str,
    mount: Option<&Mount>,
    journals: &BTreeMap<(String, u32), JournalTruth>,
) -> Option<Violation> {
    // A mount still in progress is unblocked on purpose when no ready member can replay: its
    // journal work must finish for it to become the replayer (a first mounter's kernel replays
    // the failed journals itself before it reads anything else).
    if mount.is_some_and(|m| m.state != MountStep::Online) {
        return None;
    }
    let ((_, jid), _) = journals
        .iter()
        .find(|((t, _), j)| t == key && j.known_by.contains(&n))?;
    Some(Violation::new(
        Rule::S3,
        format!("n{n} unblocked {key} while jid {jid} of a failed member is not replayed"),
    ))
}

/// S8: the DLM recovered `failed`'s locks on `key`, so survivors can be granted them: each
/// survivor whose mount was complete when the node failed must have blocked first, or it can
/// read blocks newer on the dead node's unreplayed journal.
pub(super) fn dlm_ordering(
    failed: NodeId,
    key: &str,
    online_at_failure: &BTreeSet<NodeId>,
    lockspace: &[NodeId],
    nodes: &BTreeMap<NodeId, SimNode>,
) -> Option<Violation> {
    let s = lockspace.iter().copied().find(|s| {
        online_at_failure.contains(s)
            && nodes[s].mounts.get(key).is_some_and(|m| {
                m.state == MountStep::Online && !m.kernel.blocked && !m.kernel.kernel_managed
            })
    })?;
    Some(Violation::new(
        Rule::S8,
        format!("DLM recovered n{failed}'s locks on {key} while n{s} had not blocked"),
    ))
}

/// S6: `n` processed stream entry `entry` from a settled state and ended in `post`; `first`
/// is the first node's result for the same entry.
pub(super) fn agreement(
    n: NodeId,
    entry: u64,
    post: u64,
    first: Option<(u64, NodeId)>,
) -> Option<Violation> {
    let (other, who) = first?;
    (other != post).then(|| {
        Violation::new(
            Rule::S6,
            format!("n{who} and n{n} processed stream entry {entry} and hold different states"),
        )
    })
}

/// S7: a synced daemon never counts as a member with state a node incarnation it saw fail.
pub(super) fn readmission(nodes: &BTreeMap<NodeId, SimNode>) -> Option<Violation> {
    let mut found = None;
    for node in nodes.values() {
        let Some(d) = node.daemon.as_ref() else {
            continue;
        };
        if !d.core.is_synced() {
            continue;
        }
        for (x, m) in &d.core.replicated().members {
            if !m.synced || m.stale || *x == node.id {
                continue;
            }
            let Some(xd) = nodes[x].daemon.as_ref() else {
                continue;
            };
            let seen = node
                .saw_fail
                .get(&(*x, xd.incarnation))
                .is_some_and(|e| *e <= node.last_entry);
            if seen && xd.core.is_synced() {
                found = Some(format!(
                    "n{} readmitted n{x} with the state it had before n{} saw it fail",
                    node.id, node.id
                ));
            }
        }
    }
    found.map(|detail| Violation::new(Rule::S7, detail))
}

/// L1, once the faults stopped and the cluster had time to settle: every node up with its
/// daemon synced, every mount complete and unblocked, every failed journal replayed where a
/// read-write member could, and no DLM recovery waiting (`dlm_waits`, as the DLM model
/// describes them).
pub(super) fn liveness(
    nodes: &BTreeMap<NodeId, SimNode>,
    journals: &BTreeMap<(String, u32), JournalTruth>,
    dlm_waits: Vec<String>,
) -> Option<Violation> {
    let mut problems = Vec::new();
    for node in nodes.values() {
        if !node.corosync {
            problems.push(format!("n{} is still down", node.id));
            continue;
        }
        if node.daemon.as_ref().is_none_or(|d| !d.core.is_synced()) {
            problems.push(format!(
                "n{}'s daemon is not running with the group state",
                node.id
            ));
        }
        for (key, m) in &node.mounts {
            if m.kernel.blocked && m.state != MountStep::Withdrawn {
                problems.push(format!("n{} still blocked on {key}", node.id));
            }
            // Read-only and spectator mounts wait for a read-write first mounter by design.
            let waits_for_rw = m.kernel.mode != MountMode::Rw
                && m.state == MountStep::WaitJid
                && !nodes.values().any(|x| {
                    x.mounts.get(key).is_some_and(|o| {
                        o.kernel.mode == MountMode::Rw && o.state == MountStep::Online
                    })
                });
            if !matches!(m.state, MountStep::Online | MountStep::Withdrawn) && !waits_for_rw {
                problems.push(format!(
                    "n{}'s mount of {key} never completed ({:?}, begun at {})",
                    node.id, m.state, m.begun
                ));
            }
        }
    }
    for ((key, jid), j) in journals {
        let rw_online = nodes.values().any(|x| {
            x.mounts
                .get(key)
                .is_some_and(|m| m.state == MountStep::Online && m.kernel.mode == MountMode::Rw)
        });
        if j.dirty && rw_online {
            problems.push(format!("{key} jid {jid} still needs replay"));
        }
    }
    problems.extend(dlm_waits);
    (!problems.is_empty()).then(|| Violation::new(Rule::L1, problems.join("; ")))
}
