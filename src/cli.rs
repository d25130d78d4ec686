//! The `gfs_controld` command line, in dlm_controld's style: `--snake_case` long options, each
//! also a key of the configuration file. Settings given here win over the file.

use std::io::{self, Write};
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, CommandFactory, Parser};

use crate::config::{self, key_help, Settings, DEFAULT_CONFIG_PATH};
use crate::dlm::DlmAddress;

/// Exit status: success (also after `--dump_config` and `--completions`).
pub const EXIT_OK: u8 = 0;
/// Exit status: the configuration could not be loaded, or the daemon failed.
pub const EXIT_FAILURE: u8 = 1;
/// Exit status: bad command line (clap's own exit code).
pub const EXIT_USAGE: u8 = 2;

fn parse_log_level(value: &str) -> Result<String, String> {
    apply_checked("log_level", value, |s| s.log_level.clone())
}

fn parse_fencing(value: &str) -> Result<String, String> {
    config::parse_fencing(value).map_err(|expected| format!("expected {expected}"))
}

fn parse_dlm_socket(value: &str) -> Result<DlmAddress, String> {
    apply_checked("dlm_socket", value, |s| s.dlm_socket.clone())
}

/// Kept as text: an empty value (off) must still override the file.
fn parse_test_socket(value: &str) -> Result<String, String> {
    apply_checked("uevent_test_socket", value, |_| ())?;
    Ok(value.trim().to_owned())
}

fn parse_bool(value: &str) -> Result<bool, String> {
    config::parse_bool(value).map_err(|expected| format!("expected {expected}"))
}

fn parse_path(key: &'static str) -> impl Fn(&str) -> Result<PathBuf, String> + Clone {
    move |value| {
        apply_checked(key, value, |_| ())?;
        Ok(PathBuf::from(value.trim()))
    }
}

fn parse_duration(key: &'static str) -> impl Fn(&str) -> Result<Duration, String> + Clone {
    move |value| {
        apply_checked(key, value, |_| ())?;
        config::parse_duration(value).map_err(|expected| format!("expected {expected}"))
    }
}

fn parse_count(key: &'static str) -> impl Fn(&str) -> Result<usize, String> + Clone {
    move |value| {
        apply_checked(key, value, |_| ())?;
        value.trim().parse().map_err(|e| format!("{e}"))
    }
}

/// Checks `value` with the configuration file's reader for `key`, so that the command line
/// accepts exactly what the file does.
fn apply_checked<T>(
    key: &'static str,
    value: &str,
    extract: impl FnOnce(&Settings) -> T,
) -> Result<T, String> {
    let Some(setting) = config::key(key) else {
        return Err(format!("no setting {key}"));
    };
    let mut settings = Settings::default();
    setting
        .apply(&mut settings, value)
        .map_err(|expected| format!("expected {expected}"))?;
    Ok(extract(&settings))
}

/// GFS2 journal-recovery coordinator: fences failed nodes and has their journals replayed.
#[derive(Clone, Debug, Default, Parser)]
#[command(name = "gfs_controld", version, about, long_about = None)]
pub struct DaemonArgs {
    /// Do not daemonize; the systemd unit uses this.
    #[arg(short = 'f', long = "foreground")]
    pub foreground: bool,

    /// Stay in the foreground and log at least at debug level to stderr.
    #[arg(short = 'D', long = "daemon_debug")]
    pub daemon_debug: bool,

    /// Ignored: accepted for pacemaker's ocf:pacemaker:controld, which passes -g 0.
    #[arg(
        short = 'g',
        long = "groupd_compat",
        value_name = "0|1",
        value_parser = clap::value_parser!(u8).range(0..=1)
    )]
    pub groupd_compat: Option<u8>,

    /// Configuration file; a missing default file is not an error [default: /etc/gfs_controld.conf]
    #[arg(short = 'c', long = "config", value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// Print the effective settings as key=value lines and exit.
    #[arg(long = "dump_config")]
    pub dump_config: bool,

    /// Print a shell completion script and exit.
    #[arg(long = "completions", value_name = "SHELL")]
    pub completions: Option<clap_complete::Shell>,

    #[arg(long = "log_level", value_name = "LEVEL", help = key_help("log_level"), value_parser = parse_log_level)]
    pub log_level: Option<String>,

    #[arg(long = "debug_ring_lines", value_name = "LINES", help = key_help("debug_ring_lines"), value_parser = parse_count("debug_ring_lines"))]
    pub debug_ring_lines: Option<usize>,

    #[arg(long = "control_socket", value_name = "PATH", help = key_help("control_socket"), value_parser = parse_path("control_socket"))]
    pub control_socket: Option<PathBuf>,

    #[arg(long = "sysfs_root", value_name = "PATH", help = key_help("sysfs_root"), value_parser = parse_path("sysfs_root"))]
    pub sysfs_root: Option<PathBuf>,

    #[arg(long = "configfs_root", value_name = "PATH", help = key_help("configfs_root"), value_parser = parse_path("configfs_root"))]
    pub configfs_root: Option<PathBuf>,

    #[arg(long = "dlm_socket", value_name = "SOCKET", help = key_help("dlm_socket"), value_parser = parse_dlm_socket)]
    pub dlm_socket: Option<DlmAddress>,

    #[arg(long = "fencing", value_name = "METHOD", help = key_help("fencing"), value_parser = parse_fencing)]
    pub fencing: Option<String>,

    #[arg(long = "fence_timeout", value_name = "DURATION", help = key_help("fence_timeout"), value_parser = parse_duration("fence_timeout"))]
    pub fence_timeout: Option<Duration>,

    #[arg(long = "fence_retry", value_name = "DURATION", help = key_help("fence_retry"), value_parser = parse_duration("fence_retry"))]
    pub fence_retry: Option<Duration>,

    #[arg(long = "fence_warn", value_name = "DURATION", help = key_help("fence_warn"), value_parser = parse_duration("fence_warn"))]
    pub fence_warn: Option<Duration>,

    #[arg(long = "fence_power_off", value_name = "0|1", help = key_help("fence_power_off"), value_parser = parse_bool, action = ArgAction::Set)]
    pub fence_power_off: Option<bool>,

    #[arg(long = "enable_fencing", value_name = "0|1", help = key_help("enable_fencing"), value_parser = parse_bool, action = ArgAction::Set)]
    pub enable_fencing: Option<bool>,

    #[arg(long = "enable_quorum", value_name = "0|1", help = key_help("enable_quorum"), value_parser = parse_bool, action = ArgAction::Set)]
    pub enable_quorum: Option<bool>,

    #[arg(long = "allow_existing_mounts", value_name = "0|1", help = key_help("allow_existing_mounts"), value_parser = parse_bool, action = ArgAction::Set)]
    pub allow_existing_mounts: Option<bool>,

    #[arg(long = "startup_fence_delay", value_name = "DURATION", help = key_help("startup_fence_delay"), value_parser = parse_duration("startup_fence_delay"))]
    pub startup_fence_delay: Option<Duration>,

    #[arg(long = "merge_wait", value_name = "DURATION", help = key_help("merge_wait"), value_parser = parse_duration("merge_wait"))]
    pub merge_wait: Option<Duration>,

    #[arg(long = "recover_retry", value_name = "DURATION", help = key_help("recover_retry"), value_parser = parse_duration("recover_retry"))]
    pub recover_retry: Option<Duration>,

    #[arg(long = "timeline_keep", value_name = "COUNT", help = key_help("timeline_keep"), value_parser = parse_count("timeline_keep"))]
    pub timeline_keep: Option<usize>,

    #[arg(long = "max_journals", value_name = "COUNT", help = key_help("max_journals"), value_parser = parse_count("max_journals"))]
    pub max_journals: Option<usize>,

    #[arg(long = "pid_file", value_name = "PATH", help = key_help("pid_file"), value_parser = parse_path("pid_file"))]
    pub pid_file: Option<PathBuf>,

    #[arg(long = "uevent_test_socket", value_name = "PATH", help = key_help("uevent_test_socket"), value_parser = parse_test_socket)]
    pub uevent_test_socket: Option<String>,
}

impl DaemonArgs {
    /// Puts the settings given on the command line over `settings`.
    pub fn apply_to(&self, settings: &mut Settings) {
        fn set<T: Clone>(target: &mut T, value: &Option<T>) {
            if let Some(value) = value {
                *target = value.clone();
            }
        }
        set(&mut settings.log_level, &self.log_level);
        set(&mut settings.debug_ring_lines, &self.debug_ring_lines);
        set(&mut settings.socket_path, &self.control_socket);
        set(&mut settings.sysfs_root, &self.sysfs_root);
        set(&mut settings.configfs_root, &self.configfs_root);
        set(&mut settings.dlm_socket, &self.dlm_socket);
        set(&mut settings.fencing, &self.fencing);
        set(&mut settings.fence_timeout, &self.fence_timeout);
        set(&mut settings.fence_retry, &self.fence_retry);
        set(&mut settings.fence_warn, &self.fence_warn);
        set(&mut settings.fence_power_off, &self.fence_power_off);
        set(&mut settings.enable_fencing, &self.enable_fencing);
        set(&mut settings.enable_quorum, &self.enable_quorum);
        set(
            &mut settings.allow_existing_mounts,
            &self.allow_existing_mounts,
        );
        set(&mut settings.startup_fence_delay, &self.startup_fence_delay);
        set(&mut settings.merge_wait, &self.merge_wait);
        set(&mut settings.recover_retry, &self.recover_retry);
        set(&mut settings.timeline_keep, &self.timeline_keep);
        set(&mut settings.pid_file, &self.pid_file);
        if let Some(path) = &self.uevent_test_socket {
            settings.uevent_test_socket = (!path.is_empty()).then(|| PathBuf::from(path));
        }
        if let Some(max) = self.max_journals {
            // The parser bounds it by gfs_core::MAX_JOURNALS.
            settings.max_journals = u32::try_from(max).unwrap_or(gfs_core::MAX_JOURNALS);
        }
        if self.foreground {
            settings.foreground = true;
        }
        if self.daemon_debug {
            settings.foreground = true;
            // At least debug; an explicit --log_level wins.
            if self.log_level.is_none() && level_rank(&settings.log_level) < level_rank("debug") {
                settings.log_level = "debug".to_owned();
            }
        }
    }

    /// The configuration file to read, and whether it was named explicitly.
    pub fn config_path(&self) -> (PathBuf, bool) {
        match &self.config {
            Some(path) => (path.clone(), true),
            None => (PathBuf::from(DEFAULT_CONFIG_PATH), false),
        }
    }
}

fn level_rank(level: &str) -> usize {
    config::LOG_LEVELS
        .iter()
        .position(|l| *l == level)
        .unwrap_or(0)
}

/// What `main` does after [`startup`].
#[derive(Debug)]
pub enum Startup {
    /// Run the daemon with these settings.
    Run(Box<Settings>),
    /// Exit with this status: `--dump_config`, `--completions`, or a configuration error
    /// (already reported on the error stream).
    Exit(u8),
}

/// Handles the modes that exit at once and loads the settings; `main` runs the daemon on
/// [`Startup::Run`].
pub fn startup(args: &DaemonArgs, out: &mut dyn Write, err: &mut dyn Write) -> Startup {
    if let Some(shell) = args.completions {
        let mut buffer = Vec::new();
        clap_complete::generate(
            shell,
            &mut DaemonArgs::command(),
            "gfs_controld",
            &mut buffer,
        );
        return Startup::Exit(emit(out, err, &buffer));
    }
    let settings = match Settings::load(args) {
        Ok(settings) => settings,
        Err(e) => {
            let _ = writeln!(err, "gfs_controld: {e}");
            return Startup::Exit(EXIT_FAILURE);
        }
    };
    if args.dump_config {
        return Startup::Exit(emit(out, err, settings.dump().as_bytes()));
    }
    Startup::Run(Box::new(settings))
}

/// Writes the output; a closed pipe (`gfs_controld --dump_config | head`) is not an error.
fn emit(out: &mut dyn Write, err: &mut dyn Write, bytes: &[u8]) -> u8 {
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Ok(()) => EXIT_OK,
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => EXIT_OK,
        Err(e) => {
            let _ = writeln!(err, "gfs_controld: cannot write output: {e}");
            EXIT_FAILURE
        }
    }
}
