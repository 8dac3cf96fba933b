//! Hot reload through the real daemon: versions swap under load without a
//! failed task, bad files never replace good ones, and every kind of change
//! an operator makes is picked up.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use notifyhub_testkit::daemon::{Conn, Daemon};
use notifyhub_testkit::plugins;
use notifyhub_testkit::receiver::{Receiver, Reply};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_notifyhub");

/// Writes `bytes` the way deploy tools do: to a temporary name, then
/// renamed into place.
fn deploy(dir: &Path, name: &str, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(tmp, dir.join(name))?;
    Ok(())
}

async fn plugins_view(daemon: &Daemon) -> anyhow::Result<Value> {
    Ok(daemon.request(json!({"op": "plugins"})).await?["result"].clone())
}

/// Waits until `check` holds for the `plugins` view (5 s at most).
async fn until(daemon: &Daemon, check: impl Fn(&Value) -> bool) -> anyhow::Result<Value> {
    until_within(daemon, Duration::from_secs(5), check).await
}

/// Waits until `check` holds for the `plugins` view, `within` at most;
/// fails with the last view and the daemon's log.
async fn until_within(
    daemon: &Daemon,
    within: Duration,
    check: impl Fn(&Value) -> bool,
) -> anyhow::Result<Value> {
    let deadline = Instant::now() + within;
    loop {
        let view = plugins_view(daemon).await?;
        if check(&view) {
            return Ok(view);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "condition not met: {view}\n{}",
            daemon.logs()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until `daemon` has logged `line`: a change shows in the registry
/// before its log line is written, and the line reaches the test through a
/// pipe.
async fn logged_within(daemon: &Daemon, within: Duration, line: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    while !daemon.logs().contains(line) {
        anyhow::ensure!(
            Instant::now() < deadline,
            "never logged {line:?}:\n{}",
            daemon.logs()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// A field of the plugin serving the `swap` platform in a `plugins` view.
fn swap_plugin(view: &Value, field: &str) -> Option<String> {
    view["plugins"]
        .as_array()?
        .iter()
        .find(|p| p["platforms"][0] == "swap")?[field]
        .as_str()
        .map(str::to_string)
}

fn loaded_name(view: &Value) -> Option<String> {
    swap_plugin(view, "name")
}

fn error_for(view: &Value, file: &str) -> Option<String> {
    view["errors"]
        .as_array()?
        .iter()
        .find(|e| e["path"].as_str().is_some_and(|p| p.ends_with(file)))?["error"]
        .as_str()
        .map(str::to_string)
}

async fn swap_daemon() -> anyhow::Result<Daemon> {
    swap_daemon_with("").await
}

async fn swap_daemon_with(config: &str) -> anyhow::Result<Daemon> {
    Daemon::builder(BIN)
        .file("swap.wasm", std::fs::read(plugins::path("noop")?)?)
        .file("swap.toml", "platforms = [\"swap\"]\n")
        .config(config)
        .start()
        .await
}

async fn deliver(daemon: &Daemon) -> anyhow::Result<Value> {
    let r = daemon
        .request(json!({"op": "submit", "wait": true, "task": {"platform": "swap", "target": "-", "body": "b"}}))
        .await?;
    Ok(r["result"]["tasks"][0].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_version_swaps_in_under_load_without_a_failed_task() -> anyhow::Result<()> {
    // The in-memory store keeps a debug build on a busy 2-core machine well
    // above 1,000 tasks/s; durability is not what this test is about.
    let daemon = swap_daemon_with("[store]\nmode = \"memory\"\n").await?;
    let v2 = std::fs::read(plugins::path("heavy")?)?;
    let stop = Arc::new(AtomicBool::new(false));
    // Load: two connections, each sending batches of 200 tasks back to
    // back, each batch waited for.
    let loaders: Vec<_> = (0..2)
        .map(|_| {
            let (socket, stop) = (daemon.socket().to_path_buf(), stop.clone());
            tokio::spawn(async move {
                let mut conn = Conn::connect(&socket).await?;
                let mut batches: Vec<(Instant, Vec<Value>)> = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let tasks: Vec<Value> = (0..200)
                        .map(|_| json!({"platform": "swap", "target": "-", "body": "b"}))
                        .collect();
                    let submitted = Instant::now();
                    conn.send(&json!({"op": "submit", "wait": true, "tasks": tasks}))
                        .await?;
                    let response = conn.recv().await?;
                    anyhow::ensure!(response["ok"] == true, "{response}");
                    batches.push((
                        submitted,
                        response["result"]["tasks"].as_array().unwrap().clone(),
                    ));
                }
                anyhow::Ok(batches)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    deploy(&daemon.plugin_dir(), "swap.wasm", &v2)?;
    until(&daemon, |v| loaded_name(v).as_deref() == Some("heavy")).await?;
    let reported = Instant::now();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut batches = Vec::new();
    for loader in loaders {
        batches.extend(loader.await??);
    }
    // How fast the load ran is the reload benchmark's business
    // (`cargo bench --bench reload`); here only correctness counts.
    let total: usize = batches.iter().map(|(_, b)| b.len()).sum();
    assert!(total > 0, "no task ran during the swap");
    let mut seen = std::collections::BTreeMap::new();
    for (submitted, tasks) in &batches {
        for task in tasks {
            assert_eq!(task["state"], "succeeded", "{task}");
            let name = task["plugin"]["name"].as_str().unwrap().to_string();
            if *submitted > reported {
                assert_eq!(
                    name, "heavy",
                    "a task submitted after the swap ran on the old version"
                );
            }
            *seen.entry(name).or_insert(0) += 1;
        }
    }
    assert!(
        seen.len() == 2 && seen.keys().all(|n| n == "noop" || n == "heavy"),
        "{seen:?}"
    );
    Ok(())
}

#[tokio::test]
async fn bad_files_never_replace_a_working_version() -> anyhow::Result<()> {
    let daemon = swap_daemon().await?;
    let good = std::fs::read(plugins::path("noop")?)?;
    let other_world =
        br#"(component (core module $m (func (export "f"))) (core instance (instantiate $m)))"#;
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "corrupt",
            (0..5000u32).map(|i| (i * 7919 % 251) as u8).collect(),
            "not a valid WebAssembly component",
        ),
        (
            "truncated",
            good[..good.len() / 3].to_vec(),
            "not a valid WebAssembly component",
        ),
        (
            "core module",
            b"\0asm\x01\0\0\0".to_vec(),
            "not a valid WebAssembly component",
        ),
        (
            "other world",
            other_world.to_vec(),
            "does not fit the notifyhub:plugin@0.1 contract",
        ),
    ];
    for (what, bytes, reason) in cases {
        deploy(&daemon.plugin_dir(), "swap.wasm", &bytes)?;
        let view = until(&daemon, |v| {
            error_for(v, "swap.wasm").is_some_and(|e| e.contains(reason))
        })
        .await?;
        assert_eq!(
            loaded_name(&view).as_deref(),
            Some("noop"),
            "{what}: the old version must keep serving"
        );
        assert_eq!(deliver(&daemon).await?["state"], "succeeded", "{what}");
        let out = daemon.cli(&["plugins"]);
        assert!(
            String::from_utf8_lossy(&out.stdout).contains(reason),
            "{what}: plugins does not show the error"
        );
        // The next bad file must not be taken for the same bytes: reload by hand.
        daemon
            .request(json!({"op": "reload", "name": "swap"}))
            .await?;
    }
    // A fixed file is picked up, and the error is gone.
    deploy(
        &daemon.plugin_dir(),
        "swap.wasm",
        &std::fs::read(plugins::path("heavy")?)?,
    )?;
    let view = until(&daemon, |v| loaded_name(v).as_deref() == Some("heavy")).await?;
    assert!(error_for(&view, "swap.wasm").is_none(), "{view}");
    Ok(())
}

#[tokio::test]
async fn delete_and_re_add_unload_and_load_the_plugin() -> anyhow::Result<()> {
    let daemon = swap_daemon().await?;
    std::fs::remove_file(daemon.plugin_dir().join("swap.wasm"))?;
    until(&daemon, |v| loaded_name(v).is_none()).await?;
    let r = daemon
        .request(json!({"op": "submit", "task": {"platform": "swap", "target": "-", "body": "b"}}))
        .await?;
    assert_eq!(r["error"]["code"], "unknown_platform", "{r}");

    deploy(
        &daemon.plugin_dir(),
        "swap.wasm",
        &std::fs::read(plugins::path("noop")?)?,
    )?;
    until(&daemon, |v| loaded_name(v).as_deref() == Some("noop")).await?;
    assert_eq!(deliver(&daemon).await?["state"], "succeeded");
    Ok(())
}

#[tokio::test]
async fn a_storm_of_rewrites_compiles_only_a_few_times() -> anyhow::Result<()> {
    let daemon = swap_daemon().await?;
    let before = plugins_view(&daemon).await?["compiles"].as_u64().unwrap();
    let versions = [
        std::fs::read(plugins::path("noop")?)?,
        std::fs::read(plugins::path("heavy")?)?,
    ];
    let path = daemon.plugin_dir().join("swap.wasm");
    let started = Instant::now();
    for i in 0..100 {
        // In place, truncate and write, like an editor.
        std::fs::write(&path, &versions[i % 2])?;
        tokio::time::sleep(Duration::from_millis(8)).await;
    }
    let storm = started.elapsed();
    // The last write wins, even if a half-written file failed meanwhile and
    // the watcher is backing off.
    let view = until(&daemon, |v| loaded_name(v).as_deref() == Some("heavy")).await?;
    let compiles = view["compiles"].as_u64().unwrap() - before;
    assert!(
        compiles <= 4,
        "{compiles} compiles for 100 rewrites in {storm:?}"
    );
    assert_eq!(deliver(&daemon).await?["plugin"]["name"], "heavy");
    Ok(())
}

#[tokio::test]
async fn a_manifest_change_applies_to_the_next_task_without_recompiling() -> anyhow::Result<()> {
    let first = Receiver::start(|_| Reply::new(200, "ok")).await;
    let second = Receiver::start(|_| Reply::new(200, "ok")).await;
    let daemon = Daemon::builder(BIN)
        .plugin(
            "webhook",
            Some(&format!("allowed_hosts = [\"{}\"]\n", first.authority())),
        )
        .start()
        .await?;
    let send = |url: String| {
        let socket = daemon.socket().to_path_buf();
        async move {
            let mut conn = Conn::connect(&socket).await?;
            conn.send(&json!({"op": "submit", "wait": true, "task": {"platform": "webhook", "target": url, "body": "b"}}))
                .await?;
            anyhow::Ok(conn.recv().await?["result"]["tasks"][0].clone())
        }
    };
    assert_eq!(
        send(second.url("/")).await?["outcome"]["class"],
        "permanent",
        "not allowed yet"
    );
    let before = plugins_view(&daemon).await?;

    std::fs::write(
        daemon.plugin_dir().join("webhook.toml"),
        format!(
            "allowed_hosts = [\"{}\", \"{}\"]\n",
            first.authority(),
            second.authority()
        ),
    )?;
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut task = send(second.url("/")).await?;
    while task["state"] != "succeeded" && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        task = send(second.url("/")).await?;
    }
    assert_eq!(task["state"], "succeeded", "{task}");
    let after = plugins_view(&daemon).await?;
    assert_eq!(
        after["compiles"], before["compiles"],
        "a manifest change must not recompile"
    );
    assert_eq!(
        after["plugins"][0]["digest"],
        before["plugins"][0]["digest"]
    );
    logged_within(
        &daemon,
        Duration::from_secs(10),
        "manifest change applied without recompiling",
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn reload_by_hand_reports_what_it_did() -> anyhow::Result<()> {
    let daemon = swap_daemon().await?;
    let out = daemon.cli(&["reload", "swap"]);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("unchanged"));
    let missing = daemon
        .request(json!({"op": "reload", "name": "nope"}))
        .await?;
    assert_eq!(missing["error"]["code"], "not_found");
    std::fs::write(daemon.plugin_dir().join("swap.wasm"), b"garbage")?;
    let out = daemon.cli(&["reload"]);
    assert_eq!(out.status.code(), Some(1), "a failed reload exits non-zero");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("failed: not a valid WebAssembly component")
    );
    assert_eq!(
        deliver(&daemon).await?["state"],
        "succeeded",
        "the old version still serves"
    );
    Ok(())
}

#[tokio::test]
async fn a_plugin_without_cached_code_serves_at_once_and_settles_on_optimized_code()
-> anyhow::Result<()> {
    let cache = tempfile::tempdir()?;
    let mut daemon = Daemon::builder(BIN)
        .cache_dir(cache.path())
        .file("swap.wasm", std::fs::read(plugins::path("noop")?)?)
        .file("swap.toml", "platforms = [\"swap\"]\n")
        .start()
        .await?;
    // The empty cache had no code: the baseline compiler made some first,
    // which serves while its copy is written to the cache.
    assert_eq!(deliver(&daemon).await?["state"], "succeeded");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let baseline = notifyhub_testkit::daemon::cache_files(cache.path(), "baseline")?;
        if baseline
            .iter()
            .any(|p| p.extension().is_some_and(|e| e == "cwasm"))
        {
            assert_eq!(
                baseline.len(),
                1,
                "baseline code in the cache: {baseline:?}"
            );
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "no baseline code in the cache after 30 s: {baseline:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Cranelift's code follows in the background and is swapped in.
    until_within(&daemon, Duration::from_secs(60), |v| {
        swap_plugin(v, "code").as_deref() == Some("optimized")
    })
    .await?;
    logged_within(
        &daemon,
        Duration::from_secs(10),
        "optimized code swapped in",
    )
    .await?;
    assert_eq!(deliver(&daemon).await?["state"], "succeeded");

    // A restart finds the optimized code and serves it from the start.
    daemon.terminate()?;
    daemon.restart().await?;
    let view = plugins_view(&daemon).await?;
    assert_eq!(
        swap_plugin(&view, "code").as_deref(),
        Some("optimized"),
        "{view}"
    );
    assert!(!daemon.logs().contains("swapped in"), "{}", daemon.logs());
    assert_eq!(deliver(&daemon).await?["state"], "succeeded");
    Ok(())
}
