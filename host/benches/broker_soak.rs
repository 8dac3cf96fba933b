//! Broker soak: `cargo bench -p notifyhub --bench broker_soak`.
//!
//! Two hosts on one nats-server, one receiver that answers at once. A steady
//! stream of immediate webhook tasks (one submit every 20 ms, alternating
//! hosts) is timed from submit to the receiver, after a 2 s warm-up, in
//! three phases of `NOTIFYHUB_SOAK_SECS` (default 8) each:
//! 1. **baseline**: nothing else in the broker;
//! 2. **backlog**: after `NOTIFYHUB_SOAK_SCHEDULED` tasks (default 20,000;
//!    the size is 200,000) for the same platform were scheduled an
//!    hour ahead — they must not slow the stream (goal: p99 ≤ 2× baseline);
//! 3. **faults**: host B is killed with `kill -9` a quarter of the way in,
//!    nats-server is killed with `kill -9` halfway and started again 2 s
//!    later; the stream goes on (to host A alone once B is gone), and a
//!    submit refused while the broker is away is submitted again.
//!
//! Then every acknowledged task is accounted for: each immediate one
//! delivered (duplicates counted), and the scheduled ones still waiting in
//! the stream.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use notifyhub_testkit::daemon::{Conn, Daemon};
use notifyhub_testkit::nats::NatsServer;
use notifyhub_testkit::receiver::{Receiver, Reply};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_notifyhub");
const EVERY: Duration = Duration::from_millis(20);

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn host(receiver: &Receiver, nats: &NatsServer) -> anyhow::Result<Daemon> {
    Daemon::builder(BIN)
        .plugin(
            "webhook",
            Some(&format!("allowed_hosts = [\"{}\"]\n", receiver.authority())),
        )
        .config(&format!(
            "[broker]\nurl = \"{}\"\nack_wait = \"5s\"\n",
            nats.url()
        ))
        .start()
        .await
}

/// What the stream acknowledged: body → when it was submitted.
type Acked = HashMap<String, Instant>;

/// What happens during a phase, at a fraction of its length.
enum Fault {
    KillHost,
    KillBroker,
    RestartBroker,
}

struct Stream<'a> {
    receiver: &'a Receiver,
    conns: Vec<Option<Conn>>,
    next: usize,
    acked: Acked,
    refused: usize,
}

impl Stream<'_> {
    /// One submit to the next host still up; `false` if it was refused.
    async fn submit(&mut self, body: &str) -> bool {
        let live = self.conns.iter().filter(|c| c.is_some()).count();
        if live == 0 {
            return false;
        }
        let mut i = self.next % self.conns.len();
        while self.conns[i].is_none() {
            i = (i + 1) % self.conns.len();
        }
        self.next = i + 1;
        let task = json!({"platform": "webhook", "target": self.receiver.url("/s"), "body": body});
        let at = Instant::now();
        let conn = self.conns[i].as_mut().expect("chosen among the live");
        let answer = match conn.send(&json!({"op": "submit", "task": task})).await {
            Ok(()) => conn.recv().await,
            Err(e) => Err(e),
        };
        match answer {
            Ok(answer) if answer["ok"] == true => {
                self.acked.insert(body.to_string(), at);
                true
            }
            Ok(_) => {
                self.refused += 1;
                false
            }
            // The host is gone.
            Err(_) => {
                self.conns[i] = None;
                false
            }
        }
    }
}

/// Latencies (submit → receiver) of the bodies in `acked`, sorted.
fn latencies(receiver: &Receiver, acked: &Acked) -> Vec<Duration> {
    let mut seen: Vec<Duration> = receiver
        .requests()
        .iter()
        .filter_map(|r| {
            let body = r.json()["data"]["body"].as_str()?.to_string();
            Some(r.at.saturating_duration_since(*acked.get(&body)?))
        })
        .collect();
    seen.sort();
    seen
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    sorted
        .get(((sorted.len() as f64 - 1.0) * q) as usize)
        .copied()
        .unwrap_or_default()
}

#[allow(clippy::too_many_arguments)]
async fn phase(
    name: &str,
    secs: u64,
    receiver: &Receiver,
    hosts: &mut [Daemon],
    nats: &mut NatsServer,
    faults: &[(f64, Fault)],
) -> anyhow::Result<(Acked, usize)> {
    let mut conns = Vec::new();
    for host in hosts.iter() {
        conns.push(Some(host.connect().await?));
    }
    let mut stream = Stream {
        receiver,
        conns,
        next: 0,
        acked: Acked::new(),
        refused: 0,
    };
    let length = Duration::from_secs(secs);
    let started = Instant::now();
    let mut faults: Vec<&(f64, Fault)> = faults.iter().collect();
    let mut pending: Option<String> = None;
    let mut n = 0;
    let mut tick = tokio::time::interval(EVERY);
    while started.elapsed() < length {
        tick.tick().await;
        let at = started.elapsed().as_secs_f64() / length.as_secs_f64();
        while let Some((when, fault)) = faults.first().map(|f| (f.0, &f.1)) {
            if at < when {
                break;
            }
            match fault {
                Fault::KillHost => {
                    println!("  {name}: kill -9 host B");
                    hosts[1].kill()?;
                    stream.conns[1] = None;
                }
                Fault::KillBroker => {
                    println!("  {name}: kill -9 nats-server");
                    nats.kill();
                }
                Fault::RestartBroker => {
                    println!("  {name}: nats-server started again");
                    nats.restart().await?;
                }
            }
            faults.remove(0);
        }
        let body = pending.take().unwrap_or_else(|| {
            n += 1;
            format!("{name}-{n}")
        });
        if !stream.submit(&body).await {
            pending = Some(body);
        }
    }
    Ok((stream.acked, stream.refused))
}

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(notifyhub_testkit::deadline::bench(async {
        let secs = env_or("NOTIFYHUB_SOAK_SECS", 8);
        let scheduled = env_or("NOTIFYHUB_SOAK_SCHEDULED", 20_000) as usize;
        println!(
            "broker soak: 2 hosts, a submit every {} ms for {secs} s a phase, {scheduled} tasks scheduled an hour ahead (daemon: release build)",
            EVERY.as_millis()
        );
        let receiver = Receiver::start(|_| Reply::new(200, "ok")).await;
        let mut nats = NatsServer::start().await?;
        let mut hosts = vec![host(&receiver, &nats).await?, host(&receiver, &nats).await?];

        // Both hosts' plugins warm before anything is timed.
        let (warmup, _) = phase("warm-up", 2, &receiver, &mut hosts, &mut nats, &[]).await?;
        let (baseline, _) = phase("baseline", secs, &receiver, &mut hosts, &mut nats, &[]).await?;

        let started = Instant::now();
        let batch = 1000;
        for round in 0..scheduled.div_ceil(batch) {
            let tasks: Vec<Value> = (0..batch.min(scheduled - round * batch))
                .map(|i| {
                    json!({"platform": "webhook", "target": receiver.url("/later"),
                           "body": format!("later-{round}-{i}"), "delay": "1h"})
                })
                .collect();
            let answer = hosts[round % 2]
                .request(json!({"op": "submit", "tasks": tasks}))
                .await?;
            anyhow::ensure!(answer["ok"] == true, "{answer}");
        }
        println!(
            "  scheduled {scheduled} an hour ahead in {:.1} s ({:.0}/s)",
            started.elapsed().as_secs_f64(),
            scheduled as f64 / started.elapsed().as_secs_f64()
        );
        let (backlog, _) = phase("backlog", secs, &receiver, &mut hosts, &mut nats, &[]).await?;

        let faults = [
            (0.25, Fault::KillHost),
            (0.5, Fault::KillBroker),
            (0.5 + 2.0 / secs as f64, Fault::RestartBroker),
        ];
        let (faulted, refused) =
            phase("faults", secs, &receiver, &mut hosts, &mut nats, &faults).await?;

        // Every acknowledged immediate task arrives.
        let mut acked = Acked::new();
        for phase in [&warmup, &baseline, &backlog, &faulted] {
            acked.extend(phase.iter().map(|(k, v)| (k.clone(), *v)));
        }
        let deadline = Instant::now() + Duration::from_secs(120);
        let counts = loop {
            let mut counts: HashMap<String, usize> = HashMap::new();
            for r in receiver.requests() {
                if let Some(body) = r.json()["data"]["body"].as_str() {
                    *counts.entry(body.to_string()).or_default() += 1;
                }
            }
            let missing = acked.keys().filter(|b| !counts.contains_key(*b)).count();
            if missing == 0 {
                break counts;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "{missing} acknowledged tasks not delivered within 120 s"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let twice = acked.keys().filter(|b| counts[*b] > 1).count();
        let early = counts.keys().filter(|b| b.starts_with("later-")).count();
        let status = hosts[0].request(json!({"op": "status"})).await?;
        let waiting = status["result"]["broker"]["messages"].as_u64().unwrap_or(0);

        println!("  phase      tasks   p50 ms   p99 ms");
        let mut p99 = Vec::new();
        for (name, phase) in [
            ("baseline", &baseline),
            ("backlog", &backlog),
            ("faults", &faulted),
        ] {
            let l = latencies(&receiver, phase);
            println!(
                "  {name:<9} {:>6} {:>8.1} {:>8.1}",
                phase.len(),
                quantile(&l, 0.5).as_secs_f64() * 1e3,
                quantile(&l, 0.99).as_secs_f64() * 1e3
            );
            p99.push(quantile(&l, 0.99));
        }
        println!(
            "  p99 with the backlog ÷ without: {:.2}× (goal ≤ 2×)",
            p99[1].as_secs_f64() / p99[0].as_secs_f64().max(1e-6)
        );
        println!(
            "  accounted for: {} acknowledged immediate tasks all delivered, {twice} of them twice; {refused} submits refused during the faults (and submitted again); {early} scheduled tasks delivered early; {waiting} messages waiting in the stream (≥ {scheduled} scheduled)",
            acked.len()
        );
        anyhow::ensure!(early == 0, "scheduled tasks were delivered early");
        anyhow::ensure!(
            waiting >= scheduled as u64,
            "scheduled tasks lost: {waiting} waiting, {scheduled} scheduled"
        );
        anyhow::Ok(())
    }))
}
