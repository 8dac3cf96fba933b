//! How busy this machine's CPUs are, from `/proc/stat`.
//!
//! The scaler asks one question of it: is there idle CPU left? If there is
//! and tasks are waiting, more workers will run more of them (they wait on
//! the network, not on the CPU). If there is not, more workers only add
//! contention, and the scaler climbs carefully instead (see `scaler`).
//! Machine-wide rather than this process's share, because the work a
//! delivery causes may burn CPU elsewhere (a local receiver, a proxy).

/// Cumulative CPU time counters, in clock ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuTimes {
    pub busy: u64,
    pub total: u64,
}

impl CpuTimes {
    /// The machine's counters now; `None` where `/proc/stat` cannot be read
    /// (the scaler then never sees saturation and scales by demand alone).
    pub fn now() -> Option<CpuTimes> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        parse(stat.lines().next()?)
    }

    /// The busy fraction of CPU time between `earlier` and `self`, if any
    /// time passed.
    pub fn busy_since(self, earlier: CpuTimes) -> Option<f64> {
        let total = self.total.checked_sub(earlier.total)?;
        let busy = self.busy.checked_sub(earlier.busy)?;
        (total > 0).then(|| busy as f64 / total as f64)
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
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_aggregate_line() {
        let a = parse("cpu  100 0 50 800 50 0 0 0 0 0").unwrap();
        let b = parse("cpu  200 0 100 850 50 0 0 0 0 0").unwrap();
        assert_eq!(b.busy_since(a), Some(0.75));
        assert!(parse("cpu0 1 2 3 4 5").is_none());
        assert!(CpuTimes::now().is_some(), "this machine has /proc/stat");
    }
}
