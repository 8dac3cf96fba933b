//! Taking work from the broker: one durable pull consumer per platform,
//! shared by every host; this host pulls from those of the platforms it has
//! loaded, following the registry as plugins come and go.
//!
//! **Warm first.** A host asks the broker first for the platforms it holds
//! warm instances of: for those it keeps a pull request waiting at the
//! broker, so a new task goes straight to a host that can run it without
//! instantiating. For a platform it has no warm instance of, it only takes
//! what is already waiting, looking every [`COLD_POLL`] (backing off to
//! [`COLD_POLL_MAX`] while it finds nothing) — tasks that no warm host
//! picked up (they are all busy, or there is none). Affinity to warm
//! instances thus holds across hosts, and no task waits for a warm host
//! that is not coming.
//!
//! **Nothing before it is taken.** A task whose record is still pending —
//! its submit has not had the publish acknowledgement yet — is held until
//! the record is confirmed, and dropped if it is taken back instead (see
//! [`super::submit`]).
//!
//! **One attempt per delivery.** A pulled task is run by this host's pool
//! like a local one, for one attempt, counted after those the records
//! bucket holds from every host. The host holds the message meanwhile,
//! sending an in-progress ack every third of `ack_wait`. Then it writes the
//! record and only then answers the broker: a retry is scheduled on the
//! broker after its backoff and the message acknowledged (the broker
//! publishes it again, for whichever host is pulling then, so retries move
//! between hosts and none is special); a final outcome is acknowledged, a
//! dead task first published to the dead-letter stream. A task not due
//! yet, or whose shared rate budget is spent, is scheduled the same way.
//! At most `max_in_flight` tasks are held at once, so hosts share the
//! backlog instead of one host taking it all.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use async_nats::jetstream::consumer::{PullConsumer, pull};
use async_nats::jetstream::{AckKind, Message};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use super::Broker;
use super::pull::{Pulled, Puller, give_back};
use super::records::{Orphan, Settled, Shared, Work};
use crate::pool::Pool;
use crate::pool::pacer::pace_key;
use crate::pool::settings::LiveSettings;
use crate::protocol::HostView;
use crate::registry::Registry;
use crate::store::TaskStore;
use crate::task::TaskState;

/// How often a host looks for waiting tasks of a platform it holds no warm
/// instance of; after looks that found nothing it waits longer, up to
/// [`COLD_POLL_MAX`], so an idle host asks the broker little.
pub const COLD_POLL: Duration = Duration::from_millis(50);

/// The longest wait between looks for a cold platform's tasks.
pub const COLD_POLL_MAX: Duration = Duration::from_millis(400);

/// How long a pull request for a warm platform waits at the broker.
const PULL_WAIT: Duration = Duration::from_secs(1);

/// Most tasks asked for in one pull request.
const MAX_BATCH: usize = 64;

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

/// Pulls for every platform loaded, from when start-up's plugins are in
/// until `shutdown`: a consumer starts when a plugin for a new platform
/// loads and stops when its platform is unloaded.
pub async fn run(host: Host, shutdown: CancellationToken) {
    let registry = host.registry.clone();
    registry.wait_ready().await;
    let permits = Arc::new(Semaphore::new(host.broker.config.max_in_flight));
    tokio::spawn(announce(host.clone(), permits.clone(), shutdown.clone()));
    let mut changes = registry.changes();
    let mut consumers: HashMap<String, CancellationToken> = HashMap::new();
    loop {
        changes.mark_unchanged();
        let platforms: Vec<String> = registry
            .catalog()
            .platforms()
            .iter()
            .map(|p| p.to_string())
            .collect();
        consumers.retain(|platform, stop| {
            let keep = platforms.contains(platform);
            if !keep {
                tracing::info!(%platform, "no plugin serves it any more: not taking its work");
                stop.cancel();
            }
            keep
        });
        for platform in platforms {
            if consumers.contains_key(&platform) {
                continue;
            }
            let stop = shutdown.child_token();
            consumers.insert(platform.clone(), stop.clone());
            tokio::spawn(keep_consuming(
                host.clone(),
                platform,
                permits.clone(),
                stop,
            ));
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            changed = changes.changed() => if changed.is_err() { break },
        }
    }
    host.broker.hosts().leave(host.broker.name()).await;
}

/// Runs [`consume`] for `platform` until `stop`, starting it again after a
/// broker restart or a lost connection (the consumer is durable: nothing
/// is lost meanwhile).
async fn keep_consuming(
    host: Host,
    platform: String,
    permits: Arc<Semaphore>,
    stop: CancellationToken,
) {
    while let Err(e) = consume(&host, &platform, permits.clone(), stop.clone()).await {
        tracing::warn!(%platform, "taking work from the broker stopped: {e}; again in 1 s");
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// Tells the other hosts, every [`super::hosts::ANNOUNCE_EVERY`], that this
/// one takes part and what it pulls.
async fn announce(host: Host, permits: Arc<Semaphore>, shutdown: CancellationToken) {
    let max = host.broker.config.max_in_flight;
    let mut every = tokio::time::interval(super::hosts::ANNOUNCE_EVERY);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = every.tick() => {}
        }
        let catalog = host.registry.catalog();
        let platforms: Vec<String> = catalog.platforms().iter().map(|p| p.to_string()).collect();
        let warm = platforms
            .iter()
            .filter(|p| {
                catalog
                    .lookup(p)
                    .is_some_and(|plugin| host.pool.is_warm(&plugin.key))
            })
            .cloned()
            .collect();
        let view = HostView {
            name: host.broker.name().to_string(),
            platforms,
            warm,
            taken: host.stats.taken.load(Ordering::Relaxed),
            finished: host.stats.finished.load(Ordering::Relaxed),
            in_flight: max.saturating_sub(permits.available_permits()) as u64,
            seen_at: super::hosts::now(),
        };
        if let Err(e) = host.broker.hosts().announce(&view).await {
            tracing::debug!("announcing this host to the others failed: {e}");
        }
    }
}

async fn consumer(host: &Host, platform: &str) -> Result<PullConsumer, String> {
    let broker = &host.broker;
    let stream = broker.work_stream().await.map_err(|e| e.to_string())?;
    let name = format!("notifyhub-{platform}");
    stream
        .get_or_create_consumer(
            &name,
            pull::Config {
                durable_name: Some(name.clone()),
                filter_subject: format!("notifyhub.tasks.{platform}"),
                ack_policy: async_nats::jetstream::consumer::AckPolicy::Explicit,
                ack_wait: broker.config.ack_wait,
                // Delays (not yet due, retries) count as deliveries: never
                // give up; the retry policy decides when a task is dead.
                max_deliver: -1,
                max_ack_pending: 100_000,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| e.to_string())
}

/// Whether this host holds `platform`'s plugin warm.
fn is_warm(host: &Host, platform: &str) -> bool {
    host.registry
        .lookup(platform)
        .is_some_and(|plugin| host.pool.is_warm(&plugin.key))
}

async fn consume(
    host: &Host,
    platform: &str,
    permits: Arc<Semaphore>,
    stop: CancellationToken,
) -> Result<(), String> {
    let consumer = consumer(host, platform).await?;
    let mut puller = Puller::new(
        host.broker.js.clone(),
        consumer,
        host.broker.reconnects.subscribe(),
    )
    .await?;
    tracing::info!(%platform, "taking work from the broker");
    let taking = take_work(host, platform, permits, &stop, &mut puller).await;
    if taking.is_ok() {
        // Stopped (shutdown, or the platform's plugin went away).
        puller.close().await;
    }
    taking
}

/// Pulls `platform`'s tasks and hands each to [`handle`] until `stop`.
async fn take_work(
    host: &Host,
    platform: &str,
    permits: Arc<Semaphore>,
    stop: &CancellationToken,
    puller: &mut Puller,
) -> Result<(), String> {
    let mut cold_wait = COLD_POLL;
    loop {
        // Ask for no more than this host may hold: what it takes, it runs.
        // A waiting request holds its share of `max_in_flight` while it
        // waits, so each platform asks for at most an equal share: every
        // platform can have a request waiting at once.
        let platforms = host.registry.catalog().platforms().len().max(1);
        let most = (host.broker.config.max_in_flight / platforms).clamp(1, MAX_BATCH);
        let first = loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => return Ok(()),
                permit = permits.clone().acquire_owned() => break permit.map_err(|e| e.to_string())?,
                // Sent for a request already over, while every place here
                // is taken: another host may run it now.
                pulled = puller.next(None) => if let Pulled::Message(message) = pulled? {
                    give_back(&message).await;
                },
            }
        };
        let mut held: Vec<OwnedSemaphorePermit> = vec![first];
        while held.len() < most
            && let Ok(permit) = permits.clone().try_acquire_owned()
        {
            held.push(permit);
        }
        let warm = is_warm(host, platform);
        let wait = warm.then_some(PULL_WAIT);
        puller.ask(held.len(), wait).await?;
        let mut taken = 0;
        while !held.is_empty() {
            let pulled = tokio::select! {
                // Messages already handed to this host come back after
                // `ack_wait`, or go to another host when it stops.
                _ = stop.cancelled() => return Ok(()),
                pulled = puller.next(wait) => pulled?,
            };
            let message = match pulled {
                Pulled::Message(message) => *message,
                Pulled::Over => break,
            };
            let permit = held.pop().expect("the loop runs while places are held");
            taken += 1;
            let host = host.clone();
            tokio::spawn(async move {
                handle(&host, message).await;
                drop(permit);
            });
        }
        drop(held);
        if warm || taken > 0 {
            cold_wait = COLD_POLL;
        } else {
            tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                _ = tokio::time::sleep(cold_wait) => {}
            }
            cold_wait = (cold_wait * 2).min(COLD_POLL_MAX);
        }
    }
}

/// Answers the broker for `message`, logging (not failing) when that does
/// not reach it: the message then comes back after `ack_wait`.
async fn answer(message: &Message, kind: AckKind) {
    if let Err(e) = message.ack_with(kind).await {
        tracing::warn!("answering the broker failed: {e}");
    }
}

/// Sends the task `message` carries back to wait in the broker until
/// `due_ms` (one step of it: [`Broker::wake_at`]). It waits as a message
/// schedule, and `message` is acknowledged once the schedule is stored (so
/// no consumer slot is held while it waits); if the schedule cannot be
/// stored, `message` is NAKed with the wait instead, which holds a slot
/// but loses nothing.
async fn wait_in_broker(broker: &Broker, message: &Message, work: &Work, due_ms: u64) {
    let now_ms = super::millis(SystemTime::now());
    let at = broker.wake_at(due_ms, now_ms);
    let wait = Duration::from_millis(at.saturating_sub(now_ms));
    let scheduled = broker
        .schedule(
            work.task.id,
            &work.task.platform,
            at,
            message.payload.to_vec(),
        )
        .await;
    match scheduled {
        Ok(()) => {
            if let Err(e) = message.double_ack().await {
                // It comes back after `ack_wait`, finds itself not due and
                // schedules again (replacing this schedule): no duplicate.
                tracing::warn!(task = %work.task.id, "acknowledging a scheduled task failed: {e}");
            }
        }
        Err(e) => {
            tracing::warn!(task = %work.task.id, "cannot schedule on the broker ({e}); waiting as a NAK");
            answer(message, AckKind::Nak(Some(wait))).await;
        }
    }
}

/// What a pulled message's record says to do with it.
enum Record {
    /// Run it, from this record.
    Run(Box<Shared>),
    /// Not yet: its record is pending, or not visible yet. The message
    /// comes back in a second.
    Later,
    /// Never: its submit was refused and taken back.
    Refused,
}

/// Reads the record of `work`'s task, holding the message while that record
/// is pending (see [`Records::settled`](super::records::Records::settled)).
async fn record_of(broker: &Broker, work: &Work) -> Result<Record, super::BrokerError> {
    let hold = broker.config.ack_wait / 3;
    Ok(match broker.records.get(work.task.id).await? {
        Some(pending) if pending.pending => match broker.records.settled(pending, hold).await? {
            Settled::Stands(record) => Record::Run(record),
            Settled::TakenBack => Record::Refused,
            Settled::Pending => Record::Later,
        },
        Some(record) => Record::Run(Box::new(record)),
        None => match broker.records.orphan(work, SystemTime::now()) {
            Orphan::Expired => {
                Record::Run(Box::new(Shared::new(Arc::new(work.task.clone()), None)))
            }
            Orphan::Settling => Record::Later,
            Orphan::Refused => Record::Refused,
        },
    })
}

async fn handle(host: &Host, message: Message) {
    let work: Work = match serde_json::from_slice(&message.payload) {
        Ok(work) => work,
        Err(e) => {
            // Nothing can ever run it; keep it from coming back.
            tracing::error!("a message in the work stream is not a task ({e}); dropping it");
            answer(&message, AckKind::Term).await;
            return;
        }
    };
    let broker = &host.broker;
    let id = work.task.id;
    let mut shared = match record_of(broker, &work).await {
        Ok(Record::Run(shared)) => *shared,
        Ok(Record::Later) => {
            answer(&message, AckKind::Nak(Some(Duration::from_secs(1)))).await;
            return;
        }
        Ok(Record::Refused) => {
            tracing::info!(task = %id, "a refused submit's message landed after all; not running it");
            answer(&message, AckKind::Term).await;
            return;
        }
        Err(e) => {
            tracing::warn!(task = %id, "cannot read the task's record: {e}; again in 1 s");
            answer(&message, AckKind::Nak(Some(Duration::from_secs(1)))).await;
            return;
        }
    };
    if shared.view.state.is_finished() {
        // Recorded by a host that stopped before acknowledging: done.
        let _ = message.double_ack().await;
        return;
    }
    // One reading of the clock: a second one could pass `due` and underflow.
    // Not due before its schedule (from the message) or its retry's backoff
    // (from the record, in case the NAK that carried it was lost).
    let now = super::millis(SystemTime::now());
    let due = work.not_before_ms.max(shared.not_before_ms);
    if let Some(due) = due
        && due > now
    {
        if broker.records.refresh_due(&shared, now)
            && let Err(e) = broker.records.put(&mut shared).await
        {
            tracing::warn!(task = %id, "cannot refresh the task's record: {e}");
        }
        wait_in_broker(broker, &message, &work, due).await;
        return;
    }
    // A spent shared rate budget: wait in the broker, not here. The send
    // itself is taken from the budget by the worker, just before it runs.
    let rules = match host.registry.lookup(&work.task.platform) {
        Some(plugin) => host.settings.get().rate_rules(&work.task, &plugin.info),
        None => Vec::new(),
    };
    if !rules.is_empty() {
        let key = pace_key(&work.task);
        match broker.budgets.wait(&key, &rules).await {
            Ok(None) => {}
            Ok(Some(wait)) => {
                let until = super::millis(SystemTime::now()) + wait.as_millis() as u64;
                wait_in_broker(broker, &message, &work, until).await;
                return;
            }
            Err(e) => {
                tracing::warn!("cannot read the shared rate budget: {e}; trying again in 1 s");
                answer(&message, AckKind::Nak(Some(Duration::from_secs(1)))).await;
                return;
            }
        }
    }
    let local = shared.to_local();
    let task = local.task.clone();
    let Some(finished) = host.store.take_over(local) else {
        // Delivered again while its attempt runs here: that attempt's
        // answer settles the message (a later redelivery finds the record
        // finished, or retrying, and acts on that).
        tracing::debug!(task = %id, "delivered again while in flight here; not run twice");
        return;
    };
    host.stats.taken.fetch_add(1, Ordering::Relaxed);
    if message.info().is_ok_and(|i| i.delivered > 1) {
        host.stats.redelivered.fetch_add(1, Ordering::Relaxed);
    }
    host.pool.enqueue(&[task]);
    let every = broker.config.ack_wait / 3;
    let mut progress = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tokio::pin!(finished);
    let record = loop {
        tokio::select! {
            record = &mut finished => match record {
                Ok(record) => break record,
                // The daemon is stopping: give the task back at once.
                Err(_) => return answer(&message, AckKind::Nak(None)).await,
            },
            _ = progress.tick() => answer(&message, AckKind::Progress).await,
        }
    };
    shared.merge(record);
    let recorded = async {
        broker.records.put(&mut shared).await?;
        if shared.view.state == TaskState::Dead {
            let payload = serde_json::to_vec(&shared).map_err(super::records_error)?;
            let subject = format!("notifyhub.dead.{}", shared.task.platform);
            broker.publish(subject, &shared.msg_id(), payload).await?;
        }
        Ok::<_, super::BrokerError>(())
    };
    if let Err(e) = recorded.await {
        // Not recorded, so not answered: the broker offers the task again
        // (at least once), and its attempt is run again.
        tracing::error!(task = %id, "cannot record the outcome on the broker: {e}");
        answer(&message, AckKind::Nak(Some(Duration::from_secs(1)))).await;
        return;
    }
    if shared.view.state == TaskState::Retrying {
        let now = super::millis(SystemTime::now());
        wait_in_broker(broker, &message, &work, shared.not_before_ms.unwrap_or(now)).await;
        return;
    }
    if let Err(e) = message.double_ack().await {
        tracing::warn!(task = %id, "acknowledging to the broker failed: {e}");
    }
    host.stats.finished.fetch_add(1, Ordering::Relaxed);
}
