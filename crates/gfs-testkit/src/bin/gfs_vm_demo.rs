//! `gfs_vm_demo`: the README's `make vm-demo`.

use std::process::ExitCode;

use anyhow::Result;
use gfs_testkit::vm::{VmCluster, VmOptions};

fn main() -> ExitCode {
    match demo() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gfs_vm_demo: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn demo() -> Result<()> {
    let c = VmCluster::start(VmOptions::default())?;
    println!("booted in {:.1}s, up in {:.1}s", c.boot_secs, c.up_secs);
    println!("{}", c.control_text(1, "status")?);
    println!("{}", c.artifacts_note());
    Ok(())
}
