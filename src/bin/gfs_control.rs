//! `gfs_control`: the operator CLI of gfs_controld. Everything lives in
//! `gfs_controld::control::cli`; this only parses the command line and runs it.

use clap::Parser;

use gfs_controld::control::cli::{run, ControlArgs};

fn main() -> std::process::ExitCode {
    run(ControlArgs::parse())
}
