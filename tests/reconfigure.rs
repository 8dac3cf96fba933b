//! Config reload without a restart: SIGHUP and the `reload-config` op.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use notifyhub_testkit::daemon::{Conn, Daemon};
use notifyhub_testkit::receiver::{Receiver, Reply};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_notifyhub");

fn config(receiver: &Receiver, path: &str, max_workers: usize) -> String {
    format!(
        "[pool]\nmin_workers = 2\nmax_workers = {max_workers}\n\n\
         [destinations.ops]\nplatform = \"webhook\"\nurl = \"{}\"\n\n[retry]\nmax_attempts = 1\n",
        receiver.url(path)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_changes_a_destination_without_dropping_a_task() -> anyhow::Result<()> {
    let receiver = Receiver::start(|_| Reply::new(200, "ok")).await;
    let manifest = format!("allowed_hosts = [\"{}\"]\n", receiver.authority());
    let daemon = Daemon::builder(BIN)
        .plugin("webhook", Some(&manifest))
        .config(&format!(
            "[pool]\nmin_workers = 2\nmax_workers = 8\n\n[destinations.ops]\nplatform = \"webhook\"\nurl = \"{}\"\n",
            receiver.url("/before")
        ))
        .start()
        .await?;
    // A steady load on the destination throughout the reload.
    let stop = Arc::new(AtomicBool::new(false));
    let (socket, flag) = (daemon.socket().to_path_buf(), stop.clone());
    let load = tokio::spawn(async move {
        let mut conn = Conn::connect(&socket).await?;
        let mut outcomes: Vec<Value> = Vec::new();
        while !flag.load(Ordering::Relaxed) {
            conn.send(
                &json!({"op": "submit", "wait": true, "task": {"target": "ops", "body": "b"}}),
            )
            .await?;
            let r = conn.recv().await?;
            outcomes.push(r["result"]["tasks"][0].clone());
        }
        anyhow::Ok(outcomes)
    });
    receiver.wait_for(5, Duration::from_secs(30)).await?;
    std::fs::write(
        daemon.dir().join("config.toml"),
        config(&receiver, "/after", 16),
    )?;
    // SAFETY: kill sends a signal to the daemon's pid; it has no other effect.
    anyhow::ensure!(unsafe { libc::kill(daemon.pid() as i32, libc::SIGHUP) } == 0);
    // The reload lands: deliveries go to the new URL.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !receiver.requests().iter().any(|r| r.path == "/after") {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the reload never took effect:\n{}",
            daemon.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    receiver
        .wait_for(receiver.requests().len() + 5, Duration::from_secs(30))
        .await?;
    stop.store(true, Ordering::Relaxed);
    let outcomes = load.await??;
    let failed: Vec<&Value> = outcomes
        .iter()
        .filter(|t| t["state"] != "succeeded")
        .collect();
    anyhow::ensure!(
        failed.is_empty(),
        "tasks failed across the reload: {failed:?}"
    );
    let paths: Vec<String> = receiver.requests().iter().map(|r| r.path.clone()).collect();
    let first_after = paths.iter().position(|p| p == "/after").unwrap();
    anyhow::ensure!(
        paths[first_after..].iter().all(|p| p == "/after"),
        "an old route was used after the new one: {paths:?}"
    );
    let status = daemon.request(json!({"op": "status"})).await?;
    anyhow::ensure!(
        status["result"]["pool"]["max_workers"] == 16,
        "pool bounds not applied: {status}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_config_is_refused_with_the_reason_and_the_old_one_serves() -> anyhow::Result<()> {
    let receiver = Receiver::start(|_| Reply::new(200, "ok")).await;
    let manifest = format!("allowed_hosts = [\"{}\"]\n", receiver.authority());
    let daemon = Daemon::builder(BIN)
        .plugin("webhook", Some(&manifest))
        .config(&format!(
            "[destinations.ops]\nplatform = \"webhook\"\nurl = \"{}\"\n",
            receiver.url("/kept")
        ))
        .start()
        .await?;
    let path = daemon.dir().join("config.toml");
    for (bad, reason) in [
        (
            "[pool\nmax_workers = 3\n".to_string(),
            "invalid config file",
        ),
        ("[pool]\nmin_workers = 9\nmax_workers = 3\n".into(), "min"),
        (
            "[destinations.ops]\nplatform = \"webhook\"\nurl_env = \"NOT_SET_ANYWHERE\"\n".into(),
            "NOT_SET_ANYWHERE",
        ),
        // A new route with pool bounds the running engine cannot serve:
        // refused as a whole, the route included.
        (config(&receiver, "/moved", 4000), "instance slots"),
    ] {
        std::fs::write(&path, &bad)?;
        let r = daemon.request(json!({"op": "reload-config"})).await?;
        anyhow::ensure!(
            r["error"]["code"] == "invalid_request",
            "{bad:?} was applied: {r}"
        );
        let message = r["error"]["message"].as_str().unwrap_or_default();
        anyhow::ensure!(
            message.contains("not reloaded") && message.contains(reason),
            "{message}"
        );
        let task = daemon
            .deliver(json!({"target": "ops", "body": "b"}))
            .await?;
        anyhow::ensure!(task["state"] == "succeeded", "{task}");
    }
    anyhow::ensure!(receiver.requests().iter().all(|r| r.path == "/kept"));
    // What needs a restart is said, and the rest applied.
    std::fs::write(
        &path,
        format!(
            "{}\n[server]\nmax_line_bytes = 4096\n",
            config(&receiver, "/new", 32)
        ),
    )?;
    let r = daemon.request(json!({"op": "reload-config"})).await?;
    anyhow::ensure!(r["ok"] == true, "{r}");
    anyhow::ensure!(r["result"]["needs_restart"] == json!(["[server]"]), "{r}");
    anyhow::ensure!(r["result"]["max_workers"] == 32, "{r}");
    let out = daemon.cli(&["reload-config"]);
    anyhow::ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}
