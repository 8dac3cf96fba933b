//! Prometheus metrics from the real daemon: scrape after a known load and
//! check the counters.

use notifyhub_testkit::daemon::Daemon;
use notifyhub_testkit::receiver::{Receiver, Reply};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BIN: &str = env!("CARGO_BIN_EXE_notifyhub");

/// A loopback port nobody listens on right now.
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

async fn scrape(port: u16) -> anyhow::Result<String> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .await?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await?;
    anyhow::ensure!(
        answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200"),
        "{answer}"
    );
    Ok(answer)
}

/// The value of the first sample line that starts with `prefix`.
fn value(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_match_a_known_load() -> anyhow::Result<()> {
    let receiver = Receiver::start(|req| match req.path.as_str() {
        "/limited" => Reply::new(429, "slow down").header("retry-after", "0"),
        _ => Reply::new(500, "down"),
    })
    .await;
    let port = free_port()?;
    let daemon = Daemon::builder(BIN)
        .plugin("noop", None)
        .plugin(
            "webhook",
            Some(&format!("allowed_hosts = [\"{}\"]\n", receiver.authority())),
        )
        .config(&format!(
            "[metrics]\nlisten = \"127.0.0.1:{port}\"\n[rate_limits]\nwebhook = []\n\
             [destinations.hourly]\nplatform = \"noop\"\ntarget = \"t\"\nrate_limits = [\"1/1h\"]\n"
        ))
        .retry("max_attempts = 2\nbase = \"10ms\"\n")
        .start()
        .await?;
    // 10 delivered (and an 11th below); 3 that fail twice (retried once, then dead); 1 rate
    // limited twice (two pauses, one retry, then dead).
    for _ in 0..10 {
        daemon
            .deliver(json!({"platform": "noop", "target": "t", "body": "b"}))
            .await?;
    }
    for path in ["/x", "/x", "/x", "/limited"] {
        let task = daemon
            .deliver(json!({"platform": "webhook", "target": receiver.url(path), "body": "b"}))
            .await?;
        anyhow::ensure!(task["state"] == "dead" && task["attempts"] == 2, "{task}");
    }
    // Two for a destination allowed one an hour: the second waits its turn.
    let paced = json!({"target": "hourly", "body": "b"});
    let response = daemon
        .request(json!({"op": "submit", "tasks": [paced.clone(), paced]}))
        .await?;
    anyhow::ensure!(response["ok"] == true, "{response}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let text = loop {
        let text = scrape(port).await?;
        let first_delivered = value(
            &text,
            r#"notifyhub_attempts_total{platform="noop",outcome="delivered"}"#,
        ) == Some(11.0);
        if first_delivered && value(&text, "notifyhub_paced_tasks") == Some(1.0) {
            break text;
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the paced task never showed:\n{text}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let expect = [
        (
            r#"notifyhub_attempts_total{platform="noop",outcome="delivered"}"#,
            11.0,
        ),
        (
            r#"notifyhub_attempts_total{platform="webhook",outcome="retryable"}"#,
            6.0,
        ),
        (
            r#"notifyhub_attempts_total{platform="webhook",outcome="rate_limited"}"#,
            2.0,
        ),
        (r#"notifyhub_retries_total{platform="webhook"}"#, 4.0),
        (r#"notifyhub_dead_letters_total{platform="webhook"}"#, 4.0),
        (
            r#"notifyhub_destination_pauses_total{platform="webhook"}"#,
            2.0,
        ),
        (r#"notifyhub_attempt_seconds_count{platform="noop"}"#, 11.0),
        (
            r#"notifyhub_task_end_to_end_seconds_count{platform="noop"}"#,
            11.0,
        ),
        (r#"notifyhub_plugin_loads_total{result="loaded"}"#, 2.0),
        (r#"notifyhub_pacing_waits_total{platform="noop"}"#, 1.0),
        (r#"notifyhub_paced_tasks"#, 1.0),
    ];
    for (series, want) in expect {
        let got = value(&text, series);
        anyhow::ensure!(
            got == Some(want),
            "{series} = {got:?}, want {want}:\n{text}"
        );
    }
    let warm = value(&text, r#"notifyhub_warm_instances_total{result="hit"}"#).unwrap_or(0.0)
        + value(&text, r#"notifyhub_warm_instances_total{result="miss"}"#).unwrap_or(0.0);
    anyhow::ensure!(warm == 19.0, "warm hits + misses = {warm}:\n{text}");
    anyhow::ensure!(value(&text, "notifyhub_queued_tasks").is_some(), "{text}");
    // Each of the 14 tasks delivered one after another was acknowledged
    // only after its own commit, and the pair after them in one more.
    let commits = value(&text, "notifyhub_store_commit_seconds_count").unwrap_or(0.0);
    let writes = value(&text, "notifyhub_store_commit_batch_sum").unwrap_or(0.0);
    anyhow::ensure!(
        commits >= 15.0 && writes >= commits,
        "{commits} commits of {writes} writes:\n{text}"
    );
    // Both plugins were looked up in the compile cache; the one delivered
    // plugin instance holds guest memory.
    let lookups = value(
        &text,
        r#"notifyhub_compile_cache_lookups_total{result="hit"}"#,
    )
    .unwrap_or(0.0)
        + value(
            &text,
            r#"notifyhub_compile_cache_lookups_total{result="miss"}"#,
        )
        .unwrap_or(0.0);
    anyhow::ensure!(lookups >= 2.0, "{lookups} compile-cache lookups:\n{text}");
    anyhow::ensure!(
        value(&text, "notifyhub_guest_memory_bytes").is_some_and(|b| b > 0.0),
        "{text}"
    );
    // The shipped dashboard asks only for series the daemon exports.
    let dashboard = std::fs::read_to_string(
        notifyhub_testkit::repo_root().join("examples/grafana/notifyhub.json"),
    )?;
    let dashboard: serde_json::Value = serde_json::from_str(&dashboard)?;
    let mut queried = 0;
    for target in dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap())
    {
        let expr = target["expr"].as_str().unwrap();
        for name in expr
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("notifyhub_"))
        {
            let family = ["_bucket", "_sum", "_count", "_total"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .unwrap_or(name);
            anyhow::ensure!(
                text.contains(&format!("# TYPE {family} ")),
                "the dashboard queries {name}, which the daemon does not export"
            );
            queried += 1;
        }
    }
    anyhow::ensure!(queried >= 10, "the dashboard queries only {queried} series");
    // Labels are bounded: no task id, no target.
    anyhow::ensure!(
        !text.contains(&receiver.authority()),
        "a target leaked into a label"
    );
    let id_like = text
        .split(['"', ' ', '{', '}', ','])
        .any(|t| t.len() == 36 && t.matches('-').count() == 4);
    anyhow::ensure!(!id_like, "a task id leaked into a label");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_listen_only_on_loopback() -> anyhow::Result<()> {
    let started = Daemon::builder(BIN)
        .plugin("noop", None)
        .config("[metrics]\nlisten = \"0.0.0.0:9464\"\n")
        .start()
        .await;
    let Err(e) = started else {
        anyhow::bail!("a daemon serving metrics on 0.0.0.0 started");
    };
    anyhow::ensure!(
        format!("{e:#}").contains("only a loopback address"),
        "{e:#}"
    );
    Ok(())
}

/// At the default level a delivery that succeeds logs nothing, and its
/// span is not even made; the lines an attempt does log (the plugin's own,
/// a failure) still carry its span, the outcome on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_logged_during_an_attempt_carry_its_span_at_the_default_level() -> anyhow::Result<()>
{
    let daemon = Daemon::builder(BIN)
        .plugin("hostile", None)
        .env("NOTIFYHUB_LOG_FORMAT", "json")
        .retry("max_attempts = 1\n")
        .start()
        .await?;
    let mut ids = Vec::new();
    for body in ["log-once", "trap"] {
        let task = daemon
            .deliver(json!({"platform": "hostile", "target": "t", "body": body}))
            .await?;
        ids.push(task["id"].as_str().unwrap_or_default().to_string());
    }
    let logs = daemon.logs();
    let entries: Vec<serde_json::Value> = logs
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    let in_span = |id: &str, message: &str| {
        entries.iter().find(|e| {
            e["span"]["name"] == "attempt"
                && e["span"]["task"] == id
                && e["fields"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains(message))
        })
    };
    let line = in_span(&ids[0], "a line from inside the plugin").ok_or_else(|| {
        anyhow::anyhow!("the plugin's line is not in its attempt's span:\n{logs}")
    })?;
    anyhow::ensure!(
        line["span"]["platform"] == "hostile" && line["span"]["attempt"] == 1,
        "{line}"
    );
    let failed = in_span(&ids[1], "delivery failed")
        .ok_or_else(|| anyhow::anyhow!("the failure is not in its attempt's span:\n{logs}"))?;
    anyhow::ensure!(failed["span"]["outcome"] == "crashed", "{failed}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_each_attempt_s_span() -> anyhow::Result<()> {
    let daemon = Daemon::builder(BIN)
        .plugin("noop", None)
        .env("NOTIFYHUB_LOG_FORMAT", "json")
        // A delivery that succeeds is logged at debug.
        .env("RUST_LOG", "debug")
        .start()
        .await?;
    let task = daemon
        .deliver(json!({"platform": "noop", "target": "t", "body": "b"}))
        .await?;
    let id = task["id"].as_str().unwrap();
    let logs = daemon.logs();
    let mut found = false;
    for line in logs.lines().filter(|l| !l.trim().is_empty()) {
        let entry: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| anyhow::anyhow!("not a JSON log line ({e}): {line}"))?;
        let span = &entry["span"];
        if span["name"] == "attempt" && span["task"] == id {
            anyhow::ensure!(
                span["platform"] == "noop" && span["plugin"] == "noop",
                "{line}"
            );
            anyhow::ensure!(
                span["version"].is_string() && span["attempt"] == 1,
                "{line}"
            );
            found |= entry["fields"]["message"] == "delivered";
        }
    }
    anyhow::ensure!(
        found,
        "no `delivered` line inside the attempt's span:\n{logs}"
    );
    Ok(())
}
