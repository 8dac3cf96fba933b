//! The `notifyhub` command: the daemon and its clients (see `cli`).

use std::process::ExitCode;

use clap::Parser;
use notifyhub::cli::Cli;

fn main() -> ExitCode {
    notifyhub::without_huge_pages();
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
