//! The scaler: a pure policy that turns load samples into scaling decisions.
//!
//! Load is `(queued + in flight) / workers`: queued work counts, not only busy
//! workers, so a backlog is seen before every worker is busy. The scaler
//! scales up once load has stayed above `target_load` for `scale_up_delay`
//! (promptly: the delay is short), to as many workers as would bring load
//! back to the target, in steps of at most `start_batch` per decision
//! (staged start). It scales down slowly: only after load has stayed below
//! `scale_down_load` for `scale_down_delay`, and then only as far as the
//! busiest moment of that window needs, counting the peaks between
//! samples (the dispatcher tracks them): a load of short bursts looks idle
//! to a sample that falls between two of them. Idle workers are reaped
//! separately, by the pool, after `max_idle`. Decisions never leave
//! `[min_workers, max_workers]`.
//!
//! Above both sits the adaptive [`ConcurrencyLimit`](super::limit): growth
//! never passes it, and when it falls below the pool's size the scaler
//! shrinks to it at once. Growth is staged: at most `start_batch` workers,
//! and at most as many as there already are (doubling), per decision, so a
//! burst of CPU-bound work does not overshoot by hundreds before the first
//! measurement.
//!
//! One case skips the stages: every worker has been on its task for
//! [`WAITING_TASK`] or longer while the CPU was mostly idle (below
//! [`IDLE_CPU`] busy) since a sample at least
//! [`MIN_CPU_WINDOW`](super::cpu::MIN_CPU_WINDOW) before. Such tasks wait
//! on the network (a platform answering in 100 ms), so each extra worker
//! finishes one more of them per round trip, and doubling from four would
//! spend most of a short burst growing. The pool then grows in one
//! decision to a worker for every task queued or in flight; the headroom
//! of `target_load` follows by the staged path if the load lasts.
//! CPU-bound work never takes this path: its tasks are short (a delivery
//! to a fast receiver takes about 0.1 ms) and it keeps the CPU busy, and
//! either is enough.
//! Both are needed: a CPU-bound burst's first tasks also run long (each
//! worker's first instance is new), with the CPU over 80 % busy (measured),
//! while deliveries waiting on a 100 ms platform left it 0–22 % busy.
//!
//! The scaler owns no clock: every sample carries its time, so tests drive it
//! with made-up instants.

use std::time::{Duration, Instant};

use super::cpu::{CpuHistory, CpuTimes};
use super::limit::{ConcurrencyLimit, Reading};

/// How long every worker must have been on its task, with the CPU idle,
/// for the tasks to count as waiting on I/O: 200 times a delivery to a
/// fast local receiver, a fifth of a platform that answers in 100 ms.
pub const WAITING_TASK: Duration = Duration::from_millis(20);
/// The machine-wide CPU busy fraction below which long tasks count as
/// waiting on I/O: at least half the CPU left idle.
pub const IDLE_CPU: f64 = 0.5;

/// The knobs the scaler reads.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScalerConfig {
    pub min_workers: usize,
    pub max_workers: usize,
    pub target_load: f64,
    pub scale_down_load: f64,
    pub scale_up_delay: Duration,
    pub scale_down_delay: Duration,
    /// Most workers added by one decision.
    pub start_batch: usize,
}

/// What the pool looked like at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    pub at: Instant,
    pub queued: usize,
    pub in_flight: usize,
    pub workers: usize,
    /// Tasks finished since the pool started.
    pub completed: u64,
    /// The machine's CPU counters, where they can be read.
    pub cpu: Option<CpuTimes>,
    /// With no worker idle, how long the most recently assigned task has
    /// been running: a lower bound on how long tasks take now.
    pub busy_for: Option<Duration>,
    /// Workers on their first task: making their instance, opening their
    /// connection.
    pub starting: usize,
    /// The most tasks queued and in flight at once since the previous
    /// sample ([`Sample::peak`] counts this one's too). Short bursts (a submit every 100 ms
    /// that workers finish in 20) fall between samples; scaling down by
    /// what samples alone saw shrank such a pool to `min_workers`, and the
    /// next burst grew it back.
    pub peak_demand: usize,
}

impl Sample {
    /// Tasks queued and in flight now.
    pub fn demand(&self) -> usize {
        self.queued + self.in_flight
    }

    pub fn load(&self) -> f64 {
        self.demand() as f64 / self.workers.max(1) as f64
    }

    /// Tasks queued and in flight at the busiest moment since the
    /// previous sample, this one's included.
    pub fn peak(&self) -> usize {
        self.peak_demand.max(self.demand())
    }

    /// The load at the busiest moment since the previous sample.
    pub fn peak_load(&self) -> f64 {
        self.peak() as f64 / self.workers.max(1) as f64
    }
}

/// A scaling decision and why it was taken.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Hold,
    Grow { to: usize, reason: String },
    Shrink { to: usize, reason: String },
}

/// Remembers how long load has been above or below its thresholds.
#[derive(Debug, Clone)]
pub struct Scaler {
    config: ScalerConfig,
    above_since: Option<Instant>,
    below_since: Option<Instant>,
    /// The most tasks queued and in flight at once in the samples since
    /// `below_since`: how far a step down may go.
    below_peak: usize,
    limit: ConcurrencyLimit,
    /// The CPU counters of recent samples, to measure the CPU over a span
    /// long enough to read.
    cpu: CpuHistory,
    /// Whether the pool last grew to demand because its tasks wait on I/O:
    /// its new workers' start-up then busies the CPU for a while, and the
    /// limit must not read that as work (see [`super::limit`]). Staged
    /// growth clears it: CPU-bound work grows that way, and its start-up
    /// is part of what the limit measures.
    grown_for_io: bool,
}

impl Scaler {
    pub fn new(config: ScalerConfig) -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Scaler::with_cores(config, cores)
    }

    /// For a machine with `cores` cores (the adaptive limit's climb
    /// starts from a number per core).
    fn with_cores(config: ScalerConfig, cores: usize) -> Self {
        Scaler {
            config,
            above_since: None,
            below_since: None,
            below_peak: 0,
            limit: ConcurrencyLimit::new(config.min_workers, config.max_workers, cores),
            cpu: CpuHistory::default(),
            grown_for_io: false,
        }
    }

    /// The adaptive limit on workers, when it is below `max_workers`.
    pub fn adaptive_limit(&self) -> Option<usize> {
        self.limit.is_adaptive().then(|| self.limit.get())
    }

    pub fn config(&self) -> &ScalerConfig {
        &self.config
    }

    /// Changes bounds at run time (`notifyhub scale`).
    pub fn set_bounds(&mut self, min: usize, max: usize) {
        self.config.min_workers = min;
        self.config.max_workers = max.max(min);
        self.limit.set_bounds(min, max);
    }

    /// The worker count `demand` (tasks queued and in flight) calls for at
    /// `load` tasks a worker, within bounds.
    fn wanted(&self, demand: usize, load: f64) -> usize {
        let wanted = (demand as f64 / load).ceil() as usize;
        wanted.min(self.limit.get()).clamp(
            self.config.min_workers.max(1),
            self.config.max_workers.max(1),
        )
    }

    /// Why the tasks of `sample` wait on I/O, if they do (see the module
    /// comment): every worker busy for [`WAITING_TASK`] or longer, the CPU
    /// mostly idle since a sample long enough ago to read it, and the
    /// adaptive limit open (it found the work CPU-bound otherwise).
    fn waiting_on_io(&self, sample: &Sample, previous: Option<CpuTimes>) -> Option<String> {
        let busy_for = sample.busy_for.filter(|b| *b >= WAITING_TASK)?;
        let cpu = match sample.cpu {
            // No counters: scale by demand, as the limit does.
            None => "an unknown share".to_string(),
            Some(now) => {
                let busy = now.busy_since(previous?)?;
                if busy >= IDLE_CPU {
                    return None;
                }
                format!("{:.0}%", busy * 100.0)
            }
        };
        if self.limit.is_adaptive() {
            return None;
        }
        Some(format!(
            "every worker busy for {} ms or more with CPU {cpu} busy: the tasks wait on I/O, so growing to demand ({} queued, {} in flight)",
            busy_for.as_millis(),
            sample.queued,
            sample.in_flight
        ))
    }

    /// To a worker for every task queued or in flight, if the tasks wait
    /// on I/O (see the module comment).
    fn grow_for_io(&mut self, sample: &Sample, previous_cpu: Option<CpuTimes>) -> Option<Decision> {
        // A worker for every task there is, no more: the headroom
        // `target_load` leaves is for a load that lasts, and the staged
        // path adds it if this one does.
        let to = self.wanted(sample.demand(), 1.0);
        if to <= sample.workers {
            return None;
        }
        let reason = self.waiting_on_io(sample, previous_cpu)?;
        self.grown_for_io = true;
        // Headroom on top waits for the load to stay above target for
        // `scale_up_delay` from here.
        self.above_since = None;
        Some(Decision::Grow { to, reason })
    }

    /// A sample between ticks, taken the moment a burst's tasks may count
    /// as waiting on I/O: that growth or nothing. Every other decision
    /// keeps the ticks' pace (a staged step must be measured before the
    /// next), and the CPU reading is not kept as a baseline.
    pub fn decide_between_ticks(&mut self, sample: &Sample) -> Decision {
        let c = self.config;
        let in_bounds =
            (c.min_workers..=c.max_workers.min(self.limit.get())).contains(&sample.workers);
        if !in_bounds || sample.load() <= c.target_load {
            return Decision::Hold;
        }
        let previous_cpu = self.cpu.baseline(sample.at);
        self.grow_for_io(sample, previous_cpu)
            .unwrap_or(Decision::Hold)
    }

    pub fn decide(&mut self, sample: &Sample) -> Decision {
        let c = self.config;
        let previous_cpu = self.cpu.baseline(sample.at);
        if let Some(cpu) = sample.cpu {
            self.cpu.push(sample.at, cpu);
        }
        // Bounds first: a change of bounds takes effect at once.
        if sample.workers < c.min_workers {
            let to = (sample.workers + c.start_batch).min(c.min_workers);
            return Decision::Grow {
                to,
                reason: format!("below min_workers ({})", c.min_workers),
            };
        }
        if sample.workers > c.max_workers {
            return Decision::Shrink {
                to: c.max_workers,
                reason: format!("above max_workers ({})", c.max_workers),
            };
        }

        let change = self.limit.observe(Reading {
            at: sample.at,
            completed: sample.completed,
            cpu: sample.cpu,
            workers: sample.workers,
            starting: if self.grown_for_io {
                sample.starting
            } else {
                0
            },
            backlog: sample.queued > 0,
        });
        let limit = self.limit.get();
        if sample.workers > limit.max(c.min_workers) {
            let reason = change.map_or_else(
                || format!("above the adaptive limit of {limit}"),
                |c| c.reason,
            );
            return Decision::Shrink {
                to: limit.max(c.min_workers),
                reason,
            };
        }
        let load = sample.load();
        if load > c.target_load {
            self.below_since = None;
            let since = *self.above_since.get_or_insert(sample.at);
            if let Some(grow) = self.grow_for_io(sample, previous_cpu) {
                return grow;
            }
            let wanted = self.wanted(sample.demand(), c.target_load);
            if sample.at.duration_since(since) >= c.scale_up_delay && wanted > sample.workers {
                self.grown_for_io = false;
                let step = c.start_batch.min(sample.workers.max(1));
                let to = wanted.min(sample.workers + step);
                return Decision::Grow {
                    to,
                    reason: match change {
                        Some(change) => change.reason,
                        None => format!(
                            "load {load:.2} above target {:.2} for {:?} ({} queued, {} in flight)",
                            c.target_load,
                            sample.at.duration_since(since),
                            sample.queued,
                            sample.in_flight
                        ),
                    },
                };
            }
        } else if sample.peak_load() < c.scale_down_load {
            // Down only when even the busiest moment since the last sample
            // was light, and as far as the busiest of the window needs.
            self.above_since = None;
            let peak = sample.peak();
            let since = *self.below_since.get_or_insert_with(|| {
                self.below_peak = 0;
                sample.at
            });
            self.below_peak = self.below_peak.max(peak);
            let wanted = self.wanted(self.below_peak, c.target_load);
            if sample.at.duration_since(since) >= c.scale_down_delay && wanted < sample.workers {
                // Start a new window: the next step down waits again.
                self.below_since = Some(sample.at);
                self.below_peak = peak;
                return Decision::Shrink {
                    to: wanted,
                    reason: format!(
                        "load {load:.2} below {:.2} for {:?}",
                        c.scale_down_load, c.scale_down_delay
                    ),
                };
            }
        } else {
            self.above_since = None;
            self.below_since = None;
        }
        Decision::Hold
    }
}

/// Which idle workers to reap: those idle for `max_idle` or longer, oldest
/// first, without going below `min_workers`. `idle_since[i]` is `None` for a
/// busy worker.
pub fn reap(
    idle_since: &[Option<Instant>],
    now: Instant,
    max_idle: Duration,
    min_workers: usize,
) -> Vec<usize> {
    let mut candidates: Vec<(usize, Instant)> = idle_since
        .iter()
        .enumerate()
        .filter_map(|(i, since)| {
            since
                .filter(|s| now.duration_since(*s) >= max_idle)
                .map(|s| (i, s))
        })
        .collect();
    candidates.sort_by_key(|&(_, since)| since);
    let spare = idle_since.len().saturating_sub(min_workers);
    candidates.into_iter().take(spare).map(|(i, _)| i).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ScalerConfig {
        ScalerConfig {
            min_workers: 2,
            max_workers: 100,
            target_load: 0.7,
            scale_down_load: 0.35,
            scale_up_delay: Duration::from_millis(200),
            scale_down_delay: Duration::from_secs(30),
            start_batch: 16,
        }
    }

    fn sample(at: Instant, queued: usize, in_flight: usize, workers: usize) -> Sample {
        Sample {
            at,
            queued,
            in_flight,
            workers,
            completed: 0,
            cpu: None,
            busy_for: None,
            starting: 0,
            peak_demand: 0,
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn steps_up_after_the_delay_in_staged_batches() {
        let t0 = Instant::now();
        let mut s = Scaler::with_cores(config(), 2);
        // Load 50 on 4 workers: above target, but not for long enough yet.
        assert_eq!(s.decide(&sample(t0, 46, 4, 4)), Decision::Hold);
        assert_eq!(s.decide(&sample(t0 + ms(100), 46, 4, 4)), Decision::Hold);
        let Decision::Grow { to, reason } = s.decide(&sample(t0 + ms(200), 46, 4, 4)) else {
            panic!("expected growth")
        };
        assert_eq!(to, 4 + 4, "one staged step at a time, doubling at most");
        assert!(reason.contains("above target"), "{reason}");
        // Still loaded: the next step follows at once, at most start_batch.
        let Decision::Grow { to, .. } = s.decide(&sample(t0 + ms(250), 30, 20, 20)) else {
            panic!("expected growth")
        };
        assert_eq!(to, 36);
    }

    /// A sample with every worker busy for `busy_for`, 2,000 tasks queued,
    /// and the machine's CPU counters at `busy` of `total` ticks.
    fn loaded(at: Instant, busy_for: Duration, busy: u64, total: u64) -> Sample {
        Sample {
            cpu: Some(CpuTimes {
                busy,
                total,
                quota: None,
            }),
            busy_for: Some(busy_for),
            starting: 0,
            ..sample(at, 2000, 4, 4)
        }
    }

    #[test]
    fn grows_to_demand_at_once_when_tasks_wait_on_io() {
        let t0 = Instant::now();
        let mut s = Scaler::with_cores(config(), 2);
        s.decide(&loaded(t0, ms(5), 0, 0));
        // 10 % busy since.
        let Decision::Grow { to, reason } = s.decide(&loaded(t0 + ms(50), ms(50), 100, 1000))
        else {
            panic!("expected growth")
        };
        assert_eq!(
            to, 100,
            "demand, within max_workers, with no delay or stages"
        );
        assert!(reason.contains("wait on I/O"), "{reason}");
    }

    /// The dispatcher's extra sample, 15 ms after a tick, reads the CPU from
    /// the tick before: over 15 ms the counters moved by one clock tick,
    /// which reads as 100 % busy; over 65 ms they read 30 %.
    #[test]
    fn a_sample_between_ticks_reads_the_cpu_over_a_readable_span() {
        let t0 = Instant::now();
        let mut s = Scaler::with_cores(config(), 2);
        s.decide(&loaded(t0, ms(0), 0, 0));
        assert_eq!(
            s.decide(&loaded(t0 + ms(50), ms(5), 300, 1000)),
            Decision::Hold,
            "not waiting long enough yet"
        );
        let Decision::Grow { to, reason } = s.decide(&loaded(t0 + ms(65), ms(20), 301, 1001))
        else {
            panic!("expected growth")
        };
        assert_eq!(to, 100);
        assert!(reason.contains("CPU 30% busy"), "{reason}");
    }

    /// Grown because its tasks wait on I/O, the pool gets a worker a task:
    /// 34, not the 49 that would bring the load to the target. Headroom
    /// follows only if the load stays above the target for the delay.
    #[test]
    fn grows_for_io_to_demand_without_headroom() {
        let t0 = Instant::now();
        let mut s = Scaler::with_cores(config(), 2);
        let waiting = |at, busy, total| Sample {
            queued: 30,
            ..loaded(at, ms(50), busy, total)
        };
        s.decide(&waiting(t0, 0, 0));
        let grown = s.decide(&waiting(t0 + ms(50), 100, 1000));
        assert!(matches!(grown, Decision::Grow { to: 34, .. }), "{grown:?}");
        // The load stays above target on 34 workers: the delay first, then
        // a staged step.
        // (Short tasks now: the staged path alone.)
        let busy = |at| Sample {
            workers: 34,
            in_flight: 34,
            queued: 10,
            ..loaded(at, ms(1), 200, 2000)
        };
        assert_eq!(s.decide(&busy(t0 + ms(100))), Decision::Hold);
        assert_eq!(s.decide(&busy(t0 + ms(250))), Decision::Hold);
        let Decision::Grow { to, .. } = s.decide(&busy(t0 + ms(300))) else {
            panic!("expected a staged step")
        };
        assert_eq!(to, 50, "16 more, start_batch");
    }

    /// Between ticks only the growth for I/O is decided: a staged step due
    /// by the load waits for the tick.
    #[test]
    fn between_ticks_only_io_grows() {
        let t0 = Instant::now();
        let mut s = Scaler::with_cores(config(), 2);
        // Short tasks, loaded for longer than the delay: a staged step,
        // but not between ticks.
        s.decide(&loaded(t0, ms(1), 0, 0));
        assert_eq!(
            s.decide_between_ticks(&loaded(t0 + ms(300), ms(1), 100, 1000)),
            Decision::Hold
        );
        assert!(matches!(
            s.decide(&loaded(t0 + ms(300), ms(1), 100, 1000)),
            Decision::Grow { to: 8, .. }
        ));
        // Tasks 20 ms on their worker, the CPU idle: growth to demand.
        let mut s = Scaler::with_cores(config(), 2);
        s.decide(&loaded(t0, ms(5), 0, 0));
        assert!(matches!(
            s.decide_between_ticks(&loaded(t0 + ms(35), ms(20), 50, 700)),
            Decision::Grow { to: 100, .. }
        ));
    }

    /// A submit every 100 ms that workers finish in 20: the samples fall
    /// between the bursts and see almost nothing in flight, but the bursts'
    /// peaks keep the pool, however long it lasts.
    #[test]
    fn short_bursts_between_samples_keep_the_pool() {
        let t0 = Instant::now();
        let mut s = Scaler::with_cores(config(), 2);
        for i in 0..=700u32 {
            let quiet = Sample {
                peak_demand: 36,
                ..sample(t0 + ms(50) * i, 0, 1, 40)
            };
            assert_eq!(s.decide(&quiet), Decision::Hold, "sample {i}");
        }
    }

    /// Scaling down goes as far as the busiest moment of the window needs.
    #[test]
    fn steps_down_to_the_busiest_moment_of_the_window() {
        let t0 = Instant::now();
        let mut s = Scaler::with_cores(config(), 2);
        let mut last = Decision::Hold;
        for i in 0..=620u32 {
            // 2 in flight at every sample; once, 10 at once between two.
            let peak_demand = if i == 300 { 10 } else { 0 };
            last = s.decide(&Sample {
                peak_demand,
                ..sample(t0 + ms(50) * i, 0, 2, 50)
            });
            if last != Decision::Hold {
                break;
            }
        }
        let Decision::Shrink { to, .. } = last else {
            panic!("expected shrinking, got {last:?}")
        };
        assert_eq!(to, 15, "10 at once at target 0.7 need 15 workers, not 3");
    }

    /// After growing to demand for tasks that wait on I/O, the new workers'
    /// start-up (both cores busy, most workers on their first task) leaves
    /// the pool as it is; the same readings after staged growth (CPU-bound
    /// work) start the limit's climb.
    #[test]
    fn the_start_up_of_a_growth_for_io_is_not_taken_for_work() {
        let t0 = Instant::now();
        let starting = |at, busy, total| Sample {
            starting: 90,
            ..loaded(at, ms(40), busy, total)
        };
        let mut s = Scaler::with_cores(config(), 2);
        s.decide(&loaded(t0, ms(5), 0, 0));
        let grown = s.decide(&loaded(t0 + ms(50), ms(50), 100, 1000));
        assert!(matches!(grown, Decision::Grow { to: 100, .. }), "{grown:?}");
        for i in 1..=8u32 {
            let at = t0 + ms(50) + ms(100) * i;
            let decision = s.decide(&Sample {
                workers: 100,
                in_flight: 100,
                ..starting(at, 100 + 990 * u64::from(i), 1000 + 1000 * u64::from(i))
            });
            assert!(
                !matches!(decision, Decision::Shrink { .. }),
                "shrank while starting: {decision:?}"
            );
        }
        assert_eq!(s.adaptive_limit(), None);

        // Staged growth, then the same readings: the limit climbs from 16.
        let mut s = Scaler::with_cores(config(), 2);
        let mut shrank = false;
        for i in 0..=8u32 {
            let at = t0 + ms(100) * i;
            let decision = s.decide(&Sample {
                workers: 100,
                in_flight: 100,
                ..starting(at, 990 * u64::from(i), 1000 * u64::from(i))
            });
            shrank |= matches!(decision, Decision::Shrink { to: 16, .. });
        }
        assert!(shrank, "CPU-bound work is still measured");
    }

    #[test]
    fn short_tasks_or_a_busy_cpu_keep_the_stages() {
        let t0 = Instant::now();
        // Short tasks, idle CPU: the delay first.
        let mut s = Scaler::with_cores(config(), 2);
        s.decide(&loaded(t0, ms(1), 0, 0));
        assert_eq!(
            s.decide(&loaded(t0 + ms(50), ms(1), 100, 1000)),
            Decision::Hold
        );
        // Long tasks, CPU 80 % busy: the delay first.
        let mut s = Scaler::with_cores(config(), 2);
        s.decide(&loaded(t0, ms(50), 0, 0));
        assert_eq!(
            s.decide(&loaded(t0 + ms(50), ms(50), 800, 1000)),
            Decision::Hold
        );
        // Long tasks, CPU 95 % then 99 % busy: the delay, then one stage.
        let mut s = Scaler::with_cores(config(), 2);
        s.decide(&loaded(t0, ms(50), 0, 0));
        assert_eq!(
            s.decide(&loaded(t0 + ms(50), ms(50), 950, 1000)),
            Decision::Hold
        );
        let Decision::Grow { to, .. } = s.decide(&loaded(t0 + ms(250), ms(250), 1940, 2000)) else {
            panic!("expected growth")
        };
        assert_eq!(to, 8, "a staged step, doubling");
    }

    #[test]
    fn grows_only_as_far_as_demand_needs() {
        let t0 = Instant::now();
        let mut s = Scaler::with_cores(config(), 2);
        s.decide(&sample(t0, 6, 4, 12));
        let Decision::Grow { to, .. } = s.decide(&sample(t0 + ms(300), 6, 4, 12)) else {
            panic!("expected growth")
        };
        assert_eq!(to, 15, "10 tasks at target 0.7 need 15 workers");
    }

    #[test]
    fn a_short_spike_does_not_scale() {
        let t0 = Instant::now();
        let mut s = Scaler::with_cores(config(), 2);
        assert_eq!(s.decide(&sample(t0, 20, 4, 4)), Decision::Hold);
        // Load drops back between target and scale-down: the window resets.
        assert_eq!(s.decide(&sample(t0 + ms(100), 0, 2, 4)), Decision::Hold);
        assert_eq!(s.decide(&sample(t0 + ms(250), 20, 4, 4)), Decision::Hold);
    }

    #[test]
    fn steps_down_slowly_with_hysteresis() {
        let t0 = Instant::now();
        let mut s = Scaler::with_cores(config(), 2);
        // Load 0.1 on 50 workers.
        assert_eq!(s.decide(&sample(t0, 0, 5, 50)), Decision::Hold);
        assert_eq!(
            s.decide(&sample(t0 + Duration::from_secs(29), 0, 5, 50)),
            Decision::Hold
        );
        let Decision::Shrink { to, .. } = s.decide(&sample(t0 + Duration::from_secs(30), 0, 5, 50))
        else {
            panic!("expected shrinking")
        };
        assert_eq!(to, 8, "5 in flight at target 0.7 need 8 workers");
        // Load 0.5 is between the thresholds: hold either way.
        let t1 = t0 + Duration::from_secs(31);
        assert_eq!(s.decide(&sample(t1, 0, 4, 8)), Decision::Hold);
        assert_eq!(
            s.decide(&sample(t1 + Duration::from_secs(60), 0, 4, 8)),
            Decision::Hold
        );
    }

    #[test]
    fn never_leaves_the_bounds() {
        let t0 = Instant::now();
        let mut s = Scaler::with_cores(config(), 2);
        // Idle: shrinks to min, never below.
        s.decide(&sample(t0, 0, 0, 10));
        let Decision::Shrink { to, .. } = s.decide(&sample(t0 + Duration::from_secs(31), 0, 0, 10))
        else {
            panic!()
        };
        assert_eq!(to, 2);
        assert_eq!(
            s.decide(&sample(t0 + Duration::from_secs(99), 0, 0, 2)),
            Decision::Hold
        );
        // Flooded: grows to max, never above.
        s.decide(&sample(t0, 10_000, 100, 100));
        assert_eq!(
            s.decide(&sample(t0 + ms(500), 10_000, 100, 100)),
            Decision::Hold
        );
        // New bounds apply at once, in both directions.
        s.set_bounds(10, 50);
        assert!(matches!(
            s.decide(&sample(t0, 0, 0, 100)),
            Decision::Shrink { to: 50, .. }
        ));
        assert!(matches!(
            s.decide(&sample(t0, 0, 0, 3)),
            Decision::Grow { to: 10, .. }
        ));
    }

    #[test]
    fn reaps_the_longest_idle_down_to_min() {
        let t0 = Instant::now();
        let now = t0 + Duration::from_secs(100);
        let idle = [
            Some(t0),                           // idle 100 s
            None,                               // busy
            Some(t0 + Duration::from_secs(90)), // idle 10 s
            Some(t0 + Duration::from_secs(20)), // idle 80 s
        ];
        assert_eq!(reap(&idle, now, Duration::from_secs(60), 1), vec![0, 3]);
        assert_eq!(reap(&idle, now, Duration::from_secs(60), 3), vec![0]);
        assert!(reap(&idle, now, Duration::from_secs(60), 4).is_empty());
    }
}
