//! Human-readable output for the CLI (`--json` prints the daemon's answer instead).

use std::fmt::Write;

use crate::api::{PluginsView, StatusView, TaskView};
use crate::task::Outcome;

pub fn task(t: &TaskView) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "task      {}", t.id);
    let _ = writeln!(out, "platform  {}", t.platform);
    let _ = writeln!(out, "target    {}", t.target);
    let _ = writeln!(out, "state     {}", json_name(&t.state));
    let _ = writeln!(out, "submitted {}", t.submitted_at);
    if let Some(at) = &t.finished_at {
        let _ = writeln!(out, "finished  {at}");
    }
    if let Some(p) = &t.plugin {
        let _ = writeln!(out, "plugin    {} {} ({})", p.name, p.version, p.digest);
    }
    match &t.outcome {
        Some(Outcome::Delivered { provider_id, status }) => {
            let id = provider_id.as_deref().map(|id| format!(", id {id}")).unwrap_or_default();
            let _ = writeln!(out, "outcome   delivered: {status}{id}");
        }
        Some(Outcome::Failed { class, message, retry_after_ms }) => {
            let retry = retry_after_ms.map(|ms| format!(" (retry after {ms} ms)")).unwrap_or_default();
            let _ = writeln!(out, "outcome   failed ({}): {message}{retry}", json_name(class));
        }
        None => {}
    }
    out
}

pub fn status(s: &StatusView) -> String {
    let mut out = String::new();
    let pool = &s.pool;
    let _ = writeln!(out, "notifyhub {} up {}s", s.version, s.uptime_ms / 1000);
    let _ = writeln!(out, "platforms  {}", s.platforms.join(", "));
    let _ = writeln!(
        out,
        "pool       {} workers, {} in flight, {} queued, {} processed, {} errors",
        pool.workers, pool.in_flight, pool.queued, pool.processed, pool.errors
    );
    let _ = writeln!(out, "\n{:>6}  {:<10}  {:>9}  {:>6}  current task", "worker", "state", "processed", "errors");
    for w in pool.per_worker.iter().filter(|w| w.processed > 0 || w.current_task.is_some()) {
        let current = match (&w.current_task, &w.current_platform) {
            (Some(id), Some(p)) => format!("{id} ({p})"),
            _ => "-".into(),
        };
        let _ = writeln!(
            out,
            "{:>6}  {:<10}  {:>9}  {:>6}  {current}",
            w.id,
            json_name(&w.state),
            w.processed,
            w.errors
        );
    }
    let idle = pool.per_worker.iter().filter(|w| w.processed == 0 && w.current_task.is_none()).count();
    if idle > 0 {
        let _ = writeln!(out, "({idle} workers have not run a task yet)");
    }
    out
}

pub fn plugins(p: &PluginsView) -> String {
    let mut out = String::new();
    if p.plugins.is_empty() {
        let _ = writeln!(out, "no plugins loaded");
    }
    for plugin in &p.plugins {
        let _ = writeln!(
            out,
            "{:<12} {:<8} {}  platforms: {}  {}",
            plugin.name,
            plugin.version,
            &plugin.digest[..12],
            plugin.platforms.join(","),
            plugin.info.description
        );
    }
    if !p.errors.is_empty() {
        let _ = writeln!(out, "\nfailed to load:");
        for e in &p.errors {
            let _ = writeln!(out, "  {} ({}): {}", e.path, e.at, e.error);
        }
    }
    out
}

/// An enum's wire name (`snake_case`).
fn json_name<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}
