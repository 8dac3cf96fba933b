//! `watch`: task events streamed as they happen, through the real socket.

use std::collections::HashSet;
use std::time::Duration;

use notifyhub_testkit::daemon::Daemon;
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_notifyhub");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_sees_every_outcome_of_a_load_in_order() -> anyhow::Result<()> {
    let daemon = Daemon::builder(BIN).plugin("noop", None).start().await?;
    let mut watcher = daemon.connect().await?;
    watcher
        .send(&json!({"id": "w", "op": "watch", "state": "succeeded"}))
        .await?;
    let first = watcher.recv().await?;
    anyhow::ensure!(first["result"]["watching"] == true, "{first}");
    // Another watcher asks only for dead tasks: it must see nothing here.
    let mut dead_only = daemon.connect().await?;
    dead_only
        .send(&json!({"id": "d", "op": "watch", "state": "dead"}))
        .await?;
    anyhow::ensure!(dead_only.recv().await?["result"]["watching"] == true);

    let mut submitted = HashSet::new();
    for _ in 0..4 {
        let tasks: Vec<Value> = (0..250)
            .map(|_| json!({"platform": "noop", "target": "t", "body": "b"}))
            .collect();
        let r = daemon
            .request(json!({"op": "submit", "tasks": tasks}))
            .await?;
        for id in r["result"]["task_ids"].as_array().unwrap() {
            submitted.insert(id.as_str().unwrap().to_string());
        }
    }
    let mut seen = HashSet::new();
    let mut last_at = String::new();
    while seen.len() < submitted.len() {
        let line = tokio::time::timeout(Duration::from_secs(30), watcher.recv())
            .await
            .map_err(|_| anyhow::anyhow!("only {} of 1000 outcomes arrived", seen.len()))??;
        anyhow::ensure!(line["id"] == "w", "{line}");
        let event = &line["result"]["event"];
        anyhow::ensure!(
            event["state"] == "succeeded",
            "the filter let through {line}"
        );
        let at = event["at"].as_str().unwrap().to_string();
        anyhow::ensure!(at >= last_at, "out of order: {at} after {last_at}");
        last_at = at;
        let id = event["task_id"].as_str().unwrap().to_string();
        anyhow::ensure!(submitted.contains(&id), "an event for an unknown task {id}");
        anyhow::ensure!(seen.insert(id), "an outcome seen twice: {line}");
    }
    // Nothing died, so the dead-only watcher has nothing; a ping on its
    // connection is answered before any event would be.
    dead_only.send(&json!({"id": "p", "op": "ping"})).await?;
    let next = dead_only.recv().await?;
    anyhow::ensure!(next["id"] == "p", "the dead-only watcher got {next}");
    let status = daemon.request(json!({"op": "status"})).await?;
    anyhow::ensure!(status["result"]["watchers"] == 2, "{status}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_that_does_not_read_loses_events_not_deliveries() -> anyhow::Result<()> {
    let daemon = Daemon::builder(BIN).plugin("noop", None).start().await?;
    let mut slow = daemon.connect().await?;
    slow.send(&json!({"id": 1, "op": "watch"})).await?;
    anyhow::ensure!(slow.recv().await?["result"]["watching"] == true);
    // Three events a task, far more than the watcher's buffers hold; it
    // reads nothing meanwhile, and every task is delivered regardless.
    for _ in 0..10 {
        let tasks: Vec<Value> = (0..1000)
            .map(|_| json!({"platform": "noop", "target": "t", "body": "b"}))
            .collect();
        let r = daemon
            .request(json!({"op": "submit", "wait": true, "tasks": tasks}))
            .await?;
        let done = r["result"]["tasks"].as_array().unwrap();
        anyhow::ensure!(done.iter().all(|t| t["state"] == "succeeded"), "{r}");
    }
    // Reading now, it is told what it missed.
    let mut dropped = 0;
    for _ in 0..20_000 {
        let line = tokio::time::timeout(Duration::from_secs(10), slow.recv()).await??;
        if let Some(n) = line["result"]["dropped"].as_u64() {
            dropped += n;
            break;
        }
    }
    anyhow::ensure!(
        dropped > 0,
        "the slow watcher was never told of dropped events"
    );
    let status = daemon.request(json!({"op": "status"})).await?;
    anyhow::ensure!(
        status["result"]["watch_dropped"].as_u64() >= Some(dropped),
        "{status}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifyhub_watch_prints_events_as_they_happen() -> anyhow::Result<()> {
    use tokio::io::AsyncBufReadExt;
    let daemon = Daemon::builder(BIN).plugin("noop", None).start().await?;
    let mut child = tokio::process::Command::new(BIN)
        .arg("--socket")
        .arg(daemon.socket())
        .args(["watch", "--json", "--platform", "noop"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    // The watch is registered once status counts it; then submit.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while daemon.request(json!({"op": "status"})).await?["result"]["watchers"] != 1 {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the CLI never started watching"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let task = daemon
        .deliver(json!({"platform": "noop", "target": "t", "body": "b"}))
        .await?;
    let id = task["id"].as_str().unwrap();
    let mut states = Vec::new();
    while !states.contains(&"succeeded".to_string()) {
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await??
            .ok_or_else(|| anyhow::anyhow!("notifyhub watch exited"))?;
        let event: Value = serde_json::from_str(&line)?;
        anyhow::ensure!(event["event"]["task_id"] == id, "{line}");
        states.push(event["event"]["state"].as_str().unwrap().to_string());
    }
    anyhow::ensure!(states == ["queued", "running", "succeeded"], "{states:?}");
    Ok(())
}
