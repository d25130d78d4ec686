//! `gfs_dlm_sim`: a test double of dlm_controld's fs-control socket (`gfs_testkit::dlm_sim`).
//!
//! gfs_dlm_sim [--socket @dlmc_sock] [--no-fscontrol] [--eagain K] [--log PATH]
//!
//! Serves until killed. `--socket` is `@name` (abstract, in this network namespace) or a path;
//! `--log` appends one JSON line per request received (`DlmRecord`).

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use gfs_testkit::dlm_sim::{self, DlmSimOptions};

#[derive(Parser)]
#[command(
    name = "gfs_dlm_sim",
    about = "Test double of dlm_controld's fs-control socket"
)]
struct Cli {
    /// `@name` for an abstract socket, or a socket path.
    #[arg(long, default_value = "@dlmc_sock")]
    socket: String,
    /// Answer FS_REGISTER with -EOPNOTSUPP, as dlm_controld without enable_fscontrol=1.
    #[arg(long)]
    no_fscontrol: bool,
    /// Answer the first K FS_NOTIFIED of each (lockspace, node) with -EAGAIN.
    #[arg(long, default_value_t = 0)]
    eagain: u32,
    /// Append every request as a JSON line to this file.
    #[arg(long)]
    log: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let options = DlmSimOptions {
        fscontrol: !cli.no_fscontrol,
        eagain: cli.eagain,
        log: cli.log,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime
        .block_on(dlm_sim::run(&cli.socket, options))
        .with_context(|| format!("serving {}", cli.socket))
}
