//! Deliveries through the real daemon and the real plugins to local
//! receivers that check each request the way the platform would.

use std::time::Duration;

use notifyhub_testkit::daemon::Daemon;
use notifyhub_testkit::receiver::{Receiver, Recorded, Reply};
use notifyhub_testkit::verify;
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_notifyhub");
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn allow(receiver: &Receiver) -> String {
    format!("allowed_hosts = [\"{}\"]\n", receiver.authority())
}

/// Submits one task with `wait: true` and returns the finished task.
fn failure(task: &Value) -> (String, String, Option<u64>) {
    let outcome = &task["outcome"];
    assert_eq!(outcome["result"], "failed", "expected a failure: {task}");
    (
        outcome["class"].as_str().unwrap().to_string(),
        outcome["message"].as_str().unwrap().to_string(),
        outcome["retry_after_ms"].as_u64(),
    )
}

/// Delivers to `target(name)` for each case and checks the failure's class
/// and retry-after.
async fn assert_classes(
    daemon: &Daemon,
    platform: &str,
    target: impl Fn(&str) -> String,
    cases: &[(&str, &str, Option<u64>)],
) -> anyhow::Result<()> {
    for (name, class, retry) in cases {
        let task = daemon
            .deliver(json!({"platform": platform, "target": target(name), "body": "x"}))
            .await?;
        let (got, message, got_retry) = failure(&task);
        assert_eq!(
            (got.as_str(), got_retry),
            (*class, *retry),
            "{name}: {message}"
        );
    }
    Ok(())
}

/// What a Standard Webhooks consumer checks.
fn check_webhook(req: &Recorded) -> Result<(), String> {
    if req.method != "POST" || req.path != "/hooks/notify" {
        return Err(format!("unexpected {} {}", req.method, req.path));
    }
    if req.header("content-type") != Some("application/json") {
        return Err(format!("content-type {:?}", req.header("content-type")));
    }
    let id = req.header("webhook-id").ok_or("no webhook-id")?;
    let ts = req
        .header("webhook-timestamp")
        .ok_or("no webhook-timestamp")?;
    let sig = req
        .header("webhook-signature")
        .ok_or("no webhook-signature")?;
    verify::standard_webhooks(SECRET, id, ts, sig, &req.body)?;
    let doc = req.json();
    if doc["type"] != "notification.sent" || !doc["data"]["body"].is_string() {
        return Err(format!("unexpected document {doc}"));
    }
    Ok(())
}

#[tokio::test]
async fn webhook_delivers_a_signed_standard_webhook() -> anyhow::Result<()> {
    let receiver = Receiver::start(|req| match check_webhook(req) {
        Ok(()) => Reply::new(204, ""),
        Err(e) => Reply::new(401, e),
    })
    .await;
    let manifest = format!(
        "{}[secrets]\nsigning_secret = {{ env = \"TEST_WEBHOOK_SECRET\" }}\n",
        allow(&receiver)
    );
    let daemon = Daemon::builder(BIN)
        .plugin("webhook", Some(&manifest))
        .env("TEST_WEBHOOK_SECRET", SECRET)
        // Every line the daemon writes, the delivery's own included, is
        // checked for the secret below.
        .env("RUST_LOG", "debug")
        .start()
        .await?;

    let task = daemon
        .deliver(
            json!({"platform": "webhook", "target": receiver.url("/hooks/notify"),
               "title": "Disk full", "body": "/var is at 98%", "priority": "high",
               "metadata": {"host": "db1"}}),
        )
        .await?;
    assert_eq!(task["state"], "succeeded", "{task}");
    assert_eq!(task["outcome"]["status"], "HTTP 204");
    assert_eq!(task["plugin"]["name"], "webhook");

    let requests = receiver.requests();
    assert_eq!(requests.len(), 1);
    let doc = requests[0].json();
    assert_eq!(doc["data"]["title"], "Disk full");
    assert_eq!(doc["data"]["body"], "/var is at 98%");
    assert_eq!(doc["data"]["priority"], "high");
    assert_eq!(doc["data"]["metadata"]["host"], "db1");
    // The task id is the stable webhook-id receivers de-duplicate on.
    assert_eq!(requests[0].header("webhook-id"), task["id"].as_str());

    // The secret and the target path never show in the daemon's output.
    let logs = daemon.logs();
    assert!(
        logs.contains("delivered plugin=webhook"),
        "the delivery is logged at debug:\n{logs}"
    );
    assert!(!logs.contains("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"));
    assert!(
        !logs.contains("/hooks/notify"),
        "target path leaked into logs"
    );
    assert!(
        !task.to_string().contains("/hooks/notify"),
        "target path leaked: {task}"
    );
    Ok(())
}

#[tokio::test]
async fn webhook_answers_map_to_error_classes() -> anyhow::Result<()> {
    let receiver = Receiver::start(|req| match req.path.as_str() {
        "/429" => Reply::new(429, "slow down").header("retry-after", "7"),
        "/500" => Reply::new(500, "oops"),
        "/502" => Reply::new(502, "bad gateway"),
        "/400" => Reply::new(400, "bad payload"),
        "/410" => Reply::new(410, "gone"),
        "/301" => Reply::new(301, "").header("location", "http://elsewhere.example/"),
        _ => Reply::new(200, "ok"),
    })
    .await;
    let daemon = Daemon::builder(BIN)
        .plugin("webhook", Some(&allow(&receiver)))
        .start()
        .await?;

    let cases = [
        ("/429", "rate_limited", Some(7000)),
        ("/500", "retryable", None),
        ("/502", "rate_limited", Some(1000)),
        ("/400", "invalid", None),
        ("/410", "permanent", None),
        ("/301", "permanent", None),
    ];
    for (path, class, retry_after) in cases {
        let task = daemon
            .deliver(json!({"platform": "webhook", "target": receiver.url(path), "body": "x"}))
            .await?;
        let (got_class, message, got_retry) = failure(&task);
        assert_eq!(got_class, class, "{path}: {message}");
        assert_eq!(got_retry, retry_after, "{path}");
        assert_eq!(task["state"], "dead");
    }
    Ok(())
}

#[tokio::test]
async fn requests_outside_the_allowlist_are_denied_and_logged() -> anyhow::Result<()> {
    let allowed = Receiver::start(|_| Reply::new(200, "ok")).await;
    let forbidden = Receiver::start(|_| Reply::new(200, "ok")).await;
    let daemon = Daemon::builder(BIN)
        .plugin("webhook", Some(&allow(&allowed)))
        .start()
        .await?;

    let task = daemon
        .deliver(json!({"platform": "webhook", "target": forbidden.url("/x"), "body": "x"}))
        .await?;
    let (class, message, _) = failure(&task);
    assert_eq!(class, "permanent");
    assert!(message.contains("denied"), "{message}");
    assert!(
        forbidden.requests().is_empty(),
        "the request reached a host that is not allowed"
    );
    assert!(
        daemon.logs().contains("outbound request denied"),
        "{}",
        daemon.logs()
    );

    // A plugin without a manifest may reach nothing at all.
    let bare = Daemon::builder(BIN).plugin("webhook", None).start().await?;
    let task = bare
        .deliver(json!({"platform": "webhook", "target": allowed.url("/"), "body": "x"}))
        .await?;
    assert_eq!(failure(&task).0, "permanent");
    assert!(allowed.requests().is_empty());
    Ok(())
}

/// The SDK sends a body that fits in one call (`notifyhub:http/client`)
/// whole and streams a larger one through `wasi:http`; the receiver gets
/// the same request either way, and the allowlist holds on both paths.
#[tokio::test]
async fn large_bodies_stream_and_small_ones_go_in_one_call() -> anyhow::Result<()> {
    let receiver = Receiver::start(|req| {
        let doc = req.json();
        let complete = doc["type"] == "notification.sent"
            && req.header("content-length") == Some(&req.body.len().to_string());
        if complete {
            Reply::new(200, "ok")
        } else {
            Reply::new(400, "incomplete")
        }
    })
    .await;
    let forbidden = Receiver::start(|_| Reply::new(200, "ok")).await;
    let daemon = Daemon::builder(BIN)
        .plugin("webhook", Some(&allow(&receiver)))
        .start()
        .await?;
    // The webhook plugin caps the message's body, not its metadata: a
    // 600 KB value makes the document larger than one call takes (512 KiB).
    let blob = "x".repeat(600_000);
    for (size, metadata) in [("small", json!({})), ("large", json!({"blob": blob}))] {
        for (to, expect) in [(&receiver, "succeeded"), (&forbidden, "dead")] {
            let task = daemon
                .deliver(json!({"platform": "webhook", "target": to.url("/hook"),
                                "body": size, "metadata": metadata}))
                .await?;
            assert_eq!(task["state"], expect, "{size}: {task}");
        }
    }
    let sizes: Vec<usize> = receiver.requests().iter().map(|r| r.body.len()).collect();
    assert!(
        sizes.len() == 2 && sizes[0] < 4096 && sizes[1] > 600_000,
        "one small and one large request arrive whole: {sizes:?}"
    );
    assert_eq!(
        receiver.requests()[1].json()["data"]["metadata"]["blob"],
        blob
    );
    assert!(
        forbidden.requests().is_empty(),
        "the allowlist was bypassed"
    );

    // Both paths are the plugin's: it imports the one-call interface and
    // `wasi:http`'s handler.
    let check = std::process::Command::new(BIN)
        .arg("check")
        .arg(notifyhub_testkit::plugins::path("webhook")?)
        .output()?;
    let imports = String::from_utf8_lossy(&check.stdout);
    for import in ["notifyhub:http/client@", "wasi:http/outgoing-handler@"] {
        assert!(imports.contains(import), "no {import} in:\n{imports}");
    }
    Ok(())
}

/// What Slack checks on an incoming webhook.
fn check_slack(req: &Recorded) -> Reply {
    if req.method != "POST" || !req.path.starts_with("/services/T000/B000/") {
        return Reply::new(404, "no_service");
    }
    if req.header("content-type") != Some("application/json") {
        return Reply::new(400, "invalid_payload");
    }
    let doc = req.json();
    let Some(text) = doc["text"].as_str() else {
        return Reply::new(400, "no_text");
    };
    if text.is_empty() {
        return Reply::new(400, "no_text");
    }
    if let Some(blocks) = doc["blocks"].as_array() {
        let header_ok = blocks[0]["type"] == "header"
            && blocks[0]["text"]["text"]
                .as_str()
                .is_some_and(|t| t.chars().count() <= 150);
        let sections_ok = blocks[1..].iter().all(|b| {
            b["type"] == "section"
                && b["text"]["type"] == "mrkdwn"
                && b["text"]["text"]
                    .as_str()
                    .is_some_and(|t| t.chars().count() <= 3000)
        });
        if !header_ok || !sections_ok || blocks.len() > 50 {
            return Reply::new(400, "invalid_blocks");
        }
    }
    match req.path.as_str() {
        "/services/T000/B000/ratelimited" => {
            Reply::new(429, "rate_limited").header("retry-after", "3")
        }
        "/services/T000/B000/gone" => Reply::new(404, "no_team"),
        "/services/T000/B000/flaky" => Reply::new(500, "rollup_error"),
        "/services/T000/B000/weird" => Reply::new(200, "not quite ok"),
        _ => Reply::new(200, "ok"),
    }
}

#[tokio::test]
async fn slack_sends_text_and_block_kit_and_classifies_errors() -> anyhow::Result<()> {
    let receiver = Receiver::start(check_slack).await;
    let daemon = Daemon::builder(BIN)
        .plugin("slack", Some(&allow(&receiver)))
        .start()
        .await?;
    let hook = |name: &str| receiver.url(&format!("/services/T000/B000/{name}"));

    let task = daemon.deliver(json!({"platform": "slack", "target": hook("xyz"), "body": "**deploy** done, see [log](https://ci/1)",
               "format": "markdown"}),
    )
    .await?;
    assert_eq!(task["state"], "succeeded", "{task}");
    let text = receiver.requests()[0].json();
    assert_eq!(
        text,
        json!({"text": "*deploy* done, see <https://ci/1|log>"})
    );

    let long_title = "T".repeat(400);
    let task = daemon.deliver(json!({"platform": "slack", "target": hook("xyz"), "title": long_title, "body": "b & <c>".repeat(1000)}),
    )
    .await?;
    assert_eq!(task["state"], "succeeded", "{task}");
    let blocks = receiver.requests()[1].json();
    let header = blocks["blocks"][0]["text"]["text"].as_str().unwrap();
    assert!(header.ends_with("[truncated]"), "{header}");
    assert!(
        blocks["blocks"][1]["text"]["text"]
            .as_str()
            .unwrap()
            .starts_with("b &amp; &lt;c&gt;")
    );
    assert!(
        blocks["blocks"].as_array().unwrap().len() >= 3,
        "a long body spans several sections"
    );

    let cases = [
        ("ratelimited", "rate_limited", Some(3000)),
        ("gone", "permanent", None),
        ("flaky", "retryable", None),
        ("weird", "retryable", None),
    ];
    assert_classes(&daemon, "slack", hook, &cases).await
}

/// What Discord checks on an execute-webhook call.
fn check_discord(req: &Recorded) -> Reply {
    let error = |status, code, message: &str| {
        Reply::json(status, json!({"message": message, "code": code}))
    };
    if req.method != "POST" || !req.path.starts_with("/api/webhooks/123/") {
        return error(404, 10015, "Unknown Webhook");
    }
    if req.query.as_deref() != Some("wait=true") {
        return error(400, 50035, "wait must be a query parameter");
    }
    let doc = req.json();
    if doc["allowed_mentions"] != json!({"parse": []}) {
        return error(400, 50035, "allowed_mentions missing");
    }
    let content_ok = doc["content"]
        .as_str()
        .is_none_or(|c| c.chars().count() <= 2000);
    let embeds_ok = doc["embeds"].as_array().is_none_or(|embeds| {
        embeds.iter().all(|e| {
            e["title"].as_str().is_none_or(|t| t.chars().count() <= 256)
                && e["description"]
                    .as_str()
                    .is_none_or(|d| d.chars().count() <= 4096)
        })
    });
    if doc["content"].is_null() && doc["embeds"].is_null() {
        return error(400, 50006, "Cannot send an empty message");
    }
    if !content_ok || !embeds_ok {
        return error(400, 50035, "Invalid Form Body");
    }
    match req.path.as_str() {
        "/api/webhooks/123/limited" => Reply::json(
            429,
            json!({"message": "You are being rate limited.", "retry_after": 1.5, "global": false}),
        ),
        "/api/webhooks/123/revoked" => error(401, 50027, "Invalid Webhook Token"),
        "/api/webhooks/123/down" => Reply::new(503, "upstream connect error"),
        _ => Reply::json(
            200,
            json!({"id": "1180000000000000001", "type": 0, "content": doc["content"]}),
        ),
    }
}

#[tokio::test]
async fn discord_sends_content_and_embeds_and_classifies_errors() -> anyhow::Result<()> {
    let receiver = Receiver::start(check_discord).await;
    let daemon = Daemon::builder(BIN)
        .plugin("discord", Some(&allow(&receiver)))
        .start()
        .await?;
    let hook = |name: &str| receiver.url(&format!("/api/webhooks/123/{name}"));

    let task = daemon
        .deliver(json!({"platform": "discord", "target": hook("tok"), "body": "x".repeat(2500)}))
        .await?;
    assert_eq!(task["state"], "succeeded", "{task}");
    assert_eq!(task["outcome"]["provider_id"], "1180000000000000001");
    let content = receiver.requests()[0].json()["content"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(content.chars().count(), 2000);
    assert!(content.ends_with("[truncated]"));

    let task = daemon.deliver(json!({"platform": "discord", "target": hook("tok"), "title": "Deploy", "body": "done", "priority": "high"}),
    )
    .await?;
    assert_eq!(task["state"], "succeeded", "{task}");
    let embed = &receiver.requests()[1].json()["embeds"][0];
    assert_eq!(
        (embed["title"].as_str(), embed["description"].as_str()),
        (Some("Deploy"), Some("done"))
    );

    let cases = [
        ("limited", "rate_limited", Some(1500)),
        ("revoked", "permanent", None),
        ("down", "retryable", None),
    ];
    assert_classes(&daemon, "discord", hook, &cases).await
}

#[tokio::test]
async fn a_batch_is_delivered_concurrently() -> anyhow::Result<()> {
    let receiver =
        Receiver::start(|_| Reply::new(200, "ok").after(Duration::from_millis(200))).await;
    let daemon = Daemon::builder(BIN)
        .plugin("webhook", Some(&allow(&receiver)))
        .start()
        .await?;
    let tasks: Vec<Value> = (0..50)
        .map(|i| json!({"platform": "webhook", "target": receiver.url("/"), "body": format!("n{i}")}))
        .collect();
    let response = daemon
        .request(json!({"op": "submit", "wait": true, "tasks": tasks}))
        .await?;
    let finished = response["result"]["tasks"].as_array().unwrap();
    assert_eq!(finished.len(), 50);
    assert!(
        finished.iter().all(|t| t["state"] == "succeeded"),
        "{response}"
    );
    let requests = receiver.requests();
    assert_eq!(requests.len(), 50);
    // Concurrent means overlapping: some request arrived while an earlier
    // one was still being answered (the receiver holds each for 200 ms).
    // One after another, every arrival would be 200 ms past the previous.
    let mut arrivals: Vec<_> = requests.iter().map(|r| r.at).collect();
    arrivals.sort();
    let overlapping = arrivals
        .windows(2)
        .filter(|w| w[1].duration_since(w[0]) < Duration::from_millis(200))
        .count();
    assert!(
        overlapping > 0,
        "no two deliveries overlapped: they were not concurrent"
    );
    Ok(())
}
