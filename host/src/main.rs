use std::process::ExitCode;

use clap::Parser;
use notifyhub::cli::Cli;

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
