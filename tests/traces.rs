//! Attempt spans exported over OTLP/HTTP to a real (small) collector that
//! decodes what arrives.

use std::time::Duration;

use notifyhub_testkit::daemon::Daemon;
use notifyhub_testkit::otlp::{Collector, Span};
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_notifyhub");

fn attempt_of<'a>(spans: &'a [Span], task: &str) -> Option<&'a Span> {
    spans
        .iter()
        .find(|s| s.name == "attempt" && s.attribute("task") == Some(task))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_attempt_is_a_span_with_the_plugin_s_lines_inside() -> anyhow::Result<()> {
    let collector = Collector::start().await;
    let daemon = Daemon::builder(BIN)
        .plugin("noop", None)
        .plugin("hostile", None)
        .config(&format!(
            "[traces]\notlp_endpoint = \"{}\"\nservice_name = \"nh-test\"\n",
            collector.endpoint()
        ))
        .retry("max_attempts = 1\n")
        // Export every 100 ms rather than the SDK's 5 s.
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .start()
        .await?;
    let mut ids = Vec::new();
    for (platform, body) in [("noop", "b"), ("hostile", "log-once"), ("hostile", "trap")] {
        let task = daemon
            .deliver(json!({"platform": platform, "target": "t", "body": body}))
            .await?;
        ids.push(task["id"].as_str().unwrap_or_default().to_string());
    }
    let spans = collector
        .wait_until(Duration::from_secs(30), |spans| {
            ids.iter().all(|id| attempt_of(spans, id).is_some())
        })
        .await?;

    let delivered = attempt_of(&spans, &ids[0]).expect("waited for");
    anyhow::ensure!(delivered.service == "nh-test", "{delivered:?}");
    for (key, want) in [
        ("platform", "noop"),
        ("plugin", "noop"),
        ("attempt", "1"),
        ("outcome", "delivered"),
        ("destination", "-"),
    ] {
        anyhow::ensure!(
            delivered.attribute(key) == Some(want),
            "{key}: {delivered:?}"
        );
    }
    anyhow::ensure!(
        delivered
            .attribute("version")
            .is_some_and(|v| !v.is_empty()),
        "{delivered:?}"
    );
    // The outcome is the span's attribute (checked above); the daemon's own
    // `delivered` line is at debug, below the default level.
    anyhow::ensure!(delivered.status != 2, "{delivered:?}");

    let logged = attempt_of(&spans, &ids[1]).expect("waited for");
    anyhow::ensure!(
        logged
            .events
            .iter()
            .any(|(name, _)| name == "a line from inside the plugin"),
        "the plugin's own line is not inside its attempt's span: {logged:?}"
    );

    let trapped = attempt_of(&spans, &ids[2]).expect("waited for");
    anyhow::ensure!(
        trapped.status == 2,
        "a failed attempt is an error span: {trapped:?}"
    );
    anyhow::ensure!(
        trapped
            .attribute("outcome")
            .is_some_and(|o| o != "delivered"),
        "{trapped:?}"
    );
    // Three attempts, three traces: tasks are not chained into one.
    anyhow::ensure!(
        delivered.trace_id != logged.trace_id && logged.trace_id != trapped.trace_id,
        "{spans:?}"
    );
    anyhow::ensure!(collector.rejected() == 0, "malformed exports arrived");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_still_queued_are_sent_when_the_daemon_stops() -> anyhow::Result<()> {
    let collector = Collector::start().await;
    let mut daemon = Daemon::builder(BIN)
        .plugin("noop", None)
        .config(&format!(
            "[traces]\notlp_endpoint = \"{}\"\n",
            collector.endpoint()
        ))
        // Far longer than the test: only the flush at shutdown can send it.
        .env("OTEL_BSP_SCHEDULE_DELAY", "3600000")
        .start()
        .await?;
    let task = daemon
        .deliver(json!({"platform": "noop", "target": "t", "body": "b"}))
        .await?;
    let id = task["id"].as_str().unwrap_or_default().to_string();
    anyhow::ensure!(collector.spans().is_empty(), "exported before the stop");
    let status = daemon.terminate()?;
    anyhow::ensure!(status.success(), "{status}: {}", daemon.logs());
    let spans = collector.spans();
    let span = attempt_of(&spans, &id)
        .ok_or_else(|| anyhow::anyhow!("the queued span was lost at stop: {spans:?}"))?;
    anyhow::ensure!(span.service == "notifyhub", "{span:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_endpoint_is_refused_at_start_with_the_reason() -> anyhow::Result<()> {
    let started = Daemon::builder(BIN)
        .config("[traces]\notlp_endpoint = \"127.0.0.1:4318\"\n")
        .start()
        .await;
    let Err(error) = started else {
        anyhow::bail!("a daemon started with an endpoint that has no scheme");
    };
    anyhow::ensure!(format!("{error:#}").contains("otlp_endpoint"), "{error:#}");
    Ok(())
}
