//! The daemon binary's startup checks that come before corosync: a gfs2 filesystem mounted
//! before the daemon starts is refused (SPEC §3), bad settings stop it with a clear message.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

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

/// The daemon with exactly these arguments.
fn raw(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_gfs_controld"))
        .args(args)
        .output()
        .unwrap()
}

/// D9: configuration files that would block or exhaust memory, or whose errors would quote
/// megabytes, are refused at once with a clear message.
#[test]
fn unreadable_kinds_of_config_file_are_refused_clearly() {
    let dir = scratch("conf-kinds");
    let run = |config: &Path| {
        let started = std::time::Instant::now();
        let out = raw(&[&format!("--config={}", config.display()), "--dump_config"]);
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{} took {:?}",
            config.display(),
            started.elapsed()
        );
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(1), "{}: {stderr}", config.display());
        stderr
    };
    let zero = run(Path::new("/dev/zero"));
    assert!(
        zero.contains("/dev/zero is not a regular file (a device)"),
        "{zero}"
    );

    let fifo = dir.join("fifo.conf");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let fifo_err = run(&fifo);
    assert!(
        fifo_err.contains("is not a regular file (a FIFO)"),
        "{fifo_err}"
    );

    let big = dir.join("big.conf");
    std::fs::write(&big, "#".repeat(2 << 20)).unwrap();
    let big_err = run(&big);
    assert!(
        big_err.contains("is larger than 1048576 bytes"),
        "{big_err}"
    );

    let latin1 = dir.join("latin1.conf");
    std::fs::write(&latin1, b"log_level=info\n# caf\xe9\nfence_warn=30s\n").unwrap();
    let latin1_err = run(&latin1);
    assert!(
        latin1_err.contains(&format!("{}:2: not valid UTF-8", latin1.display())),
        "{latin1_err}"
    );

    let long = dir.join("long.conf");
    std::fs::write(&long, format!("log_level={}\n", "v".repeat(500_000))).unwrap();
    let long_err = run(&long);
    assert!(long_err.len() < 400, "{} bytes: {long_err}", long_err.len());
    assert!(long_err.contains(":1: bad value"), "{long_err}");
    assert!(long_err.contains("(500000 bytes)"), "{long_err}");
    let _ = std::fs::remove_dir_all(dir);
}

/// D9: a control socket path too long for a unix socket is refused when the settings are read
/// (also by --dump_config), with one clear message, not after reaching corosync.
#[test]
fn an_over_long_control_socket_path_is_refused_when_read() {
    let dir = scratch("longsock");
    let path = format!("/tmp/{}/s.sock", "x".repeat(120));
    let out = raw(&[&format!("--control_socket={path}"), "--dump_config"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("at most 107 bytes"), "{stderr}");
    let conf = dir.join("long.conf");
    std::fs::write(&conf, format!("control_socket={path}\n")).unwrap();
    let out = raw(&[&format!("--config={}", conf.display()), "--dump_config"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("long.conf:1: bad value"), "{stderr}");
    assert!(stderr.contains("at most 107 bytes"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    let _ = std::fs::remove_dir_all(dir);
}

/// D9: a fence program that does not exist (or cannot run) stops the daemon at startup, not at
/// the first node failure.
#[test]
fn a_missing_or_non_executable_fence_program_stops_the_daemon_at_startup() {
    let dir = scratch("fenceprog");
    let out = daemon(&dir, &["--fencing=/nonexistent/fence_it"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("fence program /nonexistent/fence_it: No such file"),
        "{stderr}"
    );
    let script = dir.join("fence.sh");
    std::fs::write(&script, "#!/bin/sh\nexit 0\n").unwrap();
    let out = daemon(&dir, &[&format!("--fencing={}", script.display())]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("not executable"), "{stderr}");
    let _ = std::fs::remove_dir_all(dir);
}

/// D8: daemonizing (`-g 0` without --foreground, as ocf:pacemaker:controld runs it), a
/// failure after the fork still makes the command exit 1.
#[test]
fn a_startup_failure_after_daemonizing_exits_non_zero() {
    use std::os::fd::AsRawFd;
    let dir = scratch("daemonize");
    let conf = dir.join("gfs_controld.conf");
    std::fs::write(&conf, "").unwrap();
    // Another daemon holds the pid file.
    let pid_file = std::fs::File::create(dir.join("pid")).unwrap();
    // SAFETY: flock on an fd this test owns.
    assert_eq!(
        unsafe { libc::flock(pid_file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) },
        0
    );
    let out = Command::new(env!("CARGO_BIN_EXE_gfs_controld"))
        .args(["-g", "0"])
        .arg(format!("--config={}", conf.display()))
        .arg(format!("--sysfs_root={}", dir.join("sysfs").display()))
        .arg(format!(
            "--control_socket={}",
            dir.join("ctl.sock").display()
        ))
        .arg(format!("--pid_file={}", dir.join("pid").display()))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("another gfs_controld is running"),
        "{stderr}"
    );
    drop(pid_file);
    let _ = std::fs::remove_dir_all(dir);
}

/// D4: SIGHUP and the other signals whose default action ends a process leave the daemon
/// running (here while it waits for corosync, which this test does not start).
#[test]
fn stray_signals_do_not_kill_the_daemon() {
    let dir = scratch("signals");
    let conf = dir.join("gfs_controld.conf");
    std::fs::write(&conf, "").unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_gfs_controld"))
        .arg("--foreground")
        .arg(format!("--config={}", conf.display()))
        .arg(format!("--sysfs_root={}", dir.join("sysfs").display()))
        .arg(format!(
            "--control_socket={}",
            dir.join("ctl.sock").display()
        ))
        .arg(format!("--pid_file={}", dir.join("pid").display()))
        .arg("--fencing=manual")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Until the pid file exists, the handlers may not be installed yet.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::fs::read_to_string(dir.join("pid"))
        .unwrap_or_default()
        .trim()
        != child.id().to_string()
    {
        assert!(std::time::Instant::now() < deadline, "no pid file");
        assert!(
            child.try_wait().unwrap().is_none(),
            "the daemon exited early"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    for signal in [
        libc::SIGHUP,
        libc::SIGUSR1,
        libc::SIGUSR2,
        libc::SIGALRM,
        libc::SIGPIPE,
        libc::SIGVTALRM,
        libc::SIGPROF,
        libc::SIGIO,
        libc::SIGPWR,
        libc::SIGRTMIN() + 3,
        libc::SIGRTMAX(),
    ] {
        // SAFETY: kill(2) on our own child.
        assert_eq!(unsafe { libc::kill(pid.as_raw(), signal) }, 0);
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            child.try_wait().unwrap().is_none(),
            "signal {signal} killed the daemon"
        );
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let _ = std::fs::remove_dir_all(dir);
}
