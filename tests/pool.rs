//! The worker pool through the real daemon: scaling with load, warm-instance
//! affinity, fairness between platforms, and shutdown.

use std::time::{Duration, Instant};

use notifyhub_testkit::daemon::{Conn, Daemon};
use notifyhub_testkit::receiver::{Receiver, Reply};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_notifyhub");

async fn status(daemon: &Daemon) -> anyhow::Result<Value> {
    Ok(daemon.request(json!({"op": "status"})).await?["result"]["pool"].clone())
}

async fn submit(daemon: &Daemon, tasks: Vec<Value>) -> anyhow::Result<Value> {
    let response = daemon
        .request(json!({"op": "submit", "tasks": tasks}))
        .await?;
    anyhow::ensure!(response["ok"] == true, "{response}");
    Ok(response)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_grows_the_pool_and_it_shrinks_back_after() -> anyhow::Result<()> {
    let receiver =
        Receiver::start(|_| Reply::new(200, "ok").after(Duration::from_millis(100))).await;
    let config = "[pool]\nmin_workers = 2\nmax_workers = 64\nscale_up_delay = \"0s\"\n\
                  scale_down_delay = \"300ms\"\nmax_idle = \"500ms\"\n";
    let manifest = format!("allowed_hosts = [\"{}\"]\n", receiver.authority());
    let daemon = Daemon::builder(BIN)
        .plugin("webhook", Some(&manifest))
        .config(config)
        .start()
        .await?;
    assert_eq!(status(&daemon).await?["workers"], 2);

    let tasks = (0..600)
        .map(|_| json!({"platform": "webhook", "target": receiver.url("/"), "body": "burst"}))
        .collect();
    submit(&daemon, tasks).await?;
    let mut peak = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while receiver.requests().len() < 600 && Instant::now() < deadline {
        peak = peak.max(status(&daemon).await?["workers"].as_u64().unwrap());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(receiver.requests().len(), 600);
    // On an idle machine the pool follows demand toward max_workers; on one
    // busy with other tests the adaptive limit sees the CPU saturated and
    // climbs from eight workers per core, doubling while each step pays.
    // Either way a burst of slow tasks takes it well past min_workers.
    assert!(
        peak >= 16,
        "the pool peaked at {peak} workers for 600 slow tasks"
    );

    let mut workers = u64::MAX;
    let deadline = Instant::now() + Duration::from_secs(10);
    while workers != 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        workers = status(&daemon).await?["workers"].as_u64().unwrap();
    }
    assert_eq!(workers, 2, "the pool did not shrink back to min_workers");
    let pool = status(&daemon).await?;
    assert_eq!(
        pool["processed"], 600,
        "the pool's totals keep what its retired workers did"
    );
    let reasons: Vec<&str> = pool["recent_scale_events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["reason"].as_str().unwrap())
        .collect();
    assert!(
        reasons.iter().any(|r| r.contains("above target")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("below") || r.contains("idle")),
        "{reasons:?}"
    );
    assert!(
        daemon.logs().contains("scaling: load"),
        "scaling decisions are logged with a reason"
    );
    Ok(())
}

/// Runs 4 clients, each sending tasks to the 4 platforms in turn, and
/// returns the pool's warm-hit rate.
async fn warm_hit_rate(strategy: &str) -> anyhow::Result<f64> {
    let config = format!(
        "[pool]\nmin_workers = 8\nmax_workers = 8\nstrategy = \"{strategy}\"\n\
         max_warm_per_plugin = 2\nmax_warm_per_worker = 1\n"
    );
    let mut builder = Daemon::builder(BIN).config(&config);
    for p in ["p1", "p2", "p3", "p4"] {
        // The same component under four names: four plugins.
        builder = builder
            .file(
                &format!("{p}.wasm"),
                std::fs::read(notifyhub_testkit::plugins::path("noop")?)?,
            )
            .file(&format!("{p}.toml"), format!("platforms = [\"{p}\"]\n"));
    }
    let daemon = builder.start().await?;
    let mut clients = Vec::new();
    for client in 0..4 {
        let socket = daemon.socket().to_path_buf();
        clients.push(tokio::spawn(async move {
            let mut conn = Conn::connect(&socket).await?;
            for i in 0..200 {
                let platform = format!("p{}", (client + i) % 4 + 1);
                conn.send(&json!({"op": "submit", "wait": true,
                                  "task": {"platform": platform, "target": "-", "body": "b"}}))
                    .await?;
                let response = conn.recv().await?;
                anyhow::ensure!(
                    response["result"]["tasks"][0]["state"] == "succeeded",
                    "{response}"
                );
            }
            anyhow::Ok(())
        }));
    }
    for client in clients {
        client.await??;
    }
    let pool = status(&daemon).await?;
    assert_eq!(
        pool["warm_hits"].as_u64().unwrap() + pool["warm_misses"].as_u64().unwrap(),
        800
    );
    Ok(pool["warm_hit_rate"].as_f64().unwrap())
}

#[tokio::test]
async fn affinity_keeps_instances_warm_and_round_robin_does_not() -> anyhow::Result<()> {
    let affinity = warm_hit_rate("affinity").await?;
    let round_robin = warm_hit_rate("round-robin").await?;
    assert!(affinity >= 0.95, "affinity warm-hit rate {affinity:.3}");
    assert!(
        round_robin < affinity - 0.2,
        "round-robin {round_robin:.3} is not measurably below affinity {affinity:.3}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooded_platform_does_not_hold_back_another() -> anyhow::Result<()> {
    // 16 workers, all busy with slow deliveries of a flood of 2,000 tasks
    // (200 ms each, 25 s of work). Another platform's task must not wait for
    // the flood: the stated bound is one slow delivery plus scheduling, 1 s.
    let receiver =
        Receiver::start(|_| Reply::new(200, "ok").after(Duration::from_millis(200))).await;
    let manifest = format!("allowed_hosts = [\"{}\"]\n", receiver.authority());
    let daemon = Daemon::builder(BIN)
        .plugin("webhook", Some(&manifest))
        .plugin("noop", None)
        .config("[pool]\nmin_workers = 16\nmax_workers = 16\n")
        .start()
        .await?;
    let flood = (0..2000)
        .map(|_| json!({"platform": "webhook", "target": receiver.url("/"), "body": "f"}))
        .collect();
    submit(&daemon, flood).await?;
    receiver.wait_for(16, Duration::from_secs(10)).await?;

    // Each noop task finishes while the flood is still queued (checked
    // below): it did not wait behind it.
    for _ in 0..3 {
        let response = daemon
            .request(json!({"op": "submit", "wait": true,
                            "task": {"platform": "noop", "target": "-", "body": "urgent"}}))
            .await?;
        assert_eq!(response["result"]["tasks"][0]["state"], "succeeded");
    }
    let pool = status(&daemon).await?;
    assert!(
        pool["queued_by_platform"]["webhook"].as_u64().unwrap() > 1000,
        "the flood was still queued"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_in_flight_tasks() -> anyhow::Result<()> {
    let receiver =
        Receiver::start(|_| Reply::new(200, "ok").after(Duration::from_millis(300))).await;
    let manifest = format!("allowed_hosts = [\"{}\"]\n", receiver.authority());
    let mut daemon = Daemon::builder(BIN)
        .plugin("webhook", Some(&manifest))
        .config("[pool]\nmin_workers = 4\nmax_workers = 4\nshutdown_timeout = \"5s\"\n")
        .start()
        .await?;
    let tasks = (0..12)
        .map(|_| json!({"platform": "webhook", "target": receiver.url("/"), "body": "x"}))
        .collect();
    submit(&daemon, tasks).await?;
    receiver.wait_for(4, Duration::from_secs(5)).await?;
    let status = daemon.terminate()?;
    assert!(status.success(), "{status}");
    let logs = daemon.logs();
    // Four were in flight; they finished. The other eight stayed queued.
    assert!(
        logs.contains("finished: 4") && logs.contains("cancelled: 0"),
        "{logs}"
    );
    assert!(logs.contains("left_queued: 8"), "{logs}");
    assert_eq!(
        receiver.requests().len(),
        4,
        "no new task started during shutdown"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_cancels_what_outlives_the_timeout_and_says_so() -> anyhow::Result<()> {
    let receiver = Receiver::start(|_| Reply::new(200, "ok").after(Duration::from_secs(5))).await;
    let manifest = format!("allowed_hosts = [\"{}\"]\n", receiver.authority());
    let mut daemon = Daemon::builder(BIN)
        .plugin("webhook", Some(&manifest))
        .config("[pool]\nmin_workers = 3\nmax_workers = 3\nshutdown_timeout = \"300ms\"\n")
        .start()
        .await?;
    let tasks = (0..3)
        .map(|_| json!({"platform": "webhook", "target": receiver.url("/"), "body": "x"}))
        .collect();
    submit(&daemon, tasks).await?;
    receiver.wait_for(3, Duration::from_secs(5)).await?;
    // The receiver holds each delivery for 5 s; a shutdown that honours its
    // 300 ms timeout cancels all three (exit 1, reported below).
    let status = daemon.terminate()?;
    assert_eq!(
        status.code(),
        Some(1),
        "a shutdown that cancelled tasks must not report success"
    );
    let logs = daemon.logs();
    assert!(
        logs.contains("finished: 0") && logs.contains("cancelled: 3"),
        "{logs}"
    );
    Ok(())
}

#[tokio::test]
async fn scale_changes_bounds_at_run_time() -> anyhow::Result<()> {
    let daemon = Daemon::builder(BIN)
        .plugin("noop", None)
        .config("[pool]\nmin_workers = 2\n")
        .start()
        .await?;
    let out = daemon.cli(&["scale", "--min", "6", "--max", "10"]);
    assert!(out.status.success(), "{out:?}");
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut pool = status(&daemon).await?;
    while pool["workers"] != 6 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        pool = status(&daemon).await?;
    }
    assert_eq!(
        (pool["workers"].as_u64(), pool["max_workers"].as_u64()),
        (Some(6), Some(10))
    );
    let bad = daemon
        .request(json!({"op": "scale", "min": 5, "max": 1}))
        .await?;
    assert_eq!(bad["error"]["code"], "invalid_request");
    // Instance slots are sized for the configured max_workers (512 here):
    // a max past them would fail instantiations, so it is refused.
    let beyond = daemon.request(json!({"op": "scale", "max": 4000})).await?;
    assert_eq!(beyond["error"]["code"], "invalid_request", "{beyond}");
    let message = beyond["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("restart"), "{message}");
    assert_eq!(status(&daemon).await?["max_workers"], 10);
    Ok(())
}
