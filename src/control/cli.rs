//! `gfs_control`: the operator's view of the daemon. Parsing, one request, and text or JSON
//! output; the binary only calls [`run`].

use std::fmt::Write as _;
use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use gfs_core::view::{FsView, RecoveryTimeline, StatusView};

use super::client::{self, ClientError, DEFAULT_TIMEOUT};
use super::proto::{reply_payload, Reply, Request, VersionInfo, DEFAULT_SOCKET_PATH};

/// Success.
pub const EXIT_OK: u8 = 0;
/// The daemon refused the request (error reply), or talking to it failed.
pub const EXIT_REFUSED: u8 = 1;
/// Bad command line (clap's own exit code).
pub const EXIT_USAGE: u8 = 2;
/// The daemon is not running: no socket, or nobody listening on it.
pub const EXIT_NOT_RUNNING: u8 = 3;

/// Query and instruct gfs_controld, the GFS2 journal-recovery coordinator.
#[derive(Debug, Parser)]
#[command(name = "gfs_control", version, about, long_about = None)]
pub struct ControlArgs {
    /// Print the daemon's reply as pretty-printed JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// The daemon's control socket.
    #[arg(long, global = true, value_name = "PATH", default_value = DEFAULT_SOCKET_PATH)]
    pub socket: PathBuf,
    #[command(subcommand)]
    pub command: ControlCommand,
}

#[derive(Debug, Subcommand)]
pub enum ControlCommand {
    /// List filesystems: members, journal ids, mount modes, dirty journals and what they wait for.
    Ls {
        /// Show only this filesystem (its name or its lock table).
        #[arg(value_name = "FS")]
        fs: Option<String>,
    },
    /// Show the daemon: membership, quorum, fencing waits and recent recoveries.
    Status,
    /// Print the daemon's in-memory debug log.
    Dump,
    /// Confirm that a node is down, in place of fencing it (only after making sure it is).
    FenceAck {
        /// The corosync node id of the node that is down.
        #[arg(value_name = "NODEID", value_parser = clap::value_parser!(u32).range(1..))]
        nodeid: u32,
    },
    /// Show the versions of gfs_control, the daemon and their protocols.
    Version,
    /// Print a shell completion script.
    Completions {
        #[arg(value_name = "SHELL")]
        shell: CompletionShell,
    },
}

/// The shells `completions` can write for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum CompletionShell {
    Bash,
    Zsh,
    Fish,
}

impl From<CompletionShell> for clap_complete::Shell {
    fn from(shell: CompletionShell) -> Self {
        match shell {
            CompletionShell::Bash => clap_complete::Shell::Bash,
            CompletionShell::Zsh => clap_complete::Shell::Zsh,
            CompletionShell::Fish => clap_complete::Shell::Fish,
        }
    }
}

/// Runs one `gfs_control` invocation against the process's stdout and stderr.
pub fn run(args: ControlArgs) -> ExitCode {
    let stdout = io::stdout();
    let stderr = io::stderr();
    ExitCode::from(run_with(args, &mut stdout.lock(), &mut stderr.lock()))
}

/// [`run`] with explicit output streams; returns the exit status.
pub fn run_with(args: ControlArgs, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    let request = match &args.command {
        ControlCommand::Completions { shell } => {
            let mut buffer = Vec::new();
            clap_complete::generate(
                clap_complete::Shell::from(*shell),
                &mut ControlArgs::command(),
                "gfs_control",
                &mut buffer,
            );
            return emit(out, err, &buffer);
        }
        ControlCommand::Ls { fs } => Request::Ls { fs: fs.clone() },
        ControlCommand::Status => Request::Status {},
        ControlCommand::Dump => Request::Dump {},
        ControlCommand::FenceAck { nodeid } => Request::FenceAck { nodeid: *nodeid },
        ControlCommand::Version => Request::Version {},
    };
    let reply = match client::request(&args.socket, &request, DEFAULT_TIMEOUT) {
        Ok(reply) => reply,
        Err(e) => {
            if matches!(args.command, ControlCommand::Version) && !args.json {
                let _ = writeln!(out, "gfs_control {}", env!("CARGO_PKG_VERSION"));
            }
            let _ = writeln!(err, "gfs_control: {e}");
            return match e {
                ClientError::NotRunning { .. } => EXIT_NOT_RUNNING,
                _ => EXIT_REFUSED,
            };
        }
    };
    if let Reply::Error(message) = &reply {
        let _ = writeln!(err, "gfs_control: {message}");
        return EXIT_REFUSED;
    }
    if let (Request::Ls { fs: Some(name) }, Reply::Filesystems(list)) = (&request, &reply) {
        if list.is_empty() {
            let _ = writeln!(err, "gfs_control: no filesystem {name}");
            return EXIT_REFUSED;
        }
    }
    let text = if args.json {
        let mut text = serde_json::to_string_pretty(&reply_payload(&reply)).unwrap_or_default();
        text.push('\n');
        text
    } else {
        render_text(&reply)
    };
    emit(out, err, text.as_bytes())
}

/// Writes the output; a closed pipe (`gfs_control dump | head`) is not an error.
fn emit(out: &mut dyn Write, err: &mut dyn Write, bytes: &[u8]) -> u8 {
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Ok(()) => EXIT_OK,
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => EXIT_OK,
        Err(e) => {
            let _ = writeln!(err, "gfs_control: cannot write output: {e}");
            EXIT_REFUSED
        }
    }
}

/// The text form of a reply.
pub fn render_text(reply: &Reply) -> String {
    match reply {
        Reply::Status(status) => render_status(status),
        Reply::Filesystems(filesystems) => render_filesystems(filesystems),
        Reply::Dump(lines) => lines.iter().fold(String::new(), |mut text, line| {
            text.push_str(line);
            text.push('\n');
            text
        }),
        Reply::Message(message) => format!("{message}\n"),
        Reply::Version(version) => render_version(version),
        Reply::Error(message) => format!("error: {message}\n"),
    }
}

/// Left-aligned columns two spaces apart, each as wide as its widest cell; no trailing blanks.
pub fn render_table(indent: &str, headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (column, cell) in row.iter().enumerate() {
            if let Some(width) = widths.get_mut(column) {
                *width = (*width).max(cell.chars().count());
            }
        }
    }
    let header_row: Vec<String> = headers.iter().map(|h| (*h).to_owned()).collect();
    let mut text = String::new();
    for row in std::iter::once(&header_row).chain(rows) {
        let mut line = String::from(indent);
        for (column, cell) in row.iter().enumerate() {
            if column > 0 {
                line.push_str("  ");
            }
            let width = widths.get(column).copied().unwrap_or(0);
            let _ = write!(line, "{cell:<width$}");
        }
        text.push_str(line.trim_end());
        text.push('\n');
    }
    text
}

/// `key  value` lines with the values aligned.
fn render_fields(indent: &str, fields: &[(&str, String)]) -> String {
    let width = fields.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    fields.iter().fold(String::new(), |mut text, (key, value)| {
        let _ = writeln!(text, "{indent}{key:<width$}  {value}");
        text
    })
}

/// A duration in milliseconds, to the precision an operator needs.
pub fn human_duration(ms: u64) -> String {
    match ms {
        0..=999 => format!("{ms}ms"),
        1_000..=59_999 => format!("{}.{}s", ms / 1000, (ms % 1000) / 100),
        60_000..=3_599_999 => format!("{}m{:02}s", ms / 60_000, (ms % 60_000) / 1000),
        _ => format!("{}h{:02}m", ms / 3_600_000, (ms % 3_600_000) / 60_000),
    }
}

fn node_list(nodes: &[u32]) -> String {
    if nodes.is_empty() {
        "none".to_owned()
    } else {
        nodes
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(" ")
    }
}

fn yes_no(flag: bool) -> String {
    if flag { "yes" } else { "no" }.to_owned()
}

fn or_dash(value: Option<impl ToString>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

pub fn render_status(status: &StatusView) -> String {
    let protocol = if status.synced {
        format!("{} (max {})", status.protocol_version, status.protocol_max)
    } else {
        format!("not negotiated yet (max {})", status.protocol_max)
    };
    let mut text = render_fields(
        "",
        &[
            ("nodeid", status.nodeid.to_string()),
            ("cluster", status.cluster_name.clone()),
            ("protocol", protocol),
            ("synced", yes_no(status.synced)),
            (
                "quorum",
                if status.quorate {
                    "quorate"
                } else {
                    "NOT quorate"
                }
                .to_owned(),
            ),
            ("members", node_list(&status.members)),
            ("stale members", node_list(&status.stale_members)),
            ("filesystems", status.filesystems.to_string()),
        ],
    );
    text.push('\n');
    if !status.quorum_waits.is_empty() {
        // Inquorate: fencing is not even asked for, so the fencing backend and fence-ack are
        // the wrong places to look.
        let _ = writeln!(
            text,
            "fencing: waiting for quorum (node {} to be fenced once this partition is quorate; \
             nothing is fenced or replayed before)",
            node_list(&status.quorum_waits)
        );
    }
    if status.fence_waits.is_empty() {
        if status.quorum_waits.is_empty() {
            text.push_str("fencing: nothing pending\n");
        }
    } else {
        text.push_str("fencing pending\n");
        let rows: Vec<Vec<String>> = status
            .fence_waits
            .iter()
            .map(|wait| {
                vec![
                    wait.nodeid.to_string(),
                    human_duration(wait.waiting_ms),
                    yes_no(wait.requested),
                    wait.last_error.clone().unwrap_or_else(|| "-".to_owned()),
                ]
            })
            .collect();
        text.push_str(&render_table(
            "  ",
            &["NODEID", "WAITING", "REQUESTED", "LAST ERROR"],
            &rows,
        ));
    }
    text.push('\n');
    if status.recoveries.is_empty() {
        text.push_str("recoveries: none recorded\n");
    } else {
        text.push_str("recent recoveries\n");
        for timeline in &status.recoveries {
            text.push_str(&render_timeline(timeline));
        }
    }
    text
}

fn render_timeline(timeline: &RecoveryTimeline) -> String {
    let duration = match timeline.finished_ms {
        Some(finished) => format!(
            "took {}",
            human_duration(finished.saturating_sub(timeline.started_ms))
        ),
        None => "in progress".to_owned(),
    };
    let filesystems = if timeline.filesystems.is_empty() {
        "none".to_owned()
    } else {
        timeline.filesystems.join(" ")
    };
    let mut text = format!(
        "  change {}: failed {}; filesystems {}; {}\n",
        timeline.change,
        node_list(&timeline.failed),
        filesystems,
        duration
    );
    let offsets: Vec<String> = timeline
        .events
        .iter()
        .map(|event| {
            format!(
                "+{}",
                human_duration(event.at_ms.saturating_sub(timeline.started_ms))
            )
        })
        .collect();
    let width = offsets.iter().map(String::len).max().unwrap_or(0);
    for (offset, event) in offsets.iter().zip(&timeline.events) {
        let _ = writeln!(text, "    {offset:>width$}  {}", event.what);
    }
    text
}

pub fn render_filesystems(filesystems: &[FsView]) -> String {
    if filesystems.is_empty() {
        return "no filesystems\n".to_owned();
    }
    let sections: Vec<String> = filesystems.iter().map(render_filesystem).collect();
    sections.join("\n")
}

fn render_filesystem(fs: &FsView) -> String {
    let mut fields = vec![
        ("table", fs.table.clone()),
        ("state", fs.state.clone()),
        (
            "recovery by",
            if fs.kernel_managed {
                "kernel"
            } else {
                "gfs_controld"
            }
            .to_owned(),
        ),
        ("first mounter", or_dash(fs.first_mounter)),
    ];
    if let Some(local) = &fs.local {
        let mut mount = format!(
            "jid {}, {}, kernel {}",
            or_dash(local.jid),
            local.mode.as_str(),
            local.kernel_state
        );
        if local.blocked {
            mount.push_str(", blocked");
        }
        fields.push(("local mount", mount));
    }
    let mut text = format!("{}\n", fs.name);
    text.push_str(&render_fields("  ", &fields));
    let members: Vec<Vec<String>> = fs
        .members
        .iter()
        .map(|member| {
            vec![
                member.nodeid.to_string(),
                or_dash(member.jid),
                member.mode.as_str().to_owned(),
                member.state.clone(),
            ]
        })
        .collect();
    text.push_str("  members\n");
    text.push_str(&render_table(
        "    ",
        &["NODEID", "JID", "MODE", "STATE"],
        &members,
    ));
    if fs.dirty_journals.is_empty() {
        text.push_str("  dirty journals: none\n");
    } else {
        let journals: Vec<Vec<String>> = fs
            .dirty_journals
            .iter()
            .map(|journal| {
                vec![
                    journal.jid.to_string(),
                    journal.owner.to_string(),
                    or_dash(journal.replayer),
                    journal.attempts.to_string(),
                    journal.waiting_for.clone(),
                ]
            })
            .collect();
        text.push_str("  dirty journals\n");
        text.push_str(&render_table(
            "    ",
            &["JID", "OWNER", "REPLAYER", "ATTEMPTS", "WAITING FOR"],
            &journals,
        ));
    }
    text
}

fn render_version(version: &VersionInfo) -> String {
    let control: Vec<String> = version
        .control_protocols
        .iter()
        .map(u32::to_string)
        .collect();
    render_fields(
        "",
        &[
            ("gfs_control", env!("CARGO_PKG_VERSION").to_owned()),
            ("gfs_controld", version.daemon_version.clone()),
            ("control protocol", control.join(" ")),
            (
                "cluster protocol",
                format!(
                    "{}..{}",
                    version.cluster_protocol_min, version.cluster_protocol_max
                ),
            ),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_on_the_widest_cell() {
        let text = render_table(
            "",
            &["A", "LONG HEADER"],
            &[
                vec!["wide cell".to_owned(), "x".to_owned()],
                vec!["1".to_owned(), "y".to_owned()],
            ],
        );
        assert_eq!(text, "A          LONG HEADER\nwide cell  x\n1          y\n");
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(human_duration(250), "250ms");
        assert_eq!(human_duration(12_345), "12.3s");
        assert_eq!(human_duration(125_000), "2m05s");
        assert_eq!(human_duration(7_380_000), "2h03m");
    }

    #[test]
    fn the_command_line_definition_is_consistent() {
        ControlArgs::command().debug_assert();
    }
}
