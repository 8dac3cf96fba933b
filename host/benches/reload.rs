//! Hot-reload benchmarks: run with `cargo xtask bench`.
//!
//! 1. File written → first task handled by the new version, p50 and max over
//!    20 reloads of a Rust plugin, with the compile cache warm (two versions
//!    alternating) and cold (each version's bytes are new: a custom section
//!    with a counter is appended). Target p50 ≤ 150 ms.
//! 2. Throughput over 3 s in which one new version (new bytes, so a real
//!    compile) is swapped in vs 3 s of steady state, same run. Target ≥ 0.9.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use notifyhub_testkit::daemon::{Conn, Daemon};
use notifyhub_testkit::plugins;
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_notifyhub");

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(notifyhub_testkit::deadline::bench(run()))
}

fn deploy(dir: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = dir.join(".swap.wasm.tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(tmp, dir.join("swap.wasm"))?;
    Ok(())
}

/// The same component with a custom section appended: new bytes, same code.
fn variant(bytes: &[u8], n: u64) -> Vec<u8> {
    let name = b"notifyhub-bench";
    let payload = n.to_le_bytes();
    let mut out = bytes.to_vec();
    out.push(0); // custom section
    out.push((1 + name.len() + payload.len()) as u8);
    out.push(name.len() as u8);
    out.extend_from_slice(name);
    out.extend_from_slice(&payload);
    out
}

async fn handled_by(conn: &mut Conn) -> anyhow::Result<String> {
    conn.send(&json!({"op": "submit", "wait": true, "task": {"platform": "swap", "target": "-", "body": "b"}}))
        .await?;
    let r = conn.recv().await?;
    Ok(r["result"]["tasks"][0]["plugin"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string())
}

async fn run() -> anyhow::Result<()> {
    let noop = std::fs::read(plugins::path("noop")?)?;
    let heavy = std::fs::read(plugins::path("heavy")?)?;
    let daemon = Daemon::builder(BIN)
        .file("swap.wasm", noop.clone())
        .file("swap.toml", "platforms = [\"swap\"]\n")
        .start()
        .await?;
    let mut conn = daemon.connect().await?;

    println!("file written -> first task handled by the new version (20 reloads each)");
    for (label, cold) in [("warm compile cache", false), ("cold compile cache", true)] {
        let mut latencies = Vec::new();
        for i in 0..20u64 {
            let (name, bytes) = if i % 2 == 0 {
                ("heavy", &heavy)
            } else {
                ("noop", &noop)
            };
            let bytes = if cold {
                variant(bytes, i + 100 * u64::from(cold))
            } else {
                bytes.clone()
            };
            let written = Instant::now();
            deploy(&daemon.plugin_dir(), &bytes)?;
            while handled_by(&mut conn).await? != name {
                anyhow::ensure!(
                    written.elapsed() < Duration::from_secs(10),
                    "reload {i} never happened"
                );
            }
            latencies.push(written.elapsed());
        }
        latencies.sort();
        println!(
            "  {label:<20} p50 {:>7.1} ms   max {:>7.1} ms   (target p50 <= 150 ms)",
            latencies[latencies.len() / 2].as_secs_f64() * 1e3,
            latencies[latencies.len() - 1].as_secs_f64() * 1e3
        );
    }

    deploy(&daemon.plugin_dir(), &noop)?;
    let written = Instant::now();
    while handled_by(&mut conn).await? != "noop" {
        anyhow::ensure!(
            written.elapsed() < Duration::from_secs(10),
            "the last reload (back to noop) never happened"
        );
    }
    let mut ratios = Vec::new();
    println!("\nthroughput, batches of 100 tasks over one connection, 3 s each");
    for round in 0..3u64 {
        let steady = throughput(&daemon, None).await?;
        let reloading = throughput(&daemon, Some(variant(&noop, 1000 + round))).await?;
        println!(
            "  steady {steady:>8.0} tasks/s   with one reload {reloading:>8.0} tasks/s   ratio {:.2}",
            reloading / steady
        );
        ratios.push(reloading / steady);
    }
    ratios.sort_by(f64::total_cmp);
    println!(
        "  median reloading / steady {:>6.2}   (target >= 0.9)",
        ratios[1]
    );
    Ok(())
}

/// Runs batched load for 3 s; with `swap`, deploys that version after 1 s.
async fn throughput(daemon: &Daemon, swap: Option<Vec<u8>>) -> anyhow::Result<f64> {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let load = {
        let (socket, stop, done) = (daemon.socket().to_path_buf(), stop.clone(), done.clone());
        tokio::spawn(async move {
            let mut conn = Conn::connect(&socket).await?;
            let tasks: Vec<_> = (0..100)
                .map(|_| json!({"platform": "swap", "target": "-", "body": "b"}))
                .collect();
            while !stop.load(Ordering::Relaxed) {
                conn.send(&json!({"op": "submit", "wait": true, "tasks": tasks}))
                    .await?;
                let r = conn.recv().await?;
                anyhow::ensure!(r["ok"] == true, "{r}");
                done.fetch_add(100, Ordering::Relaxed);
            }
            anyhow::Ok(())
        })
    };
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    if let Some(bytes) = swap {
        deploy(&daemon.plugin_dir(), &bytes)?;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    load.await??;
    Ok(done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64())
}
