//! The built `gfs_control` binary against a fake daemon on a temporary socket: text and
//! `--json` output, exit statuses, `--help`, and the man page covering the command line.

use std::path::Path;
use std::process::{Command, Output};

use clap::CommandFactory;
use gfs_controld::control::cli::ControlArgs;
use gfs_controld::control::server;

mod common;

use common::{canned_filesystems, canned_status, scratch_dir, FakeDaemon};

/// `gfs_control` run against the fake daemon.
trait RunControl {
    fn run(&self, args: &[&str]) -> Output;
}

impl RunControl for FakeDaemon {
    fn run(&self, args: &[&str]) -> Output {
        gfs_control(&self.socket, args)
    }
}

fn gfs_control(socket: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gfs_control"))
        .arg("--socket")
        .arg(socket)
        .args(args)
        .output()
        .unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8(output.stderr.clone()).unwrap()
}

#[test]
fn status_text() {
    let daemon = FakeDaemon::start("status");
    let output = daemon.run(&["status"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let text = stdout(&output);
    for expected in [
        "nodeid         1\n",
        "cluster        alpha\n",
        "protocol       1 (max 1)\n",
        "synced         yes\n",
        "quorum         quorate\n",
        "members        1 2\n",
        "stale members  none\n",
        "  NODEID  WAITING  REQUESTED  LAST ERROR\n",
        "  3       12.3s    yes        fence agent timed out\n",
        "  change 2: failed 4; filesystems fs1; took 1.5s\n",
        "     +0ms  node 4 failed\n",
        "    +1.5s  jid 2 replayed by node 1\n",
        "  change 4: failed 3; filesystems fs1; in progress\n",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in\n{text}");
    }
    assert!(text.lines().all(|line| line == line.trim_end()), "{text}");
}

#[test]
fn status_json_is_the_view() {
    let daemon = FakeDaemon::start("status-json");
    let output = daemon.run(&["status", "--json"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let printed: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(printed, serde_json::to_value(canned_status()).unwrap());
    // Pretty-printed, for people reading it too.
    assert!(stdout(&output).contains("\n  \"nodeid\": 1,\n"));
}

#[test]
fn ls_text_and_json() {
    let daemon = FakeDaemon::start("ls");
    let output = daemon.run(&["ls"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let text = stdout(&output);
    for expected in [
        "fs1\n",
        "  table          alpha:fs1\n",
        "  state          waiting for fencing of node 3\n",
        "  recovery by    gfs_controld\n",
        "  first mounter  1\n",
        "  local mount    jid 0, rw, kernel online, blocked\n",
        "    NODEID  JID  MODE       STATE\n",
        "    1       0    rw         mounted\n",
        "    12      -    spectator  mounting\n",
        "    JID  OWNER  REPLAYER  ATTEMPTS  WAITING FOR\n",
        "    1    3      -         0         fencing of node 3\n",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in\n{text}");
    }
    let output = daemon.run(&["--json", "ls", "alpha:fs1"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let printed: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(printed, serde_json::to_value(canned_filesystems()).unwrap());
}

#[test]
fn ls_of_an_unknown_filesystem_fails() {
    let daemon = FakeDaemon::start("ls-unknown");
    let output = daemon.run(&["ls", "nosuch"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr(&output).contains("no filesystem nosuch"));
    assert!(output.stdout.is_empty());
}

#[test]
fn dump_prints_the_ring() {
    let daemon = FakeDaemon::start("dump");
    let output = daemon.run(&["dump"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(
        stdout(&output),
        "1700000000.001 gfs_controld started\n\
         1700000000.002 gfs_controld::daemon nodeid=3 node failed\n"
    );
    let output = daemon.run(&["dump", "--json"]);
    let printed: Vec<String> = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(printed.len(), 2);
}

#[test]
fn fence_ack_accepted_and_refused() {
    let daemon = FakeDaemon::start("fence-ack");
    let output = daemon.run(&["fence-ack", "3"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(stdout(&output), "node 3 acknowledged as fenced\n");

    let output = daemon.run(&["fence-ack", "9"]);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        stderr(&output),
        "gfs_control: node 9 is not waiting for fencing\n"
    );
    assert!(output.stdout.is_empty());

    let output = daemon.run(&["--json", "fence-ack", "9"]);
    assert_eq!(output.status.code(), Some(1));
}

#[test]
fn version_shows_both_sides() {
    let daemon = FakeDaemon::start("version");
    let output = daemon.run(&["version"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let text = stdout(&output);
    let version = env!("CARGO_PKG_VERSION");
    assert!(
        text.contains(&format!("gfs_control       {version}\n")),
        "{text}"
    );
    assert!(
        text.contains(&format!("gfs_controld      {version}\n")),
        "{text}"
    );
    assert!(text.contains("control protocol  1\n"), "{text}");
    let output = daemon.run(&["version", "--json"]);
    let printed: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(printed["daemon_version"], version);
}

#[test]
fn a_missing_daemon_exits_3() {
    let dir = scratch_dir("missing");
    let socket = dir.join("none.sock");
    for args in [
        &["status"][..],
        &["ls"],
        &["dump"],
        &["fence-ack", "3"],
        &["version"],
    ] {
        let output = gfs_control(&socket, args);
        assert_eq!(output.status.code(), Some(3), "{args:?}");
        assert!(
            stderr(&output).contains("gfs_controld is not running"),
            "{}",
            stderr(&output)
        );
    }
    // A socket file nobody listens on: refused, also "not running".
    drop(server::bind(&socket).unwrap());
    assert_eq!(gfs_control(&socket, &["status"]).status.code(), Some(3));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn usage_errors_exit_2() {
    let socket = Path::new("/nonexistent/gfs_controld.sock");
    for args in [
        &["fence-ack"][..],
        &["fence-ack", "abc"],
        &["fence-ack", "0"],
        &["frobnicate"],
        &["status", "--bogus"],
        &["completions", "tcsh"],
        &[],
    ] {
        let output = gfs_control(socket, args);
        assert_eq!(output.status.code(), Some(2), "{args:?}");
    }
}

#[test]
fn completions_need_no_daemon() {
    let socket = Path::new("/nonexistent/gfs_controld.sock");
    for shell in ["bash", "zsh", "fish"] {
        let output = gfs_control(socket, &["completions", shell]);
        assert_eq!(output.status.code(), Some(0), "{shell}");
        let script = stdout(&output);
        assert!(script.contains("fence-ack"), "{shell}");
    }
}

#[test]
fn help_mentions_every_subcommand() {
    let output = Command::new(env!("CARGO_BIN_EXE_gfs_control"))
        .arg("--help")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0));
    let help = stdout(&output);
    for name in [
        "ls",
        "status",
        "dump",
        "fence-ack",
        "version",
        "completions",
        "--json",
        "--socket",
    ] {
        assert!(help.contains(name), "--help lacks {name}:\n{help}");
    }
}

/// The man page text with roff escapes for '-' undone, so option names can be searched.
fn man_page() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("man/gfs_control.8");
    std::fs::read_to_string(path).unwrap().replace("\\-", "-")
}

#[test]
fn the_man_page_documents_the_whole_command_line() {
    let man = man_page();
    let command = ControlArgs::command();
    let mut missing = Vec::new();
    let check_args = |cmd: &clap::Command, missing: &mut Vec<String>| {
        for arg in cmd.get_arguments() {
            if let Some(long) = arg.get_long() {
                if !man.contains(&format!("--{long}")) {
                    missing.push(format!("--{long}"));
                }
            } else if let Some(names) = arg.get_value_names() {
                for name in names {
                    if !man.contains(name.as_str()) {
                        missing.push(name.to_string());
                    }
                }
            }
            // Boolean flags list true/false as possible values; they are not documented words.
            let is_flag = matches!(
                arg.get_action(),
                clap::ArgAction::SetTrue | clap::ArgAction::SetFalse
            );
            for value in arg.get_possible_values() {
                if !is_flag && !value.is_hide_set() && !man.contains(value.get_name()) {
                    missing.push(value.get_name().to_owned());
                }
            }
        }
    };
    check_args(&command, &mut missing);
    for subcommand in command.get_subcommands() {
        let name = subcommand.get_name();
        if !man.contains(&format!(".B {name}")) && !man.contains(&format!(".BI \"{name} ")) {
            missing.push(format!("subcommand {name}"));
        }
        check_args(subcommand, &mut missing);
    }
    let exit_section = man
        .split(".SH EXIT STATUS")
        .nth(1)
        .and_then(|rest| rest.split(".SH ").next())
        .unwrap_or_default();
    for status in ["0", "1", "2", "3"] {
        if !exit_section.contains(&format!(".B {status}\n")) {
            missing.push(format!("exit status {status}"));
        }
    }
    assert!(missing.is_empty(), "man/gfs_control.8 lacks {missing:?}");
}
