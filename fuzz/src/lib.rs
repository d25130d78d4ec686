//! What the fuzz targets share: a heap meter (a decoder must not allocate out of proportion to
//! its input), per-input time and memory limits, execution counts printed when a run ends, and
//! the seed inputs (`seeds`), built from the project's own encoders so that they follow the
//! formats as they change.

pub mod seeds;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::Instant;

/// The system allocator, counting the bytes live so that [`check`] can see one input's peak.
pub struct CountingAlloc;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(by: usize) {
    let now = LIVE.fetch_add(by, Relaxed) + by;
    PEAK.fetch_max(now, Relaxed);
}

// SAFETY: every call is forwarded to `System` unchanged; only counters are added.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        unsafe { System.dealloc(p, layout) };
        LIVE.fetch_sub(layout.size(), Relaxed);
    }

    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let q = unsafe { System.realloc(p, layout, new_size) };
        if !q.is_null() {
            if new_size >= layout.size() {
                grew(new_size - layout.size());
            } else {
                LIVE.fetch_sub(layout.size() - new_size, Relaxed);
            }
        }
        q
    }
}

static EXECS: AtomicU64 = AtomicU64::new(0);
static ACCEPTED: AtomicU64 = AtomicU64::new(0);
static WORST_PEAK: AtomicUsize = AtomicUsize::new(0);
static SLOWEST_NS: AtomicU64 = AtomicU64::new(0);
static NAME: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();

/// Runs the property check `f` on one input of `len` bytes. `f` returns whether the decoder
/// accepted the input. Panics (a finding, saved by libFuzzer) when one input costs more heap
/// than 64 MiB or 1,000 times its size. (Hangs are libFuzzer's `-timeout`: a wall-clock bound
/// here would fire on a loaded machine.)
pub fn check(name: &'static str, len: usize, f: impl FnOnce() -> bool) {
    NAME.get_or_init(|| name);
    let base = LIVE.load(Relaxed);
    PEAK.store(base, Relaxed);
    let started = Instant::now();
    let accepted = f();
    let ns = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
    let peak = PEAK.load(Relaxed).saturating_sub(base);
    assert!(
        peak <= 64 << 20 && peak <= 1000 * (len + 1024),
        "{name}: {peak} bytes of heap for a {len}-byte input"
    );
    EXECS.fetch_add(1, Relaxed);
    if accepted {
        ACCEPTED.fetch_add(1, Relaxed);
    }
    WORST_PEAK.fetch_max(peak, Relaxed);
    SLOWEST_NS.fetch_max(ns, Relaxed);
}

extern "C" fn print_stats() {
    // One line per run for run.sh to collect: what libFuzzer's own count does not say is how
    // many inputs got past the decoder, which is what the round-trip checks ran on.
    eprintln!(
        "FUZZSTATS target={} execs={} accepted={} worst_heap_peak={}B slowest={}us",
        NAME.get().copied().unwrap_or("?"),
        EXECS.load(Relaxed),
        ACCEPTED.load(Relaxed),
        WORST_PEAK.load(Relaxed),
        SLOWEST_NS.load(Relaxed) / 1000
    );
}

extern "C" {
    fn atexit(f: extern "C" fn()) -> i32;
}

/// Call from each target's `init:` block. Prints the counts when libFuzzer exits at the end of
/// its run (it leaves through `exit`, so an atexit handler sees it). With `FUZZ_WRITE_SEEDS=DIR`
/// in the environment, writes the target's seed inputs into `DIR` (and `extra` files, such as a
/// dictionary, next to it) and exits instead: the seeds come from the project's encoders, so a
/// target binary is the one thing built with libFuzzer that can run them.
pub fn init_target(seeds: fn() -> Vec<seeds::Seed>, extra: &[(&str, String)]) {
    if let Some(dir) = std::env::var_os("FUZZ_WRITE_SEEDS") {
        let dir = std::path::PathBuf::from(dir);
        let written = std::fs::create_dir_all(&dir).and_then(|()| {
            for (name, bytes) in seeds() {
                std::fs::write(dir.join(name), bytes)?;
            }
            for (name, text) in extra {
                let beside = dir.parent().unwrap_or(std::path::Path::new("."));
                std::fs::write(beside.join(name), text)?;
            }
            Ok(())
        });
        if let Err(e) = written {
            eprintln!("cannot write seeds to {}: {e}", dir.display());
            std::process::exit(1);
        }
        std::process::exit(0);
    }
    // SAFETY: registering a plain `extern "C" fn` with no captured state.
    unsafe {
        atexit(print_stats);
    }
}
