//! Parsing of gfs2 kobject uevents (SPEC §2). Pure: bytes in, a typed event or a reason out.

use crate::types::{Jid, Table};

/// What the kernel said about one filesystem.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct KernelEvent {
    pub table: Table,
    pub kind: KernelEventKind,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum KernelEventKind {
    /// Early in mount, before the DLM join: the `add` uevent never tells the two modes apart.
    /// `kernel_managed` is not in the uevent: the parser leaves it `false` and the driver sets it
    /// from the DLM's `recover_callbacks` setting (1: the kernel coordinates recovery itself and
    /// the daemon must leave the filesystem alone; 0: the kernel waits for `first`/`jid`).
    Add {
        ro: bool,
        spectator: bool,
        kernel_managed: bool,
    },
    /// End of a mount, or of a remount (`ro` tells which way).
    Online { ro: bool, spectator: bool },
    /// The first mounter replayed every journal.
    FirstMountDone,
    /// A journal replay finished.
    Recovery { jid: Jid, done: bool },
    /// The filesystem withdrew.
    Offline,
    /// Unmount finished, or a mount failed.
    Remove,
}

/// Why a uevent was not turned into a [`KernelEvent`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UeventError {
    /// Not ours (another subsystem, or a `lock_nolock` filesystem): dropped silently.
    NotGfs2Dlm,
    /// Ours, but malformed: dropped with a log line.
    Malformed(String),
    /// A lock_dlm filesystem whose lock table this daemon cannot handle. The kernel takes any
    /// table (mapping `/` to `_` in the sysfs name `name`); a mount (`add`) would wait for
    /// `jid` forever, so the driver fails it with `jid=-EINVAL`.
    UnsupportedTable {
        name: String,
        add: bool,
        why: String,
    },
}

impl std::fmt::Display for UeventError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UeventError::NotGfs2Dlm => f.write_str("not a gfs2 lock_dlm uevent"),
            UeventError::Malformed(why) => write!(f, "malformed gfs2 uevent: {why}"),
            UeventError::UnsupportedTable { name, why, .. } => {
                write!(f, "gfs2 lock table {name:?} not supported: {why}")
            }
        }
    }
}

const DEVPATH_PREFIX: &str = "/fs/gfs2/";

fn flag(value: Option<&str>, key: &str) -> Result<bool, UeventError> {
    match value {
        None | Some("0") => Ok(false),
        Some("1") => Ok(true),
        Some(other) => Err(UeventError::Malformed(format!(
            "{key}={other} is not 0 or 1"
        ))),
    }
}

/// Parse one netlink datagram: `ACTION@DEVPATH\0KEY=VALUE\0...`.
pub fn parse_uevent(buf: &[u8]) -> Result<KernelEvent, UeventError> {
    let mut fields: Vec<(&str, &str)> = Vec::new();
    for (i, raw) in buf.split(|b| *b == 0).enumerate() {
        if raw.is_empty() {
            continue;
        }
        let Ok(text) = std::str::from_utf8(raw) else {
            return Err(UeventError::NotGfs2Dlm);
        };
        if i == 0 && text.contains('@') && !text.contains('=') {
            continue; // the header line; the same facts come again as KEY=VALUE pairs
        }
        if let Some(kv) = text.split_once('=') {
            fields.push(kv);
        }
    }
    let get = |key: &str| fields.iter().find(|(k, _)| *k == key).map(|(_, v)| *v);

    let devpath = get("DEVPATH").ok_or(UeventError::NotGfs2Dlm)?;
    if !devpath.starts_with(DEVPATH_PREFIX) {
        return Err(UeventError::NotGfs2Dlm);
    }
    if let Some(subsystem) = get("SUBSYSTEM") {
        if subsystem != "gfs2" {
            return Err(UeventError::NotGfs2Dlm);
        }
    }
    match get("LOCKPROTO") {
        Some("lock_dlm") => {}
        Some(_) => return Err(UeventError::NotGfs2Dlm),
        None => return Err(UeventError::Malformed("no LOCKPROTO".into())),
    }
    let table_text =
        get("LOCKTABLE").ok_or_else(|| UeventError::Malformed("no LOCKTABLE".into()))?;
    let name = &devpath[DEVPATH_PREFIX.len()..];
    let table = Table::parse(table_text).map_err(|e| {
        // A sysfs name without `/`: the kernel's own, safe to write to.
        if !name.is_empty() && !name.contains('/') && name != "." && name != ".." {
            UeventError::UnsupportedTable {
                name: name.to_owned(),
                add: get("ACTION") == Some("add"),
                why: format!("LOCKTABLE={table_text}: {e}"),
            }
        } else {
            UeventError::Malformed(format!("LOCKTABLE={table_text}: {e}"))
        }
    })?;
    if name != table_text {
        return Err(UeventError::Malformed(format!(
            "DEVPATH {devpath} does not name LOCKTABLE {table_text}"
        )));
    }
    let action = get("ACTION").ok_or_else(|| UeventError::Malformed("no ACTION".into()))?;
    let parse_jid = |key: &str| -> Result<Option<Jid>, UeventError> {
        match get(key) {
            None => Ok(None),
            Some(v) => v
                .parse::<Jid>()
                .ok()
                .filter(|j| *j < crate::MAX_JOURNALS)
                .map(Some)
                .ok_or_else(|| UeventError::Malformed(format!("{key}={v} is not a journal id"))),
        }
    };
    let kind = match action {
        "add" => KernelEventKind::Add {
            ro: flag(get("RDONLY"), "RDONLY")?,
            spectator: flag(get("SPECTATOR"), "SPECTATOR")?,
            kernel_managed: false,
        },
        "online" => KernelEventKind::Online {
            ro: flag(get("RDONLY"), "RDONLY")?,
            spectator: flag(get("SPECTATOR"), "SPECTATOR")?,
        },
        "change" => {
            if let Some(first) = get("FIRSTMOUNT") {
                if first != "Done" {
                    return Err(UeventError::Malformed(format!("FIRSTMOUNT={first}")));
                }
                KernelEventKind::FirstMountDone
            } else {
                let jid = parse_jid("JID")?.ok_or_else(|| {
                    UeventError::Malformed("change without JID or FIRSTMOUNT".into())
                })?;
                let done = match get("RECOVERY") {
                    Some("Done") => true,
                    Some("Failed") => false,
                    other => {
                        return Err(UeventError::Malformed(format!(
                            "RECOVERY={} is not Done or Failed",
                            other.unwrap_or("<missing>")
                        )))
                    }
                };
                KernelEventKind::Recovery { jid, done }
            }
        }
        "offline" => KernelEventKind::Offline,
        "remove" => KernelEventKind::Remove,
        other => return Err(UeventError::Malformed(format!("unknown ACTION={other}"))),
    };
    Ok(KernelEvent { table, kind })
}

/// Render an event the way the kernel sends it (used by simulators and tests).
pub fn format_uevent(event: &KernelEvent) -> Vec<u8> {
    let table = event.table.to_string();
    let devpath = format!("{DEVPATH_PREFIX}{table}");
    let (action, extra): (&str, Vec<String>) = match &event.kind {
        KernelEventKind::Add { ro, spectator, .. } => (
            "add",
            vec![
                format!("RDONLY={}", *ro as u8),
                format!("SPECTATOR={}", *spectator as u8),
            ],
        ),
        KernelEventKind::Online { ro, spectator } => (
            "online",
            vec![
                format!("RDONLY={}", *ro as u8),
                format!("SPECTATOR={}", *spectator as u8),
            ],
        ),
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
    let mut out = Vec::new();
    let mut push = |s: &str| {
        out.extend_from_slice(s.as_bytes());
        out.push(0);
    };
    push(&format!("{action}@{devpath}"));
    push(&format!("ACTION={action}"));
    push(&format!("DEVPATH={devpath}"));
    push("SUBSYSTEM=gfs2");
    push(&format!("LOCKTABLE={table}"));
    push("LOCKPROTO=lock_dlm");
    for e in &extra {
        push(e);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::TableError;

    fn ev(kind: KernelEventKind) -> KernelEvent {
        KernelEvent {
            table: Table::parse("alpha:fs1").unwrap(),
            kind,
        }
    }

    #[test]
    fn round_trips_every_kind() {
        for kind in [
            KernelEventKind::Add {
                ro: true,
                spectator: false,
                kernel_managed: false,
            },
            KernelEventKind::Online {
                ro: false,
                spectator: true,
            },
            KernelEventKind::FirstMountDone,
            KernelEventKind::Recovery {
                jid: 7,
                done: false,
            },
            KernelEventKind::Recovery { jid: 0, done: true },
            KernelEventKind::Offline,
            KernelEventKind::Remove,
        ] {
            let e = ev(kind);
            assert_eq!(parse_uevent(&format_uevent(&e)), Ok(e));
        }
    }

    #[test]
    fn ignores_other_subsystems_and_nolock() {
        let dlm = b"add@/kernel/dlm/fs1\0ACTION=add\0DEVPATH=/kernel/dlm/fs1\0SUBSYSTEM=dlm\0";
        assert_eq!(parse_uevent(dlm), Err(UeventError::NotGfs2Dlm));
        let nolock = b"add@/fs/gfs2/a:b\0ACTION=add\0DEVPATH=/fs/gfs2/a:b\0SUBSYSTEM=gfs2\0LOCKTABLE=a:b\0LOCKPROTO=lock_nolock\0";
        assert_eq!(parse_uevent(nolock), Err(UeventError::NotGfs2Dlm));
    }

    #[test]
    fn rejects_malformed_values() {
        let bad_jid = b"change@/fs/gfs2/a:b\0ACTION=change\0DEVPATH=/fs/gfs2/a:b\0SUBSYSTEM=gfs2\0LOCKTABLE=a:b\0LOCKPROTO=lock_dlm\0JID=-1\0RECOVERY=Done\0";
        assert!(matches!(
            parse_uevent(bad_jid),
            Err(UeventError::Malformed(_))
        ));
        let bad_status = b"change@/fs/gfs2/a:b\0ACTION=change\0DEVPATH=/fs/gfs2/a:b\0SUBSYSTEM=gfs2\0LOCKTABLE=a:b\0LOCKPROTO=lock_dlm\0JID=1\0RECOVERY=Maybe\0";
        assert!(matches!(
            parse_uevent(bad_status),
            Err(UeventError::Malformed(_))
        ));
        let mismatch = b"remove@/fs/gfs2/a:c\0ACTION=remove\0DEVPATH=/fs/gfs2/a:c\0SUBSYSTEM=gfs2\0LOCKTABLE=a:b\0LOCKPROTO=lock_dlm\0";
        assert!(matches!(
            parse_uevent(mismatch),
            Err(UeventError::Malformed(_))
        ));
    }

    #[test]
    fn a_mount_of_an_unsupported_table_is_reported_for_refusal() {
        let add = b"add@/fs/gfs2/c:f x\0ACTION=add\0DEVPATH=/fs/gfs2/c:f x\0SUBSYSTEM=gfs2\0LOCKTABLE=c:f x\0LOCKPROTO=lock_dlm\0";
        match parse_uevent(add) {
            Err(UeventError::UnsupportedTable { name, add, .. }) => {
                assert_eq!(name, "c:f x");
                assert!(add);
            }
            other => panic!("{other:?}"),
        }
        let remove = b"remove@/fs/gfs2/c:f x\0ACTION=remove\0DEVPATH=/fs/gfs2/c:f x\0SUBSYSTEM=gfs2\0LOCKTABLE=c:f x\0LOCKPROTO=lock_dlm\0";
        assert!(matches!(
            parse_uevent(remove),
            Err(UeventError::UnsupportedTable { add: false, .. })
        ));
    }

    #[test]
    fn table_validation() {
        assert!(Table::parse("c:f").is_ok());
        assert_eq!(Table::parse("cf"), Err(TableError::NoColon));
        assert_eq!(Table::parse(":f"), Err(TableError::EmptyPart));
        assert_eq!(Table::parse("c:f/x"), Err(TableError::BadCharacter));
        assert_eq!(
            Table::parse(&format!("c:{}", "x".repeat(70))),
            Err(TableError::TooLong)
        );
    }
}
