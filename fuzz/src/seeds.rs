//! Seed inputs for each target, made with the project's own encoders: every message type of the
//! wire protocol (a STATE with members, mounters and dirty journals among them), each gfs2
//! uevent the daemon acts on, every control request and reply, and a configuration file with
//! every key. libFuzzer mutates from these, so it reaches the decoders' deep paths at once.

use std::collections::{BTreeMap, BTreeSet};

use gfs_controld::config::Settings;
use gfs_controld::control::proto::{
    encode_reply, encode_request, reply_payload, Reply, Request, VersionInfo,
};
use gfs_core::view::{
    FenceWaitView, FsView, JournalView, LocalMountView, MemberView, RecoveryTimeline, StatusView,
    TimelineEntry,
};
use gfs_core::wire::{encode, Header, Message};
use gfs_core::{
    format_uevent, Dirty, FsState, KernelEvent, KernelEventKind, MState, Member, MountMode,
    Mounter, Replicated, Table,
};

/// A named seed input.
pub type Seed = (String, Vec<u8>);

const TABLE: &str = "gfstest:fs1";

fn snapshot() -> Replicated {
    let member = |id: u32, synced_by: Option<u32>| Member {
        pid: 1000 + id,
        proto_min: 1,
        proto_max: 1,
        synced: true,
        stale: false,
        synced_by,
        joined_at: u64::from(id),
        synced_at: u64::from(id) + 1,
    };
    let mounter = |jid: Option<u32>, mode, state, ready| Mounter {
        jid,
        mode,
        state,
        ready,
    };
    let fs = FsState {
        mounters: BTreeMap::from([
            (1, mounter(Some(0), MountMode::Rw, MState::Mounted, true)),
            (2, mounter(Some(1), MountMode::Ro, MState::Admitted, false)),
            (
                4,
                mounter(Some(0), MountMode::Spectator, MState::Waiting, false),
            ),
        ]),
        dirty: BTreeMap::from([(
            2,
            Dirty {
                owner: 3,
                fence: BTreeSet::from([3]),
                replayer: Some(1),
                attempts: 1,
                last_failed_by: None,
            },
        )]),
        dirty_epoch: 7,
        stopped: BTreeSet::from([1, 2]),
        fence_before_first: BTreeSet::from([5]),
    };
    Replicated {
        version: 1,
        epoch: 7,
        confchgs: 3,
        members: BTreeMap::from([(1, member(1, None)), (2, member(2, Some(1)))]),
        must_fence: BTreeSet::from([3, 5]),
        must_fence_since: BTreeMap::from([(3, 2)]),
        fenced: BTreeSet::from([5]),
        fs: BTreeMap::from([(Table::parse(TABLE).expect("the seed table is valid"), fs)]),
    }
}

/// One message of each type, encoded.
pub fn wire() -> Vec<Seed> {
    let table = || Table::parse(TABLE).expect("the seed table is valid");
    let messages = [
        Message::Hello {
            proto_min: 1,
            proto_max: 1,
            attempt: 1,
            synced: false,
            side: vec![],
            config: vec![1, 2, 3],
        },
        Message::Hello {
            proto_min: 1,
            proto_max: 2,
            attempt: 0,
            synced: true,
            side: vec![1, 2],
            config: vec![1, 2, 3],
        },
        Message::State {
            recipient: 2,
            attempt: 1,
            snapshot: snapshot(),
        },
        Message::Mount {
            table: table(),
            mode: MountMode::Rw,
        },
        Message::Mounted { table: table() },
        Message::JournalReady { table: table() },
        Message::Unmount { table: table() },
        Message::Withdraw { table: table() },
        Message::Remount {
            table: table(),
            mode: MountMode::Ro,
        },
        Message::Stopped {
            epoch: 7,
            tables: vec![table()],
        },
        Message::Recovered {
            table: table(),
            jid: 2,
            done: true,
            attempt: 1,
        },
        Message::FenceAck {
            nodeid: 3,
            failure: 4,
        },
        Message::Fenced {
            nodeid: 3,
            failure: 4,
        },
    ];
    messages
        .into_iter()
        .enumerate()
        .map(|(i, msg)| {
            let header = Header {
                version: 1,
                sender: 1,
                change: 7,
            };
            (format!("{i:02}-{}", msg.name()), encode(&header, &msg))
        })
        .collect()
}

/// Each gfs2 uevent the daemon parses, as the kernel formats it, and a few it must refuse.
pub fn uevent() -> Vec<Seed> {
    let table = Table::parse(TABLE).expect("the seed table is valid");
    let kinds = [
        KernelEventKind::Add {
            ro: false,
            spectator: false,
            kernel_managed: false,
        },
        KernelEventKind::Add {
            ro: true,
            spectator: true,
            kernel_managed: false,
        },
        KernelEventKind::Online {
            ro: true,
            spectator: false,
        },
        KernelEventKind::FirstMountDone,
        KernelEventKind::Recovery { jid: 2, done: true },
        KernelEventKind::Recovery {
            jid: 1,
            done: false,
        },
        KernelEventKind::Offline,
        KernelEventKind::Remove,
    ];
    let mut seeds: Vec<Seed> = kinds
        .into_iter()
        .enumerate()
        .map(|(i, kind)| {
            let event = KernelEvent {
                table: table.clone(),
                kind,
            };
            (format!("{i:02}-event"), format_uevent(&event))
        })
        .collect();
    let raw = |fields: &[&str]| -> Vec<u8> {
        fields
            .iter()
            .flat_map(|f| f.bytes().chain(std::iter::once(0)))
            .collect()
    };
    seeds.push((
        "other-subsystem".into(),
        raw(&[
            "add@/devices/virtual/misc/kvm",
            "ACTION=add",
            "DEVPATH=/devices/virtual/misc/kvm",
            "SUBSYSTEM=misc",
        ]),
    ));
    seeds.push((
        "unsupported-table".into(),
        raw(&[
            "add@/fs/gfs2/gfstest_fs1",
            "ACTION=add",
            "DEVPATH=/fs/gfs2/gfstest_fs1",
            "SUBSYSTEM=gfs2",
            "LOCKPROTO=lock_dlm",
            "LOCKTABLE=gfstest/fs1",
            "JOURNALID=3",
        ]),
    ));
    seeds
}

fn status_view() -> StatusView {
    StatusView {
        nodeid: 1,
        cluster_name: "gfstest".into(),
        protocol_version: 1,
        protocol_max: 1,
        synced: true,
        quorate: true,
        members: vec![1, 2],
        stale_members: vec![4],
        quorum_waits: vec![5],
        fence_waits: vec![FenceWaitView {
            nodeid: 3,
            failed_at_ms: 1000,
            waiting_ms: 20,
            requested: true,
            last_error: Some("agent failed".into()),
        }],
        filesystems: 1,
        recoveries: vec![RecoveryTimeline {
            change: 7,
            failed: vec![3],
            filesystems: vec![TABLE.into()],
            started_ms: 1000,
            finished_ms: None,
            events: vec![TimelineEntry {
                at_ms: 1001,
                what: "block".into(),
            }],
        }],
    }
}

fn fs_view() -> FsView {
    FsView {
        table: TABLE.into(),
        name: "fs1".into(),
        kernel_managed: false,
        state: "recovering jid 2 on node 1".into(),
        local: Some(LocalMountView {
            jid: Some(0),
            mode: MountMode::Rw,
            blocked: true,
            kernel_state: "mounted".into(),
        }),
        members: vec![MemberView {
            nodeid: 1,
            jid: Some(0),
            mode: MountMode::Rw,
            state: "mounted".into(),
        }],
        dirty_journals: vec![JournalView {
            jid: 2,
            owner: 3,
            replayer: Some(1),
            attempts: 1,
            waiting_for: "replay".into(),
        }],
        first_mounter: None,
    }
}

/// Every request, and a reply of each kind: the control target decodes each input both ways.
pub fn control() -> Vec<Seed> {
    let requests = [
        Request::Status {},
        Request::Ls { fs: None },
        Request::Ls {
            fs: Some("fs1".into()),
        },
        Request::Dump {},
        Request::FenceAck { nodeid: 3 },
        Request::Version {},
    ];
    let replies = [
        Reply::Status(status_view()),
        Reply::Filesystems(vec![fs_view()]),
        Reply::Dump(vec!["a line".into(), "another".into()]),
        Reply::Message("node 3 acknowledged".into()),
        Reply::Version(VersionInfo::current()),
        Reply::Error("no such node".into()),
    ];
    let mut seeds = Vec::new();
    for r in &requests {
        let line = encode_request(r);
        // The target also wraps each input in an envelope: the bare request is a seed too.
        let bare = line
            .strip_prefix("{\"version\":1,\"request\":")
            .and_then(|rest| rest.strip_suffix("}\n"))
            .expect("the request envelope as documented")
            .to_owned();
        seeds.push((format!("request-{}", r.name()), line));
        seeds.push((format!("request-{}-bare", r.name()), bare));
    }
    for (i, r) in replies.iter().enumerate() {
        seeds.push((format!("reply-{i}"), encode_reply(r)));
        seeds.push((format!("reply-{i}-bare"), reply_payload(r).to_string()));
    }
    seeds
        .into_iter()
        .map(|(name, line)| (name, line.into_bytes()))
        .collect()
}

/// The control protocol's keys and a few awkward JSON values, as a libFuzzer dictionary.
pub fn control_dict() -> String {
    let mut words: Vec<String> = [
        "version",
        "request",
        "status",
        "ls",
        "fs",
        "dump",
        "fence_ack",
        "nodeid",
        "ok",
        "error",
        "daemon_version",
        "control_protocols",
        "cluster_protocol_min",
        "cluster_protocol_max",
    ]
    .iter()
    .map(|k| format!("\"\\\"{k}\\\"\""))
    .collect();
    for v in [
        "{",
        "}",
        "[]",
        "{}",
        ":",
        ",",
        "null",
        "true",
        "false",
        "-1",
        "4294967296",
        "1e400",
    ] {
        words.push(format!("\"{v}\""));
    }
    words.join("\n") + "\n"
}

/// The default configuration as `--dump_config` prints it, and a commented file with odd but
/// valid spacing.
pub fn config() -> Vec<Seed> {
    let dumped = Settings::default().dump();
    let spaced = "# comment\r\n\n  fence_warn = 90s \r\nenable_quorum=no\nlog_level=DEBUG\n";
    vec![
        ("dump".into(), dumped.into_bytes()),
        ("spaced".into(), spaced.as_bytes().to_vec()),
    ]
}
