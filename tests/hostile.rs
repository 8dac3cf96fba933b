//! Hostile input *around* the sandbox, against the real daemon: odd files in
//! the plugin directory, plugins whose describe() lies or floods, malformed
//! requests and operator commands out of range. Throughout, a good plugin
//! keeps delivering and the daemon never panics.

use std::time::Duration;

use notifyhub_testkit::daemon::{Conn, Daemon};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_notifyhub");

async fn noop_delivers(daemon: &Daemon) -> anyhow::Result<()> {
    let task = daemon
        .deliver(json!({"platform": "noop", "target": "t", "body": "b"}))
        .await?;
    anyhow::ensure!(task["state"] == "succeeded", "{task}");
    Ok(())
}

fn no_panics(daemon: &Daemon) -> anyhow::Result<()> {
    let logs = daemon.logs();
    anyhow::ensure!(!logs.contains("panicked"), "the daemon panicked:\n{logs}");
    Ok(())
}

async fn reload(daemon: &Daemon, name: &str) -> anyhow::Result<Value> {
    daemon.request(json!({"op": "reload", "name": name})).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_that_are_not_regular_are_refused_at_once() -> anyhow::Result<()> {
    let daemon = Daemon::builder(BIN).plugin("noop", None).start().await?;
    let dir = daemon.plugin_dir();
    std::os::unix::fs::symlink("/dev/zero", dir.join("zero.wasm"))?;
    let fifo = dir.join("fifo.wasm");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status()?;
    anyhow::ensure!(made.success(), "mkfifo failed");
    std::fs::create_dir(dir.join("folder.wasm"))?;

    for (name, kind) in [
        ("zero", "character device"),
        ("fifo", "FIFO"),
        ("folder", "directory"),
    ] {
        let r = reload(&daemon, name).await?;
        let change = &r["result"]["results"][0];
        anyhow::ensure!(change["change"] == "failed", "{name}: {r}");
        let error = change["error"].as_str().unwrap_or_default();
        anyhow::ensure!(error.contains(kind), "{name}: {error}");
        noop_delivers(&daemon).await?;
    }
    // A whole-directory reload passes over them too.
    let all = daemon.request(json!({"op": "reload"})).await?;
    anyhow::ensure!(all["ok"] == true, "{all}");
    noop_delivers(&daemon).await?;
    no_panics(&daemon)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn describe_is_checked_like_any_foreign_input() -> anyhow::Result<()> {
    let daemon = Daemon::builder(BIN).plugin("noop", None).start().await?;
    let hostile = notifyhub_testkit::plugins::path("hostile")?;
    let dir = daemon.plugin_dir();
    for (name, mode, expected) in [
        ("huge", "huge", "more than 1024 KiB"),
        ("many", "many", "platforms"),
        ("unprintable", "unprintable", "platform"),
    ] {
        std::fs::write(
            dir.join(format!("{name}.toml")),
            format!("[config]\ndescribe = \"{mode}\"\n"),
        )?;
        std::fs::copy(&hostile, dir.join(format!("{name}.wasm")))?;
        let r = reload(&daemon, name).await?;
        let change = &r["result"]["results"][0];
        anyhow::ensure!(change["change"] == "failed", "{name}: {r}");
        anyhow::ensure!(
            change["error"]
                .as_str()
                .unwrap_or_default()
                .contains(expected),
            "{name}: {r}"
        );
    }
    let plugins = daemon.request(json!({"op": "plugins"})).await?;
    anyhow::ensure!(
        plugins["result"]["plugins"].as_array().unwrap().len() == 1,
        "{plugins}"
    );
    // The answer stays small: nothing of the 100 MB description is kept.
    anyhow::ensure!(
        plugins.to_string().len() < 64 * 1024,
        "plugins answer is {} bytes",
        plugins.to_string().len()
    );
    noop_delivers(&daemon).await?;
    no_panics(&daemon)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_platform_conflict_is_refused_truthfully_and_not_retried() -> anyhow::Result<()> {
    let daemon = Daemon::builder(BIN).plugin("noop", None).start().await?;
    let dir = daemon.plugin_dir();
    std::fs::write(dir.join("thief.toml"), "[config]\nplatform = \"noop\"\n")?;
    std::fs::copy(
        notifyhub_testkit::plugins::path("hostile")?,
        dir.join("thief.wasm"),
    )?;
    let r = reload(&daemon, "thief").await?;
    let change = &r["result"]["results"][0];
    anyhow::ensure!(change["change"] == "failed", "{r}");
    anyhow::ensure!(
        change["error"]
            .as_str()
            .unwrap_or_default()
            .contains("already served"),
        "{r}"
    );
    // Left alone, the watcher does not try it again and again.
    not_logged_again(&daemon, "already served", logged(&daemon, "already served")).await?;
    noop_delivers(&daemon).await?;
    no_panics(&daemon)
}

/// How many times the daemon has logged `line`.
fn logged(daemon: &Daemon, line: &str) -> usize {
    daemon.logs().matches(line).count()
}

/// Fails if `line` is logged more than `before` times over a few debounce
/// periods from now: a refused file was tried again.
async fn not_logged_again(daemon: &Daemon, line: &str, before: usize) -> anyhow::Result<()> {
    tokio::time::sleep(Duration::from_millis(600)).await;
    let after = logged(daemon, line);
    anyhow::ensure!(
        after == before,
        "the refusal was retried: `{line}` logged {} more times",
        after - before
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_refused_for_its_config_is_not_retried_when_another_loads() -> anyhow::Result<()> {
    let daemon = Daemon::builder(BIN).plugin("noop", None).start().await?;
    let dir = daemon.plugin_dir();
    std::fs::copy(
        notifyhub_testkit::plugins::path("telegram")?,
        dir.join("telegram.wasm"),
    )?;
    let r = reload(&daemon, "telegram").await?;
    let change = &r["result"]["results"][0];
    anyhow::ensure!(change["change"] == "failed", "{r}");
    let before = logged(&daemon, "`bot_token`");
    anyhow::ensure!(before > 0, "the refusal was not logged: {r}");

    // Another plugin's load can lift a conflict, not a missing config key:
    // the refused file is not compiled again.
    std::fs::copy(
        notifyhub_testkit::plugins::path("webhook")?,
        dir.join("webhook.wasm"),
    )?;
    let r = reload(&daemon, "webhook").await?;
    anyhow::ensure!(r["result"]["results"][0]["change"] == "loaded", "{r}");
    not_logged_again(&daemon, "`bot_token`", before).await?;
    noop_delivers(&daemon).await?;
    no_panics(&daemon)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_out_of_bounds_get_a_clear_error() -> anyhow::Result<()> {
    let daemon = Daemon::builder(BIN).plugin("noop", None).start().await?;
    let cases = [
        (
            json!({"op": "submit", "task": {"platform": "noop", "target": "t", "body": "b", "delay": "18446744073709551615s"}}),
            "invalid_request",
        ),
        (
            json!({"op": "submit", "task": {"platform": "noop", "target": "t", "body": "b", "delay": "600000000000s"}}),
            "invalid_request",
        ),
        (
            json!({"op": "submit", "task": {"platform": "noop", "target": "t", "body": "b", "deliver_at": "9999-01-01T00:00:00Z"}}),
            "invalid_request",
        ),
        (
            json!({"op": "submit", "task": {"platform": "Not A Platform", "target": "t", "body": "b"}}),
            "invalid_request",
        ),
        (
            json!({"op": "scale", "min": 1_000_000_000_000u64, "max": 1_000_000_000_000u64}),
            "invalid_request",
        ),
        (
            json!({"op": "scale", "min": 9, "max": 3}),
            "invalid_request",
        ),
        (json!({"op": "tasks", "limit": 0}), "invalid_request"),
        (
            json!({"op": "task", "task_id": "not-a-uuid"}),
            "invalid_request",
        ),
    ];
    for (request, code) in cases {
        let r = daemon.request(request.clone()).await?;
        anyhow::ensure!(r["error"]["code"] == code, "{request} → {r}");
    }
    // Duplicate keys are refused, not silently resolved.
    let mut conn = daemon.connect().await?;
    conn.send_raw(
        br#"{"op":"submit","task":{"platform":"noop","target":"t","body":"a","body":"b"}}"#,
    )
    .await?;
    conn.send_raw(b"\n").await?;
    let r = conn.recv().await?;
    anyhow::ensure!(r["ok"] == false, "{r}");
    anyhow::ensure!(
        r["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("twice"),
        "{r}"
    );
    // Listing still answers, and so does everything else.
    let list = daemon.request(json!({"op": "tasks"})).await?;
    anyhow::ensure!(list["ok"] == true, "{list}");
    noop_delivers(&daemon).await?;
    no_panics(&daemon)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_beyond_the_limit_is_told_busy() -> anyhow::Result<()> {
    let daemon = Daemon::builder(BIN)
        .plugin("noop", None)
        .config("[server]\nmax_connections = 2\n")
        .start()
        .await?;
    // Hold both places. The connections the start-up used may still be
    // closing on the server's side, so a first try can be told busy.
    let mut held = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while held.len() < 2 {
        let mut conn = daemon.connect().await?;
        let answered = match conn.send(&json!({"op": "ping"})).await {
            Ok(()) => conn.recv().await.ok(),
            Err(_) => None,
        };
        if answered.is_some_and(|r| r["ok"] == true) {
            held.push(conn);
            continue;
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "never got two connections"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut extra = Conn::connect(daemon.socket()).await?;
    let r = extra.recv().await?;
    anyhow::ensure!(r["error"]["code"] == "busy", "{r}");
    drop(held);
    // Once the others have gone, a new connection is served again.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        // Until the server has seen the others close, a new connection may
        // still be told busy and closed under our write.
        match daemon.request(json!({"op": "ping"})).await {
            Ok(r) if r["ok"] == true => break,
            other => anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "still refused: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    no_panics(&daemon)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relative_data_dir_is_taken_from_the_working_directory() -> anyhow::Result<()> {
    let work = tempfile::Builder::new().prefix("nh-rel-").tempdir()?;
    let plugins = work.path().join("plugins");
    std::fs::create_dir(&plugins)?;
    std::fs::copy(
        notifyhub_testkit::plugins::path("noop")?,
        plugins.join("noop.wasm"),
    )?;
    let mut child = std::process::Command::new(BIN)
        .current_dir(work.path())
        .args([
            "serve",
            "--data-dir",
            "data",
            "--plugins",
            "plugins",
            "--socket",
            "nh.sock",
        ])
        .env("RUST_LOG", "warn")
        .stderr(std::fs::File::create(work.path().join("log"))?)
        .spawn()?;
    let socket = work.path().join("nh.sock");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let answer = loop {
        if let Some(status) = child.try_wait()? {
            anyhow::bail!(
                "the daemon exited ({status}): {}",
                std::fs::read_to_string(work.path().join("log"))?
            );
        }
        if let Ok(mut conn) = Conn::connect(&socket).await {
            conn.send(&json!({"op": "ping"})).await?;
            break conn.recv().await?;
        }
        anyhow::ensure!(std::time::Instant::now() < deadline, "no socket");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let _ = child.kill();
    let _ = child.wait();
    anyhow::ensure!(answer["ok"] == true, "{answer}");
    anyhow::ensure!(
        work.path().join("data/cache").is_dir(),
        "no compile cache under ./data"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_output_is_not_copied_into_the_daemon() -> anyhow::Result<()> {
    let daemon = Daemon::builder(BIN)
        .plugin("noop", None)
        .plugin(
            "hostile",
            Some("[limits]\ntimeout = \"5s\"\nmemory_mib = 1024\n"),
        )
        .start()
        .await?;
    noop_delivers(&daemon).await?;
    // Measured once every plugin has loaded: a load that misses the compile
    // cache runs Cranelift, whose peak is as large as the copy looked for.
    daemon.wait_plugins_ready(Duration::from_secs(60)).await?;
    let before = daemon.memory_kib("VmHWM")?;
    let task = daemon
        .deliver(json!({"platform": "hostile", "target": "t", "body": "huge-receipt"}))
        .await?;
    anyhow::ensure!(task["outcome"]["class"] == "crashed", "{task}");
    let grown_mib = (daemon.memory_kib("VmHWM")? - before) / 1024;
    // The guest built a 100 MiB string in its own memory (which lives in
    // the daemon's address space); the host copied at most 1 MiB of it.
    // Copying it all would have added another 100 MiB.
    anyhow::ensure!(
        grown_mib < 160,
        "the daemon's peak grew by {grown_mib} MiB\n{}",
        daemon.logs()
    );
    noop_delivers(&daemon).await?;
    no_panics(&daemon)
}
