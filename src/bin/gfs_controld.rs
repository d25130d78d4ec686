//! `gfs_controld`: the daemon. Parsing, settings and the loop live in the library; this only
//! wires them together and turns errors into an exit status.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use gfs_controld::args::{self, DaemonArgs, Startup};
use gfs_controld::config::Settings;
use gfs_controld::{daemon, logging, process, startup};

fn main() -> ExitCode {
    let args = DaemonArgs::parse();
    let settings = match args::startup(&args, &mut std::io::stdout(), &mut std::io::stderr()) {
        Startup::Run(settings) => *settings,
        Startup::Exit(code) => return ExitCode::from(code),
    };
    match run(settings) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // stderr is the log under systemd and pacemaker alike.
            eprintln!("gfs_controld: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(settings: Settings) -> anyhow::Result<()> {
    let ring = logging::init(settings.log_level.as_str(), settings.debug_ring_lines)?;
    startup::check(&settings)?;
    process::ignore_stray_signals().context("cannot install signal handlers")?;
    let readiness = if settings.foreground {
        process::Readiness::foreground()
    } else {
        // Before the runtime and its threads exist. The parent exits when we are ready.
        process::daemonize().context("cannot daemonize")?
    };
    let _pid_file = startup::PidFile::acquire(&settings.pid_file)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(daemon::run(settings, ring, readiness))?;
    Ok(())
}
