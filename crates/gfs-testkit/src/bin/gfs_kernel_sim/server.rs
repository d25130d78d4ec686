//! `gfs_kernel_sim serve`: the FUSE tree, the client socket and its requests, and the shutdown
//! on SIGTERM/SIGINT.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use gfs_sim::kernel_model::Refusal;
use gfs_testkit::proto::{Request, Response};
use gfs_testkit::uevent::UeventSender;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::disk::SharedDisk;
use crate::model::{lock, Config, Shared, Sim};
use crate::mount::{self, MountArgs};

/// What `serve` was told on its command line.
pub struct ServeOptions {
    pub root: PathBuf,
    pub socket: PathBuf,
    pub replay_ms: u64,
    pub join_ms: u64,
    pub shared: Option<PathBuf>,
    pub configfs_root: Option<PathBuf>,
    pub recover_callbacks: u32,
    pub uevent_socket: Option<PathBuf>,
    pub record: Option<PathBuf>,
}

/// A FUSE mount whose server died answers ENOTCONN: detach it so a new one can take its place.
fn detach_dead_mount(root: &Path) {
    if let Err(e) = std::fs::metadata(root) {
        if e.raw_os_error() == Some(libc::ENOTCONN) {
            let _ = nix::mount::umount2(root, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

pub async fn serve(o: ServeOptions) -> anyhow::Result<()> {
    detach_dead_mount(&o.root);
    std::fs::create_dir_all(&o.root).with_context(|| format!("create {}", o.root.display()))?;
    let private_disk = o.shared.is_none();
    let disk_dir = o.shared.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("gfs-kernel-sim-disk-{}", std::process::id()))
    });
    let disk = SharedDisk::new(&disk_dir)
        .with_context(|| format!("shared disk {}", disk_dir.display()))?;
    let sender = match &o.uevent_socket {
        Some(path) => UeventSender::to_test_socket(path).context("uevent test socket sender")?,
        None => UeventSender::new().context("NETLINK_KOBJECT_UEVENT sender socket")?,
    };
    let sim: Shared = Sim::new(Config {
        replay_ms: o.replay_ms,
        join_ms: o.join_ms,
        recover_callbacks: o.recover_callbacks,
        configfs_file: o
            .configfs_root
            .as_ref()
            .map(|r| r.join("dlm/cluster/recover_callbacks")),
        disk,
        sender,
        handle: tokio::runtime::Handle::current(),
    });
    let session = fuser::spawn_mount2(
        crate::fuse::KernelFs::new(sim.clone()),
        &o.root,
        &[
            fuser::MountOption::FSName("gfs2_kernel_sim".into()),
            fuser::MountOption::AllowOther,
            fuser::MountOption::NoExec,
        ],
    )
    .with_context(|| {
        format!(
            "FUSE mount on {} (needs root and /dev/fuse)",
            o.root.display()
        )
    })?;
    let _ = std::fs::remove_file(&o.socket);
    let listener =
        UnixListener::bind(&o.socket).with_context(|| format!("bind {}", o.socket.display()))?;
    if let Some(path) = &o.record {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("record file {}", path.display()))?;
        lock(&sim).record = Some(file);
    }
    {
        let mut s = lock(&sim);
        let what = format!(
            "serving {} on {}; shared disk {}; recover_callbacks={}",
            o.root.display(),
            o.socket.display(),
            s.disk.dir().display(),
            s.recover_callbacks()
        );
        s.note("", what);
    }

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    tokio::spawn(handle_client(sim.clone(), stream));
                }
                Err(e) => eprintln!("gfs_kernel_sim: accept: {e}"),
            },
        }
    }
    {
        let mut s = lock(&sim);
        s.note("", "shutting down");
        s.shutdown();
        s.remove_configfs_file();
    }
    // Detach first: other mount namespaces (the daemon's) may still hold copies of the mount.
    let _ = nix::mount::umount2(&o.root, nix::mount::MntFlags::MNT_DETACH);
    drop(session);
    let _ = std::fs::remove_file(&o.socket);
    if private_disk {
        let _ = std::fs::remove_dir_all(&disk_dir);
    }
    Ok(())
}

async fn handle_client(sim: Shared, stream: UnixStream) {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let resp = match BufReader::new(read).read_line(&mut line).await {
        Ok(0) => return,
        Ok(_) => match serde_json::from_str::<Request>(&line) {
            Ok(req) => handle(&sim, req).await,
            Err(e) => Response::err(libc::EINVAL, format!("bad request: {e}")),
        },
        Err(e) => Response::err(libc::EIO, format!("reading request: {e}")),
    };
    let mut out = serde_json::to_string(&resp).unwrap_or_else(|_| "{\"ok\":false}".into());
    out.push('\n');
    let _ = write.write_all(out.as_bytes()).await;
}

async fn handle(sim: &Shared, req: Request) -> Response {
    let refused = |table: &str, r: Refusal| Response::err(r.errno, format!("{table}: {}", r.why));
    match req {
        Request::Mount {
            table,
            spectator,
            ro,
            timeout_ms,
            journals,
            join_ms,
            hostdata_first0,
        } => {
            mount::mount(
                sim,
                MountArgs {
                    table,
                    spectator,
                    ro,
                    timeout_ms,
                    journals,
                    join_ms,
                    hostdata_first0,
                },
            )
            .await
        }
        Request::Umount { table } => mount::umount(sim, &table).await,
        Request::Withdraw { table } => {
            let mut s = lock(sim);
            if !s.tables.contains_key(&table) {
                return Response::err(libc::EINVAL, format!("{table} is not mounted"));
            }
            match s.withdraw(&table) {
                Ok(()) => Response::ok(format!("{table} withdrawn")),
                Err(e) => refused(&table, e),
            }
        }
        Request::Remount { table, ro } => match lock(sim).remount(&table, ro) {
            Ok(()) => Response::ok(format!("{table} remounted")),
            Err(e) => refused(&table, e),
        },
        Request::Set {
            replay_ms,
            fail_next_replays,
            join_ms,
            recover_callbacks,
        } => {
            let mut s = lock(sim);
            if let Some(ms) = replay_ms {
                s.replay_ms = ms;
            }
            if let Some(k) = fail_next_replays {
                s.fail_next_replays = k;
            }
            if let Some(ms) = join_ms {
                s.join_ms = ms;
            }
            if let Some(v) = recover_callbacks {
                s.set_recover_callbacks(v);
            }
            let what = format!(
                "set replay_ms={} fail_next_replays={} join_ms={} recover_callbacks={}",
                s.replay_ms,
                s.fail_next_replays,
                s.join_ms,
                s.recover_callbacks()
            );
            s.note("", what.clone());
            Response::ok(what)
        }
        Request::Status => {
            let s = lock(sim);
            let mut r = Response::ok("");
            r.status = Some(s.status());
            r
        }
    }
}
