//! `gfs_controld`'s command line and configuration file: parsing, precedence, errors with
//! file and line, `--dump_config` reading back, and the man pages and the example file
//! covering every option and setting.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

mod common;

use clap::{CommandFactory, Parser};
use gfs_controld::args::{startup, DaemonArgs, Startup};
use gfs_controld::config::{
    self, ConfigError, FenceSetting, LogLevel, Settings, DEFAULT_CONFIG_PATH, KEYS,
};

/// Options of the command line that are not settings of the file.
const COMMAND_LINE_ONLY: &[&str] = &[
    "daemon_debug",
    "groupd_compat",
    "config",
    "dump_config",
    "completions",
    "help",
    "version",
];

struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        Scratch(common::scratch_dir(&format!("config-{tag}")))
    }

    fn file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn args(argv: &[&str]) -> DaemonArgs {
    DaemonArgs::try_parse_from(std::iter::once("gfs_controld").chain(argv.iter().copied()))
        .unwrap_or_else(|e| panic!("{argv:?}: {e}"))
}

fn parse_text(text: &str) -> Result<Settings, ConfigError> {
    Settings::from_file_text(text, Path::new("/etc/test.conf"))
}

fn error_text(text: &str) -> String {
    match parse_text(text) {
        Ok(settings) => panic!("{text:?} was accepted: {settings:?}"),
        Err(e) => e.to_string(),
    }
}

/// A valid value other than the default for every setting, and how the dump spells it.
fn sample(key: &str) -> (&'static str, &'static str) {
    match key {
        "log_level" => ("TRACE", "trace"),
        "debug_ring_lines" => ("500", "500"),
        "control_socket" => ("/tmp/x/ctl.sock", "/tmp/x/ctl.sock"),
        "sysfs_root" => ("/tmp/sysfs", "/tmp/sysfs"),
        "configfs_root" => ("/tmp/configfs", "/tmp/configfs"),
        "dlm_socket" => (" @dlm-test ", "@dlm-test"),
        "fencing" => ("/usr/sbin/fence-it", "/usr/sbin/fence-it"),
        "fence_timeout" => ("2m", "120s"),
        "fence_retry" => ("1500ms", "1500ms"),
        "fence_warn" => ("7", "7s"),
        "fence_power_off" => ("yes", "1"),
        "enable_fencing" => ("false", "0"),
        "enable_quorum" => ("0", "0"),
        "allow_existing_mounts" => ("true", "1"),
        "startup_fence_delay" => ("0", "0s"),
        "merge_wait" => ("250ms", "250ms"),
        "recover_retry" => ("3s", "3s"),
        "timeline_keep" => ("1", "1"),
        "max_journals" => ("8", "8"),
        "foreground" => ("1", "1"),
        "pid_file" => ("/tmp/gfs.pid", "/tmp/gfs.pid"),
        "uevent_test_socket" => (" /tmp/x/uevents.sock ", "/tmp/x/uevents.sock"),
        other => panic!("no sample value for {other}: add one"),
    }
}

fn dump_line(settings: &Settings, key: &str) -> String {
    let prefix = format!("{key}=");
    settings
        .dump()
        .lines()
        .find_map(|line| line.strip_prefix(&prefix).map(str::to_owned))
        .unwrap_or_else(|| panic!("no {key} in the dump"))
}

#[test]
fn defaults_are_documented_values() {
    let settings = Settings::default();
    assert_eq!(settings.log_level, LogLevel::Info);
    assert_eq!(settings.debug_ring_lines, 10_000);
    assert_eq!(
        settings.socket_path,
        Path::new("/run/gfs_controld/gfs_controld.sock")
    );
    assert_eq!(settings.fencing, FenceSetting::Auto);
    assert_eq!(settings.fence_timeout, Duration::from_secs(300));
    assert_eq!(settings.fence_warn, Duration::from_secs(60));
    assert!(settings.enable_fencing && settings.enable_quorum);
    assert!(!settings.allow_existing_mounts && !settings.foreground);
    assert_eq!(settings.max_journals, gfs_core::MAX_JOURNALS);
    assert_eq!(settings.pid_file, Path::new("/run/gfs_controld.pid"));
    // An empty file, or one of comments only, changes nothing.
    assert_eq!(parse_text("").unwrap(), settings);
    assert_eq!(
        parse_text("# nothing\n\n   \n\t# here\n").unwrap(),
        settings
    );
}

#[test]
fn file_values_are_applied() {
    let text = "\
# gfs_controld test configuration
log_level=debug
  fence_retry = 500ms
fencing=   /usr/local/sbin/my fence

enable_quorum=no
fence_power_off=TRUE
max_journals=16
sysfs_root=/tmp/sys\r
";
    let settings = parse_text(text).unwrap();
    assert_eq!(settings.log_level, LogLevel::Debug);
    assert_eq!(settings.fence_retry, Duration::from_millis(500));
    assert_eq!(
        settings.fencing,
        FenceSetting::Program(PathBuf::from("/usr/local/sbin/my fence"))
    );
    assert!(!settings.enable_quorum);
    assert!(settings.fence_power_off);
    assert_eq!(settings.max_journals, 16);
    assert_eq!(settings.sysfs_root, Path::new("/tmp/sys"));
    // The rest stays at the defaults.
    assert_eq!(settings.fence_timeout, Duration::from_secs(300));
    assert!(settings.enable_fencing);
}

#[test]
fn every_setting_reads_from_the_file_and_the_command_line_alike() {
    for key in KEYS {
        let (value, shown) = sample(key.name);
        let from_file = parse_text(&format!("{}={value}\n", key.name)).unwrap();
        assert_eq!(
            dump_line(&from_file, key.name),
            shown,
            "{} in a file",
            key.name
        );
        assert_ne!(
            from_file,
            Settings::default(),
            "{}: sample is the default",
            key.name
        );

        let mut from_cli = Settings::default();
        if key.name == "foreground" {
            // A flag on the command line, as for dlm_controld.
            args(&["--foreground"]).apply(&mut from_cli).unwrap();
            assert_eq!(from_cli, from_file, "--foreground");
            continue;
        }
        args(&[&format!("--{}", key.name), value])
            .apply(&mut from_cli)
            .unwrap();
        assert_eq!(from_cli, from_file, "--{} {value}", key.name);
        let mut joined = Settings::default();
        args(&[&format!("--{}={value}", key.name)])
            .apply(&mut joined)
            .unwrap();
        assert_eq!(joined, from_file, "--{}={value}", key.name);
    }
}

#[test]
fn the_command_line_wins_over_the_file() {
    let scratch = Scratch::new("precedence");
    let path = scratch.file(
        "gfs_controld.conf",
        "log_level=warn\nfence_timeout=60\nenable_fencing=0\nmerge_wait=2s\n",
    );
    let path_arg = path.to_str().unwrap();
    let settings = args(&[
        "-c",
        path_arg,
        "--log_level",
        "trace",
        "--enable_fencing",
        "1",
        "--recover_retry=250ms",
    ])
    .load()
    .unwrap();
    assert_eq!(settings.log_level, LogLevel::Trace);
    assert!(settings.enable_fencing);
    assert_eq!(settings.recover_retry, Duration::from_millis(250));
    // From the file, where the command line is silent.
    assert_eq!(settings.fence_timeout, Duration::from_secs(60));
    assert_eq!(settings.merge_wait, Duration::from_secs(2));
    // Defaults, where both are.
    assert_eq!(settings.fence_retry, Duration::from_secs(5));

    let settings = args(&["--config", path_arg, "-f"]).load().unwrap();
    assert!(settings.foreground);
    assert_eq!(settings.log_level, LogLevel::Warn);
}

#[test]
fn daemon_debug_means_foreground_and_debug() {
    let scratch = Scratch::new("daemon-debug");
    let warn = scratch.file("warn.conf", "log_level=warn\n");
    let trace = scratch.file("trace.conf", "log_level=trace\n");
    let load = |argv: &[&str]| args(argv).load().unwrap();

    let settings = load(&["-D", "-c", warn.to_str().unwrap()]);
    assert!(settings.foreground);
    assert_eq!(settings.log_level, LogLevel::Debug);
    // At least debug: more verbose settings stay.
    let settings = load(&["--daemon_debug", "-c", trace.to_str().unwrap()]);
    assert_eq!(settings.log_level, LogLevel::Trace);
    // An explicit --log_level wins.
    let settings = load(&["-D", "--log_level", "error", "-c", warn.to_str().unwrap()]);
    assert_eq!(settings.log_level, LogLevel::Error);
    assert!(settings.foreground);
}

#[test]
fn unknown_keys_name_file_and_line() {
    let message = error_text("# comment\nlog_level=info\n\nfence_timout=30\n");
    assert_eq!(message, "/etc/test.conf:4: unknown key \"fence_timout\"");
    // Keys are case-sensitive.
    assert!(error_text("LOG_LEVEL=info").contains(":1: unknown key"));
}

#[test]
fn bad_values_name_file_line_key_and_what_was_expected() {
    let message = error_text("log_level=info\nfence_timeout=5 minutes\n");
    assert!(
        message
            .starts_with("/etc/test.conf:2: bad value \"5 minutes\" for fence_timeout: expected"),
        "{message}"
    );
    for (line, expected) in [
        ("log_level=loud", "error, warn, info, debug or trace"),
        ("enable_fencing=2", "0 or 1"),
        ("fence_timeout=0", "a duration from 1s"),
        ("fence_timeout=500ms", "a duration from 1s"),
        ("merge_wait=2h", "ms, s or m"),
        ("merge_wait=86401", "to 86400s"),
        ("merge_wait=-1", "a duration"),
        ("merge_wait=1.5", "a duration"),
        ("recover_retry=0", "a duration from 1ms"),
        ("debug_ring_lines=0", "an integer from 1 to 1000000"),
        ("debug_ring_lines=1000001", "an integer from 1 to 1000000"),
        ("max_journals=257", "an integer from 1 to 256"),
        ("timeline_keep=", "an integer"),
        (
            "fencing=stonith",
            "auto, pacemaker, manual or the absolute path",
        ),
        ("fencing=bin/fence", "absolute path"),
        ("control_socket=gfs.sock", "an absolute path"),
        ("pid_file=", "an absolute path"),
        ("fence_retry=300 # five minutes", "a duration"),
    ] {
        let message = error_text(line);
        assert!(
            message.starts_with("/etc/test.conf:1: bad value"),
            "{line}: {message}"
        );
        assert!(message.contains(expected), "{line}: {message}");
    }
}

#[test]
fn duplicates_and_lines_without_equals_are_errors() {
    let message = error_text("fencing=manual\nlog_level=info\n# again\nfencing=auto\n");
    assert_eq!(
        message,
        "/etc/test.conf:4: duplicate key fencing (first set on line 1)"
    );
    let message = error_text("log_level=info\nforeground\n");
    assert_eq!(
        message,
        "/etc/test.conf:2: expected key=value, found \"foreground\""
    );
    assert!(error_text(" = 1").starts_with("/etc/test.conf:1: expected key=value"));
}

#[test]
fn parse_file_returns_entries_with_line_numbers() {
    let entries =
        Settings::parse_file("# x\nlog_level = debug \n\nfencing=manual", Path::new("f")).unwrap();
    let found: Vec<(&str, &str, usize)> = entries
        .iter()
        .map(|e| (e.key.as_str(), e.value.as_str(), e.line))
        .collect();
    assert_eq!(found, [("log_level", "debug", 2), ("fencing", "manual", 4)]);
}

#[test]
fn a_missing_file_is_an_error_only_when_named() {
    let scratch = Scratch::new("missing");
    let missing = scratch.0.join("nope.conf");
    match args(&["-c", missing.to_str().unwrap()]).load() {
        Err(e @ ConfigError::Io { .. }) => {
            let message = e.to_string();
            assert!(message.contains("nope.conf"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    // A directory is not a file either.
    assert!(args(&["-c", scratch.0.to_str().unwrap()]).load().is_err());
    // Without -c the default file is read if it exists; a missing one means the defaults.
    if !Path::new(DEFAULT_CONFIG_PATH).exists() {
        assert_eq!(args(&[]).load().unwrap(), Settings::default());
        assert_eq!(
            args(&["--fencing", "manual"]).load().unwrap().fencing,
            FenceSetting::Manual
        );
    }
}

#[test]
fn groupd_compat_accepts_0_and_1_only() {
    for ok in [
        &["-g", "0"][..],
        &["-g", "1"],
        &["-g0"],
        &["--groupd_compat", "0"],
    ] {
        let parsed = args(ok);
        assert!(parsed.groupd_compat.is_some(), "{ok:?}");
    }
    // Ignored: it changes no setting.
    let mut settings = Settings::default();
    args(&["-g", "0"]).apply(&mut settings).unwrap();
    assert_eq!(settings, Settings::default());
    for bad in [&["-g", "2"][..], &["-g", "-1"], &["-g", "x"], &["-g"]] {
        let error =
            DaemonArgs::try_parse_from(std::iter::once("gfs_controld").chain(bad.iter().copied()))
                .expect_err("accepted");
        assert_eq!(error.exit_code(), 2, "{bad:?}");
    }
}

#[test]
fn the_command_line_rejects_what_the_file_rejects() {
    for bad in [
        &["--log_level", "loud"][..],
        &["--fence_timeout", "0"],
        &["--fence_retry", "1h"],
        &["--enable_fencing", "2"],
        &["--enable_fencing"],
        &["--max_journals", "257"],
        &["--debug_ring_lines", "0"],
        &["--timeline_keep", "-3"],
        &["--fencing", "stonith"],
        &["--control_socket", "relative.sock"],
        &["--pid_file", "run/x.pid"],
        &["--completions", "tcsh"],
        &["--frobnicate"],
        &["extra"],
    ] {
        let result =
            DaemonArgs::try_parse_from(std::iter::once("gfs_controld").chain(bad.iter().copied()));
        match result {
            Ok(parsed) => panic!("{bad:?} accepted: {parsed:?}"),
            Err(e) => assert_eq!(e.exit_code(), 2, "{bad:?}: {e}"),
        }
    }
}

#[test]
fn dump_config_reads_back_to_the_same_settings() {
    let defaults = Settings::default();
    let dump = defaults.dump();
    assert_eq!(dump.lines().count(), KEYS.len(), "{dump}");
    assert!(dump.lines().all(|line| line.contains('=')), "{dump}");
    assert_eq!(parse_text(&dump).unwrap(), defaults);
    assert!(dump.contains("fence_timeout=300s\n"), "{dump}");
    assert!(
        dump.contains("control_socket=/run/gfs_controld/gfs_controld.sock\n"),
        "{dump}"
    );

    let mut changed = Settings::default();
    for key in KEYS {
        key.apply(&mut changed, sample(key.name).0).unwrap();
    }
    let dump = changed.dump();
    let read_back = parse_text(&dump).unwrap();
    assert_eq!(read_back, changed, "{dump}");
    assert_eq!(read_back.dump(), dump);
}

#[test]
fn startup_dumps_completes_and_reports_errors() {
    let scratch = Scratch::new("startup");
    let good = scratch.file("good.conf", "merge_wait=9s\n");
    let bad = scratch.file("bad.conf", "\n\nmerge_wait=soon\n");
    let run = |argv: &[&str]| {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let result = startup(&args(argv), &mut out, &mut err);
        (
            result,
            String::from_utf8(out).unwrap(),
            String::from_utf8(err).unwrap(),
        )
    };

    let (result, out, err) = run(&[
        "--dump_config",
        "-c",
        good.to_str().unwrap(),
        "--fencing",
        "manual",
    ]);
    assert!(matches!(result, Startup::Exit(0)), "{result:?} {err}");
    assert!(out.contains("merge_wait=9s\nrecover_retry=1s\n"), "{out}");
    assert!(out.contains("fencing=manual\n"), "{out}");
    assert!(err.is_empty());

    let (result, out, err) = run(&["-c", bad.to_str().unwrap(), "--dump_config"]);
    assert!(matches!(result, Startup::Exit(1)), "{result:?}");
    assert!(out.is_empty());
    assert_eq!(
        err,
        format!(
            "gfs_controld: {}:3: bad value \"soon\" for merge_wait: expected a duration from 0s to \
             86400s: seconds, or a number with unit ms, s or m\n",
            bad.display()
        )
    );

    let (result, _, _) = run(&["-c", good.to_str().unwrap(), "-f"]);
    match result {
        Startup::Run(settings) => {
            assert!(settings.foreground);
            assert_eq!(settings.merge_wait, Duration::from_secs(9));
        }
        other => panic!("{other:?}"),
    }

    for shell in ["bash", "zsh", "fish"] {
        // Completions need no configuration, even a broken one.
        let (result, out, _) = run(&["--completions", shell, "-c", bad.to_str().unwrap()]);
        assert!(matches!(result, Startup::Exit(0)), "{shell}");
        assert!(out.contains("fence_timeout"), "{shell}: {out}");
        assert!(out.contains("dump_config"), "{shell}");
    }
}

#[test]
fn help_shows_every_setting_with_its_default() {
    let help = DaemonArgs::command().render_help().to_string();
    for key in KEYS {
        assert!(
            help.contains(&format!("--{}", key.name)),
            "{}: {help}",
            key.name
        );
        let default = format!("[default: {}]", key.default_value());
        assert!(
            help.contains(&default),
            "{}: {default} missing: {help}",
            key.name
        );
    }
    for option in [
        "--foreground",
        "-f",
        "-D",
        "--daemon_debug",
        "-g",
        "-c",
        "--config",
    ] {
        assert!(help.contains(option), "{option}: {help}");
    }
    assert!(help.contains(DEFAULT_CONFIG_PATH), "{help}");
    let max = format!("1-{}", gfs_core::MAX_JOURNALS);
    assert!(config::key("max_journals").unwrap().help.contains(&max));
}

#[test]
fn settings_and_long_options_match() {
    let command = DaemonArgs::command();
    let longs: Vec<String> = command
        .get_arguments()
        .filter_map(|arg| arg.get_long().map(str::to_owned))
        .collect();
    for key in KEYS {
        let arg = command
            .get_arguments()
            .find(|arg| arg.get_long() == Some(key.name))
            .unwrap_or_else(|| panic!("no --{}", key.name));
        if key.name != "foreground" {
            let names: Vec<String> = arg
                .get_value_names()
                .unwrap_or_default()
                .iter()
                .map(ToString::to_string)
                .collect();
            assert_eq!(names, [key.value_name], "value name of --{}", key.name);
        }
    }
    for long in &longs {
        assert!(
            config::key(long).is_some() || COMMAND_LINE_ONLY.contains(&long.as_str()),
            "--{long} is neither a setting nor a known command-line option"
        );
    }
}

fn read(relative: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A man page with roff's escaped minus undone, so option names can be searched.
fn man_page(relative: &str) -> String {
    read(relative).replace("\\-", "-")
}

/// The part of a man page from `.SH name` to the next section.
fn section<'a>(man: &'a str, name: &str) -> &'a str {
    man.split(&format!(".SH {name}\n"))
        .nth(1)
        .and_then(|rest| rest.split("\n.SH ").next())
        .unwrap_or_default()
}

#[test]
fn the_daemon_man_page_documents_the_whole_command_line() {
    let man = man_page("man/gfs_controld.8");
    let options = section(&man, "OPTIONS");
    let mut missing = Vec::new();
    for arg in DaemonArgs::command().get_arguments() {
        if let Some(long) = arg.get_long() {
            if !options.contains(&format!("--{long}")) {
                missing.push(format!("--{long}"));
            }
        }
        if let Some(short) = arg.get_short() {
            if !options.contains(&format!("-{short}")) {
                missing.push(format!("-{short}"));
            }
        }
        let is_flag = matches!(
            arg.get_action(),
            clap::ArgAction::SetTrue | clap::ArgAction::SetFalse
        );
        for value in arg.get_possible_values() {
            if !is_flag && !value.is_hide_set() && !options.contains(value.get_name()) {
                missing.push(value.get_name().to_owned());
            }
        }
    }
    // The settings list shows each default in brackets.
    for key in KEYS
        .iter()
        .filter(|key| key.name != "foreground" && !config::TEST_ONLY_KEYS.contains(&key.name))
    {
        let default = key.default_value();
        let entry = options
            .split(&format!("--{} ", key.name))
            .nth(1)
            .and_then(|rest| rest.split(".TP").next())
            .unwrap_or_default();
        if !entry.contains(&format!("[ {default} ]")) && !entry.contains(&format!("[{default}]")) {
            missing.push(format!("default {default} of --{}", key.name));
        }
    }
    for name in ["SIGNALS", "FILES", "ENVIRONMENT", "EXIT STATUS", "SEE ALSO"] {
        if section(&man, name).is_empty() {
            missing.push(format!("section {name}"));
        }
    }
    for word in [
        "RUST_LOG",
        "NOTIFY_SOCKET",
        "SIGTERM",
        "SIGINT",
        "gfs:controld",
        "gfs:mount:",
    ] {
        if !man.contains(word) {
            missing.push(word.to_owned());
        }
    }
    let exit = section(&man, "EXIT STATUS");
    for status in ["0", "1", "2"] {
        if !exit.contains(&format!(".B {status}\n")) {
            missing.push(format!("exit status {status}"));
        }
    }
    let see_also = section(&man, "SEE ALSO");
    for page in [
        "gfs_control",
        "gfs_controld.conf",
        "dlm_controld",
        "corosync",
    ] {
        if !see_also.contains(&format!(".BR {page} (")) {
            missing.push(format!("see also {page}"));
        }
    }
    assert!(missing.is_empty(), "man/gfs_controld.8 lacks {missing:?}");
}

/// The `.B key` entries of the conf page's SETTINGS list and the text of each.
fn conf_entries() -> Vec<(String, String)> {
    let man = man_page("man/gfs_controld.conf.5");
    let settings = section(&man, "SETTINGS").to_owned();
    let mut entries = Vec::new();
    let mut lines = settings.lines().peekable();
    while let Some(line) = lines.next() {
        if line != ".TP" {
            continue;
        }
        let Some(name) = lines.next().and_then(|l| l.strip_prefix(".B ")) else {
            continue;
        };
        let mut text = String::new();
        let mut depth = 0;
        while let Some(next) = lines.peek() {
            match *next {
                ".TP" if depth == 0 => break,
                ".RS" => depth += 1,
                ".RE" => depth -= 1,
                _ => {}
            }
            text.push_str(next);
            text.push('\n');
            lines.next();
        }
        entries.push((name.to_owned(), text));
    }
    entries
}

#[test]
fn the_conf_man_page_documents_every_setting_and_nothing_else() {
    let entries = conf_entries();
    let mut problems = Vec::new();
    for key in KEYS {
        match entries.iter().find(|(name, _)| name == key.name) {
            None => problems.push(format!("no entry for {}", key.name)),
            Some((_, text)) => {
                let default = match key.default_value() {
                    empty if empty.is_empty() => "Default: empty (off).\n".to_owned(),
                    value => format!("Default:\n.BR {value} .\n"),
                };
                if !text.contains(&default) {
                    problems.push(format!("{}: no {default:?} in {text:?}", key.name));
                }
            }
        }
    }
    for (name, _) in &entries {
        if config::key(name).is_none() {
            problems.push(format!("entry {name} is not a setting"));
        }
    }
    let names: Vec<&str> = entries.iter().map(|(name, _)| name.as_str()).collect();
    let order: Vec<&str> = KEYS.iter().map(|key| key.name).collect();
    if names != order {
        problems.push(format!(
            "entries {names:?} are not in the order of {order:?}"
        ));
    }
    let man = man_page("man/gfs_controld.conf.5");
    for name in ["EXAMPLE", "PRECEDENCE", "SEE ALSO"] {
        if section(&man, name).is_empty() {
            problems.push(format!("section {name}"));
        }
    }
    // The example must be a valid file.
    let example = section(&man, "EXAMPLE");
    let example = example
        .split(".EX\n")
        .nth(1)
        .and_then(|rest| rest.split("\n.EE").next())
        .unwrap_or_default();
    if let Err(e) = parse_text(example) {
        problems.push(format!("the example does not parse: {e}"));
    }
    assert!(
        problems.is_empty(),
        "man/gfs_controld.conf.5: {problems:#?}"
    );
}

#[test]
fn the_example_file_lists_every_setting_at_its_default() {
    let text = read("packaging/gfs_controld.conf");
    // As shipped, it sets nothing.
    assert_eq!(
        parse_text(&text).unwrap(),
        Settings::default(),
        "the example must change no setting"
    );
    let uncommented: String = text
        .lines()
        .filter_map(|line| line.strip_prefix('#'))
        .filter(|line| {
            line.split_once('=')
                .is_some_and(|(key, _)| config::key(key.trim()).is_some())
        })
        .map(|line| format!("{line}\n"))
        .collect();
    let entries = Settings::parse_file(&uncommented, Path::new("example")).unwrap();
    for name in config::TEST_ONLY_KEYS {
        assert!(
            !text.contains(name),
            "the example file mentions the test-only {name}"
        );
    }
    for key in KEYS
        .iter()
        .filter(|key| !config::TEST_ONLY_KEYS.contains(&key.name))
    {
        let entry = entries.iter().find(|e| e.key == key.name);
        assert_eq!(
            entry.map(|e| e.value.clone()),
            Some(key.default_value()),
            "#{}= in packaging/gfs_controld.conf",
            key.name
        );
    }
    assert_eq!(parse_text(&uncommented).unwrap(), Settings::default());
}

#[test]
fn mandoc_lint_is_clean() {
    let pages = [
        "man/gfs_controld.8",
        "man/gfs_controld.conf.5",
        "man/gfs_control.8",
    ];
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let output = Command::new("mandoc")
        .args(["-T", "lint", "-W", "all"])
        .args(pages.iter().map(|page| root.join(page)))
        .output();
    let output = match output {
        Ok(output) => output,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            assert!(std::env::var_os("CI").is_none(), "mandoc is not installed");
            eprintln!("mandoc is not installed: skipping the lint");
            return;
        }
        Err(e) => panic!("cannot run mandoc: {e}"),
    };
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success() && report.trim().is_empty(),
        "{report}"
    );
}
