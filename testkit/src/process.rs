//! Child processes with deadlines: a test that runs a command or waits
//! for a process to exit gives up after a bound, kills what it started and
//! fails with what it saw, instead of hanging the suite.

use std::io::Read;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// How often a waiting test looks at the child.
const POLL: Duration = Duration::from_millis(20);

/// Waits for `child` to exit; kills it and fails after `within`.
pub fn wait_within(child: &mut Child, within: Duration) -> anyhow::Result<ExitStatus> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "process {} did not exit within {within:?}; killed it",
                child.id()
            );
        }
        std::thread::sleep(POLL);
    }
}

/// Runs `command` to completion with its output captured, as
/// [`Command::output`] does; kills it and fails, showing what it printed so
/// far, if it runs longer than `within`.
pub fn output_within(command: &mut Command, within: Duration) -> anyhow::Result<Output> {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {command:?}"))?;
    // Drain both pipes while waiting, so a chatty child never blocks on a
    // full pipe.
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let stdout = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let stderr = drain(child.stderr.take().map(|p| Box::new(p) as _));
    let waited = wait_within(&mut child, within);
    let output = Output {
        status: match &waited {
            Ok(status) => *status,
            Err(_) => child.wait()?,
        },
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    };
    if let Err(e) = waited {
        bail!(
            "{command:?}: {e}\nstdout so far:\n{}\nstderr so far:\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(output)
}
