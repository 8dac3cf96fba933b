//! The `notifyhub` command: the daemon and its clients (see `cli`).

use std::process::ExitCode;

use clap::Parser;
use notifyhub::cli::Cli;

/// mimalloc, not glibc's malloc: every delivery allocates and frees many
/// small buffers on whichever worker thread runs it, and glibc's arenas
/// spent about a sixth of the daemon's CPU doing so (`perf record` of the
/// daemon under `NOTIFYHUB_E2E_SCALE=10 cargo bench --bench e2e`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    // `run` installs the log subscriber once it has read the config (which
    // may ask for traces to be exported).
    match notifyhub::cli::run(Cli::parse()).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
