//! A plugin's standard output and error, turned into log lines.
//!
//! Language runtimes print: Python's `print()`, JavaScript's `console.log`,
//! C's `printf`. Those bytes must not reach the daemon's own stdout (which
//! belongs to the operator) and must not be lost either, so each stream is
//! cut into lines and every line is logged with the plugin's name, the task
//! it was printed during, and the stream. Lines share the per-task budget of
//! the `host.log` import: a plugin that prints without end is cut off with
//! one marker, like one that logs without end.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

use crate::telemetry::attempt::in_attempt;

/// Log lines a plugin may write per call (through `host.log`, stdout and
/// stderr together); the rest are dropped with a marker.
const MAX_LOG_LINES: u32 = 1000;
/// Longest log line kept, in bytes.
pub(super) const MAX_LOG_LINE_BYTES: usize = 4096;

/// The task a store is running and how many lines it has logged: shared by
/// the `host.log` import and the stdout/stderr pipes.
#[derive(Debug, Default)]
pub(super) struct LogBudget {
    current: Mutex<(Option<String>, u32)>,
}

impl LogBudget {
    pub(super) fn begin(&self, task: Option<String>) {
        *self.current.lock().expect("never poisoned") = (task, 0);
    }

    /// The task to tag one more line with, or `None` once the task's budget
    /// is spent (the first refusal logs a marker).
    pub(super) fn take(&self, plugin: &str) -> Option<String> {
        let mut current = self.current.lock().expect("never poisoned");
        current.1 += 1;
        let task = current.0.clone().unwrap_or_else(|| "-".into());
        if current.1 <= MAX_LOG_LINES {
            return Some(task);
        }
        if current.1 == MAX_LOG_LINES + 1 {
            in_attempt(|| {
                tracing::warn!(
                    plugin,
                    task,
                    "plugin log limit of {MAX_LOG_LINES} lines reached; further lines dropped"
                )
            });
        }
        None
    }
}

/// Which stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// The shared state of both streams of one store.
#[derive(Debug)]
struct Lines {
    plugin: Arc<str>,
    budget: Arc<LogBudget>,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

/// The stdout and stderr of one store.
#[derive(Debug, Clone)]
pub struct PluginOutput {
    lines: Arc<Mutex<Lines>>,
}

impl PluginOutput {
    pub fn new(plugin: Arc<str>, budget: Arc<LogBudget>) -> Self {
        PluginOutput {
            lines: Arc::new(Mutex::new(Lines {
                plugin,
                budget,
                stdout: Vec::new(),
                stderr: Vec::new(),
            })),
        }
    }

    pub fn stream(&self, stream: Stream) -> OutputPipe {
        OutputPipe {
            lines: self.lines.clone(),
            stream,
        }
    }

    /// Logs what is left of an unfinished line (called between tasks, so
    /// that a line printed without a newline is not tagged with the next
    /// task).
    pub fn flush(&self) {
        let mut lines = self.lines.lock().expect("never poisoned");
        for stream in [Stream::Stdout, Stream::Stderr] {
            let rest = std::mem::take(lines.buffer(stream));
            if !rest.is_empty() {
                lines.emit(stream, &rest);
            }
        }
    }
}

impl Lines {
    fn buffer(&mut self, stream: Stream) -> &mut Vec<u8> {
        match stream {
            Stream::Stdout => &mut self.stdout,
            Stream::Stderr => &mut self.stderr,
        }
    }

    fn write(&mut self, stream: Stream, bytes: &[u8]) {
        let mut rest = bytes;
        while let Some(end) = rest.iter().position(|&b| b == b'\n') {
            let mut line = std::mem::take(self.buffer(stream));
            line.extend_from_slice(&rest[..end]);
            self.emit(stream, &line);
            rest = &rest[end + 1..];
        }
        let buffer = self.buffer(stream);
        let room = MAX_LOG_LINE_BYTES.saturating_sub(buffer.len());
        buffer.extend_from_slice(&rest[..rest.len().min(room)]);
    }

    fn emit(&self, stream: Stream, line: &[u8]) {
        let Some(task) = self.budget.take(&self.plugin) else {
            return;
        };
        let line = String::from_utf8_lossy(&line[..line.len().min(MAX_LOG_LINE_BYTES)]);
        let line = line.trim_end_matches('\r');
        let plugin = &*self.plugin;
        in_attempt(|| match stream {
            Stream::Stdout => {
                tracing::info!(target: "plugin", plugin = %plugin, task = %task, stream = "stdout", "{line}")
            }
            Stream::Stderr => {
                tracing::warn!(target: "plugin", plugin = %plugin, task = %task, stream = "stderr", "{line}")
            }
        })
    }
}

/// One stream, as WASI sees it.
pub struct OutputPipe {
    lines: Arc<Mutex<Lines>>,
    stream: Stream,
}

impl IsTerminal for OutputPipe {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for OutputPipe {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(OutputPipe {
            lines: self.lines.clone(),
            stream: self.stream,
        })
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(OutputPipe {
            lines: self.lines.clone(),
            stream: self.stream,
        })
    }
}

impl OutputStream for OutputPipe {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.lines
            .lock()
            .expect("never poisoned")
            .write(self.stream, &bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

#[async_trait::async_trait]
impl Pollable for OutputPipe {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for OutputPipe {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.lines
            .lock()
            .expect("never poisoned")
            .write(self.stream, buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}
