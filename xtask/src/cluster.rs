//! `cargo xtask cluster`: several hosts sharing work through NATS JetStream,
//! on this machine.
//!
//! Starts nats-server with JetStream on a free loopback port (its store in a
//! temporary directory), two daemons (release build, `webhook` plugin) on
//! it, and a local receiver that answers after 20 ms; submits 1,000 tasks,
//! half on each host's socket, and shows what each host delivered and that
//! every task is answered the same on both.

use std::time::{Duration, Instant};

use notifyhub_testkit::daemon::Daemon;
use notifyhub_testkit::nats::NatsServer;
use notifyhub_testkit::receiver::{Receiver, Reply};
use notifyhub_testkit::repo_root;
use serde_json::{Value, json};

use crate::{cargo, run as run_command, rust_target};

const TASKS: usize = 1000;

pub fn run() -> anyhow::Result<()> {
    rust_target()?;
    let webhook = notifyhub_testkit::plugins::build_rust_plugin("webhook")?;
    run_command(cargo().args(["build", "--release", "-p", "notifyhub"]))?;
    let bin = repo_root().join("target/release/notifyhub");
    tokio::runtime::Runtime::new()?.block_on(cluster(bin, std::fs::read(webhook)?))
}

async fn call(host: &Daemon, request: Value) -> anyhow::Result<Value> {
    let answer = host.request(request).await?;
    anyhow::ensure!(answer["ok"] == true, "{answer}");
    Ok(answer["result"].clone())
}

async fn cluster(bin: std::path::PathBuf, webhook: Vec<u8>) -> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    println!("broker    nats-server with JetStream at {}", nats.url());
    let receiver =
        Receiver::start(|_| Reply::new(200, "ok").after(Duration::from_millis(20))).await;
    println!("receiver  {} (answers after 20 ms)", receiver.url("/"));
    let manifest = format!("allowed_hosts = [\"{}\"]\n", receiver.authority());
    let mut hosts = Vec::new();
    for name in ["host-a", "host-b"] {
        let host = Daemon::builder(&bin)
            .file("webhook.wasm", webhook.clone())
            .file("webhook.toml", manifest.clone())
            .config(&format!("[broker]\nurl = \"{}\"\n", nats.url()))
            .start()
            .await?;
        println!("{name}    serving on {}", host.socket().display());
        hosts.push(host);
    }
    let started = Instant::now();
    let mut ids = Vec::new();
    for (i, chunk) in (0..TASKS).collect::<Vec<_>>().chunks(100).enumerate() {
        let tasks: Vec<Value> = chunk
            .iter()
            .map(|n| json!({"platform": "webhook", "target": receiver.url("/hook"), "body": format!("task {n}")}))
            .collect();
        let answer = call(&hosts[i % 2], json!({"op": "submit", "tasks": tasks})).await?;
        ids.extend(
            answer["task_ids"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str().map(String::from)),
        );
    }
    println!(
        "\nsubmitted {} tasks, half on each host's socket",
        ids.len()
    );
    receiver.wait_for(TASKS, Duration::from_secs(120)).await?;
    let took = started.elapsed();
    // The last records are written just after the last request arrives.
    for id in &ids {
        for host in &hosts {
            let deadline = Instant::now() + Duration::from_secs(30);
            while call(host, json!({"op": "task", "task_id": id})).await?["state"] != "succeeded" {
                anyhow::ensure!(Instant::now() < deadline, "task {id} did not finish");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    println!(
        "delivered {} in {:.2} s ({:.0}/s); every task reads `succeeded` on both hosts\n",
        receiver.requests().len(),
        took.as_secs_f64(),
        TASKS as f64 / took.as_secs_f64()
    );
    for (name, host) in ["host-a", "host-b"].iter().zip(&hosts) {
        let status = call(host, json!({"op": "status"})).await?;
        let broker = &status["broker"];
        println!(
            "{name}    took {:>4} tasks from the broker, finished {:>4}, {} redelivered",
            broker["taken_here"], broker["finished_here"], broker["redelivered_here"]
        );
    }
    println!("\ncluster finished: hosts and broker stopped, temporary directories removed");
    Ok(())
}
