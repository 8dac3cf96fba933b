//! E-mail over SMTP: the `smtp` plugin composes, the host's SMTP capability
//! sends, and a real relay on loopback (aiosmtpd, with a test CA) receives
//! through STARTTLS or implicit TLS with AUTH. The relay's answers decide
//! each case: a 4xx is retried, a 5xx dead-lettered, a dropped or silent
//! connection retried, and what the host refuses never leaves it.

use std::time::Duration;

use notifyhub_testkit::daemon::{Daemon, DaemonBuilder};
use notifyhub_testkit::smtp::{Received, RelayTls, SmtpRelay};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_notifyhub");
const USER: &str = "notifyhub";
const PASSWORD: &str = "s3cret-relay-Pa55";

/// A manifest for the `smtp` plugin sending through `relay`.
fn manifest(relay: &SmtpRelay, security: &str, password_env: &str, extra: &str) -> String {
    format!(
        "allowed_hosts = [\"localhost:{port}\"]\n\
         [config]\nrelay = \"localhost:{port}\"\nsecurity = \"{security}\"\n\
         from = \"alerts@example.org\"\nfrom_name = \"Ops Bot ✓\"\nusername = \"{USER}\"\n\
         [secrets]\npassword = {{ env = \"{password_env}\" }}\n\
         [limits]\ntimeout = \"3s\"\n\
         [smtp]\nca_file = \"{ca}\"\n{extra}",
        port = relay.port(),
        ca = relay.ca_file().display(),
    )
}

fn with_relay(builder: DaemonBuilder, relay: &SmtpRelay, security: &str) -> DaemonBuilder {
    builder
        .plugin(
            "smtp",
            Some(&manifest(relay, security, "TEST_SMTP_PASSWORD", "")),
        )
        .env("TEST_SMTP_PASSWORD", PASSWORD)
        .env("TEST_SMTP_WRONG", "not-the-password")
}

/// `builder` with the smtp plugin once more, serving `platform` under
/// `manifest`.
fn smtp_as(builder: DaemonBuilder, smtp: &[u8], platform: &str, manifest: &str) -> DaemonBuilder {
    builder
        .file(&format!("{platform}.wasm"), smtp.to_vec())
        .file(
            &format!("{platform}.toml"),
            format!("platforms = [\"{platform}\"]\n{manifest}"),
        )
}

fn parse(message: &Received) -> mail_parser::Message<'_> {
    mail_parser::MessageParser::default()
        .parse(message.data.as_bytes())
        .expect("the relay received a message mail_parser can read")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_reaches_a_relay_through_starttls_with_auth() -> anyhow::Result<()> {
    let relay = SmtpRelay::start(RelayTls::Starttls, Some((USER, PASSWORD))).await?;
    let daemon = with_relay(Daemon::builder(BIN), &relay, "starttls")
        .start()
        .await?;

    let sent = daemon.cli(&[
        "send",
        "--platform",
        "smtp",
        "--target",
        "ops@example.org, oncall@example.org",
        "--title",
        "Диск заполнен: /var 98 %",
        "--body",
        "**db1** is nearly full.\n\n<script>alert(1)</script>",
        "--format",
        "markdown",
        "--wait",
    ]);
    let text = String::from_utf8_lossy(&sent.stdout);
    assert!(sent.status.success(), "{sent:?}");
    assert!(text.contains("state     succeeded"), "{text}");
    assert!(text.contains("SMTP 250"), "{text}");

    let received = relay.wait_for(1, Duration::from_secs(10)).await?;
    let got = &received[0];
    assert!(got.tls, "the message came over a connection without TLS");
    assert_eq!(got.login.as_deref(), Some(USER));
    assert_eq!(got.mail_from, "alerts@example.org");
    assert_eq!(got.rcpt_tos, ["ops@example.org", "oncall@example.org"]);

    let mail = parse(got);
    assert_eq!(mail.subject(), Some("Диск заполнен: /var 98 %"));
    let from = mail.from().and_then(|f| f.first()).expect("a From header");
    assert_eq!(from.name(), Some("Ops Bot ✓"));
    assert_eq!(from.address(), Some("alerts@example.org"));
    assert!(mail.date().is_some(), "no Date header");
    let tasks = daemon.request(json!({"op": "tasks", "limit": 1})).await?;
    let id = tasks["result"]["tasks"][0]["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert_eq!(
        mail.message_id(),
        Some(format!("{id}@example.org").as_str())
    );
    // The raw subject is encoded: a mail header is ASCII.
    let raw = got.header("subject").unwrap_or_default();
    assert!(raw.is_ascii() && raw.contains("=?utf-8?"), "{raw}");
    // The markdown as plain text, and a sanitized HTML alternative.
    let plain = mail.body_text(0).unwrap_or_default();
    assert!(plain.contains("**db1** is nearly full."), "{plain}");
    let html = mail.body_html(0).unwrap_or_default();
    assert!(html.contains("<b>db1</b>"), "{html}");
    assert!(!html.contains("<script"), "{html}");

    // The password never shows.
    assert!(!daemon.logs().contains(PASSWORD));

    // More messages to the same relay reuse the connection (TLS and AUTH
    // are paid once).
    for n in 0..3 {
        let task = daemon
            .deliver(
                json!({"platform": "smtp", "target": "ops@example.org", "body": format!("n{n}")}),
            )
            .await?;
        assert_eq!(task["state"], "succeeded", "{task}");
    }
    let received = relay.wait_for(4, Duration::from_secs(10)).await?;
    let peers: Vec<u16> = received.iter().map(|m| m.peer).collect();
    assert!(
        peers.iter().all(|p| *p == peers[0] && *p != 0),
        "connections by client port: {peers:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn implicit_tls_delivers_and_each_relay_answer_gets_its_class() -> anyhow::Result<()> {
    let relay = SmtpRelay::start(RelayTls::Implicit, Some((USER, PASSWORD))).await?;
    let plain = SmtpRelay::start(RelayTls::None, None).await?;
    let smtp = std::fs::read(notifyhub_testkit::plugins::path("smtp")?)?;
    // The same plugin as three more platforms: a wrong password, a relay the
    // allowlist does not name, and a plaintext relay the manifest does not
    // allow.
    let builder = with_relay(Daemon::builder(BIN), &relay, "tls");
    let builder = smtp_as(
        builder,
        &smtp,
        "badauth",
        &manifest(&relay, "tls", "TEST_SMTP_WRONG", ""),
    );
    let builder = smtp_as(
        builder,
        &smtp,
        "elsewhere",
        &manifest(&relay, "tls", "TEST_SMTP_PASSWORD", "").replace(
            &format!("allowed_hosts = [\"localhost:{}\"]", relay.port()),
            "allowed_hosts = [\"localhost:1\"]",
        ),
    );
    let daemon = smtp_as(
        builder,
        &smtp,
        "cleartext",
        &format!(
            "allowed_hosts = [\"localhost:{port}\"]\n\
             [config]\nrelay = \"localhost:{port}\"\nsecurity = \"none\"\nfrom = \"a@example.org\"\n",
            port = plain.port()
        ),
    )
        .start()
        .await?;

    let ok = daemon
        .deliver(json!({"platform": "smtp", "target": "ops@example.org", "body": "over TLS"}))
        .await?;
    assert_eq!(ok["state"], "succeeded", "{ok}");
    let got = relay.wait_for(1, Duration::from_secs(10)).await?;
    assert!(
        got[0].tls && got[0].login.as_deref() == Some(USER),
        "{got:?}"
    );

    // (platform, recipient, class) with one attempt each (the test daemon's
    // default): the relay's code decides.
    let cases = [
        ("smtp", "defer@example.org", "retryable"),
        ("smtp", "closing@example.org", "retryable"),
        ("smtp", "busy@example.org", "rate_limited"),
        ("smtp", "unknown@example.org", "permanent"),
        ("smtp", "drop@example.org", "retryable"),
        ("smtp", "slow@example.org", "retryable"),
        ("smtp", "not an address", "invalid"),
        ("badauth", "ops@example.org", "permanent"),
        ("cleartext", "ops@example.org", "invalid"),
        ("elsewhere", "ops@example.org", "invalid"),
    ];
    let mut wrong = Vec::new();
    for (platform, target, class) in cases {
        let task = daemon
            .deliver(json!({"platform": platform, "target": target, "body": "x"}))
            .await?;
        let outcome = &task["outcome"];
        if outcome["class"] != class {
            wrong.push(format!(
                "{platform} → {target}: expected {class}, got {outcome}"
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    // Only the first message was accepted; the plaintext relay saw nothing.
    assert_eq!(relay.messages().len(), 1);
    assert!(plain.messages().is_empty());
    let logs = daemon.logs();
    assert!(logs.contains("plaintext SMTP is refused"), "{logs}");
    assert!(logs.contains("relay not in allowed_hosts"), "{logs}");
    assert!(!logs.contains(PASSWORD));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deferred_message_is_retried_with_the_same_message_id() -> anyhow::Result<()> {
    let relay = SmtpRelay::start(RelayTls::Starttls, Some((USER, PASSWORD))).await?;
    let daemon = with_relay(Daemon::builder(BIN), &relay, "starttls")
        .retry("max_attempts = 3\nbase = \"10ms\"\n")
        .start()
        .await?;

    // Greylisted once, then accepted: one message, on the second attempt.
    let task = daemon
        .deliver(json!({"platform": "smtp", "target": "flaky@example.org", "body": "x"}))
        .await?;
    assert_eq!(task["state"], "succeeded", "{task}");
    assert_eq!(task["attempts"], 2, "{task}");
    let got = relay.wait_for(1, Duration::from_secs(10)).await?;
    let id = task["id"].as_str().unwrap_or_default();
    assert_eq!(
        parse(&got[0]).message_id(),
        Some(format!("{id}@example.org").as_str())
    );

    // Deferred every time: dead after the last attempt. Refused for good:
    // dead after the first.
    let deferred = daemon
        .deliver(json!({"platform": "smtp", "target": "defer@example.org", "body": "x"}))
        .await?;
    let refused = daemon
        .deliver(json!({"platform": "smtp", "target": "unknown@example.org", "body": "x"}))
        .await?;
    let summary = |t: &Value| (t["state"].clone(), t["attempts"].clone());
    assert_eq!(summary(&deferred), (json!("dead"), json!(3)), "{deferred}");
    assert_eq!(summary(&refused), (json!("dead"), json!(1)), "{refused}");
    assert!(
        refused["outcome"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("550") && m.contains("User unknown")),
        "{refused}"
    );
    assert_eq!(relay.messages().len(), 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn try_shows_the_smtp_dialogue_without_sending() -> anyhow::Result<()> {
    let relay = SmtpRelay::start(RelayTls::Starttls, Some((USER, PASSWORD))).await?;
    let dir = tempfile::tempdir()?;
    let plugin = dir.path().join("smtp.wasm");
    std::fs::copy(notifyhub_testkit::plugins::path("smtp")?, &plugin)?;
    std::fs::write(
        dir.path().join("smtp.toml"),
        manifest(&relay, "starttls", "TEST_SMTP_PASSWORD", ""),
    )?;
    let run = |extra: &[&str]| {
        let mut command = notifyhub_testkit::daemon::try_command(BIN.as_ref(), &plugin);
        command
            .args([
                "--target",
                "ops@example.org",
                "--title",
                "Disk full",
                "--body",
                "x",
            ])
            .args(extra)
            .env("TEST_SMTP_PASSWORD", PASSWORD);
        notifyhub_testkit::process::output_within(&mut command, Duration::from_secs(120))
    };
    let out = run(&[])?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    for line in [
        &format!(
            "SMTP localhost:{} (STARTTLS, AUTH as notifyhub)",
            relay.port()
        ),
        "MAIL FROM:<alerts@example.org>",
        "RCPT TO:<ops@example.org>",
        "Subject: Disk full",
        "answered with SMTP 250",
        "outcome   delivered: SMTP 250",
    ] {
        assert!(text.contains(line), "no {line:?} in:\n{text}");
    }
    assert!(!text.contains(PASSWORD), "{text}");

    // A canned 550 is classified as the daemon would.
    let out = run(&["--smtp-reply", "550"])?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("permanent"), "{text}");
    // Nothing reached the relay.
    assert!(relay.messages().is_empty());
    Ok(())
}
