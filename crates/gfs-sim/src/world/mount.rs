//! One node's mount of one filesystem in the simulated kernel: the shared kernel model's state
//! (lock_module files, stage, queued recoveries) plus the steps of the mount sequence that the
//! simulator models in finer detail (the DLM join, the cluster-wide mount lock, the frozen
//! superblock read) and its journal work in progress.

use std::collections::BTreeSet;

use gfs_core::{Table, Time};

use crate::kernel_model::KernelModel;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum MountStep {
    /// The DLM lockspace join: `first`/`jid` writes wait for it.
    Joining,
    /// Waiting for the cluster-wide mount lock.
    WaitGlock,
    /// Holding the mount lock, reading the superblock (a normal lock: frozen by `block=1`).
    InitSb,
    /// Holding the mount lock, waiting for `jid`.
    WaitJid,
    /// Journal work: first-mounter replay of every lockable journal, or the own journal's check.
    InitJournal,
    /// The rest of the mount (normal locks: frozen by `block=1`).
    MountRest,
    Online,
    Withdrawn,
}

#[derive(Clone, Debug)]
pub(super) struct Mount {
    pub table: Table,
    /// The lock_module files, the mount's stage and its queued recoveries: the model shared
    /// with gfs_kernel_sim.
    pub kernel: KernelModel,
    /// The daemon wrote `first` (a scenario's view: `first` as the daemon set it).
    pub first_written: bool,
    pub state: MountStep,
    /// First-mount journal work started (it waits while a journal's lock is held by a dead node).
    pub journal_work: bool,
    /// Journals a first mounter found held by a live node: reported Failed (Busy).
    pub busy_at_mount: BTreeSet<u32>,
    /// Journals replayed inside the mount.
    pub mount_replays: BTreeSet<u32>,
    /// `recover` replays waiting for the DLM to free the journal's lock.
    pub waiting_replays: BTreeSet<u32>,
    /// When the workload started the mount: L1 names it, so that a mount judged unfinished shows
    /// whether it had the workload's quiet period to finish in.
    pub begun: Time,
}
