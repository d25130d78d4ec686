//! The daemon's settings: built-in defaults, then `/etc/gfs_controld.conf` (dlm.conf style
//! `key=value` lines), then the command line on top.
//!
//! One table, [`KEYS`], drives the file parser, the command line's help texts and
//! `--dump_config`, so a setting's name, meaning, syntax and default are written once.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::dlm::DlmAddress;

/// The configuration file read when `--config` is not given; it need not exist.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/gfs_controld.conf";

/// A configuration file larger than this is refused: real ones are a few kilobytes.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// Values, keys and lines quoted in error messages are cut to this many characters.
pub const MAX_QUOTED_CHARS: usize = 80;

/// The `log_level` setting: messages at this level and more severe go to stderr.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    /// Every level, least verbose first.
    pub const ALL: [LogLevel; 5] = [
        LogLevel::Error,
        LogLevel::Warn,
        LogLevel::Info,
        LogLevel::Debug,
        LogLevel::Trace,
    ];

    /// The one parser of the setting: a level's name in any case.
    pub fn parse(value: &str) -> Result<LogLevel, String> {
        let value = value.trim();
        Self::ALL
            .into_iter()
            .find(|level| level.as_str().eq_ignore_ascii_case(value))
            .ok_or_else(|| "error, warn, info, debug or trace".to_owned())
    }

    /// The name as the file and `RUST_LOG` spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

impl std::fmt::Display for LogLevel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The `fencing` setting as written; `auto` is resolved when the daemon starts
/// ([`crate::fence::FenceMode::from_setting`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FenceSetting {
    /// Pacemaker when its fencing library loads, else manual.
    Auto,
    Pacemaker,
    Manual,
    /// `PROGRAM NODEID NODENAME`, exit status 0 = fenced.
    Program(PathBuf),
}

impl FenceSetting {
    /// The one parser of the setting: `auto`, `pacemaker`, `manual` or an absolute program
    /// path, checked for syntax only (the daemon checks at startup that the program exists:
    /// [`crate::fence::check_program`]).
    pub fn parse(value: &str) -> Result<FenceSetting, String> {
        match value.trim() {
            "auto" => Ok(FenceSetting::Auto),
            "pacemaker" => Ok(FenceSetting::Pacemaker),
            "manual" => Ok(FenceSetting::Manual),
            path if path.starts_with('/') && !path.contains('\0') => {
                Ok(FenceSetting::Program(PathBuf::from(path)))
            }
            _ => Err("auto, pacemaker, manual or the absolute path of a fence program".to_owned()),
        }
    }
}

impl std::fmt::Display for FenceSetting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FenceSetting::Auto => f.write_str("auto"),
            FenceSetting::Pacemaker => f.write_str("pacemaker"),
            FenceSetting::Manual => f.write_str("manual"),
            FenceSetting::Program(path) => write!(f, "{}", path.display()),
        }
    }
}

/// The longest duration any setting accepts: a day. Far beyond any sensible timer, and small
/// enough that adding it to the clock cannot overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(86_400);

/// Everything the daemon can be told.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// Level of messages written to stderr (the journal under systemd).
    pub log_level: LogLevel,
    /// Lines kept in the in-memory debug log that `gfs_control dump` prints.
    pub debug_ring_lines: usize,
    /// The control socket `gfs_control` talks to (key `control_socket`).
    pub socket_path: PathBuf,
    /// Where the kernel lists mounted GFS2 filesystems.
    pub sysfs_root: PathBuf,
    /// Where configfs is mounted; the DLM's `dlm/cluster/recover_callbacks` is read below it.
    pub configfs_root: PathBuf,
    /// dlm_controld's fs-control socket.
    pub dlm_socket: DlmAddress,
    /// How failed nodes are fenced; the daemon resolves `auto` with
    /// [`crate::fence::FenceMode::from_setting`].
    pub fencing: FenceSetting,
    /// How long one fencing attempt may take before it counts as failed (at least 1s).
    pub fence_timeout: Duration,
    /// Wait before asking again after fencing failed; pacemaker's polling interval.
    pub fence_retry: Duration,
    /// Waiting longer than this for a node to be fenced is logged as a warning.
    pub fence_warn: Duration,
    /// Pacemaker: power failed nodes off instead of rebooting them.
    pub fence_power_off: bool,
    /// 0 trusts every failed node to be fenced already: dangerous.
    pub enable_fencing: bool,
    /// 0 replays journals without quorum: dangerous.
    pub enable_quorum: bool,
    /// Start even though GFS2 filesystems are mounted already.
    pub allow_existing_mounts: bool,
    /// Like dlm_controld's post_join_delay.
    pub startup_fence_delay: Duration,
    /// After quorum returns, wait this long for the membership change that brought it.
    pub merge_wait: Duration,
    /// Wait before retrying a journal this node failed to replay.
    pub recover_retry: Duration,
    /// Recovery timelines kept for `gfs_control status`.
    pub timeline_keep: usize,
    /// Journal ids are searched in `0..max_journals`.
    pub max_journals: u32,
    /// Stay in the foreground instead of daemonizing.
    pub foreground: bool,
    /// The file holding the daemon's process id.
    pub pid_file: PathBuf,
    /// Test kit only: a unix datagram socket that also takes uevents (from the kernel
    /// simulator), since only the kernel's own netlink uevents are trusted.
    pub uevent_test_socket: Option<PathBuf>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            log_level: LogLevel::Info,
            debug_ring_lines: 10_000,
            socket_path: PathBuf::from(crate::control::proto::DEFAULT_SOCKET_PATH),
            sysfs_root: PathBuf::from("/sys/fs/gfs2"),
            configfs_root: PathBuf::from("/sys/kernel/config"),
            dlm_socket: DlmAddress::dlm_controld(),
            fencing: FenceSetting::Auto,
            fence_timeout: Duration::from_secs(300),
            fence_retry: Duration::from_secs(5),
            fence_warn: Duration::from_secs(60),
            fence_power_off: false,
            enable_fencing: true,
            enable_quorum: true,
            allow_existing_mounts: false,
            startup_fence_delay: Duration::from_secs(10),
            merge_wait: Duration::from_secs(5),
            recover_retry: Duration::from_secs(1),
            timeline_keep: 16,
            max_journals: gfs_core::MAX_JOURNALS,
            foreground: false,
            pid_file: PathBuf::from("/run/gfs_controld.pid"),
            uevent_test_socket: None,
        }
    }
}

/// Why the settings could not be loaded. File errors name the file and line.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not a regular file ({kind}); refusing to read it", path.display())]
    NotAFile { path: PathBuf, kind: &'static str },
    #[error("{} is larger than {MAX_CONFIG_BYTES} bytes; refusing to read it", path.display())]
    TooLarge { path: PathBuf },
    #[error("{}:{line}: not valid UTF-8", path.display())]
    NotUtf8 { path: PathBuf, line: usize },
    #[error("{}:{line}: expected key=value, found {text:?}", path.display())]
    Syntax {
        path: PathBuf,
        line: usize,
        text: String,
    },
    #[error("{}:{line}: unknown key {key:?}", path.display())]
    UnknownKey {
        path: PathBuf,
        line: usize,
        key: String,
    },
    #[error("{}:{line}: bad value {value:?} for {key}: expected {expected}", path.display())]
    BadValue {
        path: PathBuf,
        line: usize,
        key: String,
        value: String,
        expected: String,
    },
    /// A command-line value its key's parser refused (clap checks them first, with the same
    /// parser, so only a caller that built the arguments by hand sees this).
    #[error("bad value {value:?} for --{key}: expected {expected}")]
    BadOption {
        key: &'static str,
        value: String,
        expected: String,
    },
    #[error("{}:{line}: duplicate key {key} (first set on line {first_line})", path.display())]
    Duplicate {
        path: PathBuf,
        line: usize,
        key: String,
        first_line: usize,
    },
}

/// One setting: its name in the file and on the command line, and how to read and show it.
pub struct Key {
    /// The file key and the long option (`--name`).
    pub name: &'static str,
    /// What the value looks like, for help texts.
    pub value_name: &'static str,
    /// One sentence for `--help`; the man page says more.
    pub help: &'static str,
    /// Reads a value into the settings; the error says what was expected.
    apply: fn(&mut Settings, &str) -> Result<(), String>,
    /// The value in the form the file takes.
    show: fn(&Settings) -> String,
}

impl Key {
    /// Reads `value` (surrounding whitespace ignored) into `settings`; on error, what was
    /// expected.
    pub fn apply(&self, settings: &mut Settings, value: &str) -> Result<(), String> {
        (self.apply)(settings, value.trim())
    }

    /// The setting's value in `settings`, as the file would spell it.
    pub fn show(&self, settings: &Settings) -> String {
        (self.show)(settings)
    }

    /// The built-in default, as the file would spell it.
    pub fn default_value(&self) -> String {
        self.show(&Settings::default())
    }

    /// The help text with the default, for `--help`.
    pub fn help_with_default(&self) -> String {
        format!("{} [default: {}]", self.help, self.default_value())
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key").field("name", &self.name).finish()
    }
}

/// Every setting, in the order `--dump_config` prints them.
pub static KEYS: &[Key] = &[
    Key {
        name: "log_level",
        value_name: "LEVEL",
        help: "Messages logged to stderr: error, warn, info, debug or trace (RUST_LOG overrides)",
        apply: |s, v| {
            s.log_level = LogLevel::parse(v)?;
            Ok(())
        },
        show: |s| s.log_level.to_string(),
    },
    Key {
        name: "debug_ring_lines",
        value_name: "LINES",
        help: "Lines of debug log kept in memory for gfs_control dump (1-1000000)",
        apply: |s, v| {
            s.debug_ring_lines = parse_count(v, 1, 1_000_000)?;
            Ok(())
        },
        show: |s| s.debug_ring_lines.to_string(),
    },
    Key {
        name: "control_socket",
        value_name: "PATH",
        help: "Unix socket gfs_control talks to",
        apply: |s, v| {
            s.socket_path = parse_socket_path(v)?;
            Ok(())
        },
        show: |s| s.socket_path.display().to_string(),
    },
    Key {
        name: "sysfs_root",
        value_name: "PATH",
        help: "Where the kernel lists mounted GFS2 filesystems",
        apply: |s, v| {
            s.sysfs_root = parse_absolute_path(v)?;
            Ok(())
        },
        show: |s| s.sysfs_root.display().to_string(),
    },
    Key {
        name: "configfs_root",
        value_name: "PATH",
        help: "Where configfs is mounted (the DLM's recover_callbacks tells who manages a mount)",
        apply: |s, v| {
            s.configfs_root = parse_absolute_path(v)?;
            Ok(())
        },
        show: |s| s.configfs_root.display().to_string(),
    },
    Key {
        name: "dlm_socket",
        value_name: "SOCKET",
        help: "dlm_controld's socket: @name (abstract) or a path",
        apply: |s, v| {
            s.dlm_socket = DlmAddress::parse(v)?;
            Ok(())
        },
        show: |s| s.dlm_socket.to_string(),
    },
    Key {
        name: "fencing",
        value_name: "METHOD",
        help: "How failed nodes are fenced: auto, pacemaker, manual or /path/of/fence/program",
        apply: |s, v| {
            s.fencing = FenceSetting::parse(v)?;
            Ok(())
        },
        show: |s| s.fencing.to_string(),
    },
    Key {
        name: "fence_timeout",
        value_name: "DURATION",
        help: "Time one fencing attempt may take before it counts as failed (at least 1s)",
        apply: |s, v| {
            s.fence_timeout = parse_duration_in(v, Duration::from_secs(1))?;
            Ok(())
        },
        show: |s| format_duration(s.fence_timeout),
    },
    Key {
        name: "fence_retry",
        value_name: "DURATION",
        help: "Wait before fencing again after a failure, and between checks with pacemaker",
        apply: |s, v| {
            s.fence_retry = parse_duration_in(v, Duration::from_millis(1))?;
            Ok(())
        },
        show: |s| format_duration(s.fence_retry),
    },
    Key {
        name: "fence_warn",
        value_name: "DURATION",
        help: "Log a warning when recovery has waited this long for fencing, and again as often",
        apply: |s, v| {
            s.fence_warn = parse_duration_in(v, Duration::from_secs(1))?;
            Ok(())
        },
        show: |s| format_duration(s.fence_warn),
    },
    Key {
        name: "fence_power_off",
        value_name: "0|1",
        help: "Ask pacemaker to power failed nodes off instead of rebooting them",
        apply: |s, v| {
            s.fence_power_off = parse_bool(v)?;
            Ok(())
        },
        show: |s| show_bool(s.fence_power_off),
    },
    Key {
        name: "enable_fencing",
        value_name: "0|1",
        help: "Fence failed nodes before replaying their journals (0 is dangerous)",
        apply: |s, v| {
            s.enable_fencing = parse_bool(v)?;
            Ok(())
        },
        show: |s| show_bool(s.enable_fencing),
    },
    Key {
        name: "enable_quorum",
        value_name: "0|1",
        help: "Replay journals and allow first mounts only with quorum (0 is dangerous)",
        apply: |s, v| {
            s.enable_quorum = parse_bool(v)?;
            Ok(())
        },
        show: |s| show_bool(s.enable_quorum),
    },
    Key {
        name: "allow_existing_mounts",
        value_name: "0|1",
        help: "Start even when GFS2 filesystems are already mounted",
        apply: |s, v| {
            s.allow_existing_mounts = parse_bool(v)?;
            Ok(())
        },
        show: |s| show_bool(s.allow_existing_mounts),
    },
    Key {
        name: "startup_fence_delay",
        value_name: "DURATION",
        help: "Time a cluster node absent at startup gets to join before it is fenced",
        apply: |s, v| {
            s.startup_fence_delay = parse_duration_in(v, Duration::ZERO)?;
            Ok(())
        },
        show: |s| format_duration(s.startup_fence_delay),
    },
    Key {
        name: "merge_wait",
        value_name: "DURATION",
        help: "After quorum returns, wait this long for the membership change that brought it",
        apply: |s, v| {
            s.merge_wait = parse_duration_in(v, Duration::ZERO)?;
            Ok(())
        },
        show: |s| format_duration(s.merge_wait),
    },
    Key {
        name: "recover_retry",
        value_name: "DURATION",
        help: "Wait before retrying a journal this node failed to replay",
        apply: |s, v| {
            s.recover_retry = parse_duration_in(v, Duration::from_millis(1))?;
            Ok(())
        },
        show: |s| format_duration(s.recover_retry),
    },
    Key {
        name: "timeline_keep",
        value_name: "COUNT",
        help: "Recovery timelines kept for gfs_control status (1-1000)",
        apply: |s, v| {
            s.timeline_keep = parse_count(v, 1, 1000)?;
            Ok(())
        },
        show: |s| s.timeline_keep.to_string(),
    },
    Key {
        name: "max_journals",
        value_name: "COUNT",
        help: "Journal ids are looked for below this number (1-256)",
        apply: |s, v| {
            let max = usize::try_from(gfs_core::MAX_JOURNALS).unwrap_or(usize::MAX);
            let count = parse_count(v, 1, max)?;
            s.max_journals = u32::try_from(count).map_err(|e| e.to_string())?;
            Ok(())
        },
        show: |s| s.max_journals.to_string(),
    },
    Key {
        name: "foreground",
        value_name: "0|1",
        help: "Stay in the foreground instead of daemonizing",
        apply: |s, v| {
            s.foreground = parse_bool(v)?;
            Ok(())
        },
        show: |s| show_bool(s.foreground),
    },
    Key {
        name: "pid_file",
        value_name: "PATH",
        help: "File holding the daemon's process id",
        apply: |s, v| {
            s.pid_file = parse_absolute_path(v)?;
            Ok(())
        },
        show: |s| s.pid_file.display().to_string(),
    },
    Key {
        name: "uevent_test_socket",
        value_name: "PATH",
        help: "Test kit only: also take uevents from local processes on this socket (empty: off)",
        apply: |s, v| {
            s.uevent_test_socket = if v.is_empty() {
                None
            } else {
                Some(parse_socket_path(v)?)
            };
            Ok(())
        },
        show: |s| {
            s.uevent_test_socket
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        },
    },
];

/// Settings for the test kit only: the example file and the packaging never mention them.
pub const TEST_ONLY_KEYS: &[&str] = &["uevent_test_socket"];

/// The setting called `name`, if there is one.
pub fn key(name: &str) -> Option<&'static Key> {
    KEYS.iter().find(|key| key.name == name)
}

/// A `key=value` line of a configuration file: key, value, line number (from 1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    pub value: String,
    pub line: usize,
}

impl Settings {
    /// The defaults with the file `text` (read from `path`, named in errors) applied.
    pub fn from_file_text(text: &str, path: &Path) -> Result<Settings, ConfigError> {
        let mut settings = Settings::default();
        settings.apply_file(text, path)?;
        Ok(settings)
    }

    /// Applies the file `text` (read from `path`) over these settings.
    pub fn apply_file(&mut self, text: &str, path: &Path) -> Result<(), ConfigError> {
        for entry in Self::parse_file(text, path)? {
            // parse_file only returns known keys.
            let Some(key) = key(&entry.key) else { continue };
            key.apply(self, &entry.value)
                .map_err(|expected| ConfigError::BadValue {
                    path: path.to_owned(),
                    line: entry.line,
                    key: entry.key.clone(),
                    value: clip(&entry.value),
                    expected,
                })?;
        }
        Ok(())
    }

    /// Splits a configuration file into its entries: `key=value` lines, `#` comment lines and
    /// blank lines, whitespace around keys and values ignored. Lines without `=`, unknown keys
    /// and keys given twice are errors; values are not checked here.
    pub fn parse_file(text: &str, path: &Path) -> Result<Vec<Entry>, ConfigError> {
        let mut entries: Vec<Entry> = Vec::new();
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let trimmed = raw.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let Some((name, value)) = trimmed.split_once('=') else {
                return Err(ConfigError::Syntax {
                    path: path.to_owned(),
                    line,
                    text: clip(trimmed),
                });
            };
            let name = name.trim();
            if name.is_empty() {
                return Err(ConfigError::Syntax {
                    path: path.to_owned(),
                    line,
                    text: clip(trimmed),
                });
            }
            if key(name).is_none() {
                return Err(ConfigError::UnknownKey {
                    path: path.to_owned(),
                    line,
                    key: clip(name),
                });
            }
            if let Some(first) = entries.iter().find(|entry| entry.key == name) {
                return Err(ConfigError::Duplicate {
                    path: path.to_owned(),
                    line,
                    key: name.to_owned(),
                    first_line: first.line,
                });
            }
            entries.push(Entry {
                key: name.to_owned(),
                value: value.trim().to_owned(),
                line,
            });
        }
        Ok(entries)
    }

    /// `key=value` lines, one per setting in [`KEYS`] order, for `--dump_config`; they read
    /// back as a configuration file giving the same settings.
    pub fn dump(&self) -> String {
        KEYS.iter().fold(String::new(), |mut text, key| {
            let _ = writeln!(text, "{}={}", key.name, key.show(self));
            text
        })
    }
}

/// Reads a configuration file: a regular file (a FIFO would block, `/dev/zero` never end) of at
/// most [`MAX_CONFIG_BYTES`], in UTF-8 (the error names the first bad line).
pub fn read_config_file(path: &Path) -> Result<String, ConfigError> {
    use std::io::Read as _;
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let io = |source| ConfigError::Io {
        path: path.to_owned(),
        source,
    };
    // Non-blocking: opening a FIFO for reading would otherwise wait for a writer.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(io)?;
    let kind = file.metadata().map_err(io)?.file_type();
    let what = if kind.is_file() {
        None
    } else if kind.is_dir() {
        Some("a directory")
    } else if kind.is_fifo() {
        Some("a FIFO")
    } else if kind.is_char_device() || kind.is_block_device() {
        Some("a device")
    } else if kind.is_socket() {
        Some("a socket")
    } else {
        Some("not a file")
    };
    if let Some(kind) = what {
        return Err(ConfigError::NotAFile {
            path: path.to_owned(),
            kind,
        });
    }
    let mut bytes = Vec::new();
    file.take(MAX_CONFIG_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(ConfigError::TooLarge {
            path: path.to_owned(),
        });
    }
    String::from_utf8(bytes).map_err(|e| {
        let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        ConfigError::NotUtf8 {
            path: path.to_owned(),
            line: valid.iter().filter(|b| **b == b'\n').count() + 1,
        }
    })
}

/// `text` cut to [`MAX_QUOTED_CHARS`] characters for an error message: a 100 MB value must
/// not become a 100 MB log line.
pub fn clip(text: &str) -> String {
    match text.char_indices().nth(MAX_QUOTED_CHARS) {
        None => text.to_owned(),
        Some((cut, _)) => format!("{}… ({} bytes)", &text[..cut], text.len()),
    }
}

/// Booleans: 0|1, also yes|no, true|false, on|off (any case).
pub fn parse_bool(value: &str) -> Result<bool, String> {
    match value.trim().to_ascii_lowercase().as_str() {
        "1" | "yes" | "true" | "on" => Ok(true),
        "0" | "no" | "false" | "off" => Ok(false),
        _ => Err("0 or 1".to_owned()),
    }
}

fn show_bool(flag: bool) -> String {
    if flag { "1" } else { "0" }.to_owned()
}

fn parse_count(value: &str, min: usize, max: usize) -> Result<usize, String> {
    let expected = || format!("an integer from {min} to {max}");
    let count: usize = value.trim().parse().map_err(|_| expected())?;
    if (min..=max).contains(&count) {
        Ok(count)
    } else {
        Err(expected())
    }
}

fn parse_absolute_path(value: &str) -> Result<PathBuf, String> {
    let value = value.trim();
    if value.starts_with('/') && !value.contains('\0') {
        Ok(PathBuf::from(value))
    } else {
        Err("an absolute path".to_owned())
    }
}

/// The longest path a unix socket address holds (`sun_path` is 108 bytes with its NUL).
pub const MAX_SOCKET_PATH: usize = 107;

/// An absolute path short enough to bind a unix socket to.
fn parse_socket_path(value: &str) -> Result<PathBuf, String> {
    let path = parse_absolute_path(value)?;
    if path.as_os_str().len() > MAX_SOCKET_PATH {
        return Err(format!(
            "an absolute path of at most {MAX_SOCKET_PATH} bytes (a unix socket's limit), not {}",
            path.as_os_str().len()
        ));
    }
    Ok(path)
}

/// A duration: whole seconds (`30`), or a whole number with a unit `ms`, `s` or `m` (`500ms`,
/// `30s`, `5m`); at most [`MAX_DURATION`].
pub fn parse_duration(value: &str) -> Result<Duration, String> {
    parse_duration_in(value, Duration::ZERO)
}

fn parse_duration_in(value: &str, min: Duration) -> Result<Duration, String> {
    let expected = || {
        format!(
            "a duration from {} to {}: seconds, or a number with unit ms, s or m",
            format_duration(min),
            format_duration(MAX_DURATION)
        )
    };
    let value = value.trim();
    let digits = value
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(value.len());
    let (number, unit) = value.split_at(digits);
    if number.is_empty() {
        return Err(expected());
    }
    let number: u64 = number.parse().map_err(|_| expected())?;
    let millis_per_unit = match unit {
        "" | "s" => 1000,
        "ms" => 1,
        "m" => 60_000,
        _ => return Err(expected()),
    };
    let millis = number.checked_mul(millis_per_unit).ok_or_else(expected)?;
    let duration = Duration::from_millis(millis);
    if duration < min || duration > MAX_DURATION {
        return Err(expected());
    }
    Ok(duration)
}

/// The shortest exact spelling [`parse_duration`] reads back: `300s`, `500ms`, `1500ms`.
pub fn format_duration(duration: Duration) -> String {
    let millis = duration.as_millis();
    if millis % 1000 == 0 {
        format!("{}s", millis / 1000)
    } else {
        format!("{millis}ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration(" 30s "), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        for bad in [
            "",
            "s",
            "-1",
            "1.5s",
            "5 s",
            "5h",
            "86401",
            "99999999999999999999",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
        for d in [0, 1, 999, 1000, 1500, 300_000] {
            let d = Duration::from_millis(d);
            assert_eq!(parse_duration(&format_duration(d)), Ok(d));
        }
    }

    #[test]
    fn every_default_reads_back() {
        let defaults = Settings::default();
        for key in KEYS {
            let mut settings = Settings::default();
            key.apply(&mut settings, &key.default_value())
                .unwrap_or_else(|e| panic!("{}: {e}", key.name));
            assert_eq!(settings, defaults, "{}", key.name);
        }
    }

    #[test]
    fn key_names_are_unique() {
        for (i, key) in KEYS.iter().enumerate() {
            assert!(KEYS[..i].iter().all(|other| other.name != key.name));
        }
    }
}
