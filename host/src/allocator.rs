//! The process's allocator, mimalloc, and what the daemon asks of it beyond
//! allocating and freeing.
//!
//! mimalloc, not glibc's malloc: every delivery allocates and frees many
//! small buffers on whichever worker thread runs it, and glibc's arenas
//! spent about a sixth of the daemon's CPU doing so (`perf record` of the
//! daemon under `NOTIFYHUB_E2E_SCALE=10 cargo bench --bench e2e`).
//!
//! It is declared here, in the library, rather than in the binary, so that
//! [`release_free_memory`] speaks to the allocator actually in use: tests and
//! benchmarks that link the library run on it too.

use std::sync::atomic::{AtomicUsize, Ordering};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Returns the calling thread's free memory to the system; while memory is
/// kept for work to come ([`KeepFreedMemory`]), hands it to the allocator's
/// shared arenas instead, still committed, where the next allocation on any
/// thread takes it.
///
/// mimalloc returns a thread's freed pages lazily, when that thread next
/// allocates or frees. A thread that goes idle after heavy work keeps them
/// until then: after compiling four Python and JavaScript plugins, the
/// compiler's threads held about 100 MB that way. Call this on a thread
/// about to idle for long; it is too slow for a hot path.
pub(crate) fn release_free_memory() {
    let force = KEEPERS.load(Ordering::Acquire) == 0;
    // SAFETY: mi_collect takes no pointers; it frees only memory that no
    // allocation holds.
    unsafe { libmimalloc_sys::mi_collect(force) }
}

/// How many [`KeepFreedMemory`] are alive.
static KEEPERS: AtomicUsize = AtomicUsize::new(0);

/// While alive, [`release_free_memory`] leaves freed memory committed for
/// the work to come; the last one dropped hands it back.
///
/// For a wave of compiles: each Python or JavaScript plugin's compile
/// allocates and frees hundreds of megabytes, and handed back as each
/// compile (or its cache copy) ended, the next one faulted every page in
/// again, zeroed by the kernel (`clear_page_erms` was a third of the CPU
/// of the second Python and JavaScript plugins' compiles). Left to
/// mimalloc, free memory still goes back after its purge delay (1 s).
#[must_use = "freed memory is handed back when the last one is dropped"]
#[derive(Debug)]
pub(crate) struct KeepFreedMemory(());

impl KeepFreedMemory {
    pub(crate) fn new() -> KeepFreedMemory {
        KEEPERS.fetch_add(1, Ordering::AcqRel);
        KeepFreedMemory(())
    }
}

impl Drop for KeepFreedMemory {
    fn drop(&mut self) {
        if KEEPERS.fetch_sub(1, Ordering::AcqRel) == 1 {
            release_free_memory();
        }
    }
}

/// Turns transparent huge pages off for this process; call it first thing
/// in `main`. mimalloc asks for them on its arenas, so the first touch of
/// fresh heap faulted in and zeroed 2 MiB at a time: when a burst grew the
/// pool by hundreds of workers, their instances' and connections' first
/// allocations spent a fifth of the daemon's CPU clearing pages (`perf
/// record` during `cargo bench -p notifyhub --bench pool`), and a quarter
/// of a plugin compile's CPU went the same way. Without them, 2,000
/// deliveries to a 100 ms platform took 0.66–0.67 s instead of 0.73–0.76 s,
/// at a peak of 106 MiB resident instead of 151, and steady throughput did
/// not change beyond the runs' noise (`--bench e2e`, `--bench store`). What
/// `MIMALLOC_ALLOW_THP=0` does, without depending on the environment.
/// Benchmarks that compile in process call it too, to measure what the
/// daemon does.
pub fn without_huge_pages() {
    // SAFETY: PR_SET_THP_DISABLE takes plain integers and changes only
    // this process's memory policy; a kernel without it returns EINVAL,
    // and the process then runs as before.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}
