//! The daemon binary's startup checks that come before corosync: a gfs2 filesystem mounted
//! before the daemon starts is refused (SPEC §3), bad settings stop it with a clear message.

use std::path::{Path, PathBuf};
use std::process::Command;

mod common;

fn scratch(tag: &str) -> PathBuf {
    common::scratch_dir(&format!("startup-{tag}"))
}

fn daemon(dir: &Path, extra: &[&str]) -> std::process::Output {
    let conf = dir.join("gfs_controld.conf");
    if !conf.exists() {
        std::fs::write(&conf, "").unwrap();
    }
    Command::new(env!("CARGO_BIN_EXE_gfs_controld"))
        .arg("--foreground")
        .arg(format!("--config={}", conf.display()))
        .arg(format!("--sysfs_root={}", dir.join("sysfs").display()))
        .arg(format!(
            "--control_socket={}",
            dir.join("ctl.sock").display()
        ))
        .arg(format!("--pid_file={}", dir.join("pid").display()))
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn refuses_to_start_under_existing_lock_dlm_mounts() {
    let dir = scratch("existing");
    let lm = dir.join("sysfs/alpha:fs1/lock_module");
    std::fs::create_dir_all(&lm).unwrap();
    std::fs::write(lm.join("proto_name"), "lock_dlm\n").unwrap();
    let out = daemon(&dir, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("refusing to start"), "{stderr}");
    assert!(stderr.contains("alpha:fs1"), "{stderr}");
    assert!(stderr.contains("allow_existing_mounts"), "{stderr}");
    assert!(
        !dir.join("ctl.sock").exists(),
        "no socket for a daemon that did not start"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_bad_config_line_stops_the_daemon_with_its_line_number() {
    let dir = scratch("badconf");
    std::fs::write(
        dir.join("gfs_controld.conf"),
        "log_level=info\nfence_timeout=soon\n",
    )
    .unwrap();
    let out = daemon(&dir, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(":2:"), "{stderr}");
    assert!(stderr.contains("fence_timeout"), "{stderr}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn dump_config_shows_the_command_line_over_the_file() {
    let dir = scratch("dump");
    std::fs::write(
        dir.join("gfs_controld.conf"),
        "fence_warn=30s\nmerge_wait=2s\n",
    )
    .unwrap();
    let out = daemon(&dir, &["--merge_wait=7s", "--dump_config"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("fence_warn=30s\n"), "{stdout}");
    assert!(stdout.contains("merge_wait=7s\n"), "{stdout}");
    let _ = std::fs::remove_dir_all(dir);
}
