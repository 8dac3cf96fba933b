//! Human-readable output for the CLI (`--json` prints the daemon's answer instead).

use std::fmt::Write;

use crate::check::Report;
use crate::protocol::{Change, PluginsView, ReloadResult, StatusView, TaskView, WatchLine};
use crate::sandbox::Tier;
use crate::task::Outcome;
use crate::trial::TrialReport;

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
    let _ = writeln!(out, "attempts  {}", t.attempts);
    if let Some(at) = &t.not_before {
        let _ = writeln!(out, "next      not before {at}");
    }
    match &t.outcome {
        Some(Outcome::Delivered {
            provider_id,
            status,
        }) => {
            let id = provider_id
                .as_deref()
                .map(|id| format!(", id {id}"))
                .unwrap_or_default();
            let _ = writeln!(out, "outcome   delivered: {status}{id}");
        }
        Some(Outcome::Failed {
            class,
            message,
            retry_after_ms,
        }) => {
            let retry = retry_after_ms
                .map(|ms| format!(" (retry after {ms} ms)"))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "outcome   failed ({}): {message}{retry}",
                json_name(class)
            );
        }
        None => {}
    }
    for a in &t.history {
        let result = a.outcome.as_ref().map_or("running".into(), outcome_text);
        let _ = writeln!(out, "  #{:<3} {}  {result}", a.number, a.started_at);
    }
    out
}

pub fn tasks(tasks: &Vec<TaskView>) -> String {
    let mut out = String::new();
    for t in tasks {
        let result = t.outcome.as_ref().map_or(String::new(), outcome_text);
        let _ = writeln!(
            out,
            "{}  {:<9}  {:<10}  {:>2}  {}  {result}",
            t.id,
            json_name(&t.state),
            t.platform,
            t.attempts,
            t.submitted_at
        );
    }
    if tasks.is_empty() {
        let _ = writeln!(out, "no tasks");
    }
    out
}

pub fn status(s: &StatusView) -> String {
    let mut out = String::new();
    let pool = &s.pool;
    let _ = writeln!(out, "notifyhub {} up {}s", s.version, s.uptime_ms / 1000);
    let _ = writeln!(out, "platforms  {}", s.platforms.join(", "));
    let by_state: Vec<String> = pool
        .workers_by_state
        .iter()
        .map(|(state, n)| format!("{n} {}", json_name(state)))
        .collect();
    let _ = writeln!(
        out,
        "pool       {} workers ({}), bounds {}..{}, strategy {}",
        pool.workers,
        by_state.join(", "),
        pool.min_workers,
        pool.max_workers,
        json_name(&pool.strategy)
    );
    let queued: Vec<String> = pool
        .queued_by_platform
        .iter()
        .map(|(p, n)| format!("{p} {n}"))
        .collect();
    let _ = writeln!(
        out,
        "tasks      {} in flight, {} queued{}, {} processed, {} errors",
        pool.in_flight,
        pool.queued,
        if queued.is_empty() {
            String::new()
        } else {
            format!(" ({})", queued.join(", "))
        },
        pool.processed,
        pool.errors
    );
    if let Some(b) = &s.broker {
        let _ = writeln!(
            out,
            "broker     {} (nats-server {}), stream {}: {} message(s); this host took {}, {} redelivered, finished {}",
            b.url,
            b.server_version,
            b.stream,
            b.messages.map_or("?".into(), |n| n.to_string()),
            b.taken_here,
            b.redelivered_here,
            b.finished_here
        );
        for c in &b.consumers {
            let _ = writeln!(
                out,
                "  consumer {}: {} pending, {} held by hosts, {} redelivered",
                c.name, c.pending, c.in_flight, c.redelivered
            );
        }
        for h in &b.hosts {
            let here = if h.name == b.host { " (this host)" } else { "" };
            let warm = if h.warm.is_empty() {
                String::new()
            } else {
                format!(", warm: {}", h.warm.join(", "))
            };
            let _ = writeln!(
                out,
                "  host {}{here}: pulls {}{warm}; took {}, finished {}, holds {}",
                h.name,
                h.platforms.join(", "),
                h.taken,
                h.finished,
                h.in_flight
            );
        }
    }
    let _ = writeln!(
        out,
        "warm hits  {:.1}% ({} of {})",
        pool.warm_hit_rate * 100.0,
        pool.warm_hits,
        pool.warm_hits + pool.warm_misses
    );
    if !pool.destinations.is_empty() {
        let _ = writeln!(
            out,
            "paced      {} task(s) waiting for a rate limit",
            pool.paced
        );
        for d in &pool.destinations {
            let _ = writeln!(
                out,
                "           {}: {} left of {}, backlog {}{}",
                d.destination,
                d.budget.map_or("-".into(), |b| b.to_string()),
                if d.rules.is_empty() {
                    "no limit".into()
                } else {
                    d.rules.join(" and ")
                },
                d.backlog,
                d.paused_for_ms
                    .map(|ms| format!(", paused {:.1}s by the platform", ms as f64 / 1000.0))
                    .unwrap_or_default()
            );
        }
    }
    let _ = writeln!(out, "scaling    {} decisions", pool.scale_events);
    for e in pool.recent_scale_events.iter().rev().take(3) {
        let _ = writeln!(
            out,
            "           {} {} -> {}: {}",
            e.at, e.from, e.to, e.reason
        );
    }
    let _ = writeln!(
        out,
        "\n{:>6}  {:<13} {:>9} {:>6} {:>9} {:>9} {:>8}  {:<20} current task",
        "worker", "state", "processed", "errors", "mean ms", "p99 ms", "mem KiB", "warm"
    );
    for w in &pool.per_worker {
        let current = match (&w.current_task, &w.current_platform) {
            (Some(id), Some(p)) => format!("{id} ({p})"),
            _ => "-".into(),
        };
        let _ = writeln!(
            out,
            "{:>6}  {:<13} {:>9} {:>6} {:>9.2} {:>9.2} {:>8}  {:<20} {current}",
            w.id,
            json_name(&w.state),
            w.processed,
            w.errors,
            w.mean_ms,
            w.p99_ms,
            w.wasm_memory_bytes / 1024,
            w.warm_plugins.join(","),
        );
    }
    out
}

pub fn plugins(p: &PluginsView) -> String {
    let mut out = String::new();
    if p.plugins.is_empty() {
        let _ = writeln!(out, "no plugins loaded");
    }
    for plugin in &p.plugins {
        let digest = plugin.digest.get(..12).unwrap_or(&plugin.digest);
        let code = match plugin.code {
            Tier::Baseline => "  (baseline code until the optimized code is ready)",
            Tier::Optimized => "",
        };
        let _ = writeln!(
            out,
            "{:<12} {:<8} {digest}  platforms: {}  {}{code}",
            plugin.name,
            plugin.version,
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

pub fn reload(results: &Vec<ReloadResult>) -> String {
    let mut out = String::new();
    for r in results {
        let detail = match &r.change {
            Change::Loaded {
                name,
                version,
                digest,
            } => {
                format!(
                    "loaded {name} {version} ({})",
                    &digest[..12.min(digest.len())]
                )
            }
            Change::Reconfigured { name } => format!("{name}: manifest applied"),
            Change::Unchanged => "unchanged".into(),
            Change::Unloaded => "unloaded".into(),
            Change::Failed { error } => format!("failed: {error}"),
        };
        let _ = writeln!(out, "{}: {detail}", r.path);
    }
    out
}

/// One line for an attempt's outcome.
fn outcome_text(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Delivered { status, .. } => format!("delivered: {status}"),
        Outcome::Failed {
            class,
            message,
            retry_after_ms,
        } => {
            let retry = retry_after_ms
                .map(|ms| format!(" (retry after {ms} ms)"))
                .unwrap_or_default();
            format!("{}: {message}{retry}", json_name(class))
        }
    }
}

/// An enum's wire name (`snake_case`).
fn json_name<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

pub fn check(r: &Report) -> String {
    use crate::check::Severity;
    let mut out = String::new();
    let _ = writeln!(out, "{}: {} ({} bytes)", r.file, r.kind, r.size_bytes);
    if let Some(version) = &r.contract_version {
        let _ = writeln!(out, "contract   notifyhub:plugin@{version}");
    }
    if !r.imports.is_empty() {
        let _ = writeln!(out, "imports    {}", r.imports.join("\n           "));
    }
    if let Some(info) = &r.info {
        let _ = writeln!(
            out,
            "plugin     {} {}: {}",
            info.name, info.version, info.description
        );
        let _ = writeln!(out, "platforms  {}", info.platforms.join(", "));
        for key in &info.config_keys {
            let _ = writeln!(
                out,
                "config     {}{}{}: {}",
                key.name,
                if key.required { " (required)" } else { "" },
                if key.secret { " (secret)" } else { "" },
                key.description
            );
        }
        for rule in &info.rate_limits {
            let _ = writeln!(
                out,
                "rate limit {} per {} ms per destination",
                rule.requests, rule.window_ms
            );
        }
    }
    if let (Some(compile), Some(describe)) = (r.compile_ms, r.describe_ms) {
        let _ = writeln!(
            out,
            "timing     compile {compile:.0} ms, instantiate + describe {describe:.1} ms"
        );
    }
    for f in &r.findings {
        let label = match f.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Note => "note",
        };
        let _ = writeln!(out, "{label}: {}", f.message);
    }
    let _ = writeln!(
        out,
        "{}",
        if r.ok() {
            "ok: this host can run the plugin"
        } else {
            "not loadable: fix the errors above"
        }
    );
    out
}

pub fn trial(r: &TrialReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "plugin    {} {} (platform {})",
        r.plugin, r.version, r.platform
    );
    if r.requests.is_empty() && r.mails.is_empty() {
        let _ = writeln!(out, "requests  none");
    }
    for (i, req) in r.requests.iter().enumerate() {
        let _ = writeln!(
            out,
            "\nrequest {}: {} {}  ({} bytes)",
            i + 1,
            req.method,
            req.url,
            req.body_bytes
        );
        for (name, value) in &req.headers {
            let _ = writeln!(out, "  {name}: {value}");
        }
        if !req.body.is_empty() {
            let _ = writeln!(out);
            for line in req.body.lines() {
                let _ = writeln!(out, "  {line}");
            }
        }
        if let Some(denied) = &req.denied_in_daemon {
            let _ = writeln!(out, "  note: {denied}");
        }
        let _ = writeln!(out, "  answered with HTTP {} (canned)", r.answer_status);
    }
    for (i, mail) in r.mails.iter().enumerate() {
        let auth = mail
            .username
            .as_ref()
            .map(|u| format!(", AUTH as {u}"))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "\nmessage {}: SMTP {} ({}{auth})  ({} bytes)",
            i + 1,
            mail.relay,
            mail.security,
            mail.message_bytes
        );
        let _ = writeln!(
            out,
            "  MAIL FROM:<{}>",
            mail.sender.as_deref().unwrap_or("")
        );
        for rcpt in &mail.recipients {
            let _ = writeln!(out, "  RCPT TO:<{rcpt}>");
        }
        let _ = writeln!(out, "  DATA");
        for line in mail.message.lines() {
            let _ = writeln!(out, "  | {line}");
        }
        if let Some(denied) = &mail.denied_in_daemon {
            let _ = writeln!(out, "  note: {denied}");
        }
        let _ = writeln!(out, "  answered with SMTP {} (canned)", r.smtp_reply);
    }
    let _ = writeln!(out, "\noutcome   {}", outcome_text(&r.outcome));
    out
}

pub fn watch_line(line: &WatchLine) -> String {
    match line {
        WatchLine::Event(e) => {
            let outcome = e.outcome.as_ref().map(outcome_text).unwrap_or_default();
            format!(
                "{}  {:<9} {}  {:<10} #{:<3} {outcome}\n",
                e.at,
                json_name(&e.state),
                e.task_id,
                e.destination.as_deref().unwrap_or(&e.platform),
                e.attempt
            )
        }
        WatchLine::Dropped(n) => {
            format!("… {n} events dropped: this watcher read too slowly\n")
        }
    }
}
