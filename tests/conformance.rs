//! Platform conformance: every platform, the same hostile inputs, every
//! format. One local server plays all platforms and judges each request by
//! that platform's published rules (size, escaping, allowed tags, required
//! fields, single headers, mentions); a request that breaks one is answered
//! the way the platform would refuse it, and recorded. Adding a platform
//! means adding one row to [`PLATFORMS`]. E-mail over SMTP goes to a real
//! relay instead, and each message is judged as a mail client reads it.

use std::sync::{Arc, Mutex};

use notifyhub_testkit::daemon::Daemon;
use notifyhub_testkit::receiver::{Receiver, Recorded, Reply};
use notifyhub_testkit::smtp::{Received, RelayTls, SmtpRelay};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_notifyhub");

/// What arrived and what was wrong with it, for the report.
type Violations = Arc<Mutex<Vec<String>>>;

/// One platform: how it is deployed, where its requests go, and the rules
/// its API applies to them.
struct Platform {
    name: &'static str,
    /// Manifest lines beyond the allowlist (`{base}` is the receiver's URL).
    manifest: &'static str,
    target: fn(&Receiver) -> String,
    /// Which requests are this platform's.
    path: fn(&str) -> bool,
    check: fn(&Recorded) -> Result<(), String>,
    /// The platform's success answer.
    ok: fn() -> Reply,
}

const PLATFORMS: &[Platform] = &[
    Platform {
        name: "slack",
        manifest: "",
        target: |r| r.url("/services/T0/B0/secret"),
        path: |p| p.starts_with("/services/"),
        check: slack,
        ok: || Reply::new(200, "ok"),
    },
    Platform {
        name: "discord",
        manifest: "",
        target: |r| r.url("/api/webhooks/1/token"),
        path: |p| p.starts_with("/api/webhooks/"),
        check: discord,
        ok: || Reply::json(200, json!({"id": "1"})),
    },
    Platform {
        name: "webhook",
        manifest: "",
        target: |r| r.url("/hook"),
        path: |p| p == "/hook",
        check: webhook,
        ok: || Reply::new(200, "ok"),
    },
    Platform {
        name: "dingtalk",
        manifest: "",
        target: |r| r.url("/robot/send?access_token=t"),
        path: |p| p == "/robot/send",
        check: dingtalk,
        ok: || Reply::json(200, json!({"errcode": 0, "errmsg": "ok"})),
    },
    Platform {
        name: "feishu",
        manifest: "",
        target: |r| r.url("/open-apis/bot/v2/hook/t"),
        path: |p| p.starts_with("/open-apis/"),
        check: feishu,
        ok: || Reply::json(200, json!({"code": 0, "msg": "success", "data": {}})),
    },
    Platform {
        name: "wecom",
        manifest: "",
        target: |r| r.url("/cgi-bin/webhook/send?key=k"),
        path: |p| p == "/cgi-bin/webhook/send",
        check: wecom,
        ok: || Reply::json(200, json!({"errcode": 0, "errmsg": "ok"})),
    },
    Platform {
        name: "telegram",
        manifest: "[config]\napi_base = \"{base}\"\nbot_token = \"1:tok\"\n",
        target: |_| "-1001".into(),
        path: |p| p.starts_with("/bot"),
        check: telegram,
        ok: || Reply::json(200, json!({"ok": true, "result": {"message_id": 1}})),
    },
    Platform {
        name: "teams",
        manifest: "",
        target: |r| r.url("/workflows/w/triggers/manual/paths/invoke?sig=s"),
        path: |p| p.starts_with("/workflows/"),
        check: teams,
        ok: || Reply::new(202, ""),
    },
    Platform {
        name: "pushover",
        manifest: "[config]\napi_url = \"{base}/1/messages.json\"\napp_token = \"a\"\n",
        target: |_| "user-key".into(),
        path: |p| p == "/1/messages.json",
        check: pushover,
        ok: || Reply::json(200, json!({"status": 1, "request": "r"})),
    },
    Platform {
        name: "pagerduty",
        manifest: "[config]\napi_url = \"{base}/v2/enqueue\"\n",
        target: |_| "R0UT1NGKEY0123456789abcdefABCDEF".into(),
        path: |p| p == "/v2/enqueue",
        check: pagerduty,
        ok: || {
            Reply::json(
                202,
                json!({"status": "success", "message": "Event processed", "dedup_key": "k"}),
            )
        },
    },
    Platform {
        name: "matrix",
        manifest: "[config]\nhomeserver = \"{base}\"\naccess_token = \"syt_token\"\n",
        target: |_| "!room:example.org".into(),
        path: |p| p.starts_with("/_matrix/client/v3/rooms/"),
        check: matrix,
        ok: || Reply::json(200, json!({"event_id": "$event"})),
    },
    Platform {
        name: "mastodon",
        manifest: "[config]\naccess_token = \"tok\"\n",
        target: |r| r.url(""),
        path: |p| p == "/api/v1/statuses",
        check: mastodon,
        ok: || {
            Reply::json(
                200,
                json!({"id": "109", "url": "https://example.social/@a/109"}),
            )
        },
    },
    Platform {
        name: "twilio",
        manifest: "[config]\naccount_sid = \"AC123\"\nauth_token = \"tok\"\nfrom = \"+15550006666\"\napi_url = \"{base}\"\n",
        target: |_| "+15551234567".into(),
        path: |p| p == "/2010-04-01/Accounts/AC123/Messages.json",
        check: twilio,
        ok: || Reply::json(201, json!({"sid": "SM1", "status": "queued"})),
    },
    Platform {
        name: "line",
        manifest: "[config]\napi_url = \"{base}/v2/bot/message/push\"\nchannel_access_token = \"tok\"\n",
        target: |_| "U4af4980629abcdef0123456789abcdef".into(),
        path: |p| p == "/v2/bot/message/push",
        check: line,
        ok: || {
            Reply::json(
                200,
                json!({"sentMessages": [{"id": "461230966842064897", "quoteToken": "q"}]}),
            )
        },
    },
    Platform {
        name: "opsgenie",
        manifest: "[config]\napi_url = \"{base}/v2/alerts\"\napi_key = \"key\"\n",
        target: |_| "team:Ops, user:ops@example.org".into(),
        path: |p| p == "/v2/alerts",
        check: opsgenie,
        ok: || {
            Reply::json(
                202,
                json!({"result": "Request will be processed", "took": 0.1, "requestId": "r1"}),
            )
        },
    },
    Platform {
        name: "bark",
        manifest: "[config]\nserver = \"{base}\"\n",
        target: |_| "x3uQzPj2bdEhd9Wq5HNtWQ".into(),
        path: |p| p == "/push",
        check: bark,
        ok: || {
            Reply::json(
                200,
                json!({"code": 200, "message": "success", "timestamp": 1}),
            )
        },
    },
    Platform {
        name: "rocketchat",
        manifest: "",
        target: |r| r.url("/hooks/6fFkQ/abcTOKEN"),
        path: |p| p.starts_with("/hooks/6fFkQ/"),
        check: rocketchat,
        ok: || Reply::json(200, json!({"success": true})),
    },
    Platform {
        name: "zulip",
        manifest: "[config]\nsite = \"{base}\"\nemail = \"bot@example.org\"\napi_key = \"k\"\n",
        target: |_| "ops:deploys".into(),
        path: |p| p == "/api/v1/messages",
        check: zulip,
        ok: || Reply::json(200, json!({"result": "success", "msg": "", "id": 42})),
    },
    Platform {
        name: "googlechat",
        manifest: "",
        target: |r| r.url("/v1/spaces/AAAA/messages?key=k&token=t"),
        path: |p| p.starts_with("/v1/spaces/"),
        check: googlechat,
        ok: || Reply::json(200, json!({"name": "spaces/AAAA/messages/m1"})),
    },
    Platform {
        name: "email",
        manifest: "[config]\napi_url = \"{base}/v3/mail/send\"\nfrom = \"a@example.com\"\napi_key = \"k\"\n",
        target: |_| "ops@example.org".into(),
        path: |p| p == "/v3/mail/send",
        check: sendgrid,
        ok: || Reply::new(202, ""),
    },
    Platform {
        name: "ntfy",
        manifest: "",
        target: |r| r.url("/ntfy/alerts"),
        path: |p| p == "/ntfy/" || p == "/ntfy",
        check: ntfy,
        ok: || Reply::json(200, json!({"id": "n1", "event": "message"})),
    },
    Platform {
        name: "gotify",
        manifest: "[config]\napp_token = \"g\"\n",
        target: |r| r.url("/gotify"),
        path: |p| p == "/gotify/message",
        check: gotify,
        ok: || Reply::json(200, json!({"id": 1})),
    },
    Platform {
        name: "mattermost",
        manifest: "",
        target: |r| r.url("/hooks/m"),
        path: |p| p.starts_with("/hooks/"),
        check: mattermost,
        ok: || Reply::new(200, "ok"),
    },
];

/// The same hostile inputs for every platform: `(label, title, body)`.
fn inputs() -> Vec<(&'static str, Option<String>, String)> {
    let mentions = "<!channel> <!here> <@U024BE7LH> @everyone @here @all @channel <at user_id=\"all\">所有人</at> <@all>";
    let injection = "<script>alert(1)</script><div><b>bold</div> <i>open **md** [link](javascript:alert(1)) &amp; &lt; < > & &bogus; <a href=\"https://x.io/?a=1&b=2\">ok</a>";
    vec![
        ("long body", Some("Deploy".into()), "x".repeat(10_000)),
        ("long body, no title", None, "word ".repeat(2_000)),
        ("long title", Some("T".repeat(5_000)), "body".into()),
        (
            "cjk and emoji",
            Some("告警 😀".into()),
            "磁盘已满😀 ".repeat(1_500),
        ),
        ("mentions", Some(mentions.into()), mentions.into()),
        ("injection", Some(injection.into()), injection.repeat(40)),
        (
            "control characters",
            Some("a\u{0}b\u{1b}[31mc\u{7f}\r\nd".into()),
            "x\u{0}y\u{1b}[0m\u{8}z".into(),
        ),
        ("newlines only", None, "\n\n\n".into()),
        (
            "empty title",
            Some(String::new()),
            "\nfirst line after a newline".into(),
        ),
        (
            "a thousand lines",
            Some("Log".into()),
            (0..1000).map(|i| format!("line {i}\n")).collect(),
        ),
        (
            "entities at the cut",
            Some("&<>".into()),
            "&<>".repeat(4000),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_platform_gets_requests_it_accepts_whatever_the_input() -> anyhow::Result<()> {
    let violations: Violations = Arc::default();
    let seen = violations.clone();
    let receiver = Receiver::start(move |req| {
        let Some(platform) = PLATFORMS.iter().find(|p| (p.path)(&req.path)) else {
            return Reply::new(404, "no such platform");
        };
        let checked = single_headers(req).and_then(|()| (platform.check)(req));
        match checked {
            Ok(()) => (platform.ok)(),
            Err(reason) => {
                seen.lock()
                    .unwrap()
                    .push(format!("{}: {reason}", platform.name));
                Reply::new(400, reason)
            }
        }
    })
    .await;
    let base = receiver.url("");
    let base = base.trim_end_matches('/');
    let allow = format!("allowed_hosts = [\"{}\"]\n", receiver.authority());
    let mut builder = Daemon::builder(BIN);
    let mut unpaced = String::from("[rate_limits]\n");
    for p in PLATFORMS {
        let manifest = format!("{allow}{}", p.manifest.replace("{base}", base));
        builder = builder.plugin(p.name, Some(&manifest));
        unpaced.push_str(&format!("{} = []\n", p.name));
    }
    let daemon = builder.config(&unpaced).start().await?;

    let mut failures = Vec::new();
    let mut cases = 0;
    for p in PLATFORMS {
        let mut tasks = Vec::new();
        let mut labels = Vec::new();
        for (label, title, body) in inputs() {
            for format in ["text", "markdown", "html"] {
                let mut task = json!({"platform": p.name, "target": (p.target)(&receiver), "body": body, "format": format});
                if let Some(title) = &title {
                    task["title"] = json!(title);
                }
                tasks.push(task);
                labels.push(format!("{label} ({format})"));
            }
        }
        cases += tasks.len();
        let r = daemon
            .request(json!({"op": "submit", "wait": true, "tasks": tasks}))
            .await?;
        anyhow::ensure!(r["ok"] == true, "{}: {r}", p.name);
        for (task, label) in r["result"]["tasks"].as_array().unwrap().iter().zip(&labels) {
            if task["state"] != "succeeded" {
                failures.push(format!("{} / {label}: {}", p.name, task["outcome"]));
            }
        }
    }
    let broken = violations.lock().unwrap().clone();
    anyhow::ensure!(
        failures.is_empty() && broken.is_empty(),
        "{} of {cases} deliveries failed:\n{}\nrules broken:\n{}",
        failures.len(),
        failures.join("\n"),
        broken.join("\n")
    );
    anyhow::ensure!(
        receiver.requests().len() >= cases,
        "not every case reached the receiver"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_shipped_plugin_has_an_example_manifest_naming_every_key_it_reads()
-> anyhow::Result<()> {
    // Required keys set as in the conformance run; nothing is delivered.
    let mut builder = Daemon::builder(BIN);
    for p in PLATFORMS {
        let manifest = p.manifest.replace("{base}", "http://127.0.0.1:9");
        builder = builder.plugin(p.name, Some(&manifest));
    }
    builder = builder.plugin(
        "smtp",
        Some("[config]\nrelay = \"127.0.0.1:9\"\nfrom = \"a@example.org\"\n"),
    );
    let daemon = builder.start().await?;
    let plugins = daemon.request(json!({"op": "plugins"})).await?;
    let loaded = plugins["result"]["plugins"].as_array().unwrap();
    anyhow::ensure!(loaded.len() == PLATFORMS.len() + 1, "{plugins}");
    // The shipped plugins cover at least 24 platforms, SMTP among them.
    let mut platforms: Vec<&str> = loaded
        .iter()
        .flat_map(|p| p["platforms"].as_array().into_iter().flatten())
        .filter_map(Value::as_str)
        .collect();
    platforms.sort_unstable();
    platforms.dedup();
    anyhow::ensure!(
        platforms.len() >= 24 && platforms.contains(&"smtp"),
        "{} platforms: {platforms:?}",
        platforms.len()
    );
    let examples = notifyhub_testkit::repo_root().join("examples/plugins");
    for plugin in loaded {
        let name = plugin["name"].as_str().unwrap();
        let path = examples.join(format!("{name}.toml"));
        let manifest = std::fs::read_to_string(&path)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        for key in plugin["info"]["config_keys"].as_array().unwrap() {
            let key = key["name"].as_str().unwrap();
            anyhow::ensure!(
                manifest
                    .lines()
                    .any(|l| l.trim_start_matches("# ").starts_with(&format!("{key} "))),
                "{} does not show the key `{key}`",
                path.display()
            );
        }
    }
    Ok(())
}

/// `notifyhub try` runs every platform's plugin with nothing sent: given
/// the platform's own success answer, each classifies it as delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_platform_tries_without_a_daemon() -> anyhow::Result<()> {
    let receiver = Receiver::start(|_| Reply::new(500, "try sends nothing")).await;
    let mut wrong = Vec::new();
    for p in PLATFORMS {
        let dir = tempfile::tempdir()?;
        let plugin = dir.path().join(format!("{}.wasm", p.name));
        std::fs::copy(notifyhub_testkit::plugins::path(p.name)?, &plugin)?;
        let manifest = p.manifest.replace("{base}", "http://127.0.0.1:9");
        std::fs::write(dir.path().join(format!("{}.toml", p.name)), manifest)?;
        let ok = (p.ok)();
        let mut command = notifyhub_testkit::daemon::try_command(BIN.as_ref(), &plugin);
        command
            .args([
                "--target",
                &(p.target)(&receiver),
                "--title",
                "Disk full",
                "--body",
                "/var at 98%",
            ])
            .args([
                "--answer",
                &ok.status.to_string(),
                "--answer-body",
                &ok.body,
                "--json",
            ]);
        let out = notifyhub_testkit::process::output_within(
            &mut command,
            std::time::Duration::from_secs(120),
        )?;
        let report: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        let sent = report["requests"].as_array().map_or(0, Vec::len);
        if report["outcome"]["result"] != "delivered" || sent == 0 {
            wrong.push(format!(
                "{}: {} request(s), outcome {} {}",
                p.name,
                sent,
                report["outcome"],
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    anyhow::ensure!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert!(receiver.requests().is_empty(), "try reached the network");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_sends_messages_a_mail_client_reads_whatever_the_input() -> anyhow::Result<()> {
    let relay = SmtpRelay::start(RelayTls::Starttls, Some(("nh", "pw"))).await?;
    let manifest = format!(
        "allowed_hosts = [\"localhost:{port}\"]\n[config]\nrelay = \"localhost:{port}\"\n\
         from = \"alerts@example.org\"\nfrom_name = \"Ops ✓ \\\"on call\\\"\"\nusername = \"nh\"\n\
         [secrets]\npassword = {{ env = \"TEST_SMTP_PASSWORD\" }}\n[smtp]\nca_file = \"{ca}\"\n",
        port = relay.port(),
        ca = relay.ca_file().display()
    );
    let daemon = Daemon::builder(BIN)
        .plugin("smtp", Some(&manifest))
        .env("TEST_SMTP_PASSWORD", "pw")
        .start()
        .await?;
    let mut tasks = Vec::new();
    for (_, title, body) in inputs() {
        for format in ["text", "markdown", "html"] {
            let mut task = json!({"platform": "smtp", "target": "ops@example.org", "body": body, "format": format});
            if let Some(title) = &title {
                task["title"] = json!(title);
            }
            tasks.push(task);
        }
    }
    let r = daemon
        .request(json!({"op": "submit", "wait": true, "tasks": tasks}))
        .await?;
    anyhow::ensure!(r["ok"] == true, "{r}");
    let failed: Vec<String> = r["result"]["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["state"] != "succeeded")
        .map(|t| t["outcome"].to_string())
        .collect();
    anyhow::ensure!(failed.is_empty(), "{}", failed.join("\n"));
    let received = relay.messages();
    anyhow::ensure!(
        received.len() == tasks.len(),
        "{} of {}",
        received.len(),
        tasks.len()
    );
    let broken: Vec<String> = received
        .iter()
        .zip(&tasks)
        .filter_map(|(mail, task)| mail_rules(mail, task).err())
        .collect();
    anyhow::ensure!(broken.is_empty(), "rules broken:\n{}", broken.join("\n"));
    Ok(())
}

/// What a mail client and the relays between (RFC 5321, 5322, 2045–2047)
/// require of a message.
fn mail_rules(mail: &Received, task: &Value) -> Result<(), String> {
    let label = format!("smtp ({})", task["format"]);
    let (head, _) = mail
        .data
        .split_once("\r\n\r\n")
        .ok_or(format!("{label}: no blank line after the headers"))?;
    if !head.is_ascii() {
        return Err(format!("{label}: a header is not ASCII"));
    }
    for name in [
        "subject",
        "from",
        "to",
        "date",
        "message-id",
        "mime-version",
    ] {
        let n = head
            .split("\r\n")
            .filter(|l| {
                l.split(':')
                    .next()
                    .is_some_and(|k| k.eq_ignore_ascii_case(name))
            })
            .count();
        if n != 1 {
            return Err(format!("{label}: {n} `{name}` headers"));
        }
    }
    if let Some(line) = mail.data.split("\r\n").find(|l| l.len() > 998) {
        return Err(format!("{label}: a line of {} octets", line.len()));
    }
    let parsed = mail_parser::MessageParser::default()
        .parse(mail.data.as_bytes())
        .ok_or(format!("{label}: not a message"))?;
    let subject = parsed.subject().unwrap_or_default();
    if subject.trim().is_empty() || subject.contains(['\r', '\n']) || subject.chars().count() > 200
    {
        return Err(format!("{label}: subject {subject:?}"));
    }
    let from = parsed.from().and_then(|f| f.first());
    if from.and_then(|f| f.name()) != Some("Ops ✓ \"on call\"") {
        return Err(format!("{label}: From {:?}", parsed.from()));
    }
    if parsed.body_text(0).is_none_or(|t| t.trim().is_empty()) {
        return Err(format!("{label}: no text part"));
    }
    if task["format"] != "text" {
        let html = parsed
            .body_html(0)
            .ok_or(format!("{label}: no text/html alternative"))?;
        let lower = html.to_ascii_lowercase();
        for bad in [
            "<script",
            "href=\"javascript:",
            " onerror=",
            " onclick=",
            "<style",
            "<iframe",
        ] {
            if lower.contains(bad) {
                return Err(format!("{label}: `{bad}` in the HTML part"));
            }
        }
    }
    Ok(())
}

// ---- rules shared by platforms ----

/// No header appears twice (DingTalk refuses two `Content-Type`s).
fn single_headers(req: &Recorded) -> Result<(), String> {
    for name in req.headers.keys() {
        let n = req.headers.get_all(name).iter().count();
        if n > 1 {
            return Err(format!("header {name} sent {n} times"));
        }
    }
    Ok(())
}

fn json_body(req: &Recorded) -> Result<Value, String> {
    let ct = req.header("content-type").unwrap_or_default();
    if !ct.starts_with("application/json") {
        return Err(format!("content-type {ct:?}"));
    }
    serde_json::from_slice(&req.body).map_err(|e| format!("body is not JSON: {e}"))
}

fn at_most(what: &str, len: usize, max: usize) -> Result<(), String> {
    if len > max {
        return Err(format!("{what} is {len}, over the limit of {max}"));
    }
    Ok(())
}

fn non_empty(what: &str, text: &str) -> Result<(), String> {
    if text.trim().is_empty() {
        return Err(format!("{what} is empty"));
    }
    Ok(())
}

fn string<'a>(value: &'a Value, what: &str) -> Result<&'a str, String> {
    value.as_str().ok_or_else(|| format!("{what} is missing"))
}

/// Slack mrkdwn: no raw mention or link constructs beyond the links the
/// plugin made from markdown (`<http…|…>`), and every entity whole.
fn mrkdwn_safe(what: &str, text: &str) -> Result<(), String> {
    let mut rest = text;
    while let Some(open) = rest.find('<') {
        let after = &rest[open + 1..];
        let close = after
            .find('>')
            .ok_or_else(|| format!("{what}: unclosed `<`"))?;
        let inner = &after[..close];
        if !(inner.starts_with("http://") || inner.starts_with("https://")) {
            return Err(format!("{what}: raw construct <{inner}>"));
        }
        rest = &after[close + 1..];
    }
    entities_whole(what, text)
}

/// Every `&` starts a whole entity.
fn entities_whole(what: &str, text: &str) -> Result<(), String> {
    for (i, _) in text.match_indices('&') {
        let tail = &text[i..];
        let end = tail.find(';').filter(|e| *e <= 10);
        let ok = end.is_some_and(|e| {
            let name = &tail[1..e];
            matches!(name, "amp" | "lt" | "gt" | "quot")
                || name.strip_prefix('#').is_some_and(|n| !n.is_empty())
        });
        if !ok {
            return Err(format!(
                "{what}: bare or cut entity at {:?}",
                &tail[..tail.len().min(12)]
            ));
        }
    }
    Ok(())
}

/// HTML limited to `allowed` tags, properly nested and closed, with no raw
/// `<` or `&` outside tags and entities.
fn html_subset(what: &str, html: &str, allowed: &[&str]) -> Result<(), String> {
    let mut open: Vec<String> = Vec::new();
    let mut rest = html;
    let mut text = String::new();
    while let Some(lt) = rest.find('<') {
        text.push_str(&rest[..lt]);
        let after = &rest[lt + 1..];
        let gt = after
            .find('>')
            .ok_or_else(|| format!("{what}: unclosed tag"))?;
        let tag = &after[..gt];
        let (closing, name) = match tag.strip_prefix('/') {
            Some(n) => (true, n),
            None => (false, tag),
        };
        let name = name
            .split([' ', '\t'])
            .next()
            .unwrap_or_default()
            .to_string();
        if !allowed.contains(&name.as_str()) {
            return Err(format!("{what}: tag <{tag}> is not allowed"));
        }
        // Void elements (`<br>`, `<hr>`) have no end tag.
        if closing {
            if open.pop().as_deref() != Some(name.as_str()) {
                return Err(format!("{what}: </{name}> closes nothing open"));
            }
        } else if !matches!(name.as_str(), "br" | "hr") {
            open.push(name);
        }
        rest = &after[gt + 1..];
    }
    text.push_str(rest);
    if !open.is_empty() {
        return Err(format!("{what}: left open: {open:?}"));
    }
    if text.contains('>') {
        return Err(format!("{what}: raw `>` in text"));
    }
    entities_whole(what, &text)
}

const TELEGRAM_TAGS: &[&str] = &[
    "b",
    "strong",
    "i",
    "em",
    "u",
    "ins",
    "s",
    "strike",
    "del",
    "a",
    "code",
    "pre",
    "blockquote",
    "tg-spoiler",
];

// ---- one rule set per platform ----

fn slack(req: &Recorded) -> Result<(), String> {
    let body = json_body(req)?;
    let text = string(&body["text"], "text")?;
    non_empty("text", text)?;
    mrkdwn_safe("text", text)?;
    at_most("text (characters)", text.chars().count(), 40_000)?;
    if let Some(blocks) = body["blocks"].as_array() {
        at_most("blocks", blocks.len(), 50)?;
        for block in blocks {
            let t = string(&block["text"]["text"], "block text")?;
            non_empty("block text", t)?;
            match block["type"].as_str() {
                Some("header") => at_most("header (characters)", t.chars().count(), 150)?,
                Some("section") => {
                    at_most("section (characters)", t.chars().count(), 3000)?;
                    mrkdwn_safe("section", t)?;
                }
                other => return Err(format!("unexpected block {other:?}")),
            }
        }
    }
    Ok(())
}

fn discord(req: &Recorded) -> Result<(), String> {
    let body = json_body(req)?;
    if body["allowed_mentions"]["parse"] != json!([]) {
        return Err("mentions are not disabled".into());
    }
    match body["embeds"].as_array() {
        Some(embeds) => {
            let e = &embeds[0];
            let title = string(&e["title"], "embed title")?;
            let description = string(&e["description"], "embed description")?;
            at_most("embed title", title.chars().count(), 256)?;
            at_most("embed description", description.chars().count(), 4096)?;
            at_most(
                "embed total",
                title.chars().count() + description.chars().count(),
                6000,
            )
        }
        None => {
            let content = string(&body["content"], "content")?;
            non_empty("content", content)?;
            at_most("content", content.chars().count(), 2000)
        }
    }
}

fn webhook(req: &Recorded) -> Result<(), String> {
    json_body(req)?;
    for h in ["webhook-id", "webhook-timestamp"] {
        req.header(h).ok_or_else(|| format!("no {h}"))?;
    }
    Ok(())
}

fn dingtalk(req: &Recorded) -> Result<(), String> {
    if req.header("content-type") != Some("application/json;charset=utf-8") {
        return Err(format!("content-type {:?}", req.header("content-type")));
    }
    at_most("body (bytes)", req.body.len(), 20_000)?;
    let body: Value = serde_json::from_slice(&req.body).map_err(|e| e.to_string())?;
    match body["msgtype"].as_str() {
        Some("text") => non_empty(
            "text.content",
            string(&body["text"]["content"], "text.content")?,
        ),
        Some("markdown") => {
            let title = string(&body["markdown"]["title"], "markdown.title")?;
            non_empty("markdown.title", title)?;
            if title.contains(['\n', '\r']) {
                return Err("markdown.title spans lines".into());
            }
            non_empty(
                "markdown.text",
                string(&body["markdown"]["text"], "markdown.text")?,
            )
        }
        other => Err(format!("msgtype {other:?}")),
    }
}

fn feishu(req: &Recorded) -> Result<(), String> {
    let body = json_body(req)?;
    at_most("body (bytes)", req.body.len(), 20 * 1024)?;
    let raw = String::from_utf8_lossy(&req.body);
    if raw.contains("<at ") || raw.contains("<at>") {
        return Err("an <at> mention from user text".into());
    }
    match body["msg_type"].as_str() {
        Some("text") => non_empty("text", string(&body["content"]["text"], "content.text")?),
        Some("post") => {
            let post = body["content"]["post"].as_object().ok_or("no post")?;
            let (_, locale) = post.iter().next().ok_or("post has no locale")?;
            string(&locale["title"], "post title")?;
            let content = locale["content"].as_array().ok_or("post without content")?;
            if content.is_empty() {
                return Err("post content is empty".into());
            }
            Ok(())
        }
        Some("interactive") => {
            let content = string(&body["card"]["elements"][0]["content"], "card markdown")?;
            non_empty("card markdown", content)
        }
        other => Err(format!("msg_type {other:?}")),
    }
}

fn wecom(req: &Recorded) -> Result<(), String> {
    let body = json_body(req)?;
    let (content, max) = match body["msgtype"].as_str() {
        Some("text") => (string(&body["text"]["content"], "text.content")?, 2048),
        Some("markdown") => (
            string(&body["markdown"]["content"], "markdown.content")?,
            4096,
        ),
        other => return Err(format!("msgtype {other:?}")),
    };
    non_empty("content", content)?;
    if content.contains("<@") {
        return Err("a <@…> mention from user text".into());
    }
    at_most("content (bytes)", content.len(), max)
}

fn telegram(req: &Recorded) -> Result<(), String> {
    let body = json_body(req)?;
    if body["parse_mode"] != "HTML" {
        return Err(format!("parse_mode {}", body["parse_mode"]));
    }
    let text = string(&body["text"], "text")?;
    non_empty("text", text)?;
    at_most("text (UTF-16 units)", text.encode_utf16().count(), 4096)?;
    html_subset("text", text, TELEGRAM_TAGS)
}

fn teams(req: &Recorded) -> Result<(), String> {
    let body = json_body(req)?;
    at_most("body (bytes)", req.body.len(), 28 * 1024)?;
    let blocks = body["attachments"][0]["content"]["body"]
        .as_array()
        .ok_or("no card body")?;
    for block in blocks {
        non_empty("TextBlock", string(&block["text"], "TextBlock text")?)?;
    }
    Ok(())
}

/// The Matrix spec: `PUT …/rooms/{id}/send/m.room.message/{txn}` with the
/// room id percent-encoded, a bearer token, an event under 65,536 bytes,
/// and `org.matrix.custom.html` only in the recommended tag subset.
fn matrix(req: &Recorded) -> Result<(), String> {
    if req.method != "PUT" {
        return Err(format!("method {}", req.method));
    }
    let path = req.path.split('?').next().unwrap_or_default();
    let rest = path
        .strip_prefix("/_matrix/client/v3/rooms/%21room%3Aexample.org/send/m.room.message/")
        .ok_or(format!("path {path}"))?;
    non_empty("transaction id", rest)?;
    if req.header("authorization") != Some("Bearer syt_token") {
        return Err("M_MISSING_TOKEN".into());
    }
    at_most("event (bytes)", req.body.len(), 65_536)?;
    let doc = json_body(req)?;
    if doc["msgtype"] != "m.notice" || !doc["m.mentions"].is_object() {
        return Err(format!(
            "msgtype {} / m.mentions {}",
            doc["msgtype"], doc["m.mentions"]
        ));
    }
    non_empty("body", string(&doc["body"], "body")?)?;
    if let Some(html) = doc["formatted_body"].as_str() {
        if doc["format"] != "org.matrix.custom.html" {
            return Err(format!("format {}", doc["format"]));
        }
        html_subset(
            "formatted_body",
            html,
            &[
                "b",
                "strong",
                "i",
                "em",
                "u",
                "s",
                "a",
                "code",
                "pre",
                "blockquote",
                "p",
                "br",
                "ul",
                "ol",
                "li",
                "h1",
                "h2",
                "h3",
                "h4",
                "h5",
                "h6",
                "hr",
            ],
        )?;
    }
    Ok(())
}

/// Mastodon: a form with `status` (≤ 500 characters, the stock limit) and
/// `visibility`, a bearer token, an `Idempotency-Key`; no `@name` in the
/// text, which would mention and notify an account.
fn mastodon(req: &Recorded) -> Result<(), String> {
    if req.header("authorization") != Some("Bearer tok") {
        return Err("The access token is invalid".into());
    }
    non_empty(
        "idempotency-key",
        req.header("idempotency-key").unwrap_or_default(),
    )?;
    let status = req.form("status").unwrap_or_default();
    non_empty("status", &status)?;
    at_most("status (characters)", status.chars().count(), 500)?;
    let chars: Vec<char> = status.chars().collect();
    if let Some(i) = chars
        .windows(2)
        .position(|w| w[0] == '@' && (w[1].is_alphanumeric() || w[1] == '_'))
    {
        return Err(format!("a mention at character {i}"));
    }
    let visibility = req.form("visibility").unwrap_or_default();
    if !["public", "unlisted", "private", "direct"].contains(&visibility.as_str()) {
        return Err(format!("visibility {visibility:?}"));
    }
    Ok(())
}

/// Twilio Messages: a form with `To`, `From` and `Body` (≤ 1,600
/// characters), basic auth; and at most 10 segments as carriers count them:
/// GSM-7 160 or 153 per part (`^{}\\[~]|€` cost two), else UCS-2 70 or 67
/// UTF-16 units per part.
fn twilio(req: &Recorded) -> Result<(), String> {
    // base64("AC123:tok")
    if req.header("authorization") != Some("Basic QUMxMjM6dG9r") {
        return Err("20003 Authenticate".into());
    }
    if req.form("To").as_deref() != Some("+15551234567")
        || req.form("From").as_deref() != Some("+15550006666")
    {
        return Err("21211 Invalid 'To' or 'From' Phone Number".into());
    }
    let body = req.form("Body").unwrap_or_default();
    non_empty("Body", &body)?;
    at_most("Body (characters)", body.chars().count(), 1600)?;
    let basic = "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà";
    let extended = "^{}\\[~]|€\u{c}";
    let gsm = body
        .chars()
        .all(|c| basic.contains(c) || extended.contains(c));
    let segments = if gsm {
        let septets: usize = body
            .chars()
            .map(|c| if extended.contains(c) { 2 } else { 1 })
            .sum();
        if septets <= 160 {
            1
        } else {
            septets.div_ceil(153)
        }
    } else {
        let units: usize = body.chars().map(char::len_utf16).sum();
        if units <= 70 { 1 } else { units.div_ceil(67) }
    };
    at_most("segments", segments, 10)
}

/// LINE push: a bearer token, a UUID `X-Line-Retry-Key`, `to`, and 1–5
/// messages of type `text` of at most 5,000 characters (UTF-16 units here).
fn line(req: &Recorded) -> Result<(), String> {
    if req.header("authorization") != Some("Bearer tok") {
        return Err("Authentication failed".into());
    }
    let key = req.header("x-line-retry-key").unwrap_or_default();
    let uuid = key.len() == 36
        && key.chars().enumerate().all(|(i, c)| {
            if [8, 13, 18, 23].contains(&i) {
                c == '-'
            } else {
                c.is_ascii_hexdigit()
            }
        });
    if !uuid {
        return Err(format!("X-Line-Retry-Key {key:?} is not a UUID"));
    }
    let doc = json_body(req)?;
    non_empty("to", string(&doc["to"], "to")?)?;
    let messages = doc["messages"].as_array().ok_or("messages is missing")?;
    if messages.is_empty() || messages.len() > 5 {
        return Err(format!("{} messages", messages.len()));
    }
    for m in messages {
        if m["type"] != "text" {
            return Err(format!("message type {}", m["type"]));
        }
        let text = string(&m["text"], "text")?;
        non_empty("text", text)?;
        at_most("text (UTF-16 units)", text.encode_utf16().count(), 5000)?;
    }
    Ok(())
}

/// Opsgenie Create Alert: `GenieKey` auth; `message` ≤ 130 characters,
/// `alias` ≤ 512, `description` ≤ 15,000, priority P1–P5, responders with a
/// type, `details` ≤ 8,000 characters in all.
fn opsgenie(req: &Recorded) -> Result<(), String> {
    if req.header("authorization") != Some("GenieKey key") {
        return Err("Could not authenticate".into());
    }
    let doc = json_body(req)?;
    let message = string(&doc["message"], "message")?;
    non_empty("message", message)?;
    at_most("message (characters)", message.chars().count(), 130)?;
    if message.contains(['\n', '\r']) {
        return Err("message spans lines".into());
    }
    at_most(
        "alias (characters)",
        string(&doc["alias"], "alias")?.chars().count(),
        512,
    )?;
    let description = string(&doc["description"], "description")?;
    at_most(
        "description (characters)",
        description.chars().count(),
        15_000,
    )?;
    let priority = string(&doc["priority"], "priority")?;
    if !["P1", "P2", "P3", "P4", "P5"].contains(&priority) {
        return Err(format!("priority {priority:?}"));
    }
    for r in doc["responders"]
        .as_array()
        .ok_or("responders is missing")?
    {
        let named = r["name"].is_string() || r["username"].is_string();
        if !["team", "user", "escalation", "schedule"].contains(&r["type"].as_str().unwrap_or(""))
            || !named
        {
            return Err(format!("responder {r}"));
        }
    }
    let details: usize = doc["details"]
        .as_object()
        .map(|d| {
            d.iter()
                .map(|(k, v)| k.chars().count() + v.as_str().map_or(0, |v| v.chars().count()))
                .sum()
        })
        .unwrap_or(0);
    at_most("details (characters)", details, 8000)
}

/// Bark's `/push`: `device_key`, a non-empty `body`, a known `level`, and
/// what APNs takes: the whole push under 4 KB.
fn bark(req: &Recorded) -> Result<(), String> {
    let doc = json_body(req)?;
    non_empty("device_key", string(&doc["device_key"], "device_key")?)?;
    non_empty("body", string(&doc["body"], "body")?)?;
    let level = string(&doc["level"], "level")?;
    if !["active", "timeSensitive", "passive", "critical"].contains(&level) {
        return Err(format!("level {level:?}"));
    }
    if let Some(title) = doc["title"].as_str() {
        at_most("title (characters)", title.chars().count(), 200)?;
    }
    at_most("push (bytes)", req.body.len(), 4096)
}

/// Rocket.Chat incoming webhook: a non-empty `text` within the default
/// Maximum Allowed Message Size (5,000 characters) that mentions no one
/// (`@all`, `@here`, `@user`).
fn rocketchat(req: &Recorded) -> Result<(), String> {
    let doc = json_body(req)?;
    let text = string(&doc["text"], "text")?;
    non_empty("text", text)?;
    at_most("text (characters)", text.chars().count(), 5000)?;
    let chars: Vec<char> = text.chars().collect();
    if let Some(i) = chars
        .windows(2)
        .position(|w| w[0] == '@' && (w[1].is_alphanumeric() || w[1] == '_'))
    {
        return Err(format!("a mention at character {i}"));
    }
    Ok(())
}

/// Zulip `POST /api/v1/messages`: basic auth as the bot, a form with
/// `type`, `to`, a one-line `topic` of at most 60 characters, and `content`
/// of at most 10,000 bytes in which nothing mentions anyone (`@**all**`,
/// `@*group*`, `@_**name**`).
fn zulip(req: &Recorded) -> Result<(), String> {
    // base64("bot@example.org:k")
    if req.header("authorization") != Some("Basic Ym90QGV4YW1wbGUub3JnOms=") {
        return Err("UNAUTHORIZED".into());
    }
    if req.form("type").as_deref() != Some("stream") || req.form("to").as_deref() != Some("ops") {
        return Err(format!(
            "type {:?} to {:?}",
            req.form("type"),
            req.form("to")
        ));
    }
    let topic = req.form("topic").unwrap_or_default();
    non_empty("topic", &topic)?;
    at_most("topic (characters)", topic.chars().count(), 60)?;
    if topic.contains(['\n', '\r']) {
        return Err("the topic spans lines".into());
    }
    let content = req.form("content").unwrap_or_default();
    non_empty("content", &content)?;
    at_most("content (bytes)", content.len(), 10_000)?;
    for mention in ["@**", "@*", "@_**"] {
        if content.contains(mention) {
            return Err(format!("a mention ({mention}) in the content"));
        }
    }
    Ok(())
}

/// Google Chat webhook: `{"text"}` of at most 4,096 characters with no
/// `<users/…>` mention and no link syntax the sender did not write.
fn googlechat(req: &Recorded) -> Result<(), String> {
    // A client-assigned message id: `client-`, then at most 56 of a-z, 0-9, -.
    let query = req.query.as_deref().unwrap_or_default();
    let id = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("messageId=client-"))
        .ok_or(format!("no messageId in {query:?}"))?;
    if id.is_empty()
        || id.len() > 56
        || !id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(format!("messageId client-{id}"));
    }
    let doc = json_body(req)?;
    let text = string(&doc["text"], "text")?;
    non_empty("text", text)?;
    at_most("text (characters)", text.chars().count(), 4096)?;
    let chars: Vec<char> = text.chars().collect();
    if let Some(i) = chars
        .windows(2)
        .position(|w| w[0] == '<' && w[1].is_alphanumeric())
    {
        return Err(format!("`<` starts a mention or link at character {i}"));
    }
    at_most("message (bytes)", req.body.len(), 32_000)
}

/// PagerDuty Events API v2: a trigger needs `routing_key`, `event_action`,
/// and a payload with `summary` (≤ 1024 characters), `source` and one of
/// four severities; `dedup_key` is at most 255 characters.
fn pagerduty(req: &Recorded) -> Result<(), String> {
    let doc = json_body(req)?;
    non_empty("routing_key", string(&doc["routing_key"], "routing_key")?)?;
    if doc["event_action"] != "trigger" {
        return Err(format!("event_action {}", doc["event_action"]));
    }
    let dedup = string(&doc["dedup_key"], "dedup_key")?;
    at_most("dedup_key (bytes)", dedup.len(), 255)?;
    let payload = &doc["payload"];
    let summary = string(&payload["summary"], "payload.summary")?;
    non_empty("payload.summary", summary)?;
    at_most(
        "payload.summary (characters)",
        summary.chars().count(),
        1024,
    )?;
    non_empty(
        "payload.source",
        string(&payload["source"], "payload.source")?,
    )?;
    let severity = string(&payload["severity"], "payload.severity")?;
    if !["critical", "error", "warning", "info"].contains(&severity) {
        return Err(format!("severity {severity:?}"));
    }
    at_most("event (bytes)", req.body.len(), 512 * 1024)?;
    Ok(())
}

fn pushover(req: &Recorded) -> Result<(), String> {
    if req.header("content-type") != Some("application/x-www-form-urlencoded") {
        return Err("content-type must be a form".into());
    }
    let message = req.form("message").unwrap_or_default();
    non_empty("message", &message)?;
    at_most("message (characters)", message.chars().count(), 1024)?;
    if let Some(title) = req.form("title") {
        at_most("title (characters)", title.chars().count(), 250)?;
    }
    if req.form("html").as_deref() == Some("1") {
        html_subset("message", &message, &["b", "i", "u", "a", "font"])?;
    }
    Ok(())
}

fn sendgrid(req: &Recorded) -> Result<(), String> {
    let body = json_body(req)?;
    let subject = string(&body["subject"], "subject")?;
    if subject.trim().is_empty() {
        return Err("The subject is required".into());
    }
    if subject.contains(['\n', '\r']) {
        return Err("the subject spans lines".into());
    }
    let content = body["content"].as_array().ok_or("no content")?;
    for part in content {
        non_empty("content value", string(&part["value"], "content value")?)?;
        if part["type"] == "text/html" {
            let html = part["value"]
                .as_str()
                .unwrap_or_default()
                .to_ascii_lowercase();
            let active = [
                "<script",
                "href=\"javascript:",
                " onclick=",
                " onerror=",
                "<iframe",
            ];
            if let Some(found) = active.iter().find(|a| html.contains(*a)) {
                return Err(format!("active content ({found}) in the HTML part"));
            }
        }
    }
    Ok(())
}

fn ntfy(req: &Recorded) -> Result<(), String> {
    let body = json_body(req)?;
    let message = body["message"].as_str().unwrap_or_default();
    // Longer messages would become attachments.
    at_most("message (bytes)", message.len(), 4096)
}

fn gotify(req: &Recorded) -> Result<(), String> {
    let body = json_body(req)?;
    non_empty(
        "message (Field 'message' is required)",
        string(&body["message"], "message")?,
    )
}

fn mattermost(req: &Recorded) -> Result<(), String> {
    let body = json_body(req)?;
    let text = string(&body["text"], "text")?;
    non_empty("text", text)?;
    at_most("text (characters)", text.chars().count(), 16_383)?;
    for ping in ["@channel", "@all", "@here"] {
        if text.contains(ping) {
            return Err(format!("{ping} from user text would notify everyone"));
        }
    }
    Ok(())
}
