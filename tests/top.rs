//! `notifyhub top` in a real terminal: a pseudo-terminal runs it, a
//! terminal emulator (vt100) turns what it writes into a screen the test
//! reads, as a person would see it; the test resizes the terminal and quits
//! with `q`. Nothing beyond the test binary is needed (no tmux).

use std::io::{Read, Write};
use std::num::NonZeroU16;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use notifyhub_testkit::daemon::Daemon;
use portable_pty::{CommandBuilder, PtySize, native_pty_system};
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_notifyhub");

/// How long the view may take to show what a step expects: a guard, not a
/// measurement.
const WITHIN: Duration = Duration::from_secs(30);

const WIDE: (NonZeroU16, NonZeroU16) =
    (NonZeroU16::new(120).unwrap(), NonZeroU16::new(40).unwrap());
const SMALL: (NonZeroU16, NonZeroU16) =
    (NonZeroU16::new(70).unwrap(), NonZeroU16::new(24).unwrap());

fn size(cols: NonZeroU16, rows: NonZeroU16) -> PtySize {
    PtySize {
        rows: rows.get(),
        cols: cols.get(),
        pixel_width: 0,
        pixel_height: 0,
    }
}

/// The emulated screen, fed by a thread reading the terminal's output.
#[derive(Clone)]
struct Screen(Arc<Mutex<vt100::Parser>>);

impl Screen {
    fn text(&self) -> String {
        self.0.lock().unwrap().screen().contents()
    }

    fn resize(&self, cols: NonZeroU16, rows: NonZeroU16) {
        self.0.lock().unwrap().set_size(rows, cols);
    }

    /// Waits until the screen shows what `done` wants; fails with the last
    /// screen it saw.
    async fn until(&self, what: &str, done: impl Fn(&str) -> bool) -> anyhow::Result<String> {
        let deadline = Instant::now() + WITHIN;
        loop {
            let text = self.text();
            if done(&text) {
                return Ok(text);
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the terminal never showed {what}; last screen:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The right edge of the bordered "workers and queues" box: the column of
/// its top-right corner, counted in characters.
fn box_width(screen: &str) -> Option<usize> {
    let line = screen
        .lines()
        .find(|l| l.contains(" workers and queues "))?;
    let line = line.trim_end();
    line.ends_with('┐').then(|| line.chars().count())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_renders_follows_a_resize_and_quits_on_q() -> anyhow::Result<()> {
    let daemon = Daemon::builder(BIN).plugin("noop", None).start().await?;
    let tasks: Vec<_> = (0..200)
        .map(|_| json!({"platform": "noop", "target": "t", "body": "b"}))
        .collect();
    daemon
        .request(json!({"op": "submit", "wait": true, "tasks": tasks}))
        .await?;

    let pty = native_pty_system().openpty(size(WIDE.0, WIDE.1))?;
    let mut command = CommandBuilder::new(BIN);
    command.arg("--socket");
    command.arg(daemon.socket());
    command.arg("top");
    command.env("TERM", "xterm-256color");
    let mut child = pty.slave.spawn_command(command)?;
    drop(pty.slave);

    let screen = Screen(Arc::new(Mutex::new(vt100::Parser::new(WIDE.1, WIDE.0, 0))));
    let mut reader = pty.master.try_clone_reader()?;
    let feed = screen.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        // Ends when the terminal closes (the child exited and the master
        // was dropped).
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 {
                break;
            }
            feed.0.lock().unwrap().process(&buf[..n]);
        }
    });
    let mut keys = pty.master.take_writer()?;

    let shown = screen
        .until("the view at 120 columns", |s| {
            s.contains("notifyhub top") && box_width(s) == Some(120)
        })
        .await?;
    anyhow::ensure!(
        shown.contains("paced destinations") && shown.contains("recent scale events"),
        "{shown}"
    );

    // Smaller: the view redraws to fit the new width.
    screen.resize(SMALL.0, SMALL.1);
    pty.master.resize(size(SMALL.0, SMALL.1))?;
    let shown = screen
        .until("the view redrawn at 70 columns", |s| {
            s.contains("notifyhub top") && box_width(s) == Some(70)
        })
        .await?;
    anyhow::ensure!(shown.lines().count() <= 24, "{shown}");

    keys.write_all(b"q")?;
    keys.flush()?;
    let deadline = Instant::now() + WITHIN;
    loop {
        if let Some(status) = child.try_wait()? {
            anyhow::ensure!(status.success(), "top exited with {status:?}");
            break;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            anyhow::bail!("q did not quit; last screen:\n{}", screen.text());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}
