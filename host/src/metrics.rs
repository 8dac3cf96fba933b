//! Prometheus metrics, on a loopback HTTP listener (`[metrics] listen`).
//!
//! Off unless configured; when off nothing is recorded at all (every
//! recording site holds an `Option<Arc<Metrics>>`), so the hot path pays
//! nothing. Labels are bounded: platforms are names a plugin declared (the
//! first [`MAX_PLATFORM_LABELS`] seen, the rest as `other`), outcomes and
//! states are fixed sets; never a task id or a target.
//!
//! Served as the OpenMetrics text format at `GET /metrics` by a small hyper
//! server; only loopback addresses may be configured, because the numbers
//! say what an operator may not want the network to know.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::sandbox::Sandbox;
use crate::task::Outcome;

/// Distinct platform label values; later platforms count as `other`.
pub const MAX_PLATFORM_LABELS: usize = 64;

/// `[metrics]` in the config file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Where to serve `/metrics`, e.g. `127.0.0.1:9464`; off when unset.
    pub listen: Option<SocketAddr>,
}

impl MetricsConfig {
    pub fn validate(&self) -> Result<(), String> {
        match self.listen {
            Some(addr) if !addr.ip().is_loopback() => Err(format!(
                "[metrics] listen = {addr}: only a loopback address (127.0.0.1, ::1) may serve metrics"
            )),
            _ => Ok(()),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PlatformLabel {
    platform: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    platform: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

fn seconds_histogram() -> Histogram {
    // 50 µs to ~100 s.
    Histogram::new(exponential_buckets(0.000_05, 2.5, 16))
}

/// Every metric the daemon exports.
pub struct Metrics {
    registry: Registry,
    platforms: Mutex<HashSet<String>>,
    tasks: Family<OutcomeLabels, Counter>,
    attempt_seconds: Family<PlatformLabel, Histogram, fn() -> Histogram>,
    end_to_end_seconds: Family<PlatformLabel, Histogram, fn() -> Histogram>,
    retries: Family<PlatformLabel, Counter>,
    dead: Family<PlatformLabel, Counter>,
    pauses: Family<PlatformLabel, Counter>,
    workers: Family<StateLabel, Gauge>,
    queued: Gauge,
    concurrency_limit: Gauge,
    warm: Family<ResultLabel, Counter>,
    scale_events: Counter,
    plugin_loads: Family<ResultLabel, Counter>,
    connections: Gauge,
    pacing_waits: Family<PlatformLabel, Counter>,
    paced: Gauge,
    commit_seconds: Histogram,
    commit_batch: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("notifyhub");
        let m = Metrics {
            platforms: Mutex::default(),
            tasks: Family::default(),
            attempt_seconds: Family::new_with_constructor(seconds_histogram),
            end_to_end_seconds: Family::new_with_constructor(seconds_histogram),
            retries: Family::default(),
            dead: Family::default(),
            pauses: Family::default(),
            workers: Family::default(),
            queued: Gauge::default(),
            concurrency_limit: Gauge::default(),
            warm: Family::default(),
            scale_events: Counter::default(),
            plugin_loads: Family::default(),
            connections: Gauge::default(),
            pacing_waits: Family::default(),
            paced: Gauge::default(),
            commit_seconds: seconds_histogram(),
            // From one write to past the journal's group (a transaction takes
            // writes until it holds 2,048 rows; a submit comes whole).
            commit_batch: Histogram::new(exponential_buckets(1.0, 2.0, 13)),
            registry: Registry::default(),
        };
        registry.register(
            "attempts",
            "Delivery attempts by platform and outcome",
            m.tasks.clone(),
        );
        registry.register(
            "attempt_seconds",
            "Time in the plugin per attempt",
            m.attempt_seconds.clone(),
        );
        registry.register(
            "task_end_to_end_seconds",
            "From submit to the task's final outcome (succeeded or dead)",
            m.end_to_end_seconds.clone(),
        );
        registry.register(
            "retries",
            "Attempts that will be retried",
            m.retries.clone(),
        );
        registry.register("dead_letters", "Tasks that ended dead", m.dead.clone());
        registry.register(
            "destination_pauses",
            "Pauses after a platform said slow down",
            m.pauses.clone(),
        );
        registry.register("workers", "Workers by state", m.workers.clone());
        registry.register(
            "queued_tasks",
            "Tasks waiting for a worker",
            m.queued.clone(),
        );
        registry.register(
            "concurrency_limit",
            "The adaptive limit on workers (max_workers while it is open)",
            m.concurrency_limit.clone(),
        );
        registry.register(
            "warm_instances",
            "Warm instance hits and misses",
            m.warm.clone(),
        );
        registry.register("scale_events", "Pool size changes", m.scale_events.clone());
        registry.register(
            "plugin_loads",
            "Plugin loads by result",
            m.plugin_loads.clone(),
        );
        registry.register(
            "socket_connections",
            "Open socket connections",
            m.connections.clone(),
        );
        registry.register(
            "pacing_waits",
            "Tasks held back by a rate limit until their turn",
            m.pacing_waits.clone(),
        );
        registry.register(
            "paced_tasks",
            "Tasks waiting for their turn under a rate limit",
            m.paced.clone(),
        );
        registry.register(
            "store_commit_seconds",
            "Time to commit one transaction of the task store",
            m.commit_seconds.clone(),
        );
        registry.register(
            "store_commit_batch",
            "Writes committed in one transaction of the task store",
            m.commit_batch.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Also exports what `sandbox` counts: compile-cache lookups and the
    /// guest memory in use, read at each scrape.
    pub fn observe(&mut self, sandbox: Arc<Sandbox>) {
        self.registry
            .register_collector(Box::new(SandboxCollector(sandbox)));
    }

    /// A bounded label for `platform`.
    fn platform(&self, platform: &str) -> String {
        let mut seen = self.platforms.lock().expect("never poisoned");
        if seen.contains(platform) {
            return platform.to_string();
        }
        if seen.len() < MAX_PLATFORM_LABELS {
            seen.insert(platform.to_string());
            return platform.to_string();
        }
        "other".into()
    }

    /// An attempt ended with `outcome` after `took` in the plugin.
    pub fn attempt(&self, platform: &str, outcome: &Outcome, took: Option<Duration>) {
        let platform = self.platform(platform);
        let class = match outcome {
            Outcome::Delivered { .. } => "delivered",
            Outcome::Failed { class, .. } => class.as_str(),
        };
        self.tasks
            .get_or_create(&OutcomeLabels {
                platform: platform.clone(),
                outcome: class,
            })
            .inc();
        if let Some(took) = took {
            self.attempt_seconds
                .get_or_create(&PlatformLabel { platform })
                .observe(took.as_secs_f64());
        }
    }

    pub fn retry(&self, platform: &str) {
        let platform = self.platform(platform);
        self.retries
            .get_or_create(&PlatformLabel { platform })
            .inc();
    }

    /// A task reached its final state `took` after it was submitted.
    pub fn finished(&self, platform: &str, dead: bool, took: Duration) {
        let platform = self.platform(platform);
        if dead {
            self.dead
                .get_or_create(&PlatformLabel {
                    platform: platform.clone(),
                })
                .inc();
        }
        self.end_to_end_seconds
            .get_or_create(&PlatformLabel { platform })
            .observe(took.as_secs_f64());
    }

    pub fn pause(&self, platform: &str) {
        let platform = self.platform(platform);
        self.pauses.get_or_create(&PlatformLabel { platform }).inc();
    }

    pub fn warm(&self, hit: bool) {
        let result = if hit { "hit" } else { "miss" };
        self.warm.get_or_create(&ResultLabel { result }).inc();
    }

    /// The pool's shape at a tick.
    pub fn pool(&self, by_state: &[(&'static str, usize)], queued: usize, limit: usize) {
        for (state, n) in by_state {
            self.workers
                .get_or_create(&StateLabel { state })
                .set(*n as i64);
        }
        self.queued.set(queued as i64);
        self.concurrency_limit.set(limit as i64);
    }

    /// A task of `platform` must wait for its turn under a rate limit.
    pub fn paced(&self, platform: &str) {
        let platform = self.platform(platform);
        self.pacing_waits
            .get_or_create(&PlatformLabel { platform })
            .inc();
    }

    /// How many tasks wait under rate limits now.
    pub fn paced_backlog(&self, tasks: usize) {
        self.paced.set(tasks as i64);
    }

    /// The task store committed `writes` in one transaction that took `took`.
    pub fn commit(&self, took: Duration, writes: usize) {
        self.commit_seconds.observe(took.as_secs_f64());
        self.commit_batch.observe(writes as f64);
    }

    pub fn scaled(&self) {
        self.scale_events.inc();
    }

    pub fn plugin_load(&self, loaded: bool) {
        let result = if loaded { "loaded" } else { "failed" };
        self.plugin_loads
            .get_or_create(&ResultLabel { result })
            .inc();
    }

    pub fn connection(&self, opened: bool) {
        if opened {
            self.connections.inc();
        } else {
            self.connections.dec();
        }
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Reads the sandbox's own counters at scrape time.
struct SandboxCollector(Arc<Sandbox>);

impl std::fmt::Debug for SandboxCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SandboxCollector")
    }
}

impl Collector for SandboxCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if let Some((hits, misses)) = self.0.compile_cache() {
            let mut lookups = encoder.encode_descriptor(
                "compile_cache_lookups",
                "Compiled-code cache lookups by result",
                None,
                prometheus_client::metrics::MetricType::Counter,
            )?;
            for (result, n) in [("hit", hits), ("miss", misses)] {
                let labels = ResultLabel { result };
                ConstCounter::new(n as u64).encode(lookups.encode_family(&labels)?)?;
            }
        }
        let memory = ConstGauge::new(self.0.memory().used() as i64);
        memory.encode(encoder.encode_descriptor(
            "guest_memory_bytes",
            "Linear memory held by plugin instances, all workers together",
            None,
            memory.metric_type(),
        )?)?;
        Ok(())
    }
}

/// Serves `GET /metrics` on `addr` until `shutdown`.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    use http_body_util::Full;
    use hyper::body::Bytes;
    use hyper_util::rt::TokioIo;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "serving metrics at /metrics");
    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!("metrics accept failed: {e}");
                    continue;
                }
            },
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let metrics = metrics.clone();
                    async move {
                        let response = if req.method() == hyper::Method::GET
                            && req.uri().path() == "/metrics"
                        {
                            hyper::Response::builder()
                                .header(
                                    "content-type",
                                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                                )
                                .body(Full::new(Bytes::from(metrics.render())))
                        } else {
                            hyper::Response::builder().status(404).body(Full::new(
                                Bytes::from_static(b"only GET /metrics is served\n"),
                            ))
                        };
                        let response = response.unwrap_or_else(|_| {
                            hyper::Response::new(Full::new(Bytes::from_static(b"")))
                        });
                        Ok::<_, std::convert::Infallible>(response)
                    }
                });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
