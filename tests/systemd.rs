//! systemd integration without systemd: a socket passed the way systemd
//! passes it (fd 3, LISTEN_FDS, LISTEN_PID), served by the real daemon.

use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::Stdio;
use std::time::Duration;

use notifyhub_testkit::daemon::{Conn, STOPS_WITHIN};
use notifyhub_testkit::process::wait_within;
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_notifyhub");

/// Spawns `notifyhub serve` with `listener` as fd 3 and the activation
/// variables set; `sh`'s `exec` keeps the pid that `$$` names.
fn spawn_activated(
    listener: &std::os::unix::net::UnixListener,
    dir: &std::path::Path,
    fds: &str,
) -> anyhow::Result<std::process::Child> {
    let fd = listener.as_raw_fd();
    let plugins = dir.join("plugins");
    std::fs::create_dir_all(&plugins)?;
    std::fs::copy(
        notifyhub_testkit::plugins::path("noop")?,
        plugins.join("noop.wasm"),
    )?;
    let mut command = std::process::Command::new("sh");
    command
        .arg("-c")
        .arg(format!(
            "LISTEN_PID=$$ LISTEN_FDS={fds} exec \"$0\" serve --data-dir \"$1\" --plugins \"$2\" --cache-dir \"$3\""
        ))
        .arg(BIN)
        .arg(dir.join("data"))
        .arg(&plugins)
        .arg(notifyhub_testkit::daemon::shared_cache_dir())
        .stdin(Stdio::null())
        .stderr(std::fs::File::create(dir.join("log"))?);
    // SAFETY: only async-signal-safe calls between fork and exec: dup2 puts
    // the listener on fd 3 (clearing close-on-exec there).
    unsafe {
        command.pre_exec(move || {
            if libc::dup2(fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(command.spawn()?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_activated_daemon_serves_the_passed_socket() -> anyhow::Result<()> {
    let dir = tempfile::Builder::new().prefix("nh-activated-").tempdir()?;
    let path = dir.path().join("activated.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path)?;
    let mut child = spawn_activated(&listener, dir.path(), "1")?;
    // The socket exists before the daemon: a client may connect at once.
    let mut conn = Conn::connect(&path).await?;
    conn.send(&json!({"id": 1, "op": "submit", "wait": true, "task": {"platform": "noop", "target": "t", "body": "b"}}))
        .await?;
    let answer = tokio::time::timeout(Duration::from_secs(60), conn.recv()).await??;
    let log = std::fs::read_to_string(dir.path().join("log"))?;
    let _ = child.kill();
    let _ = child.wait();
    anyhow::ensure!(
        answer["result"]["tasks"][0]["state"] == "succeeded",
        "{answer}\n{log}"
    );
    anyhow::ensure!(
        log.contains("listening on the socket systemd passed"),
        "{log}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_activation_it_cannot_serve_is_refused_with_the_reason() -> anyhow::Result<()> {
    let dir = tempfile::Builder::new().prefix("nh-activated-").tempdir()?;
    let listener = std::os::unix::net::UnixListener::bind(dir.path().join("a.sock"))?;
    let mut child = spawn_activated(&listener, dir.path(), "2")?;
    let status = wait_within(&mut child, STOPS_WITHIN)?;
    let log = std::fs::read_to_string(dir.path().join("log"))?;
    anyhow::ensure!(!status.success(), "{log}");
    anyhow::ensure!(log.contains("passed 2 sockets"), "{log}");
    Ok(())
}
