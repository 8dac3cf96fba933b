//! Per-destination rate limits, measured at a real receiver.

use std::time::{Duration, Instant};

use notifyhub_testkit::daemon::Daemon;
use notifyhub_testkit::receiver::{Receiver, Reply};
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_notifyhub");

/// With 5 per second on one destination, 20 tasks take at least 3 s and no
/// one-second window at the receiver sees more than 5 of them, while a task
/// for another destination submitted behind them is not held up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limited_destination_is_paced_and_others_are_not() -> anyhow::Result<()> {
    let receiver = Receiver::start(|_| Reply::new(200, "ok")).await;
    let allow = format!("allowed_hosts = [\"{}\"]\n", receiver.authority());
    let config = format!(
        r#"
[destinations.paced]
platform = "slack"
url = "{}"
rate_limits = ["5/1s"]

[destinations.free]
platform = "slack"
url = "{}"
rate_limits = []
"#,
        receiver.url("/services/paced"),
        receiver.url("/services/free"),
    );
    let daemon = Daemon::builder(BIN)
        .plugin("slack", Some(&allow))
        .config(&config)
        .start()
        .await?;

    let started = Instant::now();
    let tasks: Vec<_> = (0..20)
        .map(|i| json!({"target": "paced", "body": format!("paced {i}")}))
        .collect();
    let response = daemon
        .request(json!({"op": "submit", "tasks": tasks}))
        .await?;
    assert_eq!(response["ok"], true, "{response}");

    // While the backlog drains, `status` shows the destination, its budget
    // and its backlog.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status = daemon.request(json!({"op": "status"})).await?;
    let paced = status["result"]["pool"]["destinations"]
        .as_array()
        .and_then(|d| d.iter().find(|d| d["destination"] == "paced").cloned())
        .unwrap_or_default();
    assert_eq!(paced["rules"], json!(["5/1s"]), "{status}");
    assert!(paced["backlog"].as_u64().unwrap_or(0) >= 10, "{paced}");
    let text = daemon.cli(&["status"]);
    assert!(
        String::from_utf8_lossy(&text.stdout).contains("paced: 0 left of 5/1s"),
        "{}",
        String::from_utf8_lossy(&text.stdout)
    );

    // Another destination goes straight through: it is delivered while
    // the paced backlog still waits.
    let free = daemon
        .request(json!({"op": "submit", "wait": true, "task": {"target": "free", "body": "now"}}))
        .await?;
    assert_eq!(
        free["result"]["tasks"][0]["outcome"]["result"], "delivered",
        "{free}"
    );
    let paced_so_far = receiver
        .requests()
        .iter()
        .filter(|r| r.path == "/services/paced")
        .count();
    assert!(
        paced_so_far < 20,
        "the free destination waited for the whole paced backlog ({paced_so_far} of 20 went first)"
    );

    let requests = receiver.wait_for(21, Duration::from_secs(15)).await?;
    let elapsed = started.elapsed();
    let times: Vec<Instant> = requests
        .iter()
        .filter(|r| r.path == "/services/paced")
        .map(|r| r.at)
        .collect();
    assert_eq!(times.len(), 20);
    assert!(
        elapsed >= Duration::from_secs(3),
        "20 tasks at 5/s took only {elapsed:?}"
    );
    for (i, t) in times.iter().enumerate() {
        let in_window = times[i..]
            .iter()
            .filter(|u| u.duration_since(*t) < Duration::from_secs(1))
            .count();
        assert!(
            in_window <= 5,
            "{in_window} requests within 1 s (from request {i})"
        );
    }
    Ok(())
}

/// A platform's "slow down" pauses the destination: the task is retried
/// after the retry-after, and a task submitted meanwhile waits too instead
/// of hitting the platform again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_answer_pauses_the_destination() -> anyhow::Result<()> {
    let receiver = Receiver::start(|r| {
        if r.body.windows(5).any(|w| w == b"first") {
            Reply::new(429, "rate_limited").header("retry-after", "2")
        } else {
            Reply::new(200, "ok")
        }
    })
    .await;
    let allow = format!("allowed_hosts = [\"{}\"]\n", receiver.authority());
    let config = format!(
        "[destinations.hook]\nplatform = \"slack\"\nurl = \"{}\"\nrate_limits = []\n",
        receiver.url("/services/hook")
    );
    let daemon = Daemon::builder(BIN)
        .plugin("slack", Some(&allow))
        .config(&config)
        .retry("max_attempts = 1")
        .start()
        .await?;
    let first = daemon
        .request(json!({"op": "submit", "wait": true, "task": {"target": "hook", "body": "first"}}))
        .await?;
    assert_eq!(
        first["result"]["tasks"][0]["outcome"]["class"], "rate_limited",
        "{first}"
    );
    let status = daemon.request(json!({"op": "status"})).await?;
    let paused = &status["result"]["pool"]["destinations"][0];
    assert!(
        paused["paused_for_ms"].as_u64().unwrap_or(0) > 1000,
        "{status}"
    );

    let started = Instant::now();
    let second = daemon
        .request(
            json!({"op": "submit", "wait": true, "task": {"target": "hook", "body": "second"}}),
        )
        .await?;
    assert_eq!(
        second["result"]["tasks"][0]["outcome"]["result"], "delivered",
        "{second}"
    );
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1500),
        "the paused destination was hit after {waited:?}"
    );
    Ok(())
}
