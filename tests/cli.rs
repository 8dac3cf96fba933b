//! The command line, as an operator uses it.

use std::process::Command;

use notifyhub_testkit::daemon::{CLI_EXITS_WITHIN, Daemon};
use notifyhub_testkit::process::output_within;
use notifyhub_testkit::receiver::{Receiver, Reply};

const BIN: &str = env!("CARGO_BIN_EXE_notifyhub");

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

// The CLI runs as a blocking child process, so the receiver needs a thread of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_wait_task_status_and_plugins() -> anyhow::Result<()> {
    let receiver = Receiver::start(|req| {
        if req.path == "/fail" {
            Reply::new(400, "bad")
        } else {
            Reply::new(200, "ok")
        }
    })
    .await;
    let manifest = format!("allowed_hosts = [\"{}\"]\n", receiver.authority());
    let daemon = Daemon::builder(BIN)
        .plugin("webhook", Some(&manifest))
        .start()
        .await?;

    let ok = daemon.cli(&[
        "send",
        "--platform",
        "webhook",
        "--target",
        &receiver.url("/ok"),
        "--title",
        "Hi",
        "--body",
        "hello",
        "--meta",
        "team=ops",
        "--wait",
    ]);
    assert!(ok.status.success(), "{ok:?}");
    let text = stdout(&ok);
    assert!(
        text.contains("state     succeeded") && text.contains("delivered: HTTP 200"),
        "{text}"
    );
    let doc = receiver.requests()[0].json();
    assert_eq!(doc["data"]["metadata"]["team"], "ops");

    let failed = daemon.cli(&[
        "send",
        "-p",
        "webhook",
        "-t",
        &receiver.url("/fail"),
        "-b",
        "x",
        "--wait",
    ]);
    assert_eq!(
        failed.status.code(),
        Some(1),
        "a failed delivery exits non-zero"
    );
    assert!(
        stdout(&failed).contains("failed (invalid)"),
        "{}",
        stdout(&failed)
    );

    let queued = daemon.cli(&[
        "send",
        "-p",
        "webhook",
        "-t",
        &receiver.url("/ok"),
        "-b",
        "later",
    ]);
    assert!(queued.status.success());
    let id = stdout(&queued).trim().to_string();
    assert_eq!(id.len(), 36, "send prints the task id: {id}");
    receiver
        .wait_for(3, std::time::Duration::from_secs(10))
        .await?;
    let mut shown = String::new();
    for _ in 0..100 {
        shown = stdout(&daemon.cli(&["task", &id]));
        if shown.contains("succeeded") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(
        shown.contains(&id) && shown.contains("succeeded"),
        "{shown}"
    );
    assert!(shown.contains("target    http://127.0.0.1"), "{shown}");
    assert!(
        !shown.contains("/ok"),
        "the target path must be redacted: {shown}"
    );

    let status = daemon.cli(&["status", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout)?;
    assert_eq!(status["pool"]["processed"], 3);
    assert_eq!(status["pool"]["errors"], 1);

    let plugins = stdout(&daemon.cli(&["plugins"]));
    assert!(
        plugins.contains("webhook") && plugins.contains("0.1.0"),
        "{plugins}"
    );
    Ok(())
}

#[test]
fn a_client_without_a_daemon_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("missing.sock");
    let out = output_within(
        Command::new(BIN).args(["--socket", &socket.display().to_string(), "status"]),
        CLI_EXITS_WITHIN,
    )
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot connect to") && err.contains("is `notifyhub serve` running?"),
        "{err}"
    );
}

#[test]
fn help_explains_every_flag() {
    let out = output_within(Command::new(BIN).args(["send", "--help"]), CLI_EXITS_WITHIN).unwrap();
    let help = stdout(&out);
    for flag in [
        "--platform",
        "--target",
        "--title",
        "--body",
        "--format",
        "--wait",
        "--json",
        "--socket",
        "--plugins",
        "--data-dir",
        "NOTIFYHUB_SOCKET",
    ] {
        assert!(help.contains(flag), "send --help lacks {flag}:\n{help}");
    }
}

#[tokio::test]
async fn sigterm_shuts_down_cleanly_and_removes_the_socket() -> anyhow::Result<()> {
    let mut daemon = Daemon::builder(BIN).plugin("noop", None).start().await?;
    let socket = daemon.socket().to_path_buf();
    let status = daemon.terminate()?;
    assert!(status.success(), "{status}: {}", daemon.logs());
    assert!(!socket.exists(), "the socket file was left behind");
    assert!(daemon.logs().contains("shutting down"));
    Ok(())
}

#[tokio::test]
async fn a_second_daemon_on_the_same_socket_is_refused() -> anyhow::Result<()> {
    let daemon = Daemon::builder(BIN).plugin("noop", None).start().await?;
    let out = output_within(
        Command::new(BIN)
            .args(["serve", "--socket"])
            .arg(daemon.socket())
            .arg("--data-dir")
            .arg(daemon.dir().join("data2")),
        CLI_EXITS_WITHIN,
    )?;
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("another notifyhub is already listening"),
        "{err}"
    );
    Ok(())
}

/// `notifyhub try` on a copy of a first-party plugin with a manifest.
fn try_plugin(
    plugin: &str,
    manifest: &str,
    env: &[(&str, &str)],
    args: &[&str],
) -> anyhow::Result<(std::process::ExitStatus, serde_json::Value)> {
    let dir = tempfile::Builder::new().prefix("nh-try-").tempdir()?;
    std::fs::copy(
        notifyhub_testkit::plugins::path(plugin)?,
        dir.path().join(format!("{plugin}.wasm")),
    )?;
    std::fs::write(dir.path().join(format!("{plugin}.toml")), manifest)?;
    let out = output_within(
        notifyhub_testkit::daemon::try_command(
            BIN.as_ref(),
            &dir.path().join(format!("{plugin}.wasm")),
        )
        .args(args)
        .arg("--json")
        .envs(env.iter().copied()),
        CLI_EXITS_WITHIN,
    )?;
    let report = serde_json::from_slice(&out.stdout).map_err(|e| {
        anyhow::anyhow!(
            "{e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    Ok((out.status, report))
}

/// `try` compiles with the baseline compiler and exits: its code is in the
/// cache when it does, so the next `try` of the same build finds it.
#[test]
fn try_leaves_its_code_in_the_cache() -> anyhow::Result<()> {
    let cache = tempfile::Builder::new().prefix("nh-try-cache-").tempdir()?;
    let plugin = notifyhub_testkit::plugins::path("webhook")?;
    let out = output_within(
        Command::new(BIN)
            .arg("--cache-dir")
            .arg(cache.path())
            .arg("try")
            .arg(&plugin)
            .args(["-t", "https://hooks.example.com/x", "-b", "hi", "--json"])
            .env("NO_COLOR", "1"),
        CLI_EXITS_WITHIN,
    )?;
    assert!(
        out.status.success(),
        "{}{}",
        stdout(&out),
        String::from_utf8_lossy(&out.stderr)
    );
    let baseline = notifyhub_testkit::daemon::cache_files(cache.path(), "baseline")?;
    assert!(
        baseline.len() == 1 && baseline[0].extension().is_some_and(|e| e == "cwasm"),
        "baseline code in the cache after `try`: {baseline:?}"
    );
    Ok(())
}

#[test]
fn try_shows_the_request_and_classifies_a_canned_answer() -> anyhow::Result<()> {
    let secret = "SECsecret-that-must-not-show";
    let manifest =
        "allowed_hosts = [\"oapi.dingtalk.com\"]\n[secrets]\nsecret = { env = \"T_TRY_DING\" }\n";
    let target = "https://oapi.dingtalk.com/robot/send?access_token=tok";
    let (status, report) = try_plugin(
        "dingtalk",
        manifest,
        &[("T_TRY_DING", secret)],
        &[
            "-t",
            target,
            "--title",
            "Deploy",
            "-b",
            "done",
            "--answer-body",
            r#"{"errcode":310000,"errmsg":"keywords not in content"}"#,
        ],
    )?;
    assert!(!status.success(), "a refused message exits non-zero");
    assert_eq!(report["outcome"]["class"], "permanent", "{report}");
    let request = &report["requests"][0];
    assert_eq!(request["method"], "POST");
    let headers = request["headers"].as_array().unwrap();
    let content_types = headers.iter().filter(|h| h[0] == "content-type").count();
    assert_eq!(content_types, 1, "{headers:?}");
    let body: serde_json::Value = serde_json::from_str(request["body"].as_str().unwrap())?;
    assert_eq!(body["msgtype"], "markdown");
    assert!(
        !report.to_string().contains(secret),
        "the secret was shown: {report}"
    );
    assert!(request["denied_in_daemon"].is_null(), "{request}");

    // 429 with a Retry-After, through the webhook plugin; its host is not in
    // the manifest, which `try` points out.
    let (status, report) = try_plugin(
        "webhook",
        "allowed_hosts = [\"example.org\"]\n",
        &[],
        &[
            "-t",
            "https://hooks.example.com/x",
            "-b",
            "hi",
            "--answer",
            "429",
            "--answer-header",
            "Retry-After:5",
        ],
    )?;
    assert!(!status.success());
    assert_eq!(report["outcome"]["class"], "rate_limited", "{report}");
    assert_eq!(report["outcome"]["retry_after_ms"], 5000, "{report}");
    assert!(
        report["requests"][0]["denied_in_daemon"].is_string(),
        "{report}"
    );

    let (status, report) = try_plugin(
        "webhook",
        "",
        &[],
        &["-t", "https://hooks.example.com/x", "-b", "hi"],
    )?;
    assert!(status.success(), "{report}");
    assert_eq!(report["outcome"]["result"], "delivered");
    Ok(())
}

#[test]
fn completions_and_man_pages_come_from_the_cli_definition() -> anyhow::Result<()> {
    let run = |args: &[&str]| output_within(Command::new(BIN).args(args), CLI_EXITS_WITHIN);
    for (shell, marker) in [
        ("bash", "_notifyhub()"),
        ("zsh", "#compdef notifyhub"),
        ("fish", "complete -c notifyhub"),
    ] {
        let out = run(&["completions", shell])?;
        assert!(out.status.success(), "{shell}");
        let script = String::from_utf8(out.stdout)?;
        assert!(script.contains(marker), "{shell}: {script:.200}");
        assert!(
            script.contains("try") && script.contains("serve"),
            "{shell} lacks subcommands"
        );
    }
    let out = run(&["man"])?;
    let page = String::from_utf8(out.stdout)?;
    assert!(
        page.contains(".TH notifyhub 1") && page.contains("serve"),
        "{page:.300}"
    );
    let dir = tempfile::tempdir()?;
    let out = run(&["man", "--dir", dir.path().to_str().unwrap()])?;
    assert!(out.status.success());
    for page in ["notifyhub.1", "notifyhub-serve.1", "notifyhub-try.1"] {
        assert!(dir.path().join(page).is_file(), "{page} not written");
    }
    Ok(())
}

/// Under a limit on its address space below what the engine reserves for
/// its instance slots (17.6 TB with the default 1,024 workers), `serve`
/// stops at once, naming the setting to lower and the limit to raise.
#[test]
fn an_address_space_limit_below_the_slots_is_a_clear_error() -> anyhow::Result<()> {
    let dir = tempfile::Builder::new().prefix("nh-as-").tempdir()?;
    // 10 TB, in KiB. A hard limit already lower refuses the raise, and
    // the daemon then runs under that one, lower still.
    let script = r#"ulimit -v 10000000000; exec "$0" serve --data-dir "$1" --plugins "$1""#;
    let out = output_within(
        Command::new("sh")
            .args(["-c", script])
            .arg(BIN)
            .arg(dir.path()),
        CLI_EXITS_WITHIN,
    )?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "serve started: {stderr}");
    assert!(
        stderr.contains("instance slots")
            && stderr.contains("[pool] max_workers")
            && stderr.contains("ulimit -v"),
        "{stderr}"
    );
    Ok(())
}
