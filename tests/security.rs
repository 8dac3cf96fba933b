//! Hardening, tested from outside: who may use the socket, what slow or
//! hostile clients get, what a plugin can reach over HTTP, and that memory,
//! files and secrets stay under control.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::{Duration, Instant};

use notifyhub_testkit::daemon::{CLI_EXITS_WITHIN, Conn, Daemon};
use notifyhub_testkit::process::output_within;
use notifyhub_testkit::receiver::{Receiver, Reply};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_notifyhub");
const HOSTILE: &str = "[limits]\ntimeout = \"1s\"\nmemory_mib = 32\n";

/// Runs the CLI as `nobody` (the tests run as root in CI).
fn as_nobody(daemon: &Daemon, args: &[&str]) -> std::process::Output {
    // Let `nobody` reach the socket file; SO_PEERCRED is what must refuse it.
    std::fs::set_permissions(daemon.dir(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(daemon.socket(), std::fs::Permissions::from_mode(0o666)).unwrap();
    output_within(
        Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                BIN,
                "--socket",
            ])
            .arg(daemon.socket())
            .args(args),
        CLI_EXITS_WITHIN,
    )
    .expect("running setpriv")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_user_is_refused_unless_allowed() -> anyhow::Result<()> {
    let daemon = Daemon::builder(BIN).plugin("noop", None).start().await?;
    let mode = std::fs::metadata(daemon.socket())?.permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the socket must be created 0600");

    let out = as_nobody(&daemon, &["status"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("forbidden") && err.contains("uid 65534"),
        "{err}"
    );
    assert_eq!(
        daemon.request(json!({"op": "ping"})).await?["ok"],
        true,
        "the daemon still serves"
    );

    let allowed = Daemon::builder(BIN)
        .plugin("noop", None)
        .config("[server]\nallowed_uids = [65534]\n")
        .start()
        .await?;
    let out = as_nobody(&allowed, &["status"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

#[tokio::test]
async fn a_client_trickling_bytes_is_cut_off() -> anyhow::Result<()> {
    let daemon = Daemon::builder(BIN)
        .plugin("noop", None)
        .config("[server]\nidle_timeout = \"1s\"\n")
        .start()
        .await?;
    let mut slow = daemon.connect().await?;
    let started = Instant::now();
    let mut closed = false;
    for byte in
        br#"{"op":"ping","id":1,"padding":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}"#.iter()
    {
        if slow.send_raw(&[*byte]).await.is_err() {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        if started.elapsed() > Duration::from_secs(5) {
            break;
        }
    }
    // Either a write failed, or the read side sees the close.
    closed = closed || slow.recv().await.is_err();
    assert!(
        closed,
        "a trickling client kept its connection for {:?}",
        started.elapsed()
    );
    assert_eq!(daemon.request(json!({"op": "ping"})).await?["ok"], true);
    Ok(())
}

async fn run(daemon: &Daemon, platform: &str, body: &str) -> anyhow::Result<Value> {
    let r = daemon
        .request(json!({"op": "submit", "wait": true, "task": {"platform": platform, "target": "-", "body": body}}))
        .await?;
    Ok(r["result"]["tasks"][0].clone())
}

#[tokio::test]
async fn every_redirect_is_checked_against_the_allowlist() -> anyhow::Result<()> {
    let outside = Receiver::start(|_| Reply::new(200, "you should not be here")).await;
    let target = outside.url("/secret");
    let allowed = Receiver::start(move |_| Reply::new(302, "").header("location", &target)).await;
    let daemon = Daemon::builder(BIN)
        .plugin(
            "hostile",
            Some(&format!(
                "allowed_hosts = [\"{}\"]\n{HOSTILE}",
                allowed.authority()
            )),
        )
        .start()
        .await?;
    let task = run(
        &daemon,
        "hostile",
        &format!("get {}", allowed.url("/start")),
    )
    .await?;
    assert_eq!(task["outcome"]["class"], "permanent", "{task}");
    assert!(
        task["outcome"]["message"]
            .as_str()
            .unwrap()
            .contains("denied"),
        "{task}"
    );
    assert_eq!(allowed.requests().len(), 1);
    assert!(
        outside.requests().is_empty(),
        "the redirect reached a host that is not allowed"
    );
    assert!(daemon.logs().contains("outbound request denied"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_never_answers_is_cut_at_the_deadline() -> anyhow::Result<()> {
    let silent = Receiver::start(|_| Reply::new(200, "late").after(Duration::from_secs(30))).await;
    let daemon = Daemon::builder(BIN)
        .plugin(
            "hostile",
            Some(&format!(
                "allowed_hosts = [\"{}\"]\n{HOSTILE}",
                silent.authority()
            )),
        )
        .plugin("noop", None)
        .start()
        .await?;
    let socket = daemon.socket().to_path_buf();
    let url = silent.url("/hang");
    let hung = tokio::spawn(async move {
        let mut conn = Conn::connect(&socket).await?;
        conn.send(&json!({"op": "submit", "wait": true, "task": {"platform": "hostile", "target": "-", "body": format!("get {url}")}}))
            .await?;
        conn.recv().await
    });
    for _ in 0..5 {
        assert_eq!(run(&daemon, "noop", "x").await?["state"], "succeeded");
    }
    // The hung request ends at its deadline, as a failed attempt.
    let response = hung.await??;
    let task = &response["result"]["tasks"][0];
    assert_eq!(task["state"], "dead", "{task}");
    let class = task["outcome"]["class"].as_str().unwrap();
    assert!(class == "timed_out" || class == "retryable", "{task}");
    Ok(())
}

#[tokio::test]
async fn memory_bombs_leave_the_daemon_small() -> anyhow::Result<()> {
    let daemon = Daemon::builder(BIN)
        .plugin(
            "hostile",
            Some("[limits]\ntimeout = \"2s\"\nmemory_mib = 64\n"),
        )
        .start()
        .await?;
    for body in ["grow-memory", "grow-memory", "grow-memory", "log-flood"] {
        let task = run(&daemon, "hostile", body).await?;
        assert_eq!(task["state"], "dead", "{body}: {task}");
    }
    // A 100 MB answer cannot even be built within 64 MiB; had it been, it
    // would be cut to size (see the sandbox tests).
    let task = run(&daemon, "hostile", "huge-receipt").await?;
    assert_eq!(task["state"], "dead", "{task}");
    let rss = daemon.memory_kib("VmRSS")?;
    assert!(
        rss < 400 * 1024,
        "the daemon holds {} MiB after memory bombs",
        rss / 1024
    );
    Ok(())
}

#[tokio::test]
async fn the_host_wide_memory_budget_caps_a_plugin_below_its_own_limit() -> anyhow::Result<()> {
    let daemon = Daemon::builder(BIN)
        .plugin(
            "hostile",
            Some("[limits]\ntimeout = \"2s\"\nmemory_mib = 512\n"),
        )
        .plugin("noop", None)
        .config("[sandbox]\nmax_guest_memory_mib = 48\n")
        .start()
        .await?;
    let task = run(&daemon, "hostile", "grow-memory").await?;
    assert_eq!(task["state"], "dead", "{task}");
    assert!(
        task["outcome"]["message"]
            .as_str()
            .unwrap()
            .contains("memory limit"),
        "{task}"
    );
    // The budget is given back when the instance goes: others still run.
    for _ in 0..3 {
        assert_eq!(run(&daemon, "noop", "x").await?["state"], "succeeded");
    }
    Ok(())
}

#[tokio::test]
async fn a_100_mb_file_is_refused_and_the_daemon_stays_up() -> anyhow::Result<()> {
    let junk: Vec<u8> = (0..100u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect();
    let daemon = Daemon::builder(BIN)
        .plugin("noop", None)
        .file("huge.wasm", junk)
        .start()
        .await?;
    let plugins = daemon.request(json!({"op": "plugins"})).await?["result"].clone();
    let error = plugins["errors"][0]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("not a valid WebAssembly component"),
        "{plugins}"
    );
    assert_eq!(run(&daemon, "noop", "x").await?["state"], "succeeded");
    Ok(())
}

#[tokio::test]
async fn secrets_never_appear_in_logs_or_answers() -> anyhow::Result<()> {
    const SECRET: &str = "whsec_c2VjcmV0LXRoYXQtbXVzdC1uZXZlci1sZWFrLTEyMzQ1";
    let receiver = Receiver::start(|_| Reply::new(500, "server error echoing nothing")).await;
    let dir = tempfile::tempdir()?;
    let secret_file = dir.path().join("secret").display().to_string();
    std::fs::write(&secret_file, format!("{SECRET}\n"))?;
    let daemon = Daemon::builder(BIN)
        .plugin(
            "webhook",
            Some(&format!(
                "allowed_hosts = [\"{}\"]\n[secrets]\nsigning_secret = {{ file = \"{secret_file}\" }}\n",
                receiver.authority()
            )),
        )
        .start()
        .await?;
    let token_url = receiver.url("/hooks/T000/B000/very-secret-token");
    let r = daemon
        .request(json!({"op": "submit", "wait": true, "task": {"platform": "webhook", "target": token_url, "body": "b"}}))
        .await?;
    let mut everything = r.to_string();
    for op in ["status", "plugins", "tasks"] {
        everything.push_str(&daemon.request(json!({"op": op})).await?.to_string());
    }
    for args in [&["status"][..], &["plugins"], &["tasks"]] {
        everything.push_str(&String::from_utf8_lossy(&daemon.cli(args).stdout));
    }
    everything.push_str(&daemon.logs());
    everything.push_str(&daemon.stdout());
    assert!(
        !receiver.requests().is_empty(),
        "the delivery was attempted"
    );
    assert!(
        !everything.contains("c2VjcmV0LXRoYXQtbXVzdC1uZXZlci1sZWFr"),
        "the signing secret leaked"
    );
    assert!(
        !everything.contains("very-secret-token"),
        "the webhook token leaked"
    );
    Ok(())
}

/// The machine's host name, which `/etc/hosts` maps to a loopback or
/// private address on this kind of machine.
fn inward_name() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let name = name.trim().to_string();
    let resolved: Vec<std::net::SocketAddr> =
        std::net::ToSocketAddrs::to_socket_addrs(&(name.as_str(), 80))
            .map(Iterator::collect)
            .unwrap_or_default();
    assert!(
        resolved.iter().any(|a| a.ip().is_loopback()),
        "this test needs the host name {name:?} to resolve to a loopback address (it resolves to {resolved:?})"
    );
    name
}

/// SSRF: a name that resolves to an internal address is refused when only
/// a wildcard allows it — after resolution, where the allowlist cannot see
/// it — and reached when the allowlist names it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_resolving_inward_need_an_explicit_rule() -> anyhow::Result<()> {
    let inside = Receiver::start(|_| Reply::new(200, "internal data")).await;
    let name = inward_name();
    let url = format!("http://{name}:{}/admin", inside.port());

    let daemon = Daemon::builder(BIN)
        .plugin(
            "hostile",
            Some(&format!("allowed_hosts = [\"*\"]\n{HOSTILE}")),
        )
        .start()
        .await?;
    let task = run(&daemon, "hostile", &format!("get {url}")).await?;
    assert_eq!(task["outcome"]["class"], "permanent", "{task}");
    assert!(
        inside.requests().is_empty(),
        "the wildcard reached an internal address"
    );
    assert!(
        daemon.logs().contains("resolves to an internal address"),
        "the denial is not logged:\n{}",
        daemon.logs()
    );

    let daemon = Daemon::builder(BIN)
        .plugin(
            "hostile",
            Some(&format!(
                "allowed_hosts = [\"{name}:{}\"]\n{HOSTILE}",
                inside.port()
            )),
        )
        .start()
        .await?;
    let task = run(&daemon, "hostile", &format!("get {url}")).await?;
    assert_eq!(task["state"], "succeeded", "{task}");
    assert_eq!(inside.requests().len(), 1);
    Ok(())
}
