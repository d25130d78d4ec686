//! `gfs_vm_agent`: the guest side of the VM tier (see `gfs_testkit::vm::agent`).
//!
//! * `gfs_vm_agent init`: PID 1 of a test VM (started by the initramfs).
//! * `gfs_vm_agent fence NODEID [NAME]`: gfs_controld's fence program in a test VM.

use std::path::PathBuf;
use std::process::ExitCode;

use gfs_testkit::vm::agent;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("init") => {
            let me = std::env::current_exe().unwrap_or_else(|_| PathBuf::from(&args[0]));
            agent::init(&me)
        }
        Some("fence") => ExitCode::from(agent::fence(&args[2..]) as u8),
        _ => {
            eprintln!("usage: gfs_vm_agent init | gfs_vm_agent fence NODEID [NAME]");
            ExitCode::from(2)
        }
    }
}
