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
