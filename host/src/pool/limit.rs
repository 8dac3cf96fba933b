//! The adaptive concurrency limit: how many workers actually help.
//!
//! Load thresholds alone grow the pool to whatever the backlog asks for.
//! That is right when deliveries wait on the network (a platform that takes
//! 100 ms to answer: hundreds in flight finish hundreds of times sooner) and
//! wrong when they are bound by this machine's CPU (a local receiver that
//! answers at once: past a few workers per core, more only add instances,
//! connections and contention — measured: 512 workers ran a quarter of what
//! 16 did). The limit tells the two apart by watching, in windows of
//! [`WINDOW`], while tasks are waiting:
//!
//! - **CPU left idle** (machine-wide busy below [`SATURATED`]): workers are
//!   waiting, not computing, so the limit is open — the pool grows with the
//!   backlog up to `max_workers`. A limit found by climbing opens again only
//!   after [`REOPEN_AFTER`] such windows in a row: one quiet window on a
//!   saturated machine (a pause in the load, a burst of slow answers) must
//!   not swing the pool from a few dozen workers to hundreds and back;
//! - **CPU saturated**: it climbs — from [`START_PER_CORE`] workers per core, doubling
//!   each window — for as long as each step raises completed tasks per
//!   second by at least [`GAIN`], or leaves CPU to spare with tasks
//!   waiting (the step's workers do not use the machine up yet). The first step that does not ends the
//!   climb: undone if it lowered throughput by as much, kept if it is
//!   within that of the step before (past the knee the curve is flat, more
//!   workers there cost little, and a window's noise made a climb that
//!   undid ties settle one step short: 8 workers where 16 and 64 ran 10 %
//!   and 15 % more). The limit holds for [`SETTLE`] before it probes again;
//!   a probe's step is kept only if it clearly gains, or probes would walk
//!   the limit up a flat curve.
//!   Steps double because a step's gain must stand out of the noise of a
//!   150 ms window on a busy machine: measured here, steps of half again
//!   from two per core settled at 4 workers where 64 ran 1.7× faster.
//!
//! After the pool grew to demand because its tasks wait on I/O (the
//! scaler's direct evidence: every worker busy for a while with the CPU
//! idle), a window in which a quarter or more of the pool was on its first
//! task ([`STARTING_SHARE`]) gives no verdict: it measures that growth
//! (instances made, connections opened), not the work. Growing from 4 to
//! 1,024 workers for deliveries to a platform that answers in 100 ms kept
//! both cores busy for a third of a second while the new workers started;
//! taken for CPU-bound work, that window cut the pool to 8 workers, and
//! the rest of the burst waited most of a second to be let back in
//! (`cargo bench -p notifyhub --bench pool`). The scaler reports no
//! workers starting after staged growth, which is how CPU-bound work
//! grows: there the start-up is part of the work's cost, and delaying the
//! verdict while the pool doubled let it overshoot before the climb
//! (`--bench scaling`, fast receiver: default ÷ best 0.86–0.91).
//!
//! This is hill climbing on throughput gated by a saturation signal, the
//! way TCP Vegas and Netflix's gradient limiter grow while the measured
//! rate (or latency) says the extra concurrency is used, and back off when
//! it says it is queueing (docs/architecture.md lists the sources). Every
//! change comes with its reason, which the pool logs and `status` shows.
//! The limit owns no clock: windows carry their instants, so tests drive it
//! with made-up ones.

use std::time::{Duration, Instant};

use super::cpu::CpuTimes;

/// How long one measurement lasts.
pub const WINDOW: Duration = Duration::from_millis(150);
/// Machine-wide CPU busy fraction from which more workers cannot help.
pub const SATURATED: f64 = 0.85;
/// The throughput gain a step up must bring to be kept.
pub const GAIN: f64 = 1.05;
/// How long a settled limit holds before it probes upward again.
pub const SETTLE: Duration = Duration::from_secs(10);
/// Windows in a row with CPU to spare before a found limit opens again.
pub const REOPEN_AFTER: u32 = 4;
/// Workers per core the climb starts from. Deliveries that the CPU bounds
/// still wait a little (on the platform's answer, the journal's commit),
/// so a core runs several at once before it is used up: on this project's
/// 2-core machine a fixed pool of 16 delivered 26.2–26.8k webhooks/s where
/// 8 delivered 24.0–25.0k (`cargo bench -p notifyhub --bench peers`), and
/// `--bench scaling` has found 16 or more best in every run it kept. From
/// four per core the climb spent most of a short burst below the knee.
pub const START_PER_CORE: usize = 8;
/// The share of the pool on its first task from which a window measures
/// start-up, not the work.
pub const STARTING_SHARE: f64 = 0.25;

/// What the pool looked like when a window closed or opened.
#[derive(Debug, Clone, Copy)]
pub struct Reading {
    pub at: Instant,
    /// Tasks finished since the pool started.
    pub completed: u64,
    pub cpu: Option<CpuTimes>,
    pub workers: usize,
    /// Workers on their first task, when their start-up is not part of
    /// the work (the scaler says when).
    pub starting: usize,
    /// Whether tasks were waiting for a worker.
    pub backlog: bool,
}

impl Reading {
    /// Whether so much of the pool was starting that the CPU measured its
    /// start-up.
    fn starting_up(&self) -> bool {
        self.starting > 0 && self.starting as f64 >= self.workers as f64 * STARTING_SHARE
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    /// Bounded by demand and `max_workers` only.
    Open,
    /// Raising the limit step by step; the last step's size and rate.
    /// `probing`: from a settled limit, which a step must clearly beat (a
    /// tie kept there would ratchet the limit up a flat curve, probe after
    /// probe).
    Climbing {
        previous: Option<(usize, f64)>,
        probing: bool,
    },
    /// Found; probing again after `until`.
    Settled { until: Instant },
}

/// A changed limit, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub limit: usize,
    pub reason: String,
}

#[derive(Debug, Clone)]
pub struct ConcurrencyLimit {
    min: usize,
    max: usize,
    cores: usize,
    limit: usize,
    state: State,
    window: Option<Reading>,
    /// Whether every reading since the window opened had a backlog.
    backlogged: bool,
    /// Windows in a row, with tasks waiting, that left CPU to spare.
    unsaturated: u32,
}

impl ConcurrencyLimit {
    pub fn new(min: usize, max: usize, cores: usize) -> Self {
        ConcurrencyLimit {
            min: min.max(1),
            max: max.max(1),
            cores: cores.max(1),
            limit: max.max(1),
            state: State::Open,
            window: None,
            backlogged: true,
            unsaturated: 0,
        }
    }

    /// The current limit on workers.
    pub fn get(&self) -> usize {
        self.limit
    }

    /// Whether the limit is below `max_workers` because of what it measured.
    pub fn is_adaptive(&self) -> bool {
        self.state != State::Open
    }

    pub fn set_bounds(&mut self, min: usize, max: usize) {
        self.min = min.max(1);
        self.max = max.max(self.min);
        self.limit = self.limit.clamp(self.min, self.max);
        if self.state == State::Open {
            self.limit = self.max;
        }
    }

    fn step_up(&self, from: usize) -> usize {
        from.saturating_mul(2).max(from + 2).min(self.max)
    }

    /// Takes a reading; returns a new limit when a window closed with one.
    pub fn observe(&mut self, now: Reading) -> Option<Change> {
        self.backlogged &= now.backlog;
        let start = *self.window.get_or_insert(now);
        if now.at.duration_since(start.at) < WINDOW {
            return None;
        }
        let backlogged = std::mem::replace(&mut self.backlogged, now.backlog);
        self.window = Some(now);
        // With nothing waiting, throughput measures demand, not capacity.
        if !backlogged {
            return None;
        }
        if start.starting_up() || now.starting_up() {
            return None;
        }
        let elapsed = now.at.duration_since(start.at).as_secs_f64();
        let rate = now.completed.saturating_sub(start.completed) as f64 / elapsed;
        let busy = now.cpu.zip(start.cpu).and_then(|(n, s)| n.busy_since(s));
        let saturated = busy.is_some_and(|b| b >= SATURATED);
        let percent = busy.map_or("?".to_string(), |b| format!("{:.0}%", b * 100.0));
        if !saturated {
            match self.state {
                State::Open => return None,
                // Not at its step yet (workers starting or draining): no
                // verdict.
                State::Climbing { .. }
                    if now.workers != self.limit || start.workers != self.limit =>
                {
                    return None;
                }
                _ => {}
            }
            self.unsaturated += 1;
            if self.unsaturated >= REOPEN_AFTER || self.limit >= self.max {
                self.unsaturated = 0;
                self.state = State::Open;
                return self.change(
                    self.max,
                    format!(
                        "CPU {percent} busy with tasks waiting, {REOPEN_AFTER} windows in a row: the work waits on I/O, so concurrency follows demand"
                    ),
                );
            }
            return match self.state {
                // This step's workers leave CPU to spare while tasks wait:
                // the next step may use it. Waiting for a saturated window
                // here stalled the climb at its first step, which on a
                // machine shared with the platform's side left the CPU at
                // 83 %, until the limit reopened and the pool grew to
                // hundreds, saturated, and started over from the bottom.
                State::Climbing { probing, .. } => self.climb_on(
                    rate,
                    probing,
                    &format!(" with CPU {percent} busy and tasks waiting"),
                ),
                _ => None,
            };
        }
        self.unsaturated = 0;
        match self.state {
            State::Open => {
                self.state = State::Climbing {
                    previous: None,
                    probing: false,
                };
                let start = (self.cores * START_PER_CORE).clamp(self.min, self.max);
                self.change(
                    start,
                    format!("CPU {percent} busy with tasks waiting: finding how many workers help, from {start}"),
                )
            }
            State::Settled { until } if now.at >= until => {
                self.state = State::Climbing {
                    previous: Some((self.limit, rate)),
                    probing: true,
                };
                let up = self.step_up(self.limit);
                self.change(
                    up,
                    format!(
                        "probing: {} workers ran {rate:.0} tasks/s; trying {up}",
                        self.limit
                    ),
                )
            }
            State::Settled { .. } => None,
            // Not at the limit yet (workers starting or draining): no verdict.
            State::Climbing { .. } if now.workers != self.limit || start.workers != self.limit => {
                None
            }
            State::Climbing { previous, probing } => match previous {
                Some((size, before))
                    if rate * GAIN < before || (probing && rate < before * GAIN) =>
                {
                    self.state = State::Settled {
                        until: now.at + SETTLE,
                    };
                    self.change(
                        size,
                        format!(
                            "{} workers ran {rate:.0} tasks/s, no more than {size} did ({before:.0}/s): settling at {size}",
                            self.limit
                        ),
                    )
                }
                Some((size, before)) if rate < before * GAIN => {
                    self.state = State::Settled {
                        until: now.at + SETTLE,
                    };
                    Some(Change {
                        limit: self.limit,
                        reason: format!(
                            "{} workers ran {rate:.0} tasks/s, about what {size} did ({before:.0}/s): settling at {}",
                            self.limit, self.limit
                        ),
                    })
                }
                _ if self.limit >= self.max => None,
                _ => self.climb_on(rate, probing, ""),
            },
        }
    }

    /// The climb's next step from the current limit, which ran `rate`
    /// tasks/s (`detail` says more of that step).
    fn climb_on(&mut self, rate: f64, probing: bool, detail: &str) -> Option<Change> {
        self.state = State::Climbing {
            previous: Some((self.limit, rate)),
            probing,
        };
        let up = self.step_up(self.limit);
        self.change(
            up,
            format!(
                "{} workers ran {rate:.0} tasks/s{detail}; trying {up}",
                self.limit
            ),
        )
    }

    fn change(&mut self, limit: usize, reason: String) -> Option<Change> {
        let limit = limit.clamp(self.min, self.max);
        if limit == self.limit {
            return None;
        }
        self.limit = limit;
        Some(Change { limit, reason })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Readings 150 ms apart; `rate(workers)` tasks/s, CPU `busy`.
    struct Run {
        at: Instant,
        completed: u64,
        busy: u64,
        total: u64,
    }

    impl Run {
        fn new() -> Self {
            Run {
                at: Instant::now(),
                completed: 0,
                busy: 0,
                total: 0,
            }
        }

        fn reading(&mut self, workers: usize, rate: f64, busy: f64, backlog: bool) -> Reading {
            self.starting_reading(workers, 0, rate, busy)
                .with_backlog(backlog)
        }

        /// A window with a backlog, ending with `starting` of `workers` on
        /// their first task.
        fn starting_reading(
            &mut self,
            workers: usize,
            starting: usize,
            rate: f64,
            busy: f64,
        ) -> Reading {
            self.at += WINDOW;
            self.completed += (rate * WINDOW.as_secs_f64()) as u64;
            self.total += 1000;
            self.busy += (busy * 1000.0) as u64;
            Reading {
                at: self.at,
                completed: self.completed,
                cpu: Some(CpuTimes {
                    busy: self.busy,
                    total: self.total,
                    quota: None,
                }),
                workers,
                starting,
                backlog: true,
            }
        }
    }

    impl Reading {
        fn with_backlog(self, backlog: bool) -> Reading {
            Reading { backlog, ..self }
        }
    }

    /// A limit that has just seen its first saturated window, from a pool
    /// of 64 workers.
    fn saturated() -> (ConcurrencyLimit, Run) {
        let mut limit = ConcurrencyLimit::new(4, 512, 2);
        let mut run = Run::new();
        limit.observe(run.reading(64, 3000.0, 0.99, true));
        limit.observe(run.reading(64, 3000.0, 0.99, true));
        (limit, run)
    }

    /// `windows` saturated windows, the pool at the limit each time and
    /// running `curve(workers)` tasks/s; the limits changed to, in order.
    fn follow(
        limit: &mut ConcurrencyLimit,
        run: &mut Run,
        curve: fn(usize) -> f64,
        windows: u128,
    ) -> Vec<usize> {
        let mut changes = Vec::new();
        for _ in 0..windows {
            let workers = limit.get();
            if let Some(change) = limit.observe(run.reading(workers, curve(workers), 0.99, true)) {
                changes.push(change.limit);
            }
        }
        changes
    }

    /// CPU-bound: throughput rises to 24 workers, then stays flat.
    fn cpu_bound(workers: usize) -> f64 {
        (workers.min(24) * 1000) as f64
    }

    #[test]
    fn stays_open_while_cpu_is_idle() {
        let mut limit = ConcurrencyLimit::new(4, 512, 2);
        let mut run = Run::new();
        for w in [4, 8, 64, 256] {
            assert_eq!(
                limit.observe(run.reading(w, w as f64 * 10.0, 0.2, true)),
                None
            );
        }
        assert_eq!(limit.get(), 512);
    }

    #[test]
    fn climbs_while_throughput_rises_and_settles_where_it_stops() {
        let mut limit = ConcurrencyLimit::new(4, 512, 2);
        let mut run = Run::new();
        limit.observe(run.reading(64, 3000.0, 0.99, true));
        let first = limit
            .observe(run.reading(64, 3000.0, 0.99, true))
            .expect("saturated");
        assert_eq!(first.limit, 16, "eight per core: {}", first.reason);
        // The pool follows the limit; each window runs at it.
        let tried = follow(&mut limit, &mut run, cpu_bound, 20);
        assert_eq!(tried, [32, 64, 64], "{tried:?}");
        assert_eq!(
            limit.get(),
            64,
            "the step after the first size that runs everything it can, which ran as much"
        );
        assert!(limit.is_adaptive());
    }

    /// Past 32 workers, each added one costs throughput.
    fn contended(workers: usize) -> f64 {
        let w = workers as f64;
        if workers <= 32 {
            w * 1000.0
        } else {
            32_000.0 - (w - 32.0) * 300.0
        }
    }

    #[test]
    fn a_step_that_costs_throughput_is_undone() {
        let (mut limit, mut run) = saturated();
        let tried = follow(&mut limit, &mut run, contended, 20);
        assert_eq!(tried, [32, 64, 32], "{tried:?}");
        assert_eq!(limit.get(), 32);
    }

    #[test]
    fn opens_again_when_the_work_turns_to_waiting() {
        let mut limit = ConcurrencyLimit::new(4, 512, 2);
        let mut run = Run::new();
        limit.observe(run.reading(64, 3000.0, 0.99, true));
        limit.observe(run.reading(64, 3000.0, 0.99, true));
        assert_eq!(limit.get(), 16);
        // CPU idle with tasks waiting: each window climbs a step, and after
        // `REOPEN_AFTER` of them the limit opens.
        // (A step's first window opened before it: no verdict.)
        let mut tried = Vec::new();
        for _ in 0..2 * REOPEN_AFTER {
            let workers = limit.get();
            if let Some(change) = limit.observe(run.reading(workers, 40.0, 0.1, true)) {
                tried.push(change.limit);
            }
        }
        assert_eq!(tried, [32, 64, 128, 512], "{tried:?}");
        assert!(!limit.is_adaptive());
    }

    /// On a machine shared with the platform's side, the climb's first
    /// step may leave CPU to spare: the climb goes on from there instead
    /// of stalling until the limit reopens, and settles where the curve
    /// flattens.
    #[test]
    fn a_step_that_leaves_cpu_to_spare_climbs_on() {
        let (mut limit, mut run) = saturated();
        assert_eq!(limit.get(), 16);
        // The window that opened at 64 workers gives no verdict; the next
        // one, at 16 all through, does.
        assert_eq!(
            limit.observe(run.reading(16, cpu_bound(16), 0.83, true)),
            None
        );
        let change = limit
            .observe(run.reading(16, cpu_bound(16), 0.83, true))
            .expect("climbs");
        assert_eq!(change.limit, 32, "{}", change.reason);
        let tried = follow(&mut limit, &mut run, cpu_bound, 10);
        assert_eq!(tried, [64, 64], "{tried:?}");
        assert_eq!(limit.get(), 64);
        assert!(limit.is_adaptive());
    }

    /// A quiet window now and then on a saturated machine (under a CPU
    /// quota the machine-wide figure can dip, or the load pauses) leaves
    /// the limit where it is: no swing to `max_workers` and back.
    #[test]
    fn single_quiet_windows_do_not_reopen_the_limit() {
        let mut limit = ConcurrencyLimit::new(4, 512, 2);
        let mut run = Run::new();
        limit.observe(run.reading(64, 3000.0, 0.99, true));
        limit.observe(run.reading(64, 3000.0, 0.99, true));
        let found = limit.get();
        for i in 0..40 {
            let busy = if i % REOPEN_AFTER == 0 { 0.5 } else { 0.99 };
            if let Some(change) = limit.observe(run.reading(found, 3000.0, busy, true)) {
                assert!(change.limit < 512, "reopened: {}", change.reason);
            }
        }
        assert!(limit.is_adaptive());
    }

    /// Deliveries to a platform that answers in 100 ms, and the pool has
    /// just grown from 4 to 1,024 workers for them: while most of them
    /// make their instance and open their connection, both cores are busy.
    /// That is the growth's cost, not CPU-bound work: the limit stays open.
    /// Once the workers are warm, a saturated CPU still starts the climb.
    #[test]
    fn a_pool_starting_up_is_not_taken_for_cpu_bound_work() {
        let mut limit = ConcurrencyLimit::new(4, 1024, 2);
        let mut run = Run::new();
        limit.observe(run.starting_reading(4, 0, 40.0, 0.1));
        for starting in [1020, 900, 400, 256] {
            let change = limit.observe(run.starting_reading(1024, starting, 2000.0, 0.99));
            assert_eq!(change, None, "{starting} of 1,024 starting");
        }
        assert_eq!(limit.get(), 1024);
        assert!(!limit.is_adaptive());
        // Past start-up: the window that opened with a quarter starting
        // gives no verdict either; the next one does.
        assert_eq!(
            limit.observe(run.starting_reading(1024, 10, 9000.0, 0.99)),
            None
        );
        let change = limit
            .observe(run.starting_reading(1024, 10, 9000.0, 0.99))
            .expect("saturated once warm");
        assert_eq!(change.limit, 16, "{}", change.reason);
    }

    #[test]
    fn learns_nothing_without_a_backlog() {
        let mut limit = ConcurrencyLimit::new(4, 512, 2);
        let mut run = Run::new();
        for _ in 0..5 {
            assert_eq!(limit.observe(run.reading(8, 100.0, 0.99, false)), None);
        }
        assert_eq!(limit.get(), 512);
    }

    #[test]
    fn probes_again_after_settling() {
        let (mut limit, mut run) = saturated();
        follow(&mut limit, &mut run, cpu_bound, 20);
        let settled = limit.get();
        // Three rounds of settling and probing on a flat curve: each probe
        // goes back, none ratchets the limit up.
        let windows = 3 * (SETTLE.as_millis() / WINDOW.as_millis() + 4);
        let changes = follow(&mut limit, &mut run, cpu_bound, windows);
        let probed = changes.iter().filter(|&&l| l > settled).count();
        assert!(
            probed >= 2,
            "probed above {settled} {probed} times: {changes:?}"
        );
        assert_eq!(limit.get(), settled, "a probe that gained nothing was kept");
    }
}
