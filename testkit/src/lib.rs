//! Real parts for notifyhub's tests, benchmarks and demo.
//!
//! - [`plugins`]: builds the first-party plugins for `wasm32-wasip2` (once per
//!   process) and finds their `.wasm` files;
//! - [`daemon`]: runs the real `notifyhub` binary in a temporary directory and
//!   talks to it over its Unix socket;
//! - [`toolchains`]: installs the Python, JavaScript and C plugin toolchains
//!   and nats-server on first use, under the build directory;
//! - [`process`]: runs commands and waits for processes under deadlines;
//! - [`deadline`]: bounds for awaited futures, and for whole benchmarks;
//! - [`receiver`]: an HTTP server on 127.0.0.1 that records what plugins send
//!   and answers like the platform would;
//! - [`nats`]: a real nats-server with JetStream on a free loopback port;
//!   [`ack_cutter`]: a relay in front of it that loses one publish
//!   acknowledgement on purpose;
//! - [`smtp`]: a real SMTP relay (aiosmtpd) on loopback, with STARTTLS or
//!   implicit TLS, AUTH, and answers chosen per recipient;
//! - [`otlp`]: an OpenTelemetry collector on 127.0.0.1 that decodes the
//!   trace exports it receives;
//! - [`verify`]: signature checks a platform performs, recomputed from the raw
//!   request.
//!
//! Nothing here imports the host crate: tests drive notifyhub only through
//! its public interfaces, the socket and the command line.

pub mod ack_cutter;
pub mod daemon;
pub mod deadline;
pub mod nats;
pub mod otlp;
pub mod plugins;
pub mod process;
pub mod receiver;
pub mod smtp;
pub mod toolchains;
pub mod verify;

use std::path::PathBuf;

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testkit lives one level below the root")
        .to_path_buf()
}

/// Set by `cargo xtask test --full`: tests use their heavy sizes.
pub const FULL_ENV: &str = "NOTIFYHUB_TEST_FULL";

/// A test's size: `default` in the everyday suite, `full` under
/// `cargo xtask test --full` (or with [`FULL_ENV`] set).
pub fn size(default: usize, full: usize) -> usize {
    if std::env::var_os(FULL_ENV).is_some() {
        full
    } else {
        default
    }
}
