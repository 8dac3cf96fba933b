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

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Returns the calling thread's free memory to the system.
///
/// mimalloc returns a thread's freed pages lazily, when that thread next
/// allocates or frees. A thread that goes idle after heavy work keeps them
/// until then: after compiling four Python and JavaScript plugins, the
/// compiler's threads held about 100 MB that way. Call this on a thread
/// about to idle for long; it is too slow for a hot path.
pub(crate) fn release_free_memory() {
    // SAFETY: mi_collect takes no pointers; it frees only memory that no
    // allocation holds.
    unsafe { libmimalloc_sys::mi_collect(true) }
}

/// Hands the calling thread's free memory to the allocator's shared arenas,
/// where the next allocation on any thread takes it, still committed.
/// mimalloc hands it back to the system after its purge delay (1 s), or at
/// the next [`release_free_memory`] on any thread.
///
/// For compiles with more coming, in place of [`release_free_memory`]: each
/// Python or JavaScript plugin's compile allocates and frees hundreds of
/// megabytes, and handed back as each compile ended, the next one faulted
/// every page in again, zeroed by the kernel (`clear_page_erms` was a third
/// of the CPU of the second Python and JavaScript plugins' compiles).
pub(crate) fn share_free_memory() {
    // SAFETY: as in `release_free_memory`.
    unsafe { libmimalloc_sys::mi_collect(false) }
}
