//! Every platform plugin, through the real daemon, against one local server
//! that plays each platform: it checks each request the way the platform
//! would (paths, content types, fields, signatures, sizes) and answers with
//! the platform's own success and failure shapes — including failures
//! inside HTTP 200 bodies. The scenario is picked by the credential in the
//! URL or by the target, as a real platform would tell robots apart.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use notifyhub_testkit::daemon::Daemon;
use notifyhub_testkit::receiver::{Receiver, Recorded, Reply};
use notifyhub_testkit::verify;
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_notifyhub");
const DING_SECRET: &str = "SECdingtalk-signing-secret-0123456789";
const FEISHU_SECRET: &str = "feishu-signing-secret-abcdef";
const TG_TOKEN: &str = "123456:telegram-bot-token-XYZ";
const PUSHOVER_TOKEN: &str = "pushover-app-token-azGDORePK8gMaC0QOYAM";
const SENDGRID_KEY: &str = "SG.sendgrid-api-key-secret";

/// The scenario a request asks for: the robot token, chat id or recipient.
fn scenario(req: &Recorded) -> String {
    let query = req.query.clone().unwrap_or_default();
    for key in ["access_token=", "key="] {
        if let Some(v) = query.split('&').find_map(|kv| kv.strip_prefix(key)) {
            return v.to_string();
        }
    }
    if let Some(hook) = req.path.strip_prefix("/open-apis/bot/v2/hook/") {
        return hook.to_string();
    }
    if let Some(flow) = req.path.strip_prefix("/workflows/") {
        return flow.split('/').next().unwrap_or_default().to_string();
    }
    let body = req.json();
    if let Some(chat) = body["chat_id"].as_str() {
        return chat.to_string();
    }
    if let Some(to) = body["personalizations"][0]["to"][0]["email"].as_str() {
        return to.split('@').next().unwrap_or_default().to_string();
    }
    req.form("user").unwrap_or_default()
}

fn json_content(req: &Recorded) -> Result<(), String> {
    let ct = req.header("content-type").unwrap_or_default();
    if !ct.starts_with("application/json") {
        return Err(format!("content-type {ct:?}"));
    }
    Ok(())
}

/// DingTalk: signed query, JSON body with `msgtype` and its object, errors
/// as `errcode` on HTTP 200.
fn dingtalk(req: &Recorded) -> Reply {
    let check = || -> Result<(), String> {
        json_content(req)?;
        verify::dingtalk(DING_SECRET, req.query.as_deref().unwrap_or_default())?;
        let body = req.json();
        let kind = body["msgtype"].as_str().ok_or("no msgtype")?;
        if body[kind].is_null() || body["msgUuid"].as_str().is_none() {
            return Err(format!(
                "msgtype {kind} without its object or msgUuid: {body}"
            ));
        }
        Ok(())
    };
    let err = |code: i64, msg: &str| Reply::json(200, json!({"errcode": code, "errmsg": msg}));
    if let Err(e) = check() {
        return err(310_000, &format!("sign not match: {e}"));
    }
    match scenario(req).as_str() {
        "ok" => err(0, "ok"),
        "throttled" => err(130_101, "send too fast, exceed 20 times per minute"),
        "revoked" => err(300_005, "token is not exist"),
        _ => Reply::new(502, "Bad Gateway"),
    }
}

fn feishu(req: &Recorded) -> Reply {
    let check = || -> Result<(), String> {
        json_content(req)?;
        let body = req.json();
        verify::feishu(FEISHU_SECRET, &body)?;
        match body["msg_type"].as_str() {
            Some("text") if body["content"]["text"].is_string() => Ok(()),
            Some("post") if body["content"]["post"].is_object() => Ok(()),
            Some("interactive") if body["card"]["elements"].is_array() => Ok(()),
            _ => Err(format!("unexpected body {body}")),
        }
    };
    let err =
        |code: i64, msg: &str| Reply::json(200, json!({"code": code, "msg": msg, "data": {}}));
    if let Err(e) = check() {
        return err(
            19_021,
            &format!("sign match fail or timestamp is not within one hour: {e}"),
        );
    }
    if req.body.len() > 20 * 1024 {
        return err(9_499, "Bad Request: body too large");
    }
    match scenario(req).as_str() {
        "ok" => err(0, "success"),
        "legacy" => Reply::json(200, json!({"StatusCode": 0, "StatusMessage": "success"})),
        "throttled" => err(
            11_232,
            "frequency limited psm[lark.oapi.app_platform_runtime]",
        ),
        "revoked" => err(
            19_001,
            "param invalid: incoming webhook access token invalid",
        ),
        _ => Reply::new(503, "Service Unavailable"),
    }
}

fn wecom(req: &Recorded) -> Reply {
    let body = req.json();
    let err = |code: i64, msg: &str| Reply::json(200, json!({"errcode": code, "errmsg": msg}));
    let ok = json_content(req).is_ok()
        && match body["msgtype"].as_str() {
            Some("text") => body["text"]["content"]
                .as_str()
                .is_some_and(|c| c.len() <= 2048),
            Some("markdown") => body["markdown"]["content"]
                .as_str()
                .is_some_and(|c| c.len() <= 4096),
            _ => false,
        };
    if !ok {
        return err(
            40_008,
            &format!("invalid message type or content too long: {body}"),
        );
    }
    match scenario(req).as_str() {
        "ok" => err(0, "ok"),
        "throttled" => err(45_009, "api freq out of limit"),
        "revoked" => err(
            93_000,
            "invalid webhook url, hint: [1700000000_1_abc], from ip: 127.0.0.1",
        ),
        _ => Reply::new(500, "Internal Server Error"),
    }
}

fn telegram(req: &Recorded) -> Reply {
    let body = req.json();
    let fail = |status: u16, description: &str, extra: Value| {
        let mut answer = json!({"ok": false, "error_code": status, "description": description});
        if !extra.is_null() {
            answer["parameters"] = extra;
        }
        Reply::json(status, answer)
    };
    if req.path != format!("/bot{TG_TOKEN}/sendMessage") {
        return fail(401, "Unauthorized", Value::Null);
    }
    let text = body["text"].as_str().unwrap_or_default();
    if json_content(req).is_err()
        || body["parse_mode"] != "HTML"
        || text.is_empty()
        || text.chars().count() > 4096 + 64
    {
        return fail(
            400,
            "Bad Request: message text is empty or too long",
            Value::Null,
        );
    }
    let chat = body["chat_id"]
        .as_i64()
        .map(|c| c.to_string())
        .unwrap_or_else(|| scenario(req));
    match chat.as_str() {
        "-1001" | "@ok" => Reply::json(
            200,
            json!({"ok": true, "result": {"message_id": 4242, "chat": {"id": -1001}}}),
        ),
        "@throttled" => fail(
            429,
            "Too Many Requests: retry after 7",
            json!({"retry_after": 7}),
        ),
        "@blocked" => fail(403, "Forbidden: bot was blocked by the user", Value::Null),
        _ => fail(502, "Bad Gateway", Value::Null),
    }
}

fn teams(req: &Recorded) -> Reply {
    let body = req.json();
    let card = &body["attachments"][0];
    let ok = json_content(req).is_ok()
        && body["type"] == "message"
        && card["contentType"] == "application/vnd.microsoft.card.adaptive"
        && card["content"]["type"] == "AdaptiveCard"
        && card["content"]["body"]
            .as_array()
            .is_some_and(|b| !b.is_empty())
        && req.query.as_deref().is_some_and(|q| q.contains("sig="));
    if !ok {
        return Reply::json(
            400,
            json!({"error": {"code": "InvalidRequestContent", "message": body.to_string()}}),
        );
    }
    if req.body.len() > 28 * 1024 {
        return Reply::new(413, "Request Entity too large");
    }
    match scenario(req).as_str() {
        "ok" => Reply::new(202, ""),
        "throttled" => Reply::new(429, "").header("retry-after", "3"),
        "revoked" => Reply::json(
            401,
            json!({"error": {"code": "DirectApiAuthorizationRequired"}}),
        ),
        _ => Reply::new(500, ""),
    }
}

fn pushover(req: &Recorded) -> Reply {
    let fail = |status: u16, error: &str| {
        Reply::json(
            status,
            json!({"status": 0, "errors": [error], "request": "req-1"}),
        )
    };
    if req.header("content-type") != Some("application/x-www-form-urlencoded") {
        return fail(400, "content-type must be a form");
    }
    if req.form("token").as_deref() != Some(PUSHOVER_TOKEN) {
        return fail(400, "application token is invalid");
    }
    let message = req.form("message").unwrap_or_default();
    if message.is_empty() || message.chars().count() > 1024 {
        return fail(
            400,
            "message cannot be blank or longer than 1024 characters",
        );
    }
    match scenario(req).as_str() {
        "uok" => Reply::json(200, json!({"status": 1, "request": "5042853c-402d-4a18"})),
        "uquota" => {
            let reset = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_secs()
                + 120;
            fail(429, "application over quota").header("x-limit-app-reset", &reset.to_string())
        }
        "ubad" => fail(
            400,
            "user identifier is not a valid user, group, or subscribed user key",
        ),
        _ => Reply::new(500, "oops"),
    }
}

fn sendgrid(req: &Recorded) -> Reply {
    let errors = |status: u16, message: &str| {
        Reply::json(
            status,
            json!({"errors": [{"field": null, "message": message}]}),
        )
    };
    if req.header("authorization") != Some(&format!("Bearer {SENDGRID_KEY}")) {
        return errors(
            401,
            "The provided authorization grant is invalid, expired, or revoked",
        );
    }
    let body = req.json();
    let ok = json_content(req).is_ok()
        && body["from"]["email"] == "alerts@example.com"
        && body["subject"].is_string()
        && body["content"][0]["type"] == "text/plain"
        && body["personalizations"][0]["to"][0]["email"].is_string();
    if !ok {
        return errors(400, &format!("bad request: {body}"));
    }
    match scenario(req).as_str() {
        "ops" => Reply::new(202, "").header("x-message-id", "sg-msg-1"),
        "throttled" => {
            let reset = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_secs()
                + 30;
            errors(429, "too many requests").header("x-ratelimit-reset", &reset.to_string())
        }
        "unverified" => errors(
            403,
            "The from address does not match a verified Sender Identity",
        ),
        _ => errors(500, "internal error"),
    }
}

fn platform(req: &Recorded) -> Reply {
    let path = req.path.as_str();
    if path == "/robot/send" {
        dingtalk(req)
    } else if path.starts_with("/open-apis/bot/v2/hook/") {
        feishu(req)
    } else if path == "/cgi-bin/webhook/send" {
        wecom(req)
    } else if path.starts_with("/bot") {
        telegram(req)
    } else if path.starts_with("/workflows/") {
        teams(req)
    } else if path == "/1/messages.json" {
        pushover(req)
    } else if path == "/v3/mail/send" {
        sendgrid(req)
    } else {
        Reply::new(404, "no such endpoint")
    }
}

async fn start(receiver: &Receiver) -> anyhow::Result<Daemon> {
    let allow = format!("allowed_hosts = [\"{}\"]\n", receiver.authority());
    let base = receiver.url("");
    let base = base.trim_end_matches('/');
    Daemon::builder(BIN)
        .plugin("dingtalk", Some(&format!("{allow}[secrets]\nsecret = {{ env = \"T_DING\" }}")))
        .plugin("feishu", Some(&format!("{allow}[secrets]\nsecret = {{ env = \"T_FEISHU\" }}")))
        .plugin("wecom", Some(&allow))
        .plugin(
            "telegram",
            Some(&format!(
                "{allow}[config]\napi_base = \"{base}\"\n[secrets]\nbot_token = {{ env = \"T_TG\" }}"
            )),
        )
        .plugin("teams", Some(&allow))
        .plugin(
            "pushover",
            Some(&format!(
                "{allow}[config]\napi_url = \"{base}/1/messages.json\"\n[secrets]\napp_token = {{ env = \"T_PO\" }}"
            )),
        )
        .plugin(
            "email",
            Some(&format!(
                "{allow}[config]\napi_url = \"{base}/v3/mail/send\"\nfrom = \"alerts@example.com\"\n[secrets]\napi_key = {{ env = \"T_SG\" }}"
            )),
        )
        .env("T_DING", DING_SECRET)
        .env("T_FEISHU", FEISHU_SECRET)
        .env("T_TG", TG_TOKEN)
        .env("T_PO", PUSHOVER_TOKEN)
        .env("T_SG", SENDGRID_KEY)
        // Each case is one attempt; pacing would only slow the suite down.
        .config(
            "[rate_limits]\ndingtalk = []\nfeishu = []\nwecom = []\ntelegram = []\nteams = []\n",
        )
        .start()
        .await
}

/// Delivers and returns `(class, retry_after_ms)`, or `("delivered", None)`.
async fn outcome(daemon: &Daemon, task: Value) -> anyhow::Result<(String, Option<u64>, String)> {
    let done = daemon.deliver(task).await?;
    let outcome = &done["outcome"];
    Ok(if outcome["result"] == "delivered" {
        ("delivered".into(), None, outcome["status"].to_string())
    } else {
        (
            outcome["class"].as_str().unwrap_or("?").into(),
            outcome["retry_after_ms"].as_u64(),
            outcome["message"].as_str().unwrap_or("?").into(),
        )
    })
}

/// A platform's cases: target for each scenario and the expected class and
/// retry-after range.
struct Cases {
    platform: &'static str,
    target: fn(&Receiver, &str) -> String,
    /// `(scenario, class, min retry-after ms, max retry-after ms)`.
    expect: &'static [(&'static str, &'static str, u64, u64)],
}

const CASES: &[Cases] = &[
    Cases {
        platform: "dingtalk",
        target: |r, s| r.url(&format!("/robot/send?access_token={s}")),
        expect: &[
            ("ok", "delivered", 0, 0),
            ("throttled", "rate_limited", 600_000, 600_000),
            ("revoked", "permanent", 0, 0),
            ("down", "retryable", 0, 0),
        ],
    },
    Cases {
        platform: "feishu",
        target: |r, s| r.url(&format!("/open-apis/bot/v2/hook/{s}")),
        expect: &[
            ("ok", "delivered", 0, 0),
            ("legacy", "delivered", 0, 0),
            ("throttled", "rate_limited", 1_000, 1_000),
            ("revoked", "permanent", 0, 0),
            ("down", "retryable", 0, 0),
        ],
    },
    Cases {
        platform: "lark",
        target: |r, s| r.url(&format!("/open-apis/bot/v2/hook/{s}")),
        expect: &[("ok", "delivered", 0, 0)],
    },
    Cases {
        platform: "wecom",
        target: |r, s| r.url(&format!("/cgi-bin/webhook/send?key={s}")),
        expect: &[
            ("ok", "delivered", 0, 0),
            ("throttled", "rate_limited", 60_000, 60_000),
            ("revoked", "permanent", 0, 0),
            ("down", "retryable", 0, 0),
        ],
    },
    Cases {
        platform: "telegram",
        target: |_, s| s.to_string(),
        expect: &[
            ("-1001", "delivered", 0, 0),
            ("@throttled", "rate_limited", 7_000, 7_000),
            ("@blocked", "permanent", 0, 0),
            ("@down", "retryable", 0, 0),
        ],
    },
    Cases {
        platform: "teams",
        target: |r, s| {
            r.url(&format!(
                "/workflows/{s}/triggers/manual/paths/invoke?api-version=2016-06-01&sig=SIGSECRET"
            ))
        },
        expect: &[
            ("ok", "delivered", 0, 0),
            ("throttled", "rate_limited", 3_000, 3_000),
            ("revoked", "permanent", 0, 0),
            ("down", "retryable", 0, 0),
        ],
    },
    Cases {
        platform: "pushover",
        target: |_, s| s.to_string(),
        expect: &[
            ("uok", "delivered", 0, 0),
            ("uquota", "rate_limited", 100_000, 121_000),
            ("ubad", "permanent", 0, 0),
            ("udown", "retryable", 0, 0),
        ],
    },
    Cases {
        platform: "email",
        target: |_, s| format!("{s}@example.org"),
        expect: &[
            ("ops", "delivered", 0, 0),
            ("throttled", "rate_limited", 10_000, 31_000),
            ("unverified", "permanent", 0, 0),
            ("down", "retryable", 0, 0),
        ],
    },
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_platform_delivers_and_classifies_its_failures() -> anyhow::Result<()> {
    let receiver = Receiver::start(platform).await;
    let daemon = start(&receiver).await?;
    for case in CASES {
        for (scenario, class, min_retry, max_retry) in case.expect {
            // A rate-limited answer pauses that destination (as it should),
            // so it is asked for once.
            let forms = if *class == "rate_limited" { 1 } else { 2 };
            for (title, format) in [(None, "text"), (Some("Disk full"), "markdown")]
                .into_iter()
                .take(forms)
            {
                let task = json!({
                    "platform": case.platform,
                    "target": (case.target)(&receiver, scenario),
                    "title": title,
                    "body": "**db1** is at 97% — see [runbook](https://runbooks.example/disk)",
                    "format": format,
                });
                let (got, retry, detail) = outcome(&daemon, task).await?;
                let label = format!("{} {scenario} ({format})", case.platform);
                assert_eq!(got, *class, "{label}: {detail}");
                if *max_retry > 0 {
                    let retry = retry.unwrap_or(0);
                    assert!(
                        (*min_retry..=*max_retry).contains(&retry),
                        "{label}: retry-after {retry} ms not in {min_retry}..={max_retry}"
                    );
                }
            }
        }
    }

    // Secrets and credentials never reach the logs or the operator's views.
    let status = daemon.cli(&["status"]);
    let plugins = daemon.cli(&["plugins", "--json"]);
    let tasks = daemon.cli(&["tasks", "--json", "--limit", "1000"]);
    let everything = format!(
        "{}{}{}{}{}",
        daemon.logs(),
        String::from_utf8_lossy(&status.stdout),
        String::from_utf8_lossy(&plugins.stdout),
        String::from_utf8_lossy(&tasks.stdout),
        daemon.stdout()
    );
    for secret in [
        DING_SECRET,
        FEISHU_SECRET,
        TG_TOKEN,
        PUSHOVER_TOKEN,
        SENDGRID_KEY,
        "SIGSECRET",
    ] {
        assert!(!everything.contains(secret), "{secret} leaked");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_carry_what_each_platform_documents() -> anyhow::Result<()> {
    let receiver = Receiver::start(platform).await;
    let daemon = start(&receiver).await?;
    let long = "告警 ".repeat(3000);

    // DingTalk: markdown with the title as preview and heading; msgUuid is the task id.
    let done = daemon
        .deliver(
            json!({"platform": "dingtalk", "target": receiver.url("/robot/send?access_token=ok"),
               "title": "Disk full", "body": "**db1**", "format": "markdown",
               "metadata": {"at_mobiles": "13800000000"}}),
        )
        .await?;
    let req = receiver.requests().pop().unwrap().json();
    assert_eq!(req["msgtype"], "markdown");
    assert_eq!(req["markdown"]["title"], "Disk full");
    assert!(
        req["markdown"]["text"]
            .as_str()
            .unwrap()
            .starts_with("#### Disk full\n\n**db1**")
    );
    assert!(
        req["markdown"]["text"]
            .as_str()
            .unwrap()
            .contains("@13800000000")
    );
    assert_eq!(req["at"]["atMobiles"][0], "13800000000");
    assert_eq!(req["msgUuid"], done["id"]);

    // WeCom: over-long text is cut to 2048 bytes with a visible marker.
    daemon.deliver(json!({"platform": "wecom", "target": receiver.url("/cgi-bin/webhook/send?key=ok"), "body": long})).await?;
    let req = receiver.requests().pop().unwrap().json();
    let content = req["text"]["content"].as_str().unwrap();
    assert!(
        content.len() <= 2048 && content.ends_with("[truncated]"),
        "{}",
        content.len()
    );

    // Feishu: a titled text is a post; markdown is a card with a markdown element.
    daemon.deliver(json!({"platform": "feishu", "target": receiver.url("/open-apis/bot/v2/hook/ok"), "title": "T", "body": "a\nb"})).await?;
    let req = receiver.requests().pop().unwrap().json();
    assert_eq!(req["content"]["post"]["zh_cn"]["title"], "T");
    assert_eq!(
        req["content"]["post"]["zh_cn"]["content"][1][0]["text"],
        "b"
    );
    daemon.deliver(json!({"platform": "feishu", "target": receiver.url("/open-apis/bot/v2/hook/ok"), "body": "**b**", "format": "markdown"})).await?;
    let req = receiver.requests().pop().unwrap().json();
    assert_eq!(
        req["card"]["elements"][0],
        json!({"tag": "markdown", "content": "**b**"})
    );

    // Telegram: HTML with escaping; the title bold; a topic from `chat:topic`.
    daemon.deliver(json!({"platform": "telegram", "target": "-1001:77", "title": "A<B", "body": "x & **y**", "format": "markdown"})).await?;
    let req = receiver.requests().pop().unwrap().json();
    assert_eq!(req["text"], "<b>A&lt;B</b>\nx &amp; <b>y</b>");
    assert_eq!(
        (req["chat_id"].clone(), req["message_thread_id"].clone()),
        (json!(-1001), json!(77))
    );

    // Teams: an Adaptive Card with a heading TextBlock.
    daemon.deliver(json!({"platform": "teams", "target": receiver.url("/workflows/ok/x?sig=SIGSECRET"), "title": "T", "body": "b", "priority": "high"})).await?;
    let req = receiver.requests().pop().unwrap().json();
    let body = &req["attachments"][0]["content"]["body"];
    assert_eq!(
        (body[0]["text"].clone(), body[0]["weight"].clone()),
        (json!("T"), json!("Bolder"))
    );
    assert_eq!(
        body[1],
        json!({"type": "TextBlock", "text": "b", "wrap": true})
    );

    // Pushover: form fields; markdown as html=1; message cut to 1024 characters.
    let done = daemon.deliver(json!({"platform": "pushover", "target": "uok", "title": "T", "body": format!("**x** {long}"), "format": "markdown"})).await?;
    assert_eq!(done["outcome"]["provider_id"], "5042853c-402d-4a18");
    let req = receiver.requests().pop().unwrap();
    assert_eq!(req.form("html").as_deref(), Some("1"));
    assert!(req.form("message").unwrap().starts_with("<b>x</b>"));

    // E-mail: subject from the title, plain and HTML parts, several recipients.
    daemon.deliver(json!({"platform": "email", "target": "ops@example.org, dev@example.org", "title": "Disk", "body": "**x**", "format": "markdown"})).await?;
    let req = receiver.requests().pop().unwrap().json();
    assert_eq!(req["subject"], "Disk");
    assert_eq!(
        req["personalizations"][0]["to"][1]["email"],
        "dev@example.org"
    );
    assert_eq!(req["content"][1]["type"], "text/html");
    Ok(())
}

/// Named destinations: callers give a name; URLs and secrets stay in the
/// daemon's config, a fan-out reaches every member, and nothing secret is
/// stored or printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destinations_hide_urls_and_secrets_and_fan_out() -> anyhow::Result<()> {
    let receiver = Receiver::start(platform).await;
    let allow = format!("allowed_hosts = [\"{}\"]\n", receiver.authority());
    let ding_url = receiver.url("/robot/send?access_token=ok");
    let wecom_url = receiver.url("/cgi-bin/webhook/send?key=ok");
    let config = format!(
        r#"
[destinations.ops-dingtalk]
platform = "dingtalk"
url_env = "OPS_DING_URL"
secret_env = "OPS_DING_SECRET"

[destinations.ops-wecom]
platform = "wecom"
url = "{wecom_url}"

[destinations.ops]
fan_out = ["ops-dingtalk", "ops-wecom"]
"#
    );
    let daemon = Daemon::builder(BIN)
        .plugin("dingtalk", Some(&allow))
        .plugin("wecom", Some(&allow))
        .config(&config)
        .env("OPS_DING_URL", &ding_url)
        .env("OPS_DING_SECRET", DING_SECRET)
        .start()
        .await?;

    let response = daemon
        .request(
            json!({"op": "submit", "wait": true, "task": {"target": "ops", "body": "fan out"}}),
        )
        .await?;
    let tasks = response["result"]["tasks"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(tasks.len(), 2, "{response}");
    for task in &tasks {
        assert_eq!(task["outcome"]["result"], "delivered", "{task}");
    }
    // The signed DingTalk request used the destination's secret (the
    // receiver checks the signature), and the stored tasks name only the
    // destination.
    let requests = receiver.wait_for(2, Duration::from_secs(5)).await?;
    assert!(requests.iter().any(|r| r.path == "/robot/send"));
    let out = daemon.cli(&[
        "send",
        "--target",
        "ops-wecom",
        "--body",
        "by name",
        "--wait",
    ]);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let listed = daemon.cli(&["tasks", "--json"]);
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(listed.contains("ops-dingtalk"), "{listed}");
    let store = std::fs::read(daemon.dir().join("data/tasks.db")).unwrap_or_default();
    let store = String::from_utf8_lossy(&store);
    let status = daemon.cli(&["status"]);
    let everything = format!(
        "{}{listed}{}{store}",
        daemon.logs(),
        String::from_utf8_lossy(&status.stdout)
    );
    for secret in [DING_SECRET, "access_token=ok", "key=ok"] {
        assert!(!everything.contains(secret), "{secret} leaked");
    }

    // Errors name what is wrong.
    let bad = daemon
        .request(json!({"op": "submit", "task": {"target": "nowhere", "body": "x"}}))
        .await?;
    let message = bad["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("`platform` is missing") && message.contains("ops-wecom"),
        "{bad}"
    );
    let bad = daemon
        .request(
            json!({"op": "submit", "task": {"platform": "slack", "target": "ops", "body": "x"}}),
        )
        .await?;
    assert!(
        bad["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("leave out `platform`"),
        "{bad}"
    );
    Ok(())
}
