//! `notifyhub top`: a live view of a running daemon, in the terminal.
//!
//! Asks the daemon for `status` twice a second over its socket and draws
//! (with ratatui) the workers by state, the adaptive limit, what is queued
//! per platform, throughput and the warm-hit rate since the last frame,
//! paced and paused destinations, and the recent scale events. The view
//! follows the terminal's size; `q`, Esc or Ctrl-C quits and gives the
//! terminal back as it was.

use std::path::Path;
use std::time::{Duration, Instant};

use ratatui::Frame;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Borders, Paragraph, Row, Table, Wrap};
use serde_json::json;

use crate::client::Client;
use crate::protocol::StatusView;

/// How often the view refreshes.
const REFRESH: Duration = Duration::from_millis(500);

/// Runs the view until the user quits.
pub async fn run(socket: &Path) -> anyhow::Result<()> {
    let mut client = Client::connect(socket).await?;
    let mut terminal = ratatui::try_init()?;
    let result = frames(&mut client, &mut terminal).await;
    ratatui::restore();
    result
}

/// What changed between two `status` answers.
#[derive(Default)]
struct Rates {
    tasks_per_s: f64,
    warm_hit_rate: Option<f64>,
}

async fn frames(
    client: &mut Client,
    terminal: &mut ratatui::DefaultTerminal,
) -> anyhow::Result<()> {
    let mut last: Option<(Instant, StatusView)> = None;
    loop {
        let status: StatusView =
            serde_json::from_value(client.call(json!({"op": "status"})).await?)?;
        let now = Instant::now();
        let rates = last.as_ref().map_or_else(Rates::default, |(at, before)| {
            let seconds = now.duration_since(*at).as_secs_f64().max(1e-3);
            let hits = status.pool.warm_hits.saturating_sub(before.pool.warm_hits);
            let misses = status
                .pool
                .warm_misses
                .saturating_sub(before.pool.warm_misses);
            Rates {
                tasks_per_s: status.pool.processed.saturating_sub(before.pool.processed) as f64
                    / seconds,
                warm_hit_rate: (hits + misses > 0).then(|| hits as f64 / (hits + misses) as f64),
            }
        });
        terminal.draw(|frame| draw(frame, &status, &rates))?;
        last = Some((now, status));
        if quit_within(REFRESH).await? {
            return Ok(());
        }
    }
}

/// Waits up to `wait` for input; `true` when the user asked to quit. A
/// resize ends the wait early, so the next frame fits at once.
async fn quit_within(wait: Duration) -> anyhow::Result<bool> {
    let waited = tokio::task::spawn_blocking(move || -> std::io::Result<bool> {
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || !event::poll(left)? {
                return Ok(false);
            }
            match event::read()? {
                Event::Key(key) if key.kind == KeyEventKind::Press => {
                    let ctrl_c = key.code == KeyCode::Char('c')
                        && key.modifiers.contains(KeyModifiers::CONTROL);
                    if matches!(key.code, KeyCode::Char('q') | KeyCode::Esc) || ctrl_c {
                        return Ok(true);
                    }
                }
                Event::Resize(..) => return Ok(false),
                _ => {}
            }
        }
    });
    Ok(waited.await??)
}

fn draw(frame: &mut Frame, status: &StatusView, rates: &Rates) {
    let pool = &status.pool;
    let [header, middle, bottom] = Layout::vertical([
        Constraint::Length(3),
        Constraint::Min(8),
        Constraint::Length(8),
    ])
    .areas(frame.area());
    let limit = pool
        .concurrency_limit
        .map_or_else(|| "open".to_string(), |l| l.to_string());
    let plugins = if status.plugins_ready {
        format!("{} platforms", status.platforms.len())
    } else {
        format!("loading {} plugin(s)", status.plugins_loading.len())
    };
    let title = Line::from(format!(
        "notifyhub top — v{}  up {}s  {plugins}  (q quits)",
        status.version,
        status.uptime_ms / 1000
    ))
    .style(Style::new().add_modifier(Modifier::BOLD));
    let summary = format!(
        "workers {} ({}..{}, limit {limit})  in flight {}  queued {}  paced {}  {:.0} tasks/s  warm hits {}  processed {}  errors {}",
        pool.workers,
        pool.min_workers,
        pool.max_workers,
        pool.in_flight,
        pool.queued,
        pool.paced,
        rates.tasks_per_s,
        rates.warm_hit_rate.map_or_else(
            || format!("{:.0}%", pool.warm_hit_rate * 100.0),
            |r| format!("{:.0}%", r * 100.0)
        ),
        pool.processed,
        pool.errors,
    );
    frame.render_widget(
        Paragraph::new(vec![title, Line::from(summary)])
            .block(Block::new().borders(Borders::BOTTOM))
            .wrap(Wrap { trim: true }),
        header,
    );

    let [left, right] =
        Layout::horizontal([Constraint::Percentage(40), Constraint::Percentage(60)]).areas(middle);
    let mut rows: Vec<Row> = pool
        .workers_by_state
        .iter()
        .map(|(state, n)| Row::new(vec![format!("{state:?}").to_lowercase(), n.to_string()]))
        .collect();
    rows.push(Row::new(vec![String::new(), String::new()]));
    rows.extend(
        pool.queued_by_platform
            .iter()
            .map(|(platform, n)| Row::new(vec![format!("queued {platform}"), n.to_string()])),
    );
    frame.render_widget(
        Table::new(rows, [Constraint::Min(16), Constraint::Length(8)])
            .block(Block::bordered().title(" workers and queues ")),
        left,
    );
    let destinations: Vec<Row> = pool
        .destinations
        .iter()
        .map(|d| {
            let state = match d.paused_for_ms {
                Some(ms) => format!("paused {:.1}s", ms as f64 / 1000.0),
                None => d.budget.map_or_else(|| "-".into(), |b| format!("{b} left")),
            };
            Row::new(vec![
                d.destination.clone(),
                d.rules.join(" "),
                state,
                d.backlog.to_string(),
            ])
        })
        .collect();
    frame.render_widget(
        Table::new(
            destinations,
            [
                Constraint::Min(14),
                Constraint::Length(14),
                Constraint::Length(14),
                Constraint::Length(8),
            ],
        )
        .header(
            Row::new(vec!["destination", "rules", "budget", "backlog"])
                .style(Style::new().add_modifier(Modifier::BOLD)),
        )
        .block(Block::bordered().title(" paced destinations ")),
        right,
    );
    let events: Vec<Line> = pool
        .recent_scale_events
        .iter()
        .rev()
        .map(|e| Line::from(format!("{}  {} → {}  {}", e.at, e.from, e.to, e.reason)))
        .collect();
    frame.render_widget(
        Paragraph::new(events)
            .block(Block::bordered().title(" recent scale events "))
            .wrap(Wrap { trim: true }),
        bottom,
    );
}
