//! The `gfs_controld` command line, in dlm_controld's style: `--snake_case` long options, each
//! also a key of the configuration file. Settings given here win over the file.
//!
//! The setting options are built from [`config::KEYS`] and read through each key's own parser,
//! so the command line accepts exactly what the file does; only the options that are not
//! settings (`-f -D -g -c --dump_config --completions`) are declared here.

use std::io::{self, Write};
use std::path::PathBuf;

use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser};

use crate::config::{self, ConfigError, Key, LogLevel, Settings, DEFAULT_CONFIG_PATH, KEYS};

/// Exit status: success (also after `--dump_config` and `--completions`).
pub const EXIT_OK: u8 = 0;
/// Exit status: the configuration could not be loaded, or the daemon failed.
pub const EXIT_FAILURE: u8 = 1;
/// Exit status: bad command line (clap's own exit code).
pub const EXIT_USAGE: u8 = 2;

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

    #[command(flatten)]
    pub settings: SettingArgs,
}

/// The settings given on the command line, in [`KEYS`] order, each value already accepted by
/// its key's parser.
#[derive(Clone, Debug, Default)]
pub struct SettingArgs {
    pub given: Vec<(&'static Key, String)>,
}

impl SettingArgs {
    /// Whether `name` was given.
    pub fn has(&self, name: &str) -> bool {
        self.given.iter().any(|(key, _)| key.name == name)
    }
}

/// `foreground` is a flag on the command line (`-f`), as for dlm_controld, not `--foreground=1`.
fn is_option(key: &Key) -> bool {
    key.name != "foreground"
}

fn setting_arg(key: &'static Key) -> clap::Arg {
    // Shells complete file names for paths.
    let hint = if key.value_name == "PATH" {
        clap::ValueHint::AnyPath
    } else {
        clap::ValueHint::Unknown
    };
    clap::Arg::new(key.name)
        .value_hint(hint)
        .long(key.name)
        .value_name(key.value_name)
        .help(key.help_with_default())
        .num_args(1)
        .value_parser(move |value: &str| {
            key.apply(&mut Settings::default(), value)
                .map(|()| value.to_owned())
                .map_err(|expected| format!("expected {expected}"))
        })
}

impl Args for SettingArgs {
    fn augment_args(command: clap::Command) -> clap::Command {
        KEYS.iter()
            .filter(|key| is_option(key))
            .fold(command, |command, key| command.arg(setting_arg(key)))
    }

    fn augment_args_for_update(command: clap::Command) -> clap::Command {
        Self::augment_args(command)
    }
}

impl FromArgMatches for SettingArgs {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        let given = KEYS
            .iter()
            .filter(|key| is_option(key))
            .filter_map(|key| {
                let value = matches.get_one::<String>(key.name)?;
                Some((key, value.clone()))
            })
            .collect();
        Ok(SettingArgs { given })
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(matches)?;
        Ok(())
    }
}

impl DaemonArgs {
    /// Reads the configuration file (named by `-c`, or [`DEFAULT_CONFIG_PATH`], which may be
    /// missing), applies it over the defaults, then the command line on top.
    pub fn load(&self) -> Result<Settings, ConfigError> {
        let mut settings = Settings::default();
        let (path, explicit) = self.config_path();
        match config::read_config_file(&path) {
            Ok(text) => settings.apply_file(&text, &path)?,
            Err(ConfigError::Io { source, .. })
                if !explicit && source.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        self.apply(&mut settings)?;
        Ok(settings)
    }

    /// Puts the settings given on the command line over `settings`.
    pub fn apply(&self, settings: &mut Settings) -> Result<(), ConfigError> {
        for (key, value) in &self.settings.given {
            // Checked by the same parser when the command line was parsed.
            key.apply(settings, value)
                .map_err(|expected| ConfigError::BadOption {
                    key: key.name,
                    value: config::clip(value),
                    expected,
                })?;
        }
        if self.foreground || self.daemon_debug {
            settings.foreground = true;
        }
        // At least debug; an explicit --log_level wins.
        if self.daemon_debug && !self.settings.has("log_level") {
            settings.log_level = settings.log_level.max(LogLevel::Debug);
        }
        Ok(())
    }

    /// The configuration file to read, and whether it was named explicitly.
    pub fn config_path(&self) -> (PathBuf, bool) {
        match &self.config {
            Some(path) => (path.clone(), true),
            None => (PathBuf::from(DEFAULT_CONFIG_PATH), false),
        }
    }
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
    let settings = match args.load() {
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
