//! The `attempt` span, made only when something will see it.
//!
//! Every delivery attempt has a span, `attempt` (task, platform, plugin,
//! version, destination, worker, attempt number; the outcome once known),
//! and the lines logged during the attempt — the worker's, the lifecycle's,
//! the sandbox's refusals, the plugin's own — are logged inside it. At the
//! default level a delivery that succeeds logs no line, yet making that
//! span, entering it on every poll of the worker's future and closing it
//! cost 3.5 µs of daemon CPU a no-op task, a sixth of it, and ~10 µs a
//! webhook, whose future is polled again after each wait on the network
//! (`cargo bench -p notifyhub --bench e2e`, alternating runs with and
//! without it: 20.0–21.2 → 16.8–17.8 µs and 91.5–94.0 → 80.5–83.5 µs).
//!
//! So an attempt carries an [`AttemptSpan`]: how to make its span, made the
//! first time a line is logged during the attempt ([`in_attempt`]), or at
//! once when spans are exported (a trace needs the attempt's whole
//! duration). The worker runs each attempt in its scope ([`AttemptSpan::run`],
//! a tokio task-local), so code that logs during an attempt finds it without
//! a handle passed down; outside any attempt (a `notifyhub try`, a task
//! failed before it reached a worker) [`in_attempt`] just logs.
//!
//! What it must never do: leave a line logged during an attempt outside the
//! attempt's span. Every `tracing` event on the attempt's path goes through
//! [`in_attempt`]; a plain event there would lose the span's fields.

use std::sync::{Arc, Mutex, OnceLock};

use tracing::Span;

tokio::task_local! {
    static CURRENT: Arc<AttemptSpan>;
}

/// One attempt's span, made on first use.
pub struct AttemptSpan {
    make: Box<dyn Fn() -> Span + Send + Sync>,
    span: OnceLock<Span>,
    /// Fields recorded while the span was not made, given to it when it is:
    /// a line logged after the outcome is known carries the outcome.
    recorded: Mutex<Vec<(&'static str, &'static str)>>,
}

impl AttemptSpan {
    /// `make` builds the span (an `info_span!("attempt", …)`); it runs at
    /// most once, now if spans are exported.
    pub fn new(make: impl Fn() -> Span + Send + Sync + 'static) -> Arc<Self> {
        let attempt = Arc::new(AttemptSpan {
            make: Box::new(make),
            span: OnceLock::new(),
            recorded: Mutex::new(Vec::new()),
        });
        if super::exports_spans() {
            attempt.span();
        }
        attempt
    }

    /// The span, made now if it was not.
    fn span(&self) -> &Span {
        self.span.get_or_init(|| {
            let span = (self.make)();
            let recorded = self.recorded.lock().expect("never poisoned");
            for (field, value) in recorded.iter() {
                span.record(*field, *value);
            }
            span
        })
    }

    /// Records `value` on the span; if it is not made yet, when it is.
    pub fn record(&self, field: &'static str, value: &'static str) {
        let mut recorded = self.recorded.lock().expect("never poisoned");
        match self.span.get() {
            Some(span) => {
                span.record(field, value);
            }
            None => recorded.push((field, value)),
        }
    }

    /// Runs `attempt` with this as the current attempt.
    pub async fn run<F: Future>(self: Arc<Self>, attempt: F) -> F::Output {
        CURRENT.scope(self, attempt).await
    }
}

/// Runs `log` inside the current attempt's span, making the span if it is
/// the first line; outside any attempt, just runs it.
pub fn in_attempt<R>(log: impl FnOnce() -> R) -> R {
    match CURRENT.try_with(|attempt| attempt.span().clone()) {
        Ok(span) => span.in_scope(log),
        Err(_) => log(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    fn counted(made: &Arc<AtomicUsize>) -> Arc<AttemptSpan> {
        let made = made.clone();
        AttemptSpan::new(move || {
            made.fetch_add(1, Ordering::SeqCst);
            tracing::info_span!("attempt")
        })
    }

    #[tokio::test]
    async fn the_span_is_made_by_the_first_line_only() {
        let made = Arc::new(AtomicUsize::new(0));
        let quiet = counted(&made);
        quiet.clone().run(async {}).await;
        quiet.record("outcome", "delivered");
        assert_eq!(made.load(Ordering::SeqCst), 0, "no line, no span");

        let logged = counted(&made);
        let answer = logged
            .run(async { in_attempt(|| 1) + in_attempt(|| 2) })
            .await;
        assert_eq!(answer, 3);
        assert_eq!(
            made.load(Ordering::SeqCst),
            1,
            "made once, by the first line"
        );
    }

    /// A field recorded before the span is made is on it once it is.
    #[test]
    fn fields_recorded_before_the_span_is_made_reach_it() {
        use tracing_subscriber::layer::SubscriberExt;

        let (writer, lines) = Lines::new();
        let subscriber = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .with_writer(writer)
                .with_ansi(false),
        );
        tracing::subscriber::with_default(subscriber, || {
            let attempt = AttemptSpan::new(|| {
                tracing::info_span!("attempt", outcome = tracing::field::Empty)
            });
            attempt.record("outcome", "crashed");
            CURRENT.sync_scope(attempt, || {
                in_attempt(|| tracing::warn!("after the outcome"))
            });
        });
        let logged = lines.lock().expect("never poisoned").clone();
        assert!(
            logged.contains("attempt{outcome=\"crashed\"}") && logged.contains("after the outcome"),
            "{logged}"
        );
    }

    /// A writer the test reads back.
    #[derive(Clone)]
    struct Lines(Arc<Mutex<String>>);

    impl Lines {
        fn new() -> (Self, Arc<Mutex<String>>) {
            let lines = Arc::new(Mutex::new(String::new()));
            (Lines(lines.clone()), lines)
        }
    }

    impl std::io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .expect("never poisoned")
                .push_str(&String::from_utf8_lossy(buf));
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Lines {
        type Writer = Lines;

        fn make_writer(&'a self) -> Lines {
            self.clone()
        }
    }

    #[test]
    fn outside_an_attempt_a_line_is_just_logged() {
        assert_eq!(in_attempt(|| "logged"), "logged");
    }
}
