//! How busy the CPU this daemon may use is: the machine's, from
//! `/proc/stat`, and, when the daemon runs under a CPU quota (a container,
//! systemd's `CPUQuota=`), its cgroup's share of that quota.
//!
//! The scaler asks one question of it: is there idle CPU left? If there is
//! and tasks are waiting, more workers will run more of them (they wait on
//! the network, not on the CPU). If there is not, more workers only add
//! contention, and the scaler climbs carefully instead (see `scaler`).
//! Machine-wide, because the work a delivery causes may burn CPU elsewhere
//! (a local receiver, a proxy); and the cgroup's quota too, because under
//! a quota the daemon runs out of CPU while the machine looks idle. The
//! busier of the two answers.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Cumulative CPU time counters: the machine's in clock ticks, and the
/// cgroup's when it has a quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuTimes {
    pub busy: u64,
    pub total: u64,
    /// Under a quota: CPU the cgroup used and CPU the quota allowed, in µs,
    /// since an arbitrary moment.
    pub quota: Option<(u64, u64)>,
}

impl CpuTimes {
    /// The counters now; `None` where `/proc/stat` cannot be read (the
    /// scaler then never sees saturation and scales by demand alone).
    pub fn now() -> Option<CpuTimes> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let mut times = parse(stat.lines().next()?)?;
        times.quota = cgroup().and_then(|c| c.read());
        Some(times)
    }

    /// The busy fraction of CPU time between `earlier` and `self`, if any
    /// time passed: the machine's or the quota's, whichever is higher.
    pub fn busy_since(self, earlier: CpuTimes) -> Option<f64> {
        let total = self.total.checked_sub(earlier.total)?;
        let busy = self.busy.checked_sub(earlier.busy)?;
        let machine = (total > 0).then(|| busy as f64 / total as f64)?;
        let quota = self
            .quota
            .zip(earlier.quota)
            .and_then(|((u, a), (u0, a0))| {
                let allowed = a.checked_sub(a0)?;
                (allowed > 0).then(|| u.saturating_sub(u0) as f64 / allowed as f64)
            });
        Some(quota.map_or(machine, |q| q.max(machine)))
    }
}

/// The shortest span the scaler reads the CPU's busy fraction over.
/// `/proc/stat` counts in clock ticks of 10 ms per CPU: over one tick of
/// a 2-core machine the fraction can only read 0 or 100 %, while 30 ms
/// gives it six ticks. The pool samples every 50 ms and, when a burst's
/// first tasks are about to count as waiting on I/O, once more in between
/// (see `dispatcher`): that extra sample measures from the one before.
pub const MIN_CPU_WINDOW: Duration = Duration::from_millis(30);

/// The recent readings a new one is compared with: the newest that is at
/// least [`MIN_CPU_WINDOW`] older than it (else the oldest kept).
#[derive(Debug, Clone, Default)]
pub struct CpuHistory {
    readings: VecDeque<(Instant, CpuTimes)>,
}

impl CpuHistory {
    /// What a reading at `at` is compared with, if any reading came before.
    pub fn baseline(&self, at: Instant) -> Option<CpuTimes> {
        let old_enough =
            |r: &&(Instant, CpuTimes)| at.saturating_duration_since(r.0) >= MIN_CPU_WINDOW;
        self.readings
            .iter()
            .rev()
            .find(old_enough)
            .or_else(|| self.readings.front())
            .map(|(_, times)| *times)
    }

    /// Keeps `times`, read at `at`, and drops the readings no later one
    /// can need: those older than the newest reading already
    /// [`MIN_CPU_WINDOW`] old.
    pub fn push(&mut self, at: Instant, times: CpuTimes) {
        self.readings.push_back((at, times));
        while self
            .readings
            .get(1)
            .is_some_and(|r| at.saturating_duration_since(r.0) >= MIN_CPU_WINDOW)
        {
            self.readings.pop_front();
        }
    }
}

/// The aggregate `cpu` line: user nice system idle iowait irq softirq steal …
fn parse(line: &str) -> Option<CpuTimes> {
    let mut fields = line.split_whitespace();
    if fields.next()? != "cpu" {
        return None;
    }
    let n: Vec<u64> = fields.take(8).filter_map(|f| f.parse().ok()).collect();
    if n.len() < 5 {
        return None;
    }
    let idle = n[3] + n[4];
    let busy = n.iter().sum::<u64>() - idle;
    Some(CpuTimes {
        busy,
        total: busy + idle,
        quota: None,
    })
}

/// This process's cgroup, as far as CPU accounting goes.
#[derive(Debug, Clone, PartialEq)]
enum Cgroup {
    /// cgroup v2: one directory with `cpu.max` and `cpu.stat`.
    V2(PathBuf),
    /// cgroup v1: the `cpu` controller's directory (quota) and the
    /// `cpuacct` one's (usage).
    V1 { cpu: PathBuf, cpuacct: PathBuf },
}

/// Found once: a process does not change cgroups under the daemon.
fn cgroup() -> Option<&'static Cgroup> {
    static FOUND: OnceLock<Option<Cgroup>> = OnceLock::new();
    FOUND
        .get_or_init(|| {
            let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
            find(&own, Path::new("/sys/fs/cgroup"))
        })
        .as_ref()
}

/// The cgroup directories `/proc/self/cgroup` (`own`) names under `root`.
fn find(own: &str, root: &Path) -> Option<Cgroup> {
    let mut cpu = None;
    let mut cpuacct = None;
    for line in own.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let path = path.trim_start_matches('/');
        if controllers.is_empty() && root.join(path).join("cpu.max").exists() {
            return Some(Cgroup::V2(root.join(path)));
        }
        // `cpu,cpuacct` is mounted under that name, usually with a link
        // for each controller too.
        let together = root.join(controllers).join(path);
        for controller in controllers.split(',') {
            let dir = if together.exists() {
                together.clone()
            } else {
                root.join(controller).join(path)
            };
            match controller {
                "cpu" => cpu = Some(dir),
                "cpuacct" => cpuacct = Some(dir),
                _ => {}
            }
        }
    }
    Some(Cgroup::V1 {
        cpu: cpu?,
        cpuacct: cpuacct?,
    })
}

impl Cgroup {
    /// CPU used and CPU the quota allowed (µs) up to now; `None` without
    /// a quota.
    fn read(&self) -> Option<(u64, u64)> {
        let (quota_us, period_us, used_us) = match self {
            Cgroup::V2(dir) => {
                let max = std::fs::read_to_string(dir.join("cpu.max")).ok()?;
                let mut max = max.split_whitespace();
                let (quota, period) = (max.next()?.parse().ok()?, max.next()?.parse().ok()?);
                let stat = std::fs::read_to_string(dir.join("cpu.stat")).ok()?;
                let used = stat
                    .lines()
                    .find_map(|l| l.strip_prefix("usage_usec ")?.trim().parse().ok())?;
                (quota, period, used)
            }
            Cgroup::V1 { cpu, cpuacct } => {
                let read = |dir: &Path, file: &str| -> Option<i64> {
                    std::fs::read_to_string(dir.join(file))
                        .ok()?
                        .trim()
                        .parse()
                        .ok()
                };
                let quota = u64::try_from(read(cpu, "cpu.cfs_quota_us")?).ok()?;
                let period = u64::try_from(read(cpu, "cpu.cfs_period_us")?).ok()?;
                let used_ns = u64::try_from(read(cpuacct, "cpuacct.usage")?).ok()?;
                (quota, period, used_ns / 1000)
            }
        };
        allowed(quota_us, period_us, used_us)
    }
}

/// Under a quota of `quota_us` per `period_us`: (used, allowed) in µs,
/// the allowance counted on the monotonic clock.
fn allowed(quota_us: u64, period_us: u64, used_us: u64) -> Option<(u64, u64)> {
    if quota_us == 0 || period_us == 0 {
        return None;
    }
    let now_us = monotonic_us();
    Some((
        used_us,
        (now_us as u128 * quota_us as u128 / period_us as u128) as u64,
    ))
}

/// Microseconds on a clock that only goes forward.
fn monotonic_us() -> u64 {
    static START: OnceLock<std::time::Instant> = OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_micros() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reading_is_compared_with_one_at_least_the_minimum_window_old() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let times = |busy| CpuTimes {
            busy,
            total: 1000 + busy,
            quota: None,
        };
        let mut history = CpuHistory::default();
        assert_eq!(history.baseline(t0), None, "nothing to compare with");
        history.push(t0, times(1));
        history.push(t0 + ms(50), times(2));
        // 7 ms after the last tick: the tick before it.
        assert_eq!(history.baseline(t0 + ms(57)), Some(times(1)));
        history.push(t0 + ms(57), times(3));
        // The next tick: the extra reading, 43 ms before it.
        assert_eq!(history.baseline(t0 + ms(100)), Some(times(3)));
        history.push(t0 + ms(100), times(4));
        assert_eq!(
            history.readings.len(),
            2,
            "kept: the newest reading old enough for the next, and those after it"
        );
        // Right after the first reading: the oldest there is.
        let mut history = CpuHistory::default();
        history.push(t0, times(1));
        assert_eq!(history.baseline(t0 + ms(5)), Some(times(1)));
    }

    #[test]
    fn reads_the_aggregate_line() {
        let a = parse("cpu  100 0 50 800 50 0 0 0 0 0").unwrap();
        let b = parse("cpu  200 0 100 850 50 0 0 0 0 0").unwrap();
        assert_eq!(b.busy_since(a), Some(0.75));
        assert!(parse("cpu0 1 2 3 4 5").is_none());
        assert!(CpuTimes::now().is_some(), "this machine has /proc/stat");
    }

    #[test]
    fn a_spent_quota_is_saturation_on_an_idle_machine() {
        let times = |busy, total, quota| CpuTimes { busy, total, quota };
        // The machine 10 % busy; the cgroup used 0.48 s of the 0.5 s its
        // half-a-core quota allowed.
        let earlier = times(0, 0, Some((0, 0)));
        let now = times(100, 1000, Some((480_000, 500_000)));
        let busy = now.busy_since(earlier).unwrap();
        assert!((busy - 0.96).abs() < 1e-9, "{busy}");
        // Without a quota, the machine's figure.
        let busy = times(100, 1000, None)
            .busy_since(times(0, 0, None))
            .unwrap();
        assert!((busy - 0.1).abs() < 1e-9, "{busy}");
    }

    #[test]
    fn finds_the_cgroup_of_either_version() {
        let root = tempfile::tempdir().unwrap();
        let v2 = root.path().join("system.slice/nh.service");
        std::fs::create_dir_all(&v2).unwrap();
        std::fs::write(v2.join("cpu.max"), "50000 100000\n").unwrap();
        std::fs::write(v2.join("cpu.stat"), "usage_usec 1234\nuser_usec 1000\n").unwrap();
        let found = find("0::/system.slice/nh.service\n", root.path()).unwrap();
        assert_eq!(found, Cgroup::V2(v2.clone()));
        let (used, _) = found.read().expect("a quota");
        assert_eq!(used, 1234);
        std::fs::write(v2.join("cpu.max"), "max 100000\n").unwrap();
        assert_eq!(found.read(), None, "no quota");

        let v1 = "4:cpu,cpuacct:/docker/abc\n2:memory:/docker/abc\n";
        let dir = root.path().join("cpu,cpuacct/docker/abc");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("cpu.cfs_quota_us"), "150000\n").unwrap();
        std::fs::write(dir.join("cpu.cfs_period_us"), "100000\n").unwrap();
        std::fs::write(dir.join("cpuacct.usage"), "5000000\n").unwrap();
        let found = find(v1, root.path()).unwrap();
        assert_eq!(found.read().map(|(used, _)| used), Some(5000));
        std::fs::write(dir.join("cpu.cfs_quota_us"), "-1\n").unwrap();
        assert_eq!(found.read(), None, "no quota");
    }
}
