//! `gfs_vm_demo`: the README's `make vm-demo`. Boots three QEMU VMs with Debian's kernel
//! (real gfs2 and dlm), corosync, dlm_controld and gfs_controld on one shared disk, mounts
//! GFS2 everywhere, writes, kills one VM while it fsyncs, and prints the recovery as the real
//! kernel logged it (blocks replayed, replay time), the daemon's `gfs_control status`, and
//! `fsck.gfs2 -n`. Needs root; installs the VM packages with apt when they are missing.
//! Tears everything down at the end; the logs stay in the run's artifact directory.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use gfs_testkit::now_ms;
use gfs_testkit::vm::evidence::Recovery;
use gfs_testkit::vm::{host, VmCluster, VmOptions, TOKEN_MS};

const VICTIM: u32 = 3;
const SURVIVORS: [u32; 2] = [1, 2];

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
    let opts = VmOptions::default();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("needs root (network namespaces, taps, qemu)");
    }
    host::install_packages().context("installing the VM packages")?;
    if let Some(why) = host::missing_prerequisite(&opts.bin_dir) {
        bail!("cannot boot the VM cluster here: {why}");
    }
    let started = Instant::now();
    println!(
        "gfs_controld on a real kernel: 3 QEMU VMs (TCG), Debian's gfs2 and dlm, one shared disk\n"
    );
    let mut c = VmCluster::start(opts)?;
    println!(
        "3 VMs booted in {:.1}s (kernel {}, {} MiB each); corosync (token {TOKEN_MS} ms) quorate,\n\
         dlm_controld --enable_fscontrol 1 and gfs_controld synced on every node {:.1}s after the first qemu started\n",
        c.boot_secs, c.kver, c.opts.mem_mb, c.up_secs
    );
    let since = now_ms();
    println!("mount -t gfs2 /dev/vda /mnt/gfs on nodes 1, 2, 3");
    c.mount_all()?;
    for id in 1..=3 {
        let first = c
            .uevent_lines(id, since)
            .iter()
            .any(|l| l.text.contains("FIRSTMOUNT=Done"));
        let fallback = c
            .kernel_lines(id, since)
            .iter()
            .any(|l| l.text.contains("dlm lockspace ops not used"));
        println!(
            "  node {id}: jid {}{}{}",
            c.lock_module(id, "jid")?,
            if fallback {
                " (kernel: \"dlm lockspace ops not used\": recovery by gfs_controld)"
            } else {
                ""
            },
            if first {
                ", first mounter: checked every journal, then FIRSTMOUNT=Done"
            } else {
                ""
            }
        );
    }
    let victim_jid: u32 = c.lock_module(VICTIM, "jid")?.parse()?;
    let mut sums = Vec::new();
    for id in 1..=3 {
        sums.push((
            id,
            c.write_synced_files(id, &format!("demo/files{id}"), 20)?,
        ));
    }
    println!("\neach node wrote 20 synced files; node {VICTIM} now appends, rewrites and fsyncs in a loop");
    for id in SURVIVORS {
        c.start_blockpoll(id)?;
    }
    c.start_writer(VICTIM, "demo/live", "demo")?;
    std::thread::sleep(Duration::from_secs(6));
    for id in c.alive_nodes() {
        c.measure_clock(id)?;
    }
    let kill_ms = c.kill_vm(VICTIM)?;
    let durable = c.writer_durable(VICTIM, "demo");
    println!(
        "kill -9 node {VICTIM}'s qemu (jid {victim_jid}); its writer had fsync'ed {durable} rounds\n"
    );
    c.wait_until("recovery", Duration::from_secs(150), || {
        SURVIVORS.iter().any(|&id| {
            c.uevent_lines(id, kill_ms)
                .iter()
                .any(|l| l.text.contains(&format!("JID={victim_jid} RECOVERY=Done")))
        }) && SURVIVORS
            .iter()
            .all(|&id| c.lock_module(id, "block").is_ok_and(|b| b == "0"))
    })
    .with_context(|| c.artifacts_note())?;
    std::thread::sleep(Duration::from_millis(500));
    let r = Recovery::collect(&c, "demo", &[VICTIM], &[victim_jid], &SURVIVORS, kill_ms);
    println!("recovery timeline (from the kill; kernel lines from the survivors' kernels):");
    print!("{}", r.render_timeline());
    let secs = |t: Option<u64>| t.map_or(f64::NAN, |t| (t - kill_ms) as f64 / 1000.0);
    println!(
        "\nsummary: corosync noticed after {:.1}s; blocked {:.1}s; node {VICTIM} fenced {:.1}s; replay on node {} \
         {:.1}s-{:.1}s{}; unblocked {:.1}s after the kill",
        secs(r.membership_ms),
        secs(r.block_ms),
        secs(r.fenced_ms),
        r.replayers
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(","),
        secs(r.replay_start_ms),
        secs(r.replay_end_ms),
        r.blocks
            .map_or(String::new(), |(d, t)| format!(" ({d} of {t} blocks)")),
        secs(r.unblock_ms)
    );
    println!("\n$ gfs_control status   (on node 1)");
    print!("{}", c.control_text(1, "status")?);
    println!("\nthe data, read back on the survivors:");
    for id in SURVIVORS {
        let note = c.check_writer_data(id, "demo/live", durable)?;
        for (owner, sum) in &sums {
            ensure!(
                &c.read_synced_files(id, &format!("demo/files{owner}"))? == sum,
                "node {id}: node {owner}'s synced files changed"
            );
        }
        println!("  node {id}: every node's synced files intact; node {VICTIM}'s {note}");
    }
    for id in SURVIVORS {
        c.umount(id)?;
    }
    let (rc, out) = c.fsck(1)?;
    println!("\n$ fsck.gfs2 -n /dev/vda   (after unmounting everywhere): exit status {rc}");
    for l in out
        .lines()
        .filter(|l| !l.starts_with("Starting pass") && !l.contains("completed in"))
    {
        println!("  {l}");
    }
    ensure!(rc == 0, "fsck.gfs2 -n found problems");
    println!(
        "\ndone in {:.0}s; {}",
        started.elapsed().as_secs_f64(),
        c.artifacts_note()
    );
    Ok(())
}
