//! Pull requests whose late answers are never dropped.
//!
//! async-nats's `batch()` and `fetch()` subscribe afresh for each pull
//! request and unsubscribe when it ends — at the server's "request timed
//! out", or at the client's own timer (the request's expiry plus 5 s).
//! Messages the server delivered for a request but the host had not read
//! when it ended are then lost to the host, while the server counts them as
//! delivered and offers them again only after `ack_wait`: a host stopped
//! for a few seconds (SIGSTOP, a stalled machine) made tasks wait the full
//! `ack_wait` after it resumed.
//!
//! Here one subscription lives as long as the consumer and every message
//! that reaches it is taken. Each request gets its own reply subject under
//! the subscription, so the broker's word that a request is over (which
//! comes on that subject) is told apart from an older request's; messages
//! themselves carry their stream subject, not the request's, so the caller
//! counts them against the places it holds: one that comes while no
//! request is under way (it was sent for one already over, and no place
//! here is free) is given back to the broker at once — a NAK without delay,
//! so any host may take it. Nothing this host was handed
//! waits on `ack_wait` unless the host itself is stopped.

use std::time::Duration;

use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::consumer::pull::BatchConfig;
use async_nats::jetstream::{self, AckKind};
use async_nats::{StatusCode, Subscriber};
use futures_util::StreamExt;

/// How much longer than a request's expiry to wait for its end before
/// taking it as lost. A request lost with the connection is known sooner:
/// the puller re-asks as soon as the client has reconnected.
const GRACE: Duration = Duration::from_secs(5);

/// A consumer's pulls, over one subscription.
pub struct Puller {
    consumer: PullConsumer,
    js: jetstream::Context,
    inbox: String,
    subscriber: Subscriber,
    /// Number of the request under way; replies to it end in `.{current}`.
    current: u64,
    /// Changes when the client reconnects: the server forgot every pull
    /// request of the old connection.
    reconnects: tokio::sync::watch::Receiver<u64>,
}

/// What a pull yields.
pub enum Pulled {
    /// A message, for the request under way or an earlier one.
    Message(Box<jetstream::Message>),
    /// The request under way is over; ask again.
    Over,
}

impl Puller {
    pub async fn new(
        js: jetstream::Context,
        consumer: PullConsumer,
        reconnects: tokio::sync::watch::Receiver<u64>,
    ) -> Result<Puller, String> {
        let client = js.client();
        let inbox = client.new_inbox();
        let subscriber = client
            .subscribe(format!("{inbox}.*"))
            .await
            .map_err(|e| format!("subscribing to pulled messages: {e}"))?;
        Ok(Puller {
            consumer,
            js,
            inbox,
            subscriber,
            current: 0,
            reconnects,
        })
    }

    /// Asks for up to `count` messages: waiting at the broker for up to
    /// `wait`, or with `None` only for those already there.
    pub async fn ask(&mut self, count: usize, wait: Option<Duration>) -> Result<(), String> {
        self.current += 1;
        self.reconnects.mark_unchanged();
        let request = BatchConfig {
            batch: count,
            expires: wait,
            no_wait: wait.is_none(),
            ..Default::default()
        };
        self.consumer
            .request_batch(request, format!("{}.{}", self.inbox, self.current).into())
            .await
            .map_err(|e| format!("pulling: {e}"))
    }

    /// The next thing that happens to the request asked for last, with a
    /// request that expires after `wait` (or answers at once) taken as over
    /// [`GRACE`] later if the broker says nothing.
    pub async fn next(&mut self, wait: Option<Duration>) -> Result<Pulled, String> {
        let deadline = tokio::time::Instant::now() + wait.unwrap_or_default() + GRACE;
        let current = format!(".{}", self.current);
        loop {
            let message = tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return Ok(Pulled::Over),
                // Gone with the old connection: ask again at once.
                Ok(()) = self.reconnects.changed() => return Ok(Pulled::Over),
                message = self.subscriber.next() => message.ok_or("the subscription ended")?,
            };
            let asked = message.subject.ends_with(current.as_str());
            match message.status.unwrap_or(StatusCode::OK) {
                StatusCode::OK => {
                    let message = jetstream::Message {
                        message,
                        context: self.js.clone(),
                    };
                    return Ok(Pulled::Message(Box::new(message)));
                }
                StatusCode::IDLE_HEARTBEAT => {}
                // The consumer is gone: make it again.
                StatusCode::REQUEST_TERMINATED
                    if message
                        .description
                        .as_deref()
                        .is_some_and(|d| d.contains("Deleted")) =>
                {
                    return Err("pulling: the consumer was deleted".into());
                }
                // "No messages", "request timed out", "max ack pending
                // reached" and the like end a request; an older request's
                // end is no news.
                StatusCode::NOT_FOUND | StatusCode::TIMEOUT | StatusCode::REQUEST_TERMINATED
                    if asked =>
                {
                    return Ok(Pulled::Over);
                }
                StatusCode::NOT_FOUND | StatusCode::TIMEOUT | StatusCode::REQUEST_TERMINATED => {}
                status if asked => {
                    return Err(format!(
                        "pulling: the broker answered {status}: {}",
                        message.description.as_deref().unwrap_or("")
                    ));
                }
                _ => {}
            }
        }
    }
}

impl Puller {
    /// Stops pulling: the subscription ends, and whatever the broker sent
    /// that this host has not taken yet goes back at once, for another host.
    pub async fn close(mut self) {
        if let Err(e) = self.subscriber.unsubscribe().await {
            tracing::debug!("ending the pull subscription: {e}");
        }
        while let Ok(Some(message)) =
            tokio::time::timeout(Duration::from_millis(100), self.subscriber.next()).await
        {
            if message.status.is_none_or(|s| s == StatusCode::OK) {
                let message = jetstream::Message {
                    message,
                    context: self.js.clone(),
                };
                give_back(&message).await;
            }
        }
    }
}

/// Gives a message this host has no place for back to the broker at once,
/// for any host to take.
pub async fn give_back(message: &jetstream::Message) {
    if let Err(e) = message.ack_with(AckKind::Nak(None)).await {
        tracing::warn!("giving a message back to the broker failed: {e}");
    }
}
