//! Durable vs in-memory throughput: run with `cargo xtask bench`.
//!
//! The real daemon with the `noop` plugin; 100,000 tasks submitted over the
//! socket in batches of 1,000 from 4 connections (each submit acknowledged
//! only once its batch is durable), then waited for until every task has
//! been delivered. The same run with `[store] mode = "memory"` is the
//! baseline; a third run lifts `max_unsynced_outcomes` out of reach, to
//! show what bounding the outcomes that wait for their commit costs. Each
//! run also prints the daemon's CPU time a task and its journal writer's
//! (the thread every commit goes through): steadier than tasks/s on a noisy
//! machine, and the writer's is what a change to the journal moves. The
//! client's own CPU a task (this process) shows how much of the 2 cores it
//! takes from the daemon: under 1 µs.

use std::time::{Duration, Instant};

use notifyhub_testkit::daemon::{Conn, Daemon};
use serde_json::{Value, json};

#[path = "support/cpu.rs"]
mod cpu;

const BIN: &str = env!("CARGO_BIN_EXE_notifyhub");
const TASKS: usize = 100_000;
const BATCH: usize = 1_000;
const CONNECTIONS: usize = 4;

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(notifyhub_testkit::deadline::bench(async {
        let memory = run("memory", "memory", "").await?;
        let durable = run("durable", "durable", "").await?;
        // The default bound on outcomes waiting for their commit, against
        // one no run reaches: what bounding a crash's repeats costs.
        let unbounded = run("durable", "unbounded", "max_unsynced_outcomes = 1000000\n").await?;
        println!(
            "durable delivered {:>20.0}/s   (goal >= 100000/s)",
            durable.1
        );
        println!("durable / memory {:>21.2}", durable.1 / memory.1);
        println!(
            "durable / unbounded {:>18.2}   (the cost of max_unsynced_outcomes = 2048, the default)",
            durable.1 / unbounded.1
        );
        println!("(acknowledged = the submit answered after fsync; delivered = every task's attempt done)");
        Ok(())
    }))
}

/// Returns (acknowledged tasks/s, delivered tasks/s).
async fn run(mode: &str, label: &str, store: &str) -> anyhow::Result<(f64, f64)> {
    let daemon = Daemon::builder(BIN)
        .plugin("noop", None)
        .config(&format!("[store]\nmode = \"{mode}\"\n{store}[pool]\nmin_workers = 8\nmax_workers = 64\nqueue_capacity = 200000\n"))
        .start()
        .await?;
    let pid = daemon.pid();
    let (daemon_before, writer_before) =
        (cpu::process(pid)?, cpu::threads(pid, cpu::JOURNAL_WRITER)?);
    // The client shares the 2 cores: what it takes is not the daemon's.
    let client_before = cpu::process(std::process::id())?;
    let started = Instant::now();
    let mut clients = Vec::new();
    for _ in 0..CONNECTIONS {
        let socket = daemon.socket().to_path_buf();
        clients.push(tokio::spawn(async move {
            let mut conn = Conn::connect(&socket).await?;
            let tasks: Vec<Value> = (0..BATCH)
                .map(|_| json!({"platform": "noop", "target": "-", "body": "b"}))
                .collect();
            for _ in 0..TASKS / BATCH / CONNECTIONS {
                conn.send(&json!({"op": "submit", "tasks": tasks})).await?;
                let r = conn.recv().await?;
                anyhow::ensure!(r["ok"] == true, "{r}");
            }
            anyhow::Ok(())
        }));
    }
    for c in clients {
        c.await??;
    }
    let acknowledged = TASKS as f64 / started.elapsed().as_secs_f64();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let status = daemon.request(json!({"op": "status"})).await?;
        if status["result"]["pool"]["processed"].as_u64() >= Some(TASKS as u64) {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{TASKS} tasks not processed within 120 s; last status: {status}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let delivered = TASKS as f64 / started.elapsed().as_secs_f64();
    // Every outcome committed, so the writer's CPU holds all of them.
    daemon.request(json!({"op": "tasks", "limit": 1})).await?;
    let per_task = |spent: Duration| spent.as_secs_f64() * 1e6 / TASKS as f64;
    let daemon_cpu = per_task(cpu::process(pid)? - daemon_before);
    let writer_cpu = per_task(cpu::threads(pid, cpu::JOURNAL_WRITER)? - writer_before);
    let client_cpu = per_task(cpu::process(std::process::id())? - client_before);
    println!(
        "{label:<9} store: {acknowledged:>9.0} tasks/s acknowledged, {delivered:>9.0} tasks/s delivered ({TASKS} tasks); CPU a task: daemon {daemon_cpu:.1} µs, journal writer {writer_cpu:.1} µs, client {client_cpu:.1} µs"
    );
    Ok((acknowledged, delivered))
}
