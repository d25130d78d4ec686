//! The wire decoder against arbitrary and mutated input: it never panics, and every message
//! survives encode then decode unchanged.

use std::collections::{BTreeMap, BTreeSet};

use gfs_core::wire::{decode, encode, Header, Message, WireError, HEADER_LEN, MAGIC};
use gfs_core::{Dirty, FsState, MState, Member, MountMode, Mounter, Replicated};
use proptest::prelude::*;

fn table() -> impl Strategy<Value = gfs_core::Table> {
    ("[a-z][a-z0-9_]{0,15}", "[a-z][a-z0-9_.-]{0,30}")
        .prop_map(|(c, f)| gfs_core::Table::parse(&format!("{c}:{f}")).expect("valid table"))
}

fn mode() -> impl Strategy<Value = MountMode> {
    prop_oneof![
        Just(MountMode::Rw),
        Just(MountMode::Ro),
        Just(MountMode::Spectator)
    ]
}

fn nodes() -> impl Strategy<Value = BTreeSet<u32>> {
    proptest::collection::btree_set(1u32..400, 0..8)
}

fn jid() -> impl Strategy<Value = u32> {
    0u32..256
}

fn opt_node() -> impl Strategy<Value = Option<u32>> {
    proptest::option::of(1u32..400)
}

fn fs_state() -> impl Strategy<Value = FsState> {
    let mounter = (proptest::option::of(jid()), mode(), 0u8..6, any::<bool>()).prop_map(
        |(jid, mode, st, ready)| Mounter {
            jid,
            mode,
            state: [
                MState::Waiting,
                MState::First,
                MState::Admitted,
                MState::Mounted,
                MState::Rejected,
                MState::NeedsRw,
            ][st as usize],
            ready,
        },
    );
    let dirty = (1u32..400, nodes(), opt_node(), 0u32..10, opt_node()).prop_map(
        |(owner, fence, replayer, attempts, last)| Dirty {
            owner,
            fence,
            replayer,
            attempts,
            last_failed_by: last,
        },
    );
    (
        proptest::collection::btree_map(1u32..400, mounter, 0..6),
        proptest::collection::btree_map(jid(), dirty, 0..4),
        any::<u64>(),
        nodes(),
        nodes(),
    )
        .prop_map(
            |(mounters, dirty, dirty_epoch, stopped, fence_before_first)| FsState {
                mounters,
                dirty,
                dirty_epoch,
                stopped,
                fence_before_first,
            },
        )
}

fn replicated() -> impl Strategy<Value = Replicated> {
    let member = (
        any::<u16>(),
        any::<u16>(),
        any::<bool>(),
        any::<bool>(),
        proptest::option::of(1u32..400),
        (any::<u64>(), any::<u64>()),
        any::<u32>(),
    )
        .prop_map(
            |(a, b, synced, stale, synced_by, (joined_at, synced_at), pid)| Member {
                pid,
                proto_min: a,
                proto_max: b,
                synced,
                stale,
                synced_by,
                joined_at,
                synced_at,
            },
        );
    (
        any::<u16>(),
        (any::<u64>(), any::<u64>()),
        proptest::collection::btree_map(1u32..400, member, 0..6),
        (
            nodes(),
            proptest::collection::btree_map(1u32..400, any::<u64>(), 0..4),
            nodes(),
        ),
        proptest::collection::btree_map(table(), fs_state(), 0..3),
    )
        .prop_map(
            |(version, (epoch, confchgs), members, (must_fence, must_fence_since, fenced), fs)| {
                Replicated {
                    version,
                    epoch,
                    confchgs,
                    members,
                    must_fence,
                    must_fence_since,
                    fenced,
                    fs,
                }
            },
        )
}

fn message() -> impl Strategy<Value = Message> {
    let v: Vec<BTreeSet<u32>> = Vec::new();
    let _ = v;
    prop_oneof![
        (
            any::<u16>(),
            any::<u16>(),
            any::<u32>(),
            any::<bool>(),
            nodes(),
            nodes()
        )
            .prop_map(|(a, b, attempt, synced, side, config)| Message::Hello {
                proto_min: a,
                proto_max: b,
                attempt,
                synced,
                side: side.into_iter().collect(),
                config: config.into_iter().collect(),
            }),
        (1u32..400, any::<u32>(), replicated()).prop_map(|(recipient, attempt, snapshot)| {
            Message::State {
                recipient,
                attempt,
                snapshot,
            }
        }),
        (table(), mode()).prop_map(|(table, mode)| Message::Mount { table, mode }),
        table().prop_map(|table| Message::Mounted { table }),
        table().prop_map(|table| Message::JournalReady { table }),
        table().prop_map(|table| Message::Unmount { table }),
        table().prop_map(|table| Message::Withdraw { table }),
        (table(), mode()).prop_map(|(table, mode)| Message::Remount { table, mode }),
        (any::<u64>(), proptest::collection::vec(table(), 0..4))
            .prop_map(|(epoch, tables)| Message::Stopped { epoch, tables }),
        (table(), jid(), any::<bool>(), any::<u32>()).prop_map(|(table, jid, done, attempt)| {
            Message::Recovered {
                table,
                jid,
                done,
                attempt,
            }
        }),
        (1u32..400, any::<u64>())
            .prop_map(|(nodeid, failure)| Message::FenceAck { nodeid, failure }),
        (1u32..400, any::<u64>()).prop_map(|(nodeid, failure)| Message::Fenced { nodeid, failure }),
    ]
}

fn header() -> impl Strategy<Value = Header> {
    (1u32..400, any::<u64>()).prop_map(|(sender, change)| Header {
        version: 1,
        sender,
        change,
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn encode_then_decode_is_identity(h in header(), m in message()) {
        let bytes = encode(&h, &m);
        prop_assert_eq!(decode(&bytes), Ok((h, m)));
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode(&bytes);
    }

    #[test]
    fn arbitrary_bodies_behind_a_valid_header_never_panic(ty in 0u16..16, body in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&MAGIC.to_le_bytes());
        bytes.extend_from_slice(&1u16.to_le_bytes());
        bytes.extend_from_slice(&ty.to_le_bytes());
        bytes.extend_from_slice(&7u32.to_le_bytes());
        bytes.extend_from_slice(&0u64.to_le_bytes());
        bytes.extend_from_slice(&(body.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&body);
        let _ = decode(&bytes);
    }

    #[test]
    fn mutated_messages_never_panic_and_truncations_are_rejected(h in header(), m in message(), flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6), cut in any::<usize>()) {
        let bytes = encode(&h, &m);
        let mut mutated = bytes.clone();
        for (at, x) in flips {
            let i = at % mutated.len();
            mutated[i] ^= x;
        }
        let _ = decode(&mutated);
        let cut = cut % bytes.len();
        prop_assert!(decode(&bytes[..cut]).is_err());
    }
}

#[test]
fn typed_errors_name_what_is_wrong() {
    let h = Header {
        version: 1,
        sender: 1,
        change: 0,
    };
    let good = encode(
        &h,
        &Message::Stopped {
            epoch: 3,
            tables: vec![],
        },
    );
    assert_eq!(decode(&good[..HEADER_LEN - 1]), Err(WireError::Truncated));
    let mut bad_magic = good.clone();
    bad_magic[0] ^= 0xff;
    assert!(matches!(decode(&bad_magic), Err(WireError::BadMagic(_))));
    let mut future = good.clone();
    future[4] = 9;
    assert_eq!(decode(&future), Err(WireError::UnsupportedVersion(9)));
    let mut unknown = good.clone();
    unknown[6] = 99;
    assert_eq!(decode(&unknown), Err(WireError::UnknownType(99)));
    let mut trailing = good.clone();
    trailing.push(0);
    assert!(matches!(
        decode(&trailing),
        Err(WireError::LengthMismatch { .. })
    ));
    let huge = vec![0u8; gfs_core::wire::MAX_MESSAGE_LEN + 1];
    assert!(matches!(decode(&huge), Err(WireError::TooLarge(_))));
    // A lock table that is not one is rejected, not trusted.
    // (A `Table` cannot hold one, so the bytes of a valid one are bent: "ab:cd" to "abxcd".)
    let mut bad_table = encode(
        &h,
        &Message::Unmount {
            table: gfs_core::Table::parse("ab:cd").unwrap(),
        },
    );
    let colon = bad_table.iter().rposition(|b| *b == b':').unwrap();
    bad_table[colon] = b'x';
    assert_eq!(decode(&bad_table), Err(WireError::BadValue("lock table")));
    let _ = BTreeMap::<u8, u8>::new();
}
