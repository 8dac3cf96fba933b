//! `notifyhub top` in a real terminal: tmux runs it, the test reads the
//! pane, resizes it and quits with `q`.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use notifyhub_testkit::daemon::Daemon;
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_notifyhub");

/// A private tmux server, killed when dropped.
struct Tmux(String);

impl Tmux {
    fn run(&self, args: &[&str]) -> anyhow::Result<Output> {
        Ok(Command::new("tmux")
            .arg("-L")
            .arg(&self.0)
            .args(args)
            .output()?)
    }

    fn pane(&self) -> anyhow::Result<String> {
        let out = self.run(&["capture-pane", "-p", "-t", "top"])?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Waits until the pane shows what `done` wants; fails after a while.
    async fn until(&self, what: &str, done: impl Fn(&str) -> bool) -> anyhow::Result<String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let pane = self.pane()?;
            if done(&pane) {
                return Ok(pane);
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the pane never showed {what}:\n{pane}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .arg("-L")
            .arg(&self.0)
            .arg("kill-server")
            .output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_renders_follows_a_resize_and_quits_on_q() -> anyhow::Result<()> {
    anyhow::ensure!(
        Command::new("tmux")
            .arg("-V")
            .output()
            .is_ok_and(|o| o.status.success()),
        "this test needs tmux (.ci/run installs it)"
    );
    let daemon = Daemon::builder(BIN).plugin("noop", None).start().await?;
    let tasks: Vec<_> = (0..200)
        .map(|_| json!({"platform": "noop", "target": "t", "body": "b"}))
        .collect();
    daemon
        .request(json!({"op": "submit", "wait": true, "tasks": tasks}))
        .await?;

    let tmux = Tmux(format!("nh-top-{}", std::process::id()));
    let command = format!("{BIN} --socket {} top", daemon.socket().display());
    let started = tmux.run(&[
        "new-session",
        "-d",
        "-s",
        "top",
        "-x",
        "120",
        "-y",
        "40",
        &command,
    ])?;
    anyhow::ensure!(
        started.status.success(),
        "{}",
        String::from_utf8_lossy(&started.stderr)
    );
    let pane = tmux
        .until("the view", |p| {
            p.contains("notifyhub top") && p.contains("workers and queues")
        })
        .await?;
    anyhow::ensure!(
        pane.contains("paced destinations") && pane.contains("recent scale events"),
        "{pane}"
    );
    let wide = pane
        .lines()
        .map(|l| l.trim_end().chars().count())
        .max()
        .unwrap_or(0);
    anyhow::ensure!(
        wide > 80,
        "the view did not use the 120 columns: {wide}\n{pane}"
    );

    // Smaller: the view redraws to fit.
    tmux.run(&["resize-window", "-t", "top", "-x", "70", "-y", "24"])?;
    let pane = tmux
        .until("a 70-column frame", |p| {
            p.contains("notifyhub top") && p.lines().all(|l| l.trim_end().chars().count() <= 70)
        })
        .await?;
    anyhow::ensure!(pane.lines().count() <= 24, "{pane}");

    tmux.run(&["send-keys", "-t", "top", "q"])?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while tmux.run(&["has-session", "-t", "top"])?.status.success() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "q did not quit:\n{}",
            tmux.pane()?
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}
