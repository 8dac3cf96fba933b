//! Taking work from the broker: one durable pull consumer per platform,
//! shared by every host; this host pulls from those of the platforms it has
//! loaded.
//!
//! A pulled task is run by this host's pool like a local one. The host
//! holds the message until the task's final outcome, sending an in-progress
//! ack every third of `ack_wait`; it then writes the final record (and a
//! dead task to the dead-letter stream) and only then acknowledges. At most
//! `max_in_flight` tasks are held at once, so hosts share the backlog
//! instead of one host taking it all.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use async_nats::jetstream::{AckKind, Message, consumer::pull};
use futures_util::StreamExt;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::Broker;
use super::records::{Shared, Work};
use crate::pool::Pool;
use crate::pool::settings::LiveSettings;
use crate::protocol::TaskView;
use crate::registry::Registry;
use crate::store::{Submission, TaskStore};
use crate::task::TaskState;

/// What this host took from the broker, for `status`.
#[derive(Debug, Default)]
pub struct WorkStats {
    pub taken: AtomicU64,
    pub redelivered: AtomicU64,
    pub finished: AtomicU64,
}

/// What a consumer needs from this host.
#[derive(Clone)]
pub struct Host {
    pub broker: Arc<Broker>,
    pub store: Arc<TaskStore>,
    pub pool: Arc<Pool>,
    pub registry: Arc<Registry>,
    pub settings: Arc<LiveSettings>,
    pub stats: Arc<WorkStats>,
}

/// Pulls for every platform loaded once start-up's plugins are in, until
/// `shutdown`.
pub async fn run(host: Host, shutdown: CancellationToken) {
    let registry = host.registry.clone();
    registry.wait_ready().await;
    let permits = Arc::new(Semaphore::new(host.broker.config.max_in_flight));
    let platforms: Vec<String> = registry
        .catalog()
        .platforms()
        .iter()
        .map(|p| p.to_string())
        .collect();
    for platform in platforms {
        let (host, permits, shutdown) = (host.clone(), permits.clone(), shutdown.clone());
        tokio::spawn(async move {
            // A broker restart or a lost connection ends the pull; start
            // it again (the consumer is durable, nothing is lost).
            while let Err(e) = consume(&host, &platform, permits.clone(), shutdown.clone()).await {
                tracing::warn!(%platform, "taking work from the broker stopped: {e}; again in 1 s");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        });
    }
}

async fn consume(
    host: &Host,
    platform: &str,
    permits: Arc<Semaphore>,
    shutdown: CancellationToken,
) -> Result<(), String> {
    let broker = &host.broker;
    let stream = broker.work_stream().await.map_err(|e| e.to_string())?;
    let name = format!("notifyhub-{platform}");
    let consumer = stream
        .get_or_create_consumer(
            &name,
            pull::Config {
                durable_name: Some(name.clone()),
                filter_subject: format!("notifyhub.tasks.{platform}"),
                ack_policy: async_nats::jetstream::consumer::AckPolicy::Explicit,
                ack_wait: broker.config.ack_wait,
                // Delays (not yet due) count as deliveries: never give up.
                max_deliver: -1,
                max_ack_pending: 100_000,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| e.to_string())?;
    let batch = broker.config.max_in_flight.clamp(1, 64);
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(batch)
        .messages()
        .await
        .map_err(|e| e.to_string())?;
    tracing::info!(%platform, consumer = %name, "taking work from the broker");
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            permit = permits.clone().acquire_owned() => permit.map_err(|e| e.to_string())?,
        };
        let message = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            message = messages.next() => message,
        };
        let message = match message {
            Some(Ok(message)) => message,
            Some(Err(e)) => return Err(format!("pulling: {e}")),
            None => return Err("the consumer's message stream ended".into()),
        };
        let host = host.clone();
        tokio::spawn(async move {
            handle(&host, message).await;
            drop(permit);
        });
    }
}

async fn handle(host: &Host, message: Message) {
    let work: Work = match serde_json::from_slice(&message.payload) {
        Ok(work) => work,
        Err(e) => {
            // Nothing can ever run it; keep it from coming back.
            tracing::error!("a message in the work stream is not a task ({e}); dropping it");
            let _ = message.ack_with(AckKind::Term).await;
            return;
        }
    };
    // One reading of the clock: a second one could pass `due` and underflow.
    let now = super::millis(SystemTime::now());
    if let Some(due) = work.not_before_ms
        && due > now
    {
        let wait = Duration::from_millis(due - now);
        let _ = message.ack_with(AckKind::Nak(Some(wait))).await;
        return;
    }
    // A shared rate limit: wait in the broker, not here, when it is spent.
    let rules = match host.registry.lookup(&work.task.platform) {
        Some(plugin) => host.settings.get().rate_rules(&work.task, &plugin.info),
        None => Vec::new(),
    };
    if !rules.is_empty() {
        let key = crate::pool::pacer::pace_key(&work.task);
        match host.broker.budgets.take(&key, &rules).await {
            Ok(None) => {}
            Ok(Some(wait)) => {
                let _ = message.ack_with(AckKind::Nak(Some(wait))).await;
                return;
            }
            Err(e) => {
                tracing::warn!("cannot read the shared rate budget: {e}; trying again in 1 s");
                let _ = message
                    .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                    .await;
                return;
            }
        }
    }
    host.stats.taken.fetch_add(1, Ordering::Relaxed);
    if message.info().is_ok_and(|i| i.delivered > 1) {
        host.stats.redelivered.fetch_add(1, Ordering::Relaxed);
    }
    let task = Arc::new(work.task);
    let id = task.id;
    let submission = Submission {
        task: task.clone(),
        not_before: None,
        idempotency_key: None,
    };
    if let Err(e) = host.store.submit(vec![submission]).await {
        tracing::warn!(task = %id, "cannot take the task: {e}; the broker will offer it again");
        let _ = message
            .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
            .await;
        return;
    }
    let Some(finished) = host.store.wait(id) else {
        return;
    };
    host.pool.enqueue(&[task]);
    let every = host.broker.config.ack_wait / 3;
    let mut progress = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tokio::pin!(finished);
    let record = loop {
        tokio::select! {
            record = &mut finished => match record {
                Ok(record) => break record,
                // The daemon is stopping: leave the task to the broker.
                Err(_) => return,
            },
            _ = progress.tick() => {
                let _ = message.ack_with(AckKind::Progress).await;
            }
        }
    };
    let broker = &host.broker;
    let recorded = async {
        // The record keeps its revival count; only its view changes.
        let mut shared = match broker.records.get(id).await? {
            Some(shared) => shared,
            None => Shared::new(record.task.clone(), None),
        };
        shared.view = TaskView::from(record);
        let dead = shared.view.state == TaskState::Dead;
        broker.records.put(&shared).await?;
        if dead {
            let payload = serde_json::to_vec(&shared)
                .map_err(|e| super::BrokerError::Records(e.to_string()))?;
            let subject = format!("notifyhub.dead.{}", shared.task.platform);
            broker.publish(subject, &shared.msg_id(), payload).await?;
        }
        Ok::<_, super::BrokerError>(())
    };
    match recorded.await {
        Ok(()) => {
            if let Err(e) = message.double_ack().await {
                tracing::warn!(task = %id, "acknowledging to the broker failed: {e}");
            }
            host.stats.finished.fetch_add(1, Ordering::Relaxed);
        }
        Err(e) => {
            // Not recorded, so not acknowledged: another host will run it
            // again (at least once).
            tracing::error!(task = %id, "cannot record the outcome on the broker: {e}");
            let _ = message
                .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                .await;
        }
    }
}
