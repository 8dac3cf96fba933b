//! Broker mode against the embedded store: `cargo bench -p notifyhub --bench broker`.
//!
//! One run, the same machine and receiver (answers at once): 4,000 webhook
//! deliveries submitted in batches of 100 through (a) one host on the
//! embedded store, (b) one host on a nats-server with JetStream, (c) two
//! hosts on it (submits alternate between their sockets). Prints tasks/s
//! from the first submit to the last delivery, the end-to-end latency p50
//! and p99 (submit → the receiver sees the request), and the ratios to (a).
//! Two hosts on one 2-core machine share its cores, so expect ≤ 2×.

use std::time::{Duration, Instant};

use notifyhub_testkit::daemon::Daemon;
use notifyhub_testkit::nats::NatsServer;
use notifyhub_testkit::receiver::{Receiver, Reply};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_notifyhub");
const TASKS: usize = 4000;
const BATCH: usize = 100;

struct Figures {
    per_second: f64,
    p50: Duration,
    p99: Duration,
}

async fn host(receiver: &Receiver, broker: Option<&str>) -> anyhow::Result<Daemon> {
    let config = broker
        .map(|url| format!("[broker]\nurl = \"{url}\"\n"))
        .unwrap_or_default();
    Daemon::builder(BIN)
        .plugin(
            "webhook",
            Some(&format!("allowed_hosts = [\"{}\"]\n", receiver.authority())),
        )
        .config(&config)
        .start()
        .await
}

async fn run(hosts: &[Daemon], receiver: &Receiver) -> anyhow::Result<Figures> {
    let before = receiver.requests().len();
    let started = Instant::now();
    let mut submitted_at = std::collections::HashMap::new();
    for round in 0..TASKS / BATCH {
        let tasks: Vec<Value> = (0..BATCH)
            .map(|i| {
                json!({"platform": "webhook", "target": receiver.url("/b"),
                       "body": format!("{round}-{i}")})
            })
            .collect();
        let at = Instant::now();
        let answer = hosts[round % hosts.len()]
            .request(json!({"op": "submit", "tasks": tasks}))
            .await?;
        anyhow::ensure!(answer["ok"] == true, "{answer}");
        for i in 0..BATCH {
            submitted_at.insert(format!("{round}-{i}"), at);
        }
    }
    receiver
        .wait_for_count(before + TASKS, Duration::from_secs(120))
        .await?;
    let took = started.elapsed();
    let requests = receiver.requests();
    let mut latencies: Vec<Duration> = requests[before..]
        .iter()
        .filter_map(|r| {
            let body = r.json()["data"]["body"].as_str()?.to_string();
            Some(r.at.saturating_duration_since(*submitted_at.get(&body)?))
        })
        .collect();
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() as f64 - 1.0) * q) as usize];
    Ok(Figures {
        per_second: TASKS as f64 / took.as_secs_f64(),
        p50: at(0.5),
        p99: at(0.99),
    })
}

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(notifyhub_testkit::deadline::bench(async {
        let receiver = Receiver::start(|_| Reply::new(200, "ok")).await;
        println!("{TASKS} webhook deliveries in batches of {BATCH} (daemon: release build)");
        let embedded = {
            let hosts = [host(&receiver, None).await?];
            run(&hosts, &receiver).await?
        };
        let nats = NatsServer::start().await?;
        let one = {
            let hosts = [host(&receiver, Some(nats.url())).await?];
            run(&hosts, &receiver).await?
        };
        let nats = NatsServer::start().await?;
        let two = {
            let hosts = [
                host(&receiver, Some(nats.url())).await?,
                host(&receiver, Some(nats.url())).await?,
            ];
            run(&hosts, &receiver).await?
        };
        for (name, f) in [
            ("embedded store, 1 host", &embedded),
            ("broker, 1 host", &one),
            ("broker, 2 hosts", &two),
        ] {
            println!(
                "  {name:<24} {:>8.0} tasks/s ({:>5.2}× embedded)   p50 {:>7.1} ms   p99 {:>7.1} ms",
                f.per_second,
                f.per_second / embedded.per_second,
                f.p50.as_secs_f64() * 1e3,
                f.p99.as_secs_f64() * 1e3
            );
        }
        println!(
            "  2 hosts / 1 host on the broker: {:.2}×",
            two.per_second / one.per_second
        );
        anyhow::Ok(())
    }))
}
