//! The command line, as an operator uses it.

use std::process::Command;

use notifyhub_testkit::daemon::Daemon;
use notifyhub_testkit::receiver::{Receiver, Reply};

const BIN: &str = env!("CARGO_BIN_EXE_notifyhub");

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

// The CLI runs as a blocking child process, so the receiver needs a thread of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_wait_task_status_and_plugins() -> anyhow::Result<()> {
    let receiver = Receiver::start(|req| {
        if req.path == "/fail" {
            Reply::new(400, "bad")
        } else {
            Reply::new(200, "ok")
        }
    })
    .await;
    let manifest = format!("allowed_hosts = [\"{}\"]\n", receiver.authority());
    let daemon = Daemon::builder(BIN)
        .plugin("webhook", Some(&manifest))
        .start()
        .await?;

    let ok = daemon.cli(&[
        "send",
        "--platform",
        "webhook",
        "--target",
        &receiver.url("/ok"),
        "--title",
        "Hi",
        "--body",
        "hello",
        "--meta",
        "team=ops",
        "--wait",
    ]);
    assert!(ok.status.success(), "{ok:?}");
    let text = stdout(&ok);
    assert!(
        text.contains("state     succeeded") && text.contains("delivered: HTTP 200"),
        "{text}"
    );
    let doc = receiver.requests()[0].json();
    assert_eq!(doc["data"]["metadata"]["team"], "ops");

    let failed = daemon.cli(&[
        "send",
        "-p",
        "webhook",
        "-t",
        &receiver.url("/fail"),
        "-b",
        "x",
        "--wait",
    ]);
    assert_eq!(
        failed.status.code(),
        Some(1),
        "a failed delivery exits non-zero"
    );
    assert!(
        stdout(&failed).contains("failed (invalid)"),
        "{}",
        stdout(&failed)
    );

    let queued = daemon.cli(&[
        "send",
        "-p",
        "webhook",
        "-t",
        &receiver.url("/ok"),
        "-b",
        "later",
    ]);
    assert!(queued.status.success());
    let id = stdout(&queued).trim().to_string();
    assert_eq!(id.len(), 36, "send prints the task id: {id}");
    receiver
        .wait_for(3, std::time::Duration::from_secs(10))
        .await?;
    let mut shown = String::new();
    for _ in 0..100 {
        shown = stdout(&daemon.cli(&["task", &id]));
        if shown.contains("succeeded") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(
        shown.contains(&id) && shown.contains("succeeded"),
        "{shown}"
    );
    assert!(shown.contains("target    http://127.0.0.1"), "{shown}");
    assert!(
        !shown.contains("/ok"),
        "the target path must be redacted: {shown}"
    );

    let status = daemon.cli(&["status", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout)?;
    assert_eq!(status["pool"]["processed"], 3);
    assert_eq!(status["pool"]["errors"], 1);

    let plugins = stdout(&daemon.cli(&["plugins"]));
    assert!(
        plugins.contains("webhook") && plugins.contains("0.1.0"),
        "{plugins}"
    );
    Ok(())
}

#[test]
fn a_client_without_a_daemon_says_so() {
    let dir = tempfile_dir();
    let out = Command::new(BIN)
        .args(["--socket", &format!("{dir}/missing.sock"), "status"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot connect to") && err.contains("is `notifyhub serve` running?"),
        "{err}"
    );
}

#[test]
fn help_explains_every_flag() {
    let out = Command::new(BIN).args(["send", "--help"]).output().unwrap();
    let help = stdout(&out);
    for flag in [
        "--platform",
        "--target",
        "--title",
        "--body",
        "--format",
        "--wait",
        "--json",
        "--socket",
        "--plugins",
        "--data-dir",
        "NOTIFYHUB_SOCKET",
    ] {
        assert!(help.contains(flag), "send --help lacks {flag}:\n{help}");
    }
}

#[tokio::test]
async fn sigterm_shuts_down_cleanly_and_removes_the_socket() -> anyhow::Result<()> {
    let mut daemon = Daemon::builder(BIN).plugin("noop", None).start().await?;
    let socket = daemon.socket().to_path_buf();
    let status = daemon.terminate()?;
    assert!(status.success(), "{status}: {}", daemon.logs());
    assert!(!socket.exists(), "the socket file was left behind");
    assert!(daemon.logs().contains("shutting down"));
    Ok(())
}

#[tokio::test]
async fn a_second_daemon_on_the_same_socket_is_refused() -> anyhow::Result<()> {
    let daemon = Daemon::builder(BIN).plugin("noop", None).start().await?;
    let out = Command::new(BIN)
        .args(["serve", "--socket"])
        .arg(daemon.socket())
        .arg("--data-dir")
        .arg(daemon.dir().join("data2"))
        .output()?;
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("another notifyhub is already listening"),
        "{err}"
    );
    Ok(())
}

fn tempfile_dir() -> String {
    let dir = std::env::temp_dir().join(format!("nh-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.display().to_string()
}
