//! The dispatcher's workers: starting them (staged, as the scaler decides),
//! stopping idle ones, replacing stuck ones, changing the bounds, and the
//! shutdown that drains them.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::mpsc;

use super::{Dispatcher, SCALE_EVENTS_KEPT, WorkerEntry};
use crate::pool::ShutdownReport;
use crate::pool::cpu::CpuTimes;
use crate::pool::scaler::{self, Decision, Sample};
use crate::pool::stats::{ScaleEvent, WorkerMetrics, WorkerState};
use crate::pool::worker::{self, Event};
use crate::task::{FailureClass, Outcome, Task, TaskId};
use crate::time::format_time;

impl Dispatcher {
    pub(super) fn on_tick(&mut self) {
        let now = Instant::now();
        if !self.parked.is_empty() && self.registry.is_ready() {
            // The plugins present at start have all been tried: tasks that
            // waited for one go back to the queue (and fail as having no
            // plugin if theirs did not load).
            tracing::info!(
                tasks = self.parked.len(),
                "plugins loaded; queueing the tasks that waited for them"
            );
            std::mem::take(&mut self.parked)
                .into_iter()
                .for_each(|t| self.queue.push(t));
        }
        let sample = self.sample(now);
        // The next tick's peak counts from here.
        self.demand_peak = sample.demand();
        if let Some(m) = self.lifecycle.metrics() {
            let mut by_state = [("idle", 0), ("processing", 0), ("shutting_down", 0)];
            for w in self.workers.values() {
                let i = match w.state {
                    WorkerState::Idle => 0,
                    WorkerState::Processing => 1,
                    WorkerState::ShuttingDown | WorkerState::Stopped => 2,
                };
                by_state[i].1 += 1;
            }
            let limit = self
                .scaler
                .adaptive_limit()
                .unwrap_or(self.scaler.config().max_workers);
            m.pool(&by_state, sample.queued, limit);
            m.paced_backlog(self.pacer.backlog_len());
        }
        let decision = self.scaler.decide(&sample);
        self.arm_io_check(&sample);
        self.apply(&sample, decision);
        self.reap_idle(now);
        self.pacer.forget_quiet(now);
        if now.duration_since(self.last_health_check) >= self.config.health_check_interval {
            self.last_health_check = now;
            self.replace_stuck(now);
        }
    }

    /// The extra sample [`Self::arm_io_check`] asked for: only whether the
    /// tasks now wait on the network. Staged steps and the limit's windows
    /// keep the ticks' pace; asked between ticks too, a pool whose new
    /// workers kept starting tasks stepped 4 → 69 in 50 ms.
    pub(super) fn on_io_check(&mut self) {
        self.io_check = None;
        let sample = self.sample(Instant::now());
        let decision = self.scaler.decide_between_ticks(&sample);
        self.apply(&sample, decision);
    }

    /// Tasks waiting and every worker busy, not long enough yet for the
    /// scaler to tell whether they wait on the network: look again the
    /// moment they have been.
    fn arm_io_check(&mut self, sample: &Sample) {
        self.io_check = sample
            .busy_for
            .filter(|busy| sample.queued > 0 && *busy < scaler::WAITING_TASK)
            .map(|busy| sample.at + (scaler::WAITING_TASK - busy));
    }

    fn sample(&self, now: Instant) -> Sample {
        Sample {
            at: now,
            queued: self.queue.len(),
            in_flight: self.in_flight(),
            workers: self.live_workers(),
            completed: self.completed,
            cpu: CpuTimes::now(),
            busy_for: self.busy_for(now),
            starting: self.starting(),
            peak_demand: self.demand_peak,
        }
    }

    fn apply(&mut self, sample: &Sample, decision: Decision) {
        match decision {
            Decision::Hold => {}
            Decision::Grow { to, reason } => {
                self.record_scale(sample.workers, to, reason);
                for _ in sample.workers..to {
                    self.spawn_worker();
                }
            }
            Decision::Shrink { to, reason } => {
                let victims = self.longest_idle_then_busy(sample.workers - to);
                if !victims.is_empty() {
                    self.record_scale(sample.workers, sample.workers - victims.len(), reason);
                    victims.into_iter().for_each(|id| self.stop_worker(id));
                }
            }
        }
    }

    /// With no worker idle, how long the most recently assigned task has run.
    fn busy_for(&self, now: Instant) -> Option<Duration> {
        let live = || {
            self.workers
                .values()
                .filter(|w| w.state != WorkerState::ShuttingDown)
        };
        if live().any(|w| w.state != WorkerState::Processing) {
            return None;
        }
        live()
            .filter_map(|w| w.busy_since)
            .map(|since| now.duration_since(since))
            .min()
    }

    /// Live workers on their first task.
    fn starting(&self) -> usize {
        self.workers
            .values()
            .filter(|w| {
                w.state == WorkerState::Processing
                    && w.metrics.processed.load(Ordering::Relaxed) == 0
            })
            .count()
    }

    /// Takes a worker out of the pool and the router, keeping its counts
    /// in the pool's totals.
    pub(super) fn remove_worker(&mut self, id: u64) -> Option<WorkerEntry> {
        let worker = self.workers.remove(&id)?;
        self.in_flight = self.in_flight.saturating_sub(worker.assigned.len());
        self.router.forget(id);
        self.retired.processed += worker.metrics.processed.load(Ordering::Relaxed);
        self.retired.errors += worker.metrics.errors.load(Ordering::Relaxed);
        Some(worker)
    }

    fn reap_idle(&mut self, now: Instant) {
        let live: Vec<(u64, Option<Instant>)> = self
            .workers
            .iter()
            .filter(|(_, w)| w.state != WorkerState::ShuttingDown)
            .map(|(id, w)| {
                (
                    *id,
                    if w.state == WorkerState::Idle {
                        w.idle_since
                    } else {
                        None
                    },
                )
            })
            .collect();
        let since: Vec<Option<Instant>> = live.iter().map(|(_, s)| *s).collect();
        let reaped = scaler::reap(
            &since,
            now,
            self.config.max_idle,
            self.scaler.config().min_workers,
        );
        if reaped.is_empty() {
            return;
        }
        let before = live.len();
        self.record_scale(
            before,
            before - reaped.len(),
            format!(
                "{} worker(s) idle for {:?}",
                reaped.len(),
                self.config.max_idle
            ),
        );
        for index in reaped {
            self.stop_worker(live[index].0);
        }
    }

    /// A worker busy far past its tasks' deadlines is stuck: its tasks fail,
    /// it is aborted and replaced.
    fn replace_stuck(&mut self, now: Instant) {
        let stuck: Vec<u64> = self
            .workers
            .iter()
            .filter(|(_, w)| {
                w.busy_since
                    .is_some_and(|since| now.duration_since(since) > w.deadline)
            })
            .map(|(id, _)| *id)
            .collect();
        for id in stuck {
            let Some(worker) = self.remove_worker(id) else {
                continue;
            };
            worker.handle.abort();
            tracing::error!(
                worker = id,
                tasks = worker.assigned.len(),
                "worker stuck past its deadline; replacing it"
            );
            for id in worker.assigned {
                if let Some(task) = self.running_task(id) {
                    let outcome = Outcome::failed(
                        FailureClass::TimedOut,
                        "the worker running this task was stuck past its deadline and was replaced",
                    );
                    let store = self.lifecycle.store();
                    let attempt = store
                        .running_attempt(id)
                        .unwrap_or_else(|| store.next_attempt(id));
                    self.lifecycle.finish(&task, attempt, outcome, None, None);
                }
            }
            self.spawn_worker();
        }
    }

    /// The task behind `id` if it has not finished (from memory only: the
    /// dispatcher never waits for a disk read).
    fn running_task(&self, id: TaskId) -> Option<Arc<Task>> {
        self.lifecycle
            .store()
            .cached(id)
            .filter(|r| !r.state.is_finished())
            .map(|r| r.task)
    }

    /// Up to `n` workers to stop: idle ones first (longest idle first), then
    /// busy ones, which stop after their current assignment.
    fn longest_idle_then_busy(&self, n: usize) -> Vec<u64> {
        let mut victims = self.idle_longest(n);
        let busy = self
            .workers
            .iter()
            .filter(|(_, w)| w.state == WorkerState::Processing)
            .map(|(id, _)| *id);
        victims.extend(busy.take(n - victims.len()));
        victims
    }

    /// Up to `n` idle workers, longest idle first.
    fn idle_longest(&self, n: usize) -> Vec<u64> {
        let mut idle: Vec<(u64, Instant)> = self
            .workers
            .iter()
            .filter(|(_, w)| w.state == WorkerState::Idle)
            .filter_map(|(id, w)| w.idle_since.map(|s| (*id, s)))
            .collect();
        idle.sort_by_key(|&(_, since)| since);
        idle.into_iter().take(n).map(|(id, _)| id).collect()
    }

    pub(super) fn spawn_worker(&mut self) {
        let id = self.next_id;
        self.next_id += 1;
        let (inbox, inbox_rx) = mpsc::channel(1);
        let metrics = Arc::new(WorkerMetrics::new());
        let handle = tokio::spawn(worker::run(
            id,
            inbox_rx,
            self.events.clone(),
            self.context.clone(),
            metrics.clone(),
        ));
        let weight = self.config.weights.get(id as usize).copied();
        self.workers.insert(
            id,
            WorkerEntry {
                inbox: Some(inbox),
                handle,
                metrics,
                // Idle at once: its inbox holds an assignment until the
                // task runs, so the dispatch that follows a grow uses it
                // (a burst used to wait a tick for new workers).
                state: WorkerState::Idle,
                assigned: Vec::new(),
                busy_since: None,
                idle_since: Some(Instant::now()),
                deadline: Duration::ZERO,
                warm: HashSet::new(),
                weight,
            },
        );
    }

    /// Closes a worker's inbox; it exits when its current task is done.
    pub(super) fn stop_worker(&mut self, id: u64) {
        if let Some(w) = self.workers.get_mut(&id) {
            w.inbox = None;
            w.state = WorkerState::ShuttingDown;
        }
    }

    fn record_scale(&mut self, from: usize, to: usize, reason: String) {
        if let Some(m) = self.lifecycle.metrics() {
            m.scaled();
        }
        tracing::info!(from, to, "scaling: {reason}");
        self.scale_event_count += 1;
        if self.scale_events.len() == SCALE_EVENTS_KEPT {
            self.scale_events.pop_front();
        }
        let at = format_time(SystemTime::now());
        self.scale_events.push_back(ScaleEvent {
            at,
            from,
            to,
            reason,
        });
    }

    pub(super) fn scale(
        &mut self,
        min: Option<usize>,
        max: Option<usize>,
    ) -> Result<(usize, usize), String> {
        let current = self.scaler.config();
        let (min, max) = (
            min.unwrap_or(current.min_workers),
            max.unwrap_or(current.max_workers),
        );
        let slots = self.context.executor.sandbox().max_instances();
        super::super::check_bounds(min, max)?;
        super::super::check_slots(max, slots)?;
        self.context
            .budget
            .set_max_total(super::super::warm_slots(slots, max));
        tracing::info!(min, max, "manual scaling: new worker bounds");
        self.scaler.set_bounds(min, max);
        self.config.min_workers = min;
        self.config.max_workers = max;
        Ok((min, max))
    }

    pub(super) async fn shutdown(
        &mut self,
        events: &mut mpsc::UnboundedReceiver<Event>,
    ) -> ShutdownReport {
        let left_queued = self.queue.len() + self.pacer.backlog_len();
        let in_flight = self.in_flight();
        tracing::info!(in_flight, left_queued, "worker pool draining");
        let ids: Vec<u64> = self.workers.keys().copied().collect();
        ids.into_iter().for_each(|id| self.stop_worker(id));

        let deadline = tokio::time::Instant::now() + self.config.shutdown_timeout;
        while !self.workers.is_empty() {
            match tokio::time::timeout_at(deadline, events.recv()).await {
                Ok(Some(event)) => self.on_event(event),
                Ok(None) | Err(_) => break,
            }
        }
        let mut cancelled = 0;
        for (_, worker) in std::mem::take(&mut self.workers) {
            worker.handle.abort();
            for task in worker.assigned {
                if !self.lifecycle.store().is_finished(task) {
                    self.lifecycle.store().requeue(task);
                    cancelled += 1;
                }
            }
        }
        let report = ShutdownReport {
            finished: in_flight - cancelled,
            cancelled,
            left_queued,
        };
        tracing::info!(?report, "worker pool stopped");
        report
    }
}
