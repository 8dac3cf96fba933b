//! The table of where a run's time went, printed at the end of every
//! `cargo xtask test` so any CI log shows it.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::Context;

/// Stage name, how long it took, and whether it passed.
#[derive(Default)]
pub struct Timings(pub Vec<(String, Duration, &'static str)>);

impl Timings {
    pub fn stage<T>(
        &mut self,
        name: &str,
        f: impl FnOnce() -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        let started = Instant::now();
        println!("xtask test: {name} ...");
        let result = f();
        let status = if result.is_ok() { "ok" } else { "FAILED" };
        self.0.push((name.to_string(), started.elapsed(), status));
        result.with_context(|| format!("stage `{name}`"))
    }

    pub fn print(&self, total: Duration) {
        let mut table = String::from("\nxtask test: where the time went\n");
        let width = self
            .0
            .iter()
            .map(|(n, ..)| n.len())
            .max()
            .unwrap_or(0)
            .max(5);
        for (name, took, status) in &self.0 {
            let _ = writeln!(
                table,
                "  {name:<width$}  {:>8.1} s  {status}",
                took.as_secs_f64()
            );
        }
        let _ = writeln!(
            table,
            "  {:<width$}  {:>8.1} s",
            "total",
            total.as_secs_f64()
        );
        println!("{table}");
    }
}
