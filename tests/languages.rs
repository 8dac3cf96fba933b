//! Plugins written in Python (ntfy), JavaScript (Gotify) and C
//! (Mattermost; `echo`, for its helper's requests of any size), through
//! the real daemon, against local servers that check their requests the
//! way the platforms do. Their errors must be classified
//! like the Rust plugins', and what they print must reach the daemon's log
//! tagged with the plugin and task — not its stdout.

use notifyhub_testkit::daemon::Daemon;
use notifyhub_testkit::receiver::{Receiver, Recorded, Reply};
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_notifyhub");
const NTFY_TOKEN: &str = "tk_ntfy-access-token-secret";
const GOTIFY_TOKEN: &str = "AgotifyAppToken.secret";

/// ntfy's JSON publishing endpoint is the server root.
fn ntfy(req: &Recorded) -> Reply {
    let body = req.json();
    let error = |status: u16, code: u32, error: &str| {
        Reply::json(
            status,
            json!({"code": code, "http": status, "error": error, "link": "https://ntfy.sh/docs/publish/"}),
        )
    };
    if req.method != "POST"
        || req.path != "/"
        || !req
            .header("content-type")
            .unwrap_or_default()
            .starts_with("application/json")
    {
        return error(
            400,
            40001,
            "invalid request: expected a JSON message at the root",
        );
    }
    if req.header("authorization") != Some(&format!("Bearer {NTFY_TOKEN}")) {
        return error(401, 40101, "unauthorized");
    }
    let priority = body["priority"].as_u64().unwrap_or(0);
    if !body["message"].is_string() || !(1..=5).contains(&priority) {
        return error(400, 40007, "invalid request: message or priority");
    }
    match body["topic"].as_str().unwrap_or_default() {
        "alerts" => Reply::json(
            200,
            json!({"id": "sPs71M8A2T", "time": 1700000000, "event": "message",
            "topic": "alerts", "message": body["message"], "title": body["title"], "priority": priority}),
        ),
        "busy" => error(429, 42901, "limit reached: too many requests"),
        "forbidden" => error(403, 40301, "forbidden"),
        _ => error(500, 50001, "internal server error"),
    }
}

fn gotify(req: &Recorded) -> Reply {
    let error = |status: u16, name: &str, description: &str| {
        Reply::json(
            status,
            json!({"error": name, "errorCode": status, "errorDescription": description}),
        )
    };
    let server = req
        .path
        .trim_end_matches("/message")
        .trim_start_matches('/');
    if req.method != "POST" || !req.path.ends_with("/message") {
        return error(404, "Not Found", "no such route");
    }
    if req.header("x-gotify-key") != Some(GOTIFY_TOKEN) || server == "revoked" {
        return error(
            401,
            "Unauthorized",
            "you need to provide a valid access token or user credentials to access this api",
        );
    }
    let body = req.json();
    if !body["message"].is_string() || !body["priority"].is_i64() {
        return error(400, "Bad Request", "Field 'message' is required");
    }
    match server {
        "ok" => Reply::json(
            200,
            json!({"id": 25, "appid": 5, "message": body["message"], "title": body["title"],
            "priority": body["priority"], "date": "2026-11-27T00:00:00Z"}),
        ),
        _ => Reply::new(502, "Bad Gateway"),
    }
}

/// Mattermost incoming webhooks answer `ok`, or JSON with a status code.
fn mattermost(req: &Recorded) -> Reply {
    let body = req.json();
    let hook = req.path.trim_start_matches("/hooks/");
    let error = |status: u16, id: &str, message: &str| {
        Reply::json(
            status,
            json!({"id": id, "message": message, "status_code": status}),
        )
    };
    if !req
        .header("content-type")
        .unwrap_or_default()
        .starts_with("application/json")
        || !body["text"].is_string()
    {
        return error(
            400,
            "web.incoming_webhook.text.app_error",
            "No text specified",
        );
    }
    match hook {
        "ok" => Reply::new(200, "ok"),
        "busy" => Reply::new(429, "").header("retry-after", "4"),
        "gone" => error(
            404,
            "app.webhooks.get_incoming.app_error",
            "Unable to find the webhook",
        ),
        _ => error(500, "api.context.500", "internal error"),
    }
}

fn platform(req: &Recorded) -> Reply {
    if req.path.starts_with("/hooks/") {
        mattermost(req)
    } else if req.path.ends_with("/message") {
        gotify(req)
    } else {
        ntfy(req)
    }
}

async fn start(receiver: &Receiver) -> anyhow::Result<Daemon> {
    let allow = format!("allowed_hosts = [\"{}\"]\n", receiver.authority());
    Daemon::builder(BIN)
        .plugin(
            "ntfy",
            Some(&format!("{allow}[secrets]\ntoken = {{ env = \"T_NTFY\" }}")),
        )
        .plugin(
            "gotify",
            Some(&format!(
                "{allow}[secrets]\napp_token = {{ env = \"T_GOTIFY\" }}"
            )),
        )
        .plugin("mattermost", Some(&allow))
        .env("T_NTFY", NTFY_TOKEN)
        .env("T_GOTIFY", GOTIFY_TOKEN)
        .config("[rate_limits]\nntfy = []\nmattermost = []\n")
        .start()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_javascript_and_c_plugins_deliver_and_classify() -> anyhow::Result<()> {
    let receiver = Receiver::start(platform).await;
    let daemon = start(&receiver).await?;
    let cases: Vec<(&str, String, &str, Option<u64>)> = vec![
        ("ntfy", receiver.url("/alerts"), "delivered", None),
        ("ntfy", receiver.url("/busy"), "rate_limited", Some(5000)),
        ("ntfy", receiver.url("/forbidden"), "permanent", None),
        ("ntfy", receiver.url("/broken"), "retryable", None),
        ("gotify", receiver.url("/ok"), "delivered", None),
        ("gotify", receiver.url("/revoked"), "permanent", None),
        ("gotify", receiver.url("/down"), "retryable", None),
        ("mattermost", receiver.url("/hooks/ok"), "delivered", None),
        (
            "mattermost",
            receiver.url("/hooks/busy"),
            "rate_limited",
            Some(4000),
        ),
        ("mattermost", receiver.url("/hooks/gone"), "permanent", None),
        ("mattermost", receiver.url("/hooks/down"), "retryable", None),
    ];
    for (platform, target, class, retry_after) in cases {
        let outcome = daemon.deliver(json!({"platform": platform, "target": target, "title": "Disk \"full\"",
                   "body": "**db1** at 97%\nsee runbook", "format": "markdown", "priority": "high"}),
        )
        .await?["outcome"]
            .clone();
        let got = if outcome["result"] == "delivered" {
            "delivered"
        } else {
            outcome["class"].as_str().unwrap_or("?")
        };
        assert_eq!(got, class, "{platform} {target}: {outcome}");
        if retry_after.is_some() {
            assert_eq!(
                outcome["retry_after_ms"].as_u64(),
                retry_after,
                "{platform}: {outcome}"
            );
        }
        if class == "delivered" && platform != "mattermost" {
            assert!(outcome["provider_id"].is_string(), "{platform}: {outcome}");
        }
    }

    // The requests carried what the platforms document.
    let requests = receiver.requests();
    let ntfy = requests.iter().find(|r| r.path == "/").unwrap().json();
    assert_eq!(
        (
            ntfy["topic"].clone(),
            ntfy["title"].clone(),
            ntfy["priority"].clone(),
            ntfy["markdown"].clone()
        ),
        (
            json!("alerts"),
            json!("Disk \"full\""),
            json!(5),
            json!(true)
        )
    );
    let gotify = requests
        .iter()
        .find(|r| r.path == "/ok/message")
        .unwrap()
        .json();
    assert_eq!(
        gotify["extras"]["client::display"]["contentType"],
        "text/markdown"
    );
    assert_eq!(gotify["priority"], 8);
    let mattermost = requests
        .iter()
        .find(|r| r.path == "/hooks/ok")
        .unwrap()
        .json();
    assert_eq!(
        mattermost["text"],
        "#### Disk \"full\"\n**db1** at 97%\nsee runbook"
    );

    // What the plugins printed is in the log, tagged; none of it on stdout.
    let logs = daemon.logs();
    for (plugin, line) in [
        ("ntfy", "publishing to topic alerts"),
        ("gotify", "posting a markdown message"),
        ("mattermost", "posting to a Mattermost webhook"),
    ] {
        let tagged = logs.lines().any(|l| {
            l.contains(line) && l.contains(&format!("plugin={plugin}")) && l.contains("task=")
        });
        assert!(
            tagged,
            "no tagged `{line}` from {plugin} in the log:\n{logs}"
        );
        assert!(
            !daemon.stdout().contains(line),
            "{plugin} printed to the daemon's stdout"
        );
    }
    for secret in [NTFY_TOKEN, GOTIFY_TOKEN] {
        assert!(!logs.contains(secret), "a secret leaked into the log");
    }
    Ok(())
}

/// Two plugins that embed one interpreter, compiled by the baseline
/// compiler in one sandbox: the second reuses the trampolines Cranelift made
/// for the first (`sandbox::functions`), and both still deliver what their
/// platforms expect.
/// The two Python plugins embed one CPython: in a wave of compiles (as at
/// start), the second reuses the first's functions compiled by Winch, though
/// its interpreter sits at other offsets, and both deliver from that code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_sharing_an_interpreter_both_deliver_from_baseline_code() -> anyhow::Result<()> {
    use std::sync::Arc;

    use notifyhub::executor::Executor;
    use notifyhub::sandbox::{Kind, Limits, Sandbox, SandboxSettings, Tier};
    use notifyhub::task::Task;

    let receiver = Receiver::start(|req| match req.path.as_str() {
        "/" => Reply::json(200, json!({"id": "sPs71M8A2T", "event": "message"})),
        "/push" => Reply::json(200, json!({"code": 200, "message": "success"})),
        _ => Reply::new(404, "no such endpoint"),
    })
    .await;
    let dir = tempfile::tempdir()?;
    let allow = format!("allowed_hosts = [\"{}\"]\n", receiver.authority());
    let base = receiver.url("");
    let manifests = [
        ("ntfy", allow.clone()),
        (
            "bark",
            format!(
                "{allow}[config]\nserver = \"{}\"\n",
                base.trim_end_matches('/')
            ),
        ),
    ];
    // No code cache: each plugin is compiled here, the second after the first.
    let executor = Executor::new(Arc::new(Sandbox::new(&SandboxSettings::default())?));
    let mut kinds = Vec::new();
    for (name, _) in &manifests {
        kinds.push(Kind::of_file(&notifyhub_testkit::plugins::path(name)?)?);
    }
    anyhow::ensure!(
        kinds[0].is_some() && kinds[0] == kinds[1],
        "not one kind: {kinds:?}"
    );
    let wave = executor
        .sandbox()
        .hold_baseline_functions(kinds.into_iter().flatten());
    let mut plugins = Vec::new();
    for (name, manifest) in &manifests {
        let wasm = dir.path().join(format!("{name}.wasm"));
        std::fs::copy(notifyhub_testkit::plugins::path(name)?, &wasm)?;
        std::fs::write(dir.path().join(format!("{name}.toml")), manifest)?;
        let plugin =
            notifyhub::loader::load(&wasm, &executor, Limits::default(), Tier::Baseline).await?;
        assert_eq!(plugin.compiled.tier, Tier::Baseline, "{name}");
        plugins.push(Arc::new(plugin));
    }
    // CPython's modules hold ~13,000 functions.
    anyhow::ensure!(
        wave.reused() > 10_000,
        "bark reused {} of ntfy's functions",
        wave.reused()
    );
    drop(wave);
    for ((name, _), (plugin, target)) in manifests.iter().zip(
        plugins
            .iter()
            .zip([receiver.url("/alerts"), "devicekey".to_string()]),
    ) {
        let task = Task::text(name, &target, "disk full on db1");
        let outcome = executor.send(plugin, &task, None).await;
        assert!(outcome.is_success(), "{name}: {outcome:?}");
    }
    let requests = receiver.requests();
    let ntfy = requests.iter().find(|r| r.path == "/").map(|r| r.json());
    let bark = requests
        .iter()
        .find(|r| r.path == "/push")
        .map(|r| r.json());
    let (Some(ntfy), Some(bark)) = (ntfy, bark) else {
        anyhow::bail!("not both plugins' requests arrived: {requests:?}");
    };
    assert_eq!(
        (&ntfy["topic"], &ntfy["message"]),
        (&json!("alerts"), &json!("disk full on db1"))
    );
    assert_eq!(
        (&bark["device_key"], &bark["body"]),
        (&json!("devicekey"), &json!("disk full on db1"))
    );
    Ok(())
}

/// The C helper's `nh_post` sends a body of up to 512 KiB in one call to
/// the host and streams a larger one through `wasi:http` (as the Rust SDK
/// and the Python and JavaScript helpers do): both arrive whole, and the
/// allowlist holds on each path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_c_helper_sends_bodies_of_any_size() -> anyhow::Result<()> {
    let receiver = Receiver::start(|_| Reply::new(200, "ok")).await;
    let forbidden = Receiver::start(|_| Reply::new(200, "ok")).await;
    let daemon = Daemon::builder(BIN)
        .plugin(
            "echo",
            Some(&format!("allowed_hosts = [\"{}\"]\n", receiver.authority())),
        )
        .start()
        .await?;
    for size in [1_000, 600_000] {
        let body = "x".repeat(size);
        for (to, expect) in [(&receiver, "succeeded"), (&forbidden, "dead")] {
            let task = daemon
                .deliver(json!({"platform": "echo", "target": to.url("/echo"), "body": body}))
                .await?;
            anyhow::ensure!(task["state"] == expect, "{size} bytes: {task}");
        }
    }
    let sizes: Vec<usize> = receiver.requests().iter().map(|r| r.body.len()).collect();
    anyhow::ensure!(sizes == [1_000, 600_000], "{sizes:?}");
    anyhow::ensure!(
        forbidden.requests().is_empty(),
        "the allowlist was bypassed"
    );
    Ok(())
}
