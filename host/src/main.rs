//! The `notifyhub` command: the daemon and its clients (see `cli`).

use std::process::ExitCode;

use clap::Parser;
use notifyhub::cli::Cli;

fn main() -> ExitCode {
    without_huge_pages();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    // `run` installs the log subscriber once it has read the config (which
    // may ask for traces to be exported).
    match runtime.block_on(notifyhub::cli::run(Cli::parse())) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Turns transparent huge pages off for this process. mimalloc asks for
/// them on its arenas, so the first touch of fresh heap faulted in and
/// zeroed 2 MiB at a time: when a burst grew the pool by hundreds of
/// workers, their instances' and connections' first allocations spent a
/// fifth of the daemon's CPU clearing pages (`perf record` during
/// `cargo bench -p notifyhub --bench pool`). Without them, 2,000 deliveries
/// to a 100 ms platform took 0.66–0.67 s instead of 0.73–0.76 s, at a peak
/// of 106 MiB resident instead of 151, and steady throughput did not
/// change beyond the runs' noise (`--bench e2e`, `--bench store`). What
/// `MIMALLOC_ALLOW_THP=0` does, without depending on the environment.
fn without_huge_pages() {
    // SAFETY: PR_SET_THP_DISABLE takes plain integers and changes only
    // this process's memory policy; a kernel without it returns EINVAL,
    // and the daemon then runs as before.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}
