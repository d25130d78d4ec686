//! Packaging checks that run with `cargo test`: the systemd unit agrees with the daemon's
//! command line, the OCF agent parses, describes itself in well-formed XML and goes through
//! start/monitor/stop against a stub daemon, packaging/install.sh installs the same files for
//! Debian, RPM and `make install`, and the RPM spec parses. Building the packages themselves is
//! `.ci/package`'s job.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use gfs_controld::control::proto::DEFAULT_SOCKET_PATH;

mod common;

use common::scratch_dir;

fn top() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(relative: &str) -> String {
    let path = top().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// CI must not skip what it can install: a missing tool is a failure there.
fn skip_or_fail(what: &str) {
    let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0");
    assert!(!ci, "{what} (required when CI is set)");
    eprintln!("skipped: {what}");
}

fn text(output: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

// ---- systemd unit ------------------------------------------------------------------------------

/// `Key=value` lines of a unit file, every value of each key in order.
fn unit_settings(unit: &str) -> BTreeMap<String, Vec<String>> {
    let mut settings: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in unit.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with('[') {
            continue;
        }
        let (key, value) = line.split_once('=').expect("Key=value line");
        settings
            .entry(key.trim().to_owned())
            .or_default()
            .push(value.trim().to_owned());
    }
    settings
}

fn one<'a>(settings: &'a BTreeMap<String, Vec<String>>, key: &str) -> &'a str {
    match settings.get(key).map(Vec::as_slice) {
        Some([value]) => value,
        other => panic!("{key}: expected one value, found {other:?}"),
    }
}

fn words(settings: &BTreeMap<String, Vec<String>>, key: &str) -> BTreeSet<String> {
    settings
        .get(key)
        .into_iter()
        .flatten()
        .flat_map(|v| v.split_whitespace().map(str::to_owned))
        .collect()
}

#[test]
fn nothing_packaged_opens_the_test_uevent_socket() {
    // Only the test kit may take uevents from a process (uevent_test_socket): whatever the
    // packages install or run must never set it.
    for file in [
        "packaging/systemd/gfs_controld.service",
        "packaging/default/gfs_controld",
        "packaging/gfs_controld.conf",
        "packaging/ocf/gfs_controld",
        "packaging/rpm/gfs-controld.spec",
        "packaging/debian/rules",
        "packaging/install.sh",
    ] {
        let text = read(file);
        assert!(
            !text.contains("uevent_test_socket") && !text.contains("uevent-socket"),
            "{file} mentions the test-only uevent socket"
        );
    }
}

#[test]
fn the_unit_file_runs_the_daemon_as_its_command_line_expects() {
    let unit = unit_settings(&read("packaging/systemd/gfs_controld.service"));
    assert_eq!(one(&unit, "Type"), "notify");
    assert_eq!(one(&unit, "NotifyAccess"), "main");
    assert_eq!(
        one(&unit, "ExecStart"),
        "/usr/sbin/gfs_controld --foreground $GFS_CONTROLD_OPTS"
    );
    assert!(
        read("src/args.rs").contains("long = \"foreground\""),
        "src/args.rs has no --foreground option"
    );
    assert!(words(&unit, "Requires").contains("corosync.service"));
    assert!(words(&unit, "After").contains("corosync.service"));
    assert_eq!(
        unit["EnvironmentFile"],
        ["-/etc/default/gfs_controld", "-/etc/sysconfig/gfs_controld"]
    );
    assert_eq!(one(&unit, "SendSIGKILL"), "no");
    assert_eq!(one(&unit, "OOMScoreAdjust"), "-1000");
    // Above systemd's default soft limit of 1024, which a burst of control clients reached.
    let nofile: u64 = one(&unit, "LimitNOFILE")
        .parse()
        .expect("LimitNOFILE is a number");
    assert!(nofile >= 4096, "LimitNOFILE={nofile}");

    // The control socket lives in the runtime directory systemd makes.
    let runtime = one(&unit, "RuntimeDirectory");
    assert_eq!(
        Path::new(DEFAULT_SOCKET_PATH).parent(),
        Some(Path::new("/run").join(runtime).as_path())
    );
    assert_eq!(one(&unit, "RuntimeDirectoryMode"), "0700");

    // Hardening must leave what the daemon needs: sysfs writes, netlink, corosync's IPC.
    let families = words(&unit, "RestrictAddressFamilies");
    assert!(families.contains("AF_UNIX") && families.contains("AF_NETLINK"));
    assert!(!families.iter().any(|f| f.starts_with('~')));
    if one(&unit, "ProtectSystem") == "strict" {
        let writable = words(&unit, "ReadWritePaths");
        for path in ["/sys/fs/gfs2", "/dev/shm", "/run"] {
            assert!(
                writable.contains(path),
                "ProtectSystem=strict without {path} writable"
            );
        }
    }
    for forbidden in [
        "ProtectKernelTunables",
        "PrivateDevices",
        "PrivateIPC",
        "PrivateNetwork",
    ] {
        assert!(
            unit.get(forbidden)
                .is_none_or(|v| v.iter().all(|v| v == "no")),
            "{forbidden} would cut the daemon off from sysfs, /dev/shm or netlink"
        );
    }

    // Every man page the unit names is in man/.
    for doc in words(&unit, "Documentation") {
        let page = doc.strip_prefix("man:").expect("man: documentation");
        let (name, section) = page
            .trim_end_matches(')')
            .split_once('(')
            .expect("name(section)");
        let file = top().join("man").join(format!("{name}.{section}"));
        assert!(
            file.exists(),
            "Documentation={doc} but {} is missing",
            file.display()
        );
    }

    let env = read("packaging/default/gfs_controld");
    assert!(env.lines().any(|l| l == "GFS_CONTROLD_OPTS=\"\""));
}

#[test]
fn the_built_daemon_takes_the_options_the_packages_give_it() {
    let output = Command::new(env!("CARGO_BIN_EXE_gfs_controld"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", text(&output));
    let help = String::from_utf8_lossy(&output.stdout);
    // --foreground: the unit and the OCF agent; -g: ocf:pacemaker:controld; --config and
    // --control_socket: the OCF agent's configfile and socket parameters.
    for option in [
        "--foreground",
        "-g",
        "--config",
        "--control_socket",
        "--completions",
    ] {
        assert!(
            help.contains(option),
            "gfs_controld --help lacks {option}:\n{help}"
        );
    }
}

// ---- OCF agent ---------------------------------------------------------------------------------

const AGENT: &str = "packaging/ocf/gfs_controld";

/// Checks that `xml` is well-formed enough for pacemaker: one root, every tag closed in order,
/// quoted attributes. Returns the element names in document order.
fn check_xml(xml: &str) -> Result<Vec<String>, String> {
    let mut stack: Vec<String> = Vec::new();
    let mut elements = Vec::new();
    let mut roots = 0;
    let mut rest = xml.trim_start();
    while let Some(start) = rest.find('<') {
        if stack.is_empty() && !rest[..start].trim().is_empty() {
            return Err(format!("text outside the root: {:?}", &rest[..start]));
        }
        rest = &rest[start..];
        let (end_marker, skip) = if rest.starts_with("<?") {
            ("?>", true)
        } else if rest.starts_with("<!--") {
            ("-->", true)
        } else if rest.starts_with("<!") {
            (">", true)
        } else {
            (">", false)
        };
        let mut end = None;
        let mut quote = None;
        for (i, c) in rest.char_indices().skip(1) {
            match quote {
                Some(q) if c == q => quote = None,
                Some(_) => {}
                None if !skip && (c == '"' || c == '\'') => quote = Some(c),
                None if rest[i..].starts_with(end_marker) => {
                    end = Some(i);
                    break;
                }
                None => {}
            }
        }
        let end = end.ok_or_else(|| format!("unterminated markup: {:.40}", rest))?;
        let tag = &rest[1..end];
        rest = &rest[end + end_marker.len()..];
        if skip {
            continue;
        }
        if let Some(name) = tag.strip_prefix('/') {
            match stack.pop() {
                Some(open) if open == name.trim() => {}
                other => return Err(format!("</{name}> closes {other:?}")),
            }
            continue;
        }
        let self_closing = tag.ends_with('/');
        let name: String = tag
            .trim_end_matches('/')
            .split_whitespace()
            .next()
            .ok_or("empty tag")?
            .to_owned();
        if stack.is_empty() {
            roots += 1;
        }
        elements.push(name.clone());
        if !self_closing {
            stack.push(name);
        }
    }
    if !rest.trim().is_empty() || !stack.is_empty() || roots != 1 {
        return Err(format!(
            "unclosed {stack:?}, {roots} roots, trailing {rest:?}"
        ));
    }
    Ok(elements)
}

#[test]
fn the_xml_checker_rejects_broken_documents() {
    assert!(check_xml("<?xml version=\"1.0\"?>\n<a x=\"1>2\"><b/><c>t</c></a>\n").is_ok());
    assert!(check_xml("<a><b></a></b>").is_err());
    assert!(check_xml("<a></a><a></a>").is_err());
    assert!(check_xml("<a>").is_err());
}

#[test]
fn the_ocf_agent_parses_and_its_meta_data_is_well_formed() {
    let agent = top().join(AGENT);
    for shell in ["sh", "dash", "bash"] {
        if shell == "sh" || have(shell) {
            let output = Command::new(shell).arg("-n").arg(&agent).output().unwrap();
            assert!(output.status.success(), "{shell} -n: {}", text(&output));
        }
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&agent).unwrap().permissions().mode();
        assert_eq!(mode & 0o111, 0o111, "the agent must be executable");
    }

    let output = Command::new("sh")
        .arg(&agent)
        .arg("meta-data")
        .env_remove("OCF_ROOT")
        .env_remove("OCF_FUNCTIONS_DIR")
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", text(&output));
    let xml = String::from_utf8(output.stdout).unwrap();
    let elements = check_xml(&xml).unwrap_or_else(|e| panic!("meta-data: {e}\n{xml}"));
    assert_eq!(elements.first().map(String::as_str), Some("resource-agent"));
    for parameter in [
        "daemon",
        "args",
        "configfile",
        "fence_wait_limit",
        "stale_merge_limit",
    ] {
        assert!(
            xml.contains(&format!("<parameter name=\"{parameter}\"")),
            "no {parameter}"
        );
    }
    for action in ["start", "stop", "monitor", "meta-data", "validate-all"] {
        assert!(
            xml.contains(&format!("<action name=\"{action}\"")),
            "no {action} action"
        );
    }
    assert!(xml.contains(DEFAULT_SOCKET_PATH));

    if have("python3") {
        let mut child = Command::new("python3")
            .args([
                "-c",
                "import sys, xml.dom.minidom; xml.dom.minidom.parse(sys.stdin)",
            ])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(xml.as_bytes())
            .unwrap();
        assert!(
            child.wait().unwrap().success(),
            "python3's parser rejects the meta-data"
        );
    }
}

/// A stand-in for gfs_controld: answers the control protocol with `status.json` from its
/// directory, exits on SIGTERM unless the file `mounted` exists there (then exits once it is gone).
const STUB_DAEMON: &str = r#"#!/usr/bin/env python3
import json, os, signal, socket, sys
args = sys.argv[1:]
assert "--foreground" in args, args
path = args[args.index("--control_socket") + 1]
d = os.path.dirname(path)
pending = []
def term(*_):
    pending.append(1)
signal.signal(signal.SIGTERM, term)
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(path); s.listen(8); s.settimeout(0.1)
while True:
    if pending and not os.path.exists(os.path.join(d, "mounted")):
        os.unlink(path)
        sys.exit(0)
    try:
        c, _ = s.accept()
    except (socket.timeout, InterruptedError):
        continue
    with c:
        c.settimeout(5)
        f = c.makefile("rwb")
        json.loads(f.readline())
        with open(os.path.join(d, "status.json")) as sf:
            status = json.load(sf)
        f.write((json.dumps({"version": 1, "ok": status}) + "\n").encode()); f.flush()
"#;

fn stub_status(stale: &str, fence_waits: &str) -> String {
    format!(
        r#"{{"nodeid":1,"cluster_name":"c","protocol_version":1,"protocol_max":1,"synced":true,
"quorate":true,"members":[1,2],"stale_members":[{stale}],"fence_waits":[{fence_waits}],
"filesystems":0,"recoveries":[]}}"#
    )
}

struct Agent {
    dir: PathBuf,
}

impl Agent {
    fn command(&self, action: &str, extra: &[(&str, &str)]) -> Command {
        let dir = &self.dir;
        let mut command = Command::new("sh");
        command
            .arg(top().join(AGENT))
            .arg(action)
            .env("OCF_ROOT", dir.join("no-ocf-root"))
            .env_remove("OCF_FUNCTIONS_DIR")
            .env("HA_RSCTMP", dir.join("rsctmp"))
            .env("OCF_RESOURCE_INSTANCE", "gfs")
            .env("OCF_RESKEY_daemon", dir.join("gfs_controld"))
            .env("OCF_RESKEY_gfs_control", env!("CARGO_BIN_EXE_gfs_control"))
            .env("OCF_RESKEY_socket", dir.join("s.sock"))
            .env("OCF_RESKEY_logfile", dir.join("daemon.log"))
            .stdin(Stdio::null());
        for (key, value) in extra {
            command.env(format!("OCF_RESKEY_{key}"), value);
        }
        command
    }

    fn run(&self, action: &str, extra: &[(&str, &str)]) -> i32 {
        let output = self.command(action, extra).output().unwrap();
        eprintln!("{action} {extra:?}: {}", text(&output));
        output.status.code().unwrap_or(-1)
    }

    fn set_status(&self, status: &str) {
        std::fs::write(self.dir.join("status.json"), status).unwrap();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.dir.join("mounted"));
        let _ = self.command("stop", &[]).output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn the_ocf_agent_starts_monitors_and_stops_a_stub_daemon() {
    if !have("python3") {
        eprintln!("skipped: no python3 for the stub daemon");
        return;
    }
    let agent = Agent {
        dir: scratch_dir("ocf"),
    };
    let stub = agent.dir.join("gfs_controld");
    std::fs::write(&stub, STUB_DAEMON).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&stub, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    // Other tests of this binary fork while the stub's write fd is open; a child still between
    // fork and exec holds it, and exec'ing the stub then fails with ETXTBSY. Let them pass.
    std::thread::sleep(std::time::Duration::from_millis(200));
    agent.set_status(&stub_status("", ""));

    const SUCCESS: i32 = 0;
    const ERR_GENERIC: i32 = 1;
    const ERR_INSTALLED: i32 = 5;
    const ERR_CONFIGURED: i32 = 6;
    const NOT_RUNNING: i32 = 7;

    assert_eq!(agent.run("validate-all", &[]), SUCCESS);
    assert_eq!(
        agent.run("validate-all", &[("fence_wait_limit", "soon")]),
        ERR_CONFIGURED
    );
    assert_eq!(
        agent.run("validate-all", &[("daemon", "/nonexistent/gfs_controld")]),
        ERR_INSTALLED
    );
    assert_eq!(agent.run("monitor", &[]), NOT_RUNNING);
    assert_eq!(
        agent.run("stop", &[]),
        SUCCESS,
        "stopping a stopped resource"
    );

    assert_eq!(agent.run("start", &[]), SUCCESS);
    assert_eq!(
        agent.run("start", &[]),
        SUCCESS,
        "starting a started resource"
    );
    assert_eq!(agent.run("monitor", &[]), SUCCESS);

    // A node waiting to be fenced longer than the limit fails the monitor.
    let wait = |ms: u64| {
        format!(
            r#"{{"nodeid":2,"failed_at_ms":1,"waiting_ms":{ms},"requested":true,"last_error":null}}"#
        )
    };
    agent.set_status(&stub_status("", &wait(301_000)));
    assert_eq!(agent.run("monitor", &[]), ERR_GENERIC);
    assert_eq!(agent.run("monitor", &[("fence_wait_limit", "0")]), SUCCESS);
    agent.set_status(&stub_status("", &wait(20_000)));
    assert_eq!(agent.run("monitor", &[]), SUCCESS);

    // Stale members after a merge: tolerated for stale_merge_limit seconds.
    agent.set_status(&stub_status("2, 3", ""));
    assert_eq!(agent.run("monitor", &[]), SUCCESS);
    assert_eq!(
        agent.run("monitor", &[("stale_merge_limit", "0")]),
        ERR_GENERIC
    );
    agent.set_status(&stub_status("", ""));
    assert_eq!(agent.run("monitor", &[("stale_merge_limit", "0")]), SUCCESS);

    // While gfs2 is mounted the daemon does not exit, and stop keeps waiting.
    std::fs::write(agent.dir.join("mounted"), "").unwrap();
    let mut stop = agent
        .command("stop", &[])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    assert!(
        stop.try_wait().unwrap().is_none(),
        "stop returned while mounted"
    );
    assert_eq!(agent.run("monitor", &[]), SUCCESS, "the daemon still runs");
    std::fs::remove_file(agent.dir.join("mounted")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = stop.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "stop did not finish after the unmount"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(status.code(), Some(SUCCESS));
    assert_eq!(agent.run("monitor", &[]), NOT_RUNNING);
}

// ---- installed files ---------------------------------------------------------------------------

/// Every file under `root`, as absolute paths inside the installed system, with its mode.
fn installed_files(root: &Path) -> BTreeMap<String, u32> {
    fn walk(root: &Path, dir: &Path, files: &mut BTreeMap<String, u32>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            if entry.file_type().unwrap().is_dir() {
                walk(root, &path, files);
            } else {
                #[cfg(unix)]
                let mode = {
                    use std::os::unix::fs::PermissionsExt;
                    entry.metadata().unwrap().permissions().mode() & 0o7777
                };
                #[cfg(not(unix))]
                let mode = 0;
                let relative = path
                    .strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                files.insert(format!("/{relative}"), mode);
            }
        }
    }
    let mut files = BTreeMap::new();
    walk(root, root, &mut files);
    files
}

/// The `KEY=value \` lines in front of `sh packaging/install.sh` in `text`.
fn install_env(text: &str) -> Vec<(String, String)> {
    let end = text
        .find("sh packaging/install.sh")
        .expect("runs packaging/install.sh");
    let line_start = text[..end].rfind('\n').unwrap_or(0);
    let mut env = Vec::new();
    for line in text[..line_start].lines().rev() {
        let line = line.trim().trim_end_matches('\\').trim();
        let Some((key, value)) = line.split_once('=') else {
            break;
        };
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_uppercase() || c == '_') {
            break;
        }
        env.push((key.to_owned(), value.trim_matches('"').to_owned()));
    }
    env.reverse();
    env
}

/// Runs packaging/install.sh with the built binaries, returning what it installed.
fn run_install(tag: &str, env: &[(String, String)]) -> BTreeMap<String, u32> {
    let dest = scratch_dir(tag);
    let bins = scratch_dir(&format!("{tag}-bin"));
    for (name, path) in [
        ("gfs_controld", env!("CARGO_BIN_EXE_gfs_controld")),
        ("gfs_control", env!("CARGO_BIN_EXE_gfs_control")),
    ] {
        std::os::unix::fs::symlink(path, bins.join(name)).unwrap();
    }
    let mut command = Command::new("sh");
    command.arg(top().join("packaging/install.sh"));
    for (key, value) in env {
        command.env(key, value);
    }
    let output = command
        .env("DESTDIR", &dest)
        .env("BUILDDIR", &bins)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "install.sh ({tag}): {}",
        text(&output)
    );
    let files = installed_files(&dest);
    let _ = std::fs::remove_dir_all(&dest);
    let _ = std::fs::remove_dir_all(&bins);
    files
}

fn check_modes(tag: &str, files: &BTreeMap<String, u32>) {
    for (path, mode) in files {
        let executable = path.contains("/sbin/") || path.contains("/ocf/resource.d/");
        let expected = if executable { 0o755 } else { 0o644 };
        assert_eq!(*mode, expected, "{tag}: {path} has mode {mode:o}");
    }
}

/// The RPM spec's %install environment and %files, with the macros it uses expanded as
/// Fedora's rpm does.
fn rpm_layout() -> (Vec<(String, String)>, Vec<String>) {
    let spec = read("packaging/rpm/gfs-controld.spec");
    let macros = [
        ("%{buildroot}", ""),
        ("%{_sbindir}", "/usr/sbin"),
        ("%{_mandir}", "/usr/share/man"),
        ("%{_sysconfdir}", "/etc"),
        ("%{_unitdir}", "/usr/lib/systemd/system"),
        ("%{_datadir}", "/usr/share"),
        ("%{_prefix}", "/usr"),
    ];
    let expand = |s: &str| {
        macros
            .iter()
            .fold(s.to_owned(), |s, (name, value)| s.replace(name, value))
    };
    let install = &spec[spec.find("\n%install").expect("%install")..];
    let env = install_env(install)
        .into_iter()
        .filter(|(key, _)| key != "DESTDIR" && key != "BUILDDIR")
        .map(|(key, value)| (key, expand(&value)))
        .collect();
    let files_section = &spec[spec.find("\n%files").expect("%files") + 7..];
    let files = files_section
        .lines()
        .take_while(|l| !l.starts_with("%changelog"))
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("%dir") && !l.starts_with('#'))
        .map(|l| expand(l.trim_start_matches("%config(noreplace)").trim()))
        .collect();
    (env, files)
}

fn debian_env() -> Vec<(String, String)> {
    install_env(&read("packaging/debian/rules"))
        .into_iter()
        .filter(|(key, _)| key != "DESTDIR" && key != "BUILDDIR")
        .collect()
}

/// Where Debian and Fedora put the same file.
fn debian_to_rpm(path: &str) -> String {
    [
        ("/lib/systemd/system/", "/usr/lib/systemd/system/"),
        (
            "/usr/share/zsh/vendor-completions/",
            "/usr/share/zsh/site-functions/",
        ),
        ("/etc/default/", "/etc/sysconfig/"),
    ]
    .iter()
    .fold(path.to_owned(), |p, (from, to)| {
        match p.strip_prefix(from) {
            Some(rest) => format!("{to}{rest}"),
            None => p,
        }
    })
}

#[test]
fn debian_rpm_and_make_install_install_the_same_files() {
    let (rpm_env, rpm_files) = rpm_layout();
    let rpm = run_install("rpm", &rpm_env);
    let deb = run_install("deb", &debian_env());
    check_modes("rpm", &rpm);
    check_modes("deb", &deb);

    // The spec's %files lists exactly what its %install installs.
    let listed = |path: &str| {
        rpm_files
            .iter()
            .any(|pattern| match pattern.strip_suffix('*') {
                Some(prefix) => path.starts_with(prefix),
                None => path == pattern,
            })
    };
    for path in rpm.keys() {
        assert!(listed(path), "rpm installs {path}, %files does not list it");
    }
    for pattern in &rpm_files {
        let prefix = pattern.trim_end_matches('*');
        assert!(
            rpm.keys()
                .any(|p| p == pattern || (pattern.ends_with('*') && p.starts_with(prefix))),
            "%files lists {pattern}, rpm does not install it"
        );
    }

    // Debian installs the same files, in Debian's places.
    let deb_as_rpm: BTreeSet<String> = deb.keys().map(|p| debian_to_rpm(p)).collect();
    let rpm_paths: BTreeSet<String> = rpm.keys().cloned().collect();
    assert_eq!(deb_as_rpm, rpm_paths, "deb and rpm install different files");
    for path in [
        "/usr/sbin/gfs_controld",
        "/lib/systemd/system/gfs_controld.service",
        "/etc/gfs_controld.conf",
        "/etc/default/gfs_controld",
        "/usr/share/man/man5/gfs_controld.conf.5",
        "/usr/share/bash-completion/completions/gfs_controld",
        "/usr/lib/ocf/resource.d/gfs-controld/gfs_controld",
    ] {
        assert!(deb.contains_key(path), "deb lacks {path}");
    }

    // `make install` (which runs install.sh) installs the same as install.sh's defaults.
    let makefile = read("Makefile");
    if makefile.lines().any(|l| l.starts_with("install:")) && have("make") {
        let plain = run_install("plain", &[]);
        let dest = scratch_dir("make");
        let bins = scratch_dir("make-bin");
        std::os::unix::fs::symlink(
            env!("CARGO_BIN_EXE_gfs_controld"),
            bins.join("gfs_controld"),
        )
        .unwrap();
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_gfs_control"), bins.join("gfs_control"))
            .unwrap();
        let output = Command::new("make")
            .current_dir(top())
            .arg("-s")
            .arg("install")
            .arg(format!("DESTDIR={}", dest.display()))
            .arg(format!("RELEASEDIR={}", bins.display()))
            .output()
            .unwrap();
        assert!(output.status.success(), "make install: {}", text(&output));
        let made = installed_files(&dest);
        let _ = std::fs::remove_dir_all(&dest);
        let _ = std::fs::remove_dir_all(&bins);
        check_modes("make install", &made);
        assert_eq!(
            made.keys().collect::<Vec<_>>(),
            plain.keys().collect::<Vec<_>>(),
            "make install and packaging/install.sh install different files"
        );
    }
}

#[test]
fn the_rpm_spec_parses() {
    if !have("rpmspec") {
        skip_or_fail("rpmspec is not installed (apt-get install rpm)");
        return;
    }
    let output = Command::new("rpmspec")
        .arg("-P")
        .arg(top().join("packaging/rpm/gfs-controld.spec"))
        .output()
        .unwrap();
    assert!(output.status.success(), "rpmspec -P: {}", text(&output));
    let parsed = String::from_utf8_lossy(&output.stdout);
    let version = read("Cargo.toml")
        .lines()
        .find_map(|l| l.strip_prefix("version = "))
        .map(|v| v.trim_matches('"').to_owned())
        .unwrap();
    assert!(
        parsed.contains(&format!("Version:        {version}")),
        "spec version != Cargo.toml"
    );
    assert!(read("packaging/debian/changelog").starts_with(&format!("gfs-controld ({version})")));
}

#[test]
fn the_packaging_scripts_parse() {
    for (shell, script) in [
        ("sh", "packaging/install.sh"),
        ("sh", "packaging/debian/gfs-controld.prerm"),
        ("bash", ".ci/package"),
    ] {
        let output = Command::new(shell)
            .arg("-n")
            .arg(top().join(script))
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{shell} -n {script}: {}",
            text(&output)
        );
    }
    let rules = read("packaging/debian/rules");
    assert!(rules.contains("cargo") || rules.contains("$(CARGO) build --release --locked"));
    assert!(rules.contains("build --release --locked"));
}
