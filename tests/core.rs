//! The core's promises, each checked against the real daemon where an
//! outside test found it broken: values from platforms are bounded, plugin
//! names cannot leave the plugin directory, a task's history only grows,
//! a submit (and a retry) is acknowledged only if its own write committed, the socket
//! answers before plugins have compiled, and the CLI takes what users type.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use notifyhub_testkit::daemon::Daemon;
use notifyhub_testkit::receiver::{Receiver, Reply};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_notifyhub");

fn allow(receiver: &Receiver) -> String {
    format!("allowed_hosts = [\"{}\"]\n", receiver.authority())
}

/// Polls `task` until `done` holds for it; fails the test after `within`.
async fn task_until(
    daemon: &Daemon,
    id: &str,
    within: Duration,
    done: impl Fn(&Value) -> bool,
) -> anyhow::Result<Value> {
    let deadline = Instant::now() + within;
    loop {
        let r = daemon.request(json!({"op": "task", "task_id": id})).await?;
        anyhow::ensure!(r["ok"] == true, "task {id}: {r}");
        if done(&r["result"]) {
            return Ok(r["result"].clone());
        }
        anyhow::ensure!(Instant::now() < deadline, "task {id} never got there: {r}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn attempt_numbers(task: &Value) -> Vec<u64> {
    task["history"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a["number"].as_u64())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absurd_retry_after_is_bounded_and_task_still_answers() -> anyhow::Result<()> {
    let receiver =
        Receiver::start(|_| Reply::new(429, "slow down").header("retry-after", "1e30")).await;
    let daemon = Daemon::builder(BIN)
        .plugin("webhook", Some(&allow(&receiver)))
        .retry("max_attempts = 3\n")
        .start()
        .await?;
    let submitted = SystemTime::now();
    let r = daemon
        .request(json!({"op": "submit", "task": {"platform": "webhook", "target": receiver.url("/"), "body": "b"}}))
        .await?;
    let id = r["result"]["task_ids"][0].as_str().unwrap().to_string();
    let task = task_until(&daemon, &id, Duration::from_secs(30), |t| {
        t["state"] == "retrying"
    })
    .await?;
    // The wait is an hour at most (plus the jitter-free floor's rounding).
    let not_before = humantime::parse_rfc3339(task["not_before"].as_str().unwrap())?;
    let most = submitted + Duration::from_secs(3600 + 60);
    anyhow::ensure!(not_before <= most, "retry scheduled too far ahead: {task}");
    let retry_after = task["outcome"]["retry_after_ms"].as_u64().unwrap();
    anyhow::ensure!(retry_after <= 3_600_000, "{task}");
    // Listing and status answer too.
    let list = daemon.request(json!({"op": "tasks"})).await?;
    anyhow::ensure!(list["ok"] == true, "{list}");
    let status = daemon.request(json!({"op": "status"})).await?;
    anyhow::ensure!(status["ok"] == true, "{status}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_cannot_load_a_file_outside_the_plugin_directory() -> anyhow::Result<()> {
    let daemon = Daemon::builder(BIN).plugin("noop", None).start().await?;
    let outside = daemon.dir().join("x");
    std::fs::create_dir_all(&outside)?;
    std::fs::copy(
        notifyhub_testkit::plugins::path("webhook")?,
        outside.join("evil.wasm"),
    )?;
    for name in [
        "../x/evil",
        "/etc/passwd",
        "..",
        "a/b",
        "a\u{0}b",
        ".hidden",
    ] {
        let r = daemon
            .request(json!({"op": "reload", "name": name}))
            .await?;
        anyhow::ensure!(r["ok"] == false, "{name:?} was accepted: {r}");
        anyhow::ensure!(r["error"]["code"] == "invalid_request", "{name:?}: {r}");
    }
    let plugins = daemon.request(json!({"op": "plugins"})).await?;
    let names: Vec<&str> = plugins["result"]["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    anyhow::ensure!(names == ["noop"], "{plugins}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retrying_a_dead_task_keeps_its_history_across_restarts() -> anyhow::Result<()> {
    let receiver = Receiver::start(|_| Reply::new(500, "down")).await;
    let mut daemon = Daemon::builder(BIN)
        .plugin("webhook", Some(&allow(&receiver)))
        .start()
        .await?;
    let dead = |t: &Value| t["state"] == "dead";
    let task = daemon
        .deliver(json!({"platform": "webhook", "target": receiver.url("/"), "body": "b"}))
        .await?;
    let id = task["id"].as_str().unwrap().to_string();
    anyhow::ensure!(attempt_numbers(&task) == [1], "{task}");

    let r = daemon
        .request(json!({"op": "retry", "task_id": id}))
        .await?;
    anyhow::ensure!(r["ok"] == true, "{r}");
    let task = task_until(&daemon, &id, Duration::from_secs(20), |t| {
        dead(t) && attempt_numbers(t).len() == 2
    })
    .await?;
    anyhow::ensure!(attempt_numbers(&task) == [1, 2], "{task}");

    daemon.kill()?;
    daemon.restart().await?;
    let task = task_until(&daemon, &id, Duration::from_secs(20), dead).await?;
    anyhow::ensure!(attempt_numbers(&task) == [1, 2], "after a restart: {task}");

    let r = daemon
        .request(json!({"op": "retry", "task_id": id}))
        .await?;
    anyhow::ensure!(r["ok"] == true, "{r}");
    let task = task_until(&daemon, &id, Duration::from_secs(20), |t| {
        dead(t) && attempt_numbers(t).len() == 3
    })
    .await?;
    anyhow::ensure!(attempt_numbers(&task) == [1, 2, 3], "{task}");
    anyhow::ensure!(task["attempts"] == 3, "{task}");
    Ok(())
}

/// A small tmpfs, mounted for the test and unmounted when dropped.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> anyhow::Result<Tmpfs> {
        std::fs::create_dir_all(dir)?;
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()?;
        anyhow::ensure!(
            status.success(),
            "mounting a tmpfs on {} failed",
            dir.display()
        );
        Ok(Tmpfs(dir.to_path_buf()))
    }

    /// Frees space: the tmpfs grows to `size`.
    fn grow(&self, size: &str) -> anyhow::Result<()> {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()?;
        anyhow::ensure!(status.success(), "remount failed");
        Ok(())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_submits_and_loses_no_acknowledged_task() -> anyhow::Result<()> {
    // Mounting needs root, which CI and this project's machines have.
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        anyhow::bail!("this test mounts a tmpfs and must run as root");
    }
    let base = tempfile::Builder::new().prefix("nh-full-").tempdir()?;
    let data = base.path().join("data");
    let tmpfs = Tmpfs::mount(&data, "3m")?;
    let mut daemon = Daemon::builder(BIN)
        .plugin("noop", None)
        .data_dir(&data)
        .start()
        .await?;
    let mut acknowledged = fill_the_disk(&daemon).await?;
    anyhow::ensure!(
        !acknowledged.is_empty(),
        "nothing was accepted before the disk filled"
    );
    // While the disk is full, new submits are refused with the same code.
    let again = daemon
        .request(json!({"op": "submit", "task": {"platform": "noop", "target": "t", "body": "x".repeat(60_000)}}))
        .await?;
    anyhow::ensure!(again["error"]["code"] == "unavailable", "{again}");

    // Free the space (grow the tmpfs), then the store takes tasks again.
    tmpfs.grow("64m")?;
    let r = until_taken(
        &daemon,
        json!({"op": "submit", "task": {"platform": "noop", "target": "t", "body": "small", "delay": "1h"}}),
    )
    .await?;
    acknowledged.push(r["result"]["task_ids"][0].as_str().unwrap().to_string());

    daemon.kill()?;
    daemon.restart().await?;
    for id in &acknowledged {
        let r = daemon.request(json!({"op": "task", "task_id": id})).await?;
        anyhow::ensure!(r["ok"] == true, "acknowledged task {id} is missing: {r}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_socket_answers_while_plugins_load_and_tasks_wait_for_them() -> anyhow::Result<()> {
    // A plugin whose describe() spins until its 3 s deadline keeps the
    // start-up load busy for that long.
    let daemon = Daemon::builder(BIN)
        .plugin(
            "hostile",
            Some("[config]\ndescribe = \"spin\"\n[limits]\ntimeout = \"3s\"\n"),
        )
        .plugin("noop", None)
        .start_answering()
        .await?;
    let status = daemon.request(json!({"op": "status"})).await?;
    anyhow::ensure!(status["result"]["plugins_ready"] == false, "{status}");
    let loading = status["result"]["plugins_loading"].to_string();
    anyhow::ensure!(loading.contains("hostile.wasm"), "{status}");

    // Accepted now, delivered once its plugin is in; a platform nobody
    // turns out to serve fails as such once loading is over.
    let r = daemon
        .request(json!({"op": "submit", "wait": true, "tasks": [
            {"platform": "noop", "target": "t", "body": "b"},
            {"platform": "nosuch", "target": "t", "body": "b"},
        ]}))
        .await?;
    anyhow::ensure!(r["ok"] == true, "{r}");
    anyhow::ensure!(r["result"]["tasks"][0]["state"] == "succeeded", "{r}");
    anyhow::ensure!(
        r["result"]["tasks"][1]["outcome"]["class"] == "no_plugin",
        "{r}"
    );

    daemon.wait_plugins_ready(Duration::from_secs(60)).await?;
    let plugins = daemon.request(json!({"op": "plugins"})).await?;
    anyhow::ensure!(
        plugins["result"]["errors"]
            .to_string()
            .contains("describe()"),
        "{plugins}"
    );
    // After start-up, an unknown platform is refused at once again.
    let r = daemon
        .request(
            json!({"op": "submit", "task": {"platform": "nosuch", "target": "t", "body": "b"}}),
        )
        .await?;
    anyhow::ensure!(r["error"]["code"] == "unknown_platform", "{r}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_takes_hyphen_targets_and_shows_dead_tasks_without_failing() -> anyhow::Result<()> {
    let receiver = Receiver::start(|_| Reply::new(400, "no")).await;
    let daemon = Daemon::builder(BIN)
        .plugin("noop", None)
        .plugin("webhook", Some(&allow(&receiver)))
        .start()
        .await?;
    let out = daemon.cli(&["send", "-p", "noop", "-t", "-1001234567890", "-b", "hi"]);
    anyhow::ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let dead = daemon
        .deliver(json!({"platform": "webhook", "target": receiver.url("/"), "body": "b"}))
        .await?;
    anyhow::ensure!(dead["state"] == "dead", "{dead}");
    let id = dead["id"].as_str().unwrap();
    for args in [vec!["task", id, "--json"], vec!["task", id]] {
        let out = daemon.cli(&args);
        anyhow::ensure!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // `send --wait` still reports a dead task through its exit code.
    let target = receiver.url("/");
    let out = daemon.cli(&["send", "-p", "webhook", "-t", &target, "-b", "b", "--wait"]);
    anyhow::ensure!(!out.status.success(), "send --wait of a dead task exited 0");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_tells_systemd_it_is_ready_once_plugins_have_loaded() -> anyhow::Result<()> {
    // A datagram socket standing in for systemd's notify socket.
    let dir = tempfile::Builder::new().prefix("nh-notify-").tempdir()?;
    let path = dir.path().join("notify.sock");
    let systemd = tokio::net::UnixDatagram::bind(&path)?;
    let daemon = Daemon::builder(BIN)
        .plugin("noop", None)
        .env("NOTIFY_SOCKET", path.to_str().unwrap())
        .start()
        .await?;
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(60), systemd.recv(&mut buf))
        .await
        .map_err(|_| anyhow::anyhow!("no notification from the daemon:\n{}", daemon.logs()))??;
    let message = String::from_utf8_lossy(&buf[..n]).to_string();
    anyhow::ensure!(message.contains("READY=1"), "{message:?}");
    // By then, the plugin serves.
    let status = daemon.request(json!({"op": "status"})).await?;
    anyhow::ensure!(status["result"]["plugins_ready"] == true, "{status}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_keeps_systemd_s_watchdog_fed() -> anyhow::Result<()> {
    let dir = tempfile::Builder::new().prefix("nh-watchdog-").tempdir()?;
    let path = dir.path().join("notify.sock");
    let systemd = tokio::net::UnixDatagram::bind(&path)?;
    let _daemon = Daemon::builder(BIN)
        .plugin("noop", None)
        .env("NOTIFY_SOCKET", path.to_str().unwrap())
        .env("WATCHDOG_USEC", "200000")
        .start()
        .await?;
    let mut keep_alives = 0;
    let mut buf = vec![0u8; 1024];
    while keep_alives < 3 {
        let n = tokio::time::timeout(Duration::from_secs(30), systemd.recv(&mut buf))
            .await
            .map_err(|_| {
                anyhow::anyhow!("the watchdog was fed {keep_alives} times, then nothing")
            })??;
        keep_alives += usize::from(String::from_utf8_lossy(&buf[..n]).contains("WATCHDOG=1"));
    }
    Ok(())
}

/// Sends `request` until the store, writable again, takes it (anything
/// else must be `unavailable`); its answer.
async fn until_taken(daemon: &Daemon, request: Value) -> anyhow::Result<Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = daemon.request(request.clone()).await?;
        if r["ok"] == true {
            return Ok(r);
        }
        anyhow::ensure!(r["error"]["code"] == "unavailable", "{r}");
        anyhow::ensure!(Instant::now() < deadline, "the store never recovered: {r}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Fills the disk under `daemon`'s store with tasks due in an hour until a
/// submit is refused; returns the ids that were acknowledged.
async fn fill_the_disk(daemon: &Daemon) -> anyhow::Result<Vec<String>> {
    let body = "x".repeat(60_000);
    let mut acknowledged = Vec::new();
    for _ in 0..200 {
        let tasks: Vec<Value> = (0..4)
            .map(|_| json!({"platform": "noop", "target": "t", "body": body, "delay": "1h"}))
            .collect();
        let r = daemon
            .request(json!({"op": "submit", "tasks": tasks}))
            .await?;
        if r["ok"] != true {
            anyhow::ensure!(r["error"]["code"] == "unavailable", "{r}");
            return Ok(acknowledged);
        }
        acknowledged.extend(
            r["result"]["task_ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|id| id.as_str().unwrap().to_string()),
        );
    }
    anyhow::bail!("the disk never filled up")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_that_cannot_be_written_is_refused_and_the_task_stays_dead() -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        anyhow::bail!("this test mounts a tmpfs and must run as root");
    }
    let receiver = Receiver::start(|_| Reply::new(410, "gone")).await;
    let base = tempfile::Builder::new().prefix("nh-full-").tempdir()?;
    let data = base.path().join("data");
    let tmpfs = Tmpfs::mount(&data, "3m")?;
    let mut daemon = Daemon::builder(BIN)
        .plugin("noop", None)
        .plugin("webhook", Some(&allow(&receiver)))
        .data_dir(&data)
        .start()
        .await?;
    let task = daemon
        .deliver(json!({"platform": "webhook", "target": receiver.url("/"), "body": "b"}))
        .await?;
    anyhow::ensure!(task["state"] == "dead", "{task}");
    let id = task["id"].as_str().unwrap().to_string();

    fill_the_disk(&daemon).await?;
    let refused = daemon
        .request(json!({"op": "retry", "task_id": id}))
        .await?;
    anyhow::ensure!(refused["error"]["code"] == "unavailable", "{refused}");
    let after = daemon.request(json!({"op": "task", "task_id": id})).await?;
    anyhow::ensure!(
        after["result"]["state"] == "dead" && attempt_numbers(&after["result"]) == [1],
        "a refused retry changed the task: {after}"
    );

    // With room again, the same retry is taken and runs; after a kill the
    // revival holds (it was durable before it was answered): the task ends
    // dead with both attempts — the second one's outcome committed before
    // the kill, or, if the kill came first, its attempt made again.
    tmpfs.grow("64m")?;
    until_taken(&daemon, json!({"op": "retry", "task_id": id})).await?;
    task_until(&daemon, &id, Duration::from_secs(20), |t| {
        t["state"] == "dead" && attempt_numbers(t).len() == 2
    })
    .await?;
    daemon.kill()?;
    daemon.restart().await?;
    task_until(&daemon, &id, Duration::from_secs(20), |t| {
        t["state"] == "dead" && attempt_numbers(t) == [1, 2]
    })
    .await?;
    Ok(())
}
