//! `gfs_controld`: the daemon. Parsing, settings and the loop live in the library; this only
//! wires them together and turns errors into an exit status.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::{CommandFactory, Parser};
use gfs_controld::cli::DaemonArgs;
use gfs_controld::config::Settings;
use gfs_controld::{daemon, logging};

fn main() -> ExitCode {
    match run(DaemonArgs::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("gfs_controld: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: DaemonArgs) -> anyhow::Result<()> {
    if let Some(shell) = args.completions {
        clap_complete::generate(
            shell,
            &mut DaemonArgs::command(),
            "gfs_controld",
            &mut std::io::stdout(),
        );
        return Ok(());
    }
    let settings = Settings::load(&args)?;
    if args.dump_config {
        print!("{}", settings.dump());
        return Ok(());
    }
    let ring = logging::init(&settings.log_level, settings.debug_ring_lines)?;
    daemon::check_existing_mounts(&settings)?;
    if !settings.foreground {
        // Before the runtime and its threads exist.
        daemon::daemonize().context("cannot daemonize")?;
    }
    let _pid_file = daemon::PidFile::acquire(&settings.pid_file)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(daemon::run(settings, ring))?;
    Ok(())
}
