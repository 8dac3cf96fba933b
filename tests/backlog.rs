//! Scheduled tasks beyond the memory horizon wait on disk, not in memory:
//! real daemons with the durable store, a real receiver.

use std::time::{Duration, Instant};

use notifyhub_testkit::daemon::Daemon;
use notifyhub_testkit::receiver::{Receiver, Reply};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_notifyhub");
const WAIT: Duration = Duration::from_secs(60);

async fn host(receiver: &Receiver, horizon: &str) -> anyhow::Result<Daemon> {
    Daemon::builder(BIN)
        .plugin(
            "webhook",
            Some(&format!("allowed_hosts = [\"{}\"]\n", receiver.authority())),
        )
        .config(&format!("[store]\nmemory_horizon = \"{horizon}\"\n"))
        .start()
        .await
}

async fn call(daemon: &Daemon, request: Value) -> anyhow::Result<Value> {
    let answer = daemon.request(request).await?;
    anyhow::ensure!(answer["ok"] == true, "{answer}");
    Ok(answer["result"].clone())
}

fn later(receiver: &Receiver, body: &str, delay: &str) -> Value {
    json!({"platform": "webhook", "target": receiver.url("/hook"), "body": body, "delay": delay})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_beyond_the_horizon_is_read_back_and_delivered_on_time() -> anyhow::Result<()> {
    let receiver = Receiver::start(|_| Reply::new(200, "ok")).await;
    let mut daemon = host(&receiver, "1s").await?;
    let submitted = Instant::now();
    let answer = call(
        &daemon,
        json!({"op": "submit", "tasks": [later(&receiver, "parked", "4s")]}),
    )
    .await?;
    let id = answer["task_ids"][0]
        .as_str()
        .unwrap_or_default()
        .to_string();
    // On disk only, it is still answered for, listed, and not retried.
    let view = call(&daemon, json!({"op": "task", "task_id": id})).await?;
    anyhow::ensure!(
        view["state"] == "queued" && view["not_before"].is_string(),
        "{view}"
    );
    let listed = call(&daemon, json!({"op": "tasks", "state": "queued"})).await?;
    anyhow::ensure!(listed["tasks"][0]["id"] == id.as_str(), "{listed}");
    let refused = daemon
        .request(json!({"op": "retry", "task_id": id}))
        .await?;
    anyhow::ensure!(refused["ok"] == false, "{refused}");
    // A restart does not lose it either: it is read back when due.
    daemon.terminate()?;
    daemon.restart().await?;
    let arrived = receiver.wait_for(1, WAIT).await?;
    anyhow::ensure!(
        arrived[0].at >= submitted + Duration::from_secs(4),
        "delivered {:?} after submit, before it was due",
        arrived[0].at - submitted
    );
    anyhow::ensure!(arrived.len() == 1, "{} deliveries", arrived.len());
    daemon.wait_task_state(&id, "succeeded", WAIT).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "heavy (100,000 tasks): cargo xtask test --full; also `cargo bench --bench backlog`"]
async fn a_backlog_of_scheduled_tasks_does_not_grow_memory() -> anyhow::Result<()> {
    const TASKS: usize = 100_000;
    let receiver = Receiver::start(|_| Reply::new(200, "ok")).await;
    let daemon = host(&receiver, "1m").await?;
    // Warm the request path first, so what follows measures the backlog.
    let batch: Vec<Value> = (0..5_000)
        .map(|i| later(&receiver, &format!("b{i}"), "1h"))
        .collect();
    call(&daemon, json!({"op": "submit", "tasks": batch})).await?;
    let before = daemon.memory_kib("VmRSS")?;
    let mut conn = daemon.connect().await?;
    for _ in 0..TASKS / 5_000 {
        conn.send(&json!({"op": "submit", "tasks": batch})).await?;
        let answer = conn.recv().await?;
        anyhow::ensure!(answer["ok"] == true, "{answer}");
    }
    let grown = daemon.memory_kib("VmRSS")?.saturating_sub(before);
    eprintln!(
        "resident memory grew {} KiB for {TASKS} parked tasks",
        grown
    );
    // In memory, each task costs about 1 KiB (100,000 → ~100 MiB); parked
    // on disk, the daemon holds none of them.
    anyhow::ensure!(
        grown < 40 * 1024,
        "resident memory grew {} MiB for {TASKS} tasks due in an hour",
        grown / 1024
    );
    let status = call(&daemon, json!({"op": "status"})).await?;
    anyhow::ensure!(status["pool"]["queued"] == 0, "{status}");
    Ok(())
}

/// A keyed `submit` with `wait` that names a task accepted before waits for
/// that task wherever it is: parked on disk beyond the memory horizon (the
/// answer comes once it has run), or finished and pushed out of memory by
/// newer tasks (its record at once). Neither runs again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_keyed_wait_answers_for_the_first_task_wherever_it_is() -> anyhow::Result<()> {
    let receiver = Receiver::start(|_| Reply::new(200, "ok")).await;
    let daemon = Daemon::builder(BIN)
        .plugin(
            "webhook",
            Some(&format!("allowed_hosts = [\"{}\"]\n", receiver.authority())),
        )
        .config("[store]\nmemory_horizon = \"1s\"\nmax_finished_in_memory = 1\n")
        .start()
        .await?;
    let mut parked = later(&receiver, "parked", "3s");
    parked["idempotency_key"] = json!("parked");
    let first = call(&daemon, json!({"op": "submit", "tasks": [parked]})).await?;
    let id = first["task_ids"][0].clone();
    let waited = call(
        &daemon,
        json!({"op": "submit", "wait": true, "tasks": [parked]}),
    )
    .await?;
    anyhow::ensure!(
        waited["tasks"][0]["id"] == id && waited["tasks"][0]["state"] == "succeeded",
        "the wait on the parked task answered: {waited}"
    );

    let now = json!({"platform": "webhook", "target": receiver.url("/hook"), "body": "now",
                     "idempotency_key": "now"});
    let first = call(
        &daemon,
        json!({"op": "submit", "wait": true, "tasks": [now]}),
    )
    .await?;
    let id = first["tasks"][0]["id"].clone();
    // Another finished task pushes the first out of memory (at most 1 kept).
    let other = json!({"platform": "webhook", "target": receiver.url("/hook"), "body": "other"});
    call(
        &daemon,
        json!({"op": "submit", "wait": true, "tasks": [other]}),
    )
    .await?;
    let again = call(
        &daemon,
        json!({"op": "submit", "wait": true, "tasks": [now]}),
    )
    .await?;
    anyhow::ensure!(
        again["tasks"][0]["id"] == id && again["tasks"][0]["state"] == "succeeded",
        "the wait on the finished task answered: {again}"
    );
    let bodies: Vec<String> = receiver
        .requests()
        .iter()
        .map(|r| {
            r.json()["data"]["body"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    anyhow::ensure!(bodies == ["parked", "now", "other"], "{bodies:?}");
    Ok(())
}
