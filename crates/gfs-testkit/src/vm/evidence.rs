//! Reading the nodes' logs as evidence: the kernel's lines, uevents and the daemons' logs,
//! each put on the host's clock, and a failure's recovery timeline built from them.
//!
//! The kernel and the uevents are the ground truth (what gfs2 did); the daemon's log adds
//! what it decided (membership change, block, unblock). Every guest log line starts with the
//! guest's wall clock; [`VmCluster::host_ms`] maps it with the offset measured per node.

use std::fmt::Write as _;

use super::VmCluster;

/// One log line on the host's clock.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Line {
    pub at_ms: u64,
    pub node: u32,
    pub text: String,
}

impl VmCluster {
    fn stamped_lines(
        &self,
        id: u32,
        log: &str,
        since_ms: u64,
        parse: impl Fn(&str) -> Option<(f64, String)>,
    ) -> Vec<Line> {
        self.log(id, log)
            .lines()
            .filter_map(&parse)
            .map(|(secs, text)| Line {
                at_ms: self.host_ms(id, secs),
                node: id,
                text,
            })
            .filter(|l| l.at_ms >= since_ms)
            .collect()
    }

    /// Kernel log lines of node `id` since `since_ms` (host unix ms), without the stamps.
    pub fn kernel_lines(&self, id: u32, since_ms: u64) -> Vec<Line> {
        self.stamped_lines(id, "kmsg.log", since_ms, |l| {
            let (secs, rest) = l.split_once(' ')?;
            let text = rest.split_once("] ").map_or(rest, |(_, t)| t);
            Some((secs.parse().ok()?, text.to_owned()))
        })
    }

    /// gfs2 and dlm uevents of node `id` since `since_ms`: `ACTION@DEVPATH KEY=VALUE ...`.
    pub fn uevent_lines(&self, id: u32, since_ms: u64) -> Vec<Line> {
        self.stamped_lines(id, "uevents.log", since_ms, |l| {
            let (secs, rest) = l.split_once(' ')?;
            Some((secs.parse().ok()?, rest.to_owned()))
        })
    }

    /// gfs_controld's log lines of node `id` since `since_ms` (tracing's UTC time stamps).
    pub fn daemon_lines(&self, id: u32, since_ms: u64) -> Vec<Line> {
        self.stamped_lines(id, "gfs_controld.log", since_ms, |l| {
            let (stamp, rest) = l.split_once(' ')?;
            Some((parse_rfc3339(stamp)?, rest.trim().to_owned()))
        })
    }
}

/// `2026-11-25T14:29:38.462982Z` as unix seconds.
pub fn parse_rfc3339(text: &str) -> Option<f64> {
    let text = text.strip_suffix('Z')?;
    let (date, time) = text.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let mut t = time.split(':');
    let (h, min) = (
        t.next()?.parse::<i64>().ok()?,
        t.next()?.parse::<i64>().ok()?,
    );
    let sec: f64 = t.next()?.parse().ok()?;
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((days * 86_400 + h * 3600 + min * 60) as f64 + sec)
}

/// `jid=2: Replayed 23 of 122 blocks` → (23, 122).
pub fn replayed_blocks(text: &str) -> Option<(u64, u64)> {
    let rest = text.split("Replayed ").nth(1)?;
    let mut words = rest.split_whitespace();
    let done = words.next()?.parse().ok()?;
    words.next()?; // "of"
    let total = words.next()?.parse().ok()?;
    Some((done, total))
}

/// What one failure's recovery looked like, every time on the host's clock (unix ms).
#[derive(Clone, Debug, Default)]
pub struct Recovery {
    pub scenario: String,
    pub failed: Vec<u32>,
    pub kill_ms: u64,
    pub membership_ms: Option<u64>,
    pub block_ms: Option<u64>,
    pub fenced_ms: Option<u64>,
    pub replay_start_ms: Option<u64>,
    pub replay_end_ms: Option<u64>,
    pub unblock_ms: Option<u64>,
    /// Nodes whose kernel replayed a failed node's journal.
    pub replayers: Vec<u32>,
    /// (blocks replayed, blocks in the journal's live part), summed over the replays.
    pub blocks: Option<(u64, u64)>,
    /// The whole scenario, seconds.
    pub wall_secs: f64,
    /// The merged timeline: kernel lines, uevents, daemon decisions, fencing.
    pub events: Vec<Line>,
}

/// Does this daemon log line say it wrote `value` to `file`? The executor logs
/// `sysfs write fs=gfs0 file="block" value=1 ms=48` (at debug); the fields are matched as
/// whole words wherever they stand.
pub fn sysfs_write(text: &str, file: &str, value: &str) -> bool {
    let fields: Vec<&str> = text.split_whitespace().collect();
    text.contains("sysfs write")
        && fields
            .iter()
            .any(|f| *f == format!("file={file}") || *f == format!("file=\"{file}\""))
        && fields.iter().any(|f| *f == format!("value={value}"))
}

impl Recovery {
    /// Builds the timeline of the failure of `failed` (their jids `jids`) at `kill_ms`, as
    /// seen by `survivors`, up to now.
    pub fn collect(
        c: &VmCluster,
        scenario: &str,
        failed: &[u32],
        jids: &[u32],
        survivors: &[u32],
        kill_ms: u64,
    ) -> Recovery {
        let mut r = Recovery {
            scenario: scenario.to_owned(),
            failed: failed.to_vec(),
            kill_ms,
            ..Recovery::default()
        };
        let first = |v: &mut Option<u64>, t: u64| {
            if v.is_none_or(|old| t < old) {
                *v = Some(t);
            }
        };
        let mut blocks = (0, 0);
        let mut have_blocks = false;
        for &id in survivors {
            for l in c.kernel_lines(id, kill_ms) {
                let ours = jids.iter().any(|j| l.text.contains(&format!("jid={j}: ")));
                let gfs2 = l.text.starts_with("gfs2:");
                let dlm = l.text.starts_with("dlm:");
                if gfs2 && ours && l.text.contains("Replaying journal") {
                    first(&mut r.replay_start_ms, l.at_ms);
                    if !r.replayers.contains(&id) {
                        r.replayers.push(id);
                    }
                }
                if gfs2 && ours && l.text.contains("Journal replayed in") {
                    r.replay_end_ms = Some(r.replay_end_ms.map_or(l.at_ms, |t| t.max(l.at_ms)));
                }
                if gfs2 && ours {
                    if let Some((d, t)) = replayed_blocks(&l.text) {
                        blocks.0 += d;
                        blocks.1 += t;
                        have_blocks = true;
                    }
                }
                // The DLM's own recovery, in brief: the link drop, the purge, the end.
                let dlm_key = dlm
                    && (l.text.contains("closing connection")
                        || l.text.contains("recover_purge")
                        || (l.text.contains("generation") && l.text.contains("done")));
                let gfs2_key = gfs2 && (ours || l.text.contains("withdraw"));
                if gfs2_key || dlm_key {
                    r.events.push(Line {
                        text: format!("kernel  {}", l.text),
                        ..l
                    });
                }
            }
            for l in c.uevent_lines(id, kill_ms) {
                if l.text.starts_with("change@") || l.text.starts_with("offline@") {
                    r.events.push(Line {
                        text: format!("uevent  {}", l.text),
                        ..l
                    });
                }
            }
            for l in c.daemon_lines(id, kill_ms) {
                let failed_left = l.text.contains("CPG membership change group=gfs:")
                    && failed.iter().any(|f| {
                        l.text
                            .split("left=")
                            .nth(1)
                            .is_some_and(|left| left.contains(&format!("({f},")))
                    });
                let what = if failed_left {
                    first(&mut r.membership_ms, l.at_ms);
                    Some("membership change")
                } else if sysfs_write(&l.text, "block", "1") {
                    first(&mut r.block_ms, l.at_ms);
                    Some("block=1")
                } else if sysfs_write(&l.text, "block", "0") {
                    r.unblock_ms = Some(r.unblock_ms.map_or(l.at_ms, |t| t.max(l.at_ms)));
                    Some("block=0")
                } else if l.text.contains("sysfs write") && l.text.contains("recover") {
                    Some("recover")
                } else if l.text.contains("gfs_core: fenced ")
                    || l.text.contains("fenced (by")
                    || l.text.contains("fenced (reported by")
                {
                    Some("fenced")
                } else if l.text.contains("gfs_core") && l.text.contains("WARN") {
                    Some("warning")
                } else {
                    None
                };
                if let Some(what) = what {
                    let text = l.text.split_once(": ").map_or(&l.text[..], |(_, t)| t);
                    r.events.push(Line {
                        text: format!("daemon  [{what}] {text}"),
                        at_ms: l.at_ms,
                        node: l.node,
                    });
                }
            }
        }
        for f in c.fence_records() {
            if f.at_ms >= kill_ms && failed.contains(&f.nodeid) {
                first(&mut r.fenced_ms, f.at_ms);
                r.events.push(Line {
                    at_ms: f.at_ms,
                    node: 0,
                    text: format!(
                        "fence   node {} powered off (asked by {}; {})",
                        f.nodeid,
                        f.from,
                        match f.killed_pid {
                            Some(pid) => format!("killed qemu {pid}"),
                            None => "its qemu was already dead".into(),
                        }
                    ),
                });
            }
        }
        if have_blocks {
            r.blocks = Some(blocks);
        }
        r.events.sort();
        r
    }

    fn offset(&self, t: Option<u64>) -> String {
        t.map_or("-".into(), |t| {
            format!("+{:.2}s", (t as f64 - self.kill_ms as f64) / 1000.0)
        })
    }

    /// The timeline as text, times relative to the kill.
    pub fn render_timeline(&self) -> String {
        let mut text = String::new();
        for e in &self.events {
            let who = if e.node == 0 {
                "host ".to_owned()
            } else {
                format!("node{}", e.node)
            };
            let _ = writeln!(
                text,
                "  {:>8}  {who}  {}",
                self.offset(Some(e.at_ms)),
                e.text
            );
        }
        text
    }

    pub const TABLE_HEADER: &'static str = "scenario                 failed  membership  block     fenced    replay start  replay end  unblock   blocks replayed  replayer  wall";

    /// One row of the summary table.
    pub fn table_row(&self) -> String {
        let failed: Vec<String> = self.failed.iter().map(u32::to_string).collect();
        let replayers: Vec<String> = self.replayers.iter().map(u32::to_string).collect();
        format!(
            "{:<24} {:<7} {:<11} {:<9} {:<9} {:<13} {:<11} {:<9} {:<16} {:<9} {:.0}s",
            self.scenario,
            failed.join(","),
            self.offset(self.membership_ms),
            self.offset(self.block_ms),
            self.offset(self.fenced_ms),
            self.offset(self.replay_start_ms),
            self.offset(self.replay_end_ms),
            self.offset(self.unblock_ms),
            self.blocks
                .map_or("-".into(), |(d, t)| format!("{d} of {t}")),
            if replayers.is_empty() {
                "-".into()
            } else {
                replayers.join(",")
            },
            self.wall_secs
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tracing_timestamps() {
        assert_eq!(parse_rfc3339("1970-01-02T00:00:01.500000Z"), Some(86_401.5));
    }

    #[test]
    fn parses_replayed_blocks() {
        assert_eq!(
            replayed_blocks("gfs2: fsid=vmc:gfs0.0: jid=1: Replayed 23 of 122 blocks"),
            Some((23, 122))
        );
    }

    #[test]
    fn recognises_sysfs_writes() {
        assert!(sysfs_write(
            "DEBUG gfs_controld::daemon: sysfs write fs=gfs0 file=\"block\" value=1",
            "block",
            "1"
        ));
        assert!(!sysfs_write(
            "DEBUG gfs_controld::daemon: sysfs write fs=gfs0 file=block value=0",
            "block",
            "1"
        ));
        // The current executor's wording, with the write's duration after the value.
        let line = "DEBUG gfs_controld::kernel::executor: sysfs write fs=gfs0 file=\"block\" value=1 ms=48";
        assert!(sysfs_write(line, "block", "1"));
        assert!(!sysfs_write(line, "block", "0"));
        assert!(!sysfs_write(line, "jid", "1"));
    }
}
