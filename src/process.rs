//! The process around the daemon loop: daemonizing with a readiness pipe, and signals that
//! must not end the daemon.

use std::fs::File;
use std::io::Write as _;
use std::os::fd::AsRawFd;

/// Detaches from the terminal for init systems that expect it (pacemaker's stock `controld`
/// agent runs the daemon and waits for it to return). Must run before any thread exists.
/// stderr stays open so that logs still reach whoever started us.
///
/// The parent does not return: it waits until the child reports readiness through a pipe
/// ([`Readiness::ready`]) and exits 0, or exits 1 when the child fails or dies first, so that
/// startup failures (a second daemon, an unusable socket) reach whoever started us.
pub fn daemonize() -> std::io::Result<Readiness> {
    let (read_end, write_end) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    // SAFETY: no other thread exists yet (documented precondition), so the child may run
    // arbitrary code after fork.
    match unsafe { nix::unistd::fork() }? {
        nix::unistd::ForkResult::Parent { .. } => {
            drop(write_end);
            let mut answer = Vec::new();
            let _ = std::io::Read::read_to_end(&mut File::from(read_end), &mut answer);
            if answer == READY {
                std::process::exit(0);
            }
            // The child has printed its error on the stderr we share.
            eprintln!("gfs_controld: the daemon failed to start");
            std::process::exit(1);
        }
        nix::unistd::ForkResult::Child => {
            drop(read_end);
            nix::unistd::setsid()?;
            std::env::set_current_dir("/")?;
            let null = File::options().read(true).write(true).open("/dev/null")?;
            // SAFETY: dup2 onto stdin/stdout; both fds are valid.
            unsafe {
                libc::dup2(null.as_raw_fd(), 0);
                libc::dup2(null.as_raw_fd(), 1);
            }
            Ok(Readiness(Some(File::from(write_end))))
        }
    }
}

const READY: &[u8] = b"ready";

/// Signals whose default action terminates the process and that nothing should use to stop
/// the daemon: dying without a clean leave gets the node fenced (SIGTERM and SIGINT are the
/// way to stop it, and are refused while filesystems are mounted). SIGHUP, SIGUSR1 and SIGUSR2
/// are logged by the loop once it runs; until then, and the others always, are swallowed.
const STRAY_SIGNALS: &[libc::c_int] = &[
    libc::SIGHUP,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGALRM,
    libc::SIGPIPE,
    libc::SIGVTALRM,
    libc::SIGPROF,
    libc::SIGIO,
    libc::SIGPWR,
    libc::SIGSTKFLT,
];

extern "C" fn swallow_signal(_: libc::c_int) {}

/// Installs a no-op handler for [`STRAY_SIGNALS`] and the real-time signals, so none of them
/// kills the daemon, from before daemonizing until the loop's own handlers take over. A
/// handler rather than SIG_IGN: handlers are reset at exec, so fence programs start with the
/// default dispositions.
pub fn ignore_stray_signals() -> std::io::Result<()> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let action = SigAction::new(
        SigHandler::Handler(swallow_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    let realtime = libc::SIGRTMIN()..=libc::SIGRTMAX();
    for signo in STRAY_SIGNALS.iter().copied().chain(realtime) {
        // SAFETY: the handler does nothing, which is async-signal-safe.
        let result = match Signal::try_from(signo) {
            Ok(signal) => unsafe { sigaction(signal, &action) }.map(|_| ()),
            // Real-time signals have no `Signal` value: libc directly.
            Err(_) => {
                // SAFETY: a zeroed sigaction with a valid handler and empty mask.
                let mut raw: libc::sigaction = unsafe { std::mem::zeroed() };
                raw.sa_sigaction = swallow_signal as *const () as usize;
                raw.sa_flags = libc::SA_RESTART;
                // SAFETY: `raw` is a valid sigaction; the old one is not wanted.
                let rc = unsafe { libc::sigaction(signo, &raw, std::ptr::null_mut()) };
                nix::errno::Errno::result(rc).map(|_| ())
            }
        };
        result?;
    }
    Ok(())
}

/// Tells the parent of a daemonized process that startup succeeded; a no-op in the foreground.
#[derive(Debug, Default)]
pub struct Readiness(Option<File>);

impl Readiness {
    /// In the foreground: nobody waits.
    pub fn foreground() -> Readiness {
        Readiness(None)
    }

    pub fn ready(&mut self) {
        if let Some(mut pipe) = self.0.take() {
            let _ = pipe.write_all(READY);
        }
    }
}
