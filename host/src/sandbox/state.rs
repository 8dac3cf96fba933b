//! The data each wasmtime store carries: WASI contexts that grant nothing,
//! the plugin's HTTP policy, its memory limiter, and the `host` interface
//! (logging and configuration) that plugins import.

use std::sync::Arc;

use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use super::PluginPolicy;
use super::http::{HttpClient, OutboundHttp};
use super::limits::{MemoryBudget, MemoryLimiter};
use crate::bindings::{Level, notifyhub};
use crate::manifest::PluginConfig;

/// Log lines a plugin may write per call; the rest are dropped with a marker.
const MAX_LOG_LINES: u32 = 1000;
/// Longest log line kept, in bytes.
const MAX_LOG_LINE_BYTES: usize = 4096;

/// What one store knows about the plugin and task it runs.
pub struct HostState {
    wasi: WasiCtx,
    http_ctx: WasiHttpCtx,
    table: ResourceTable,
    http: OutboundHttp,
    pub(crate) limiter: MemoryLimiter,
    policy: Arc<PluginPolicy>,
    task: Option<String>,
    /// The task's destination settings, read before the plugin's own.
    overlay: Option<Arc<PluginConfig>>,
    log_lines: u32,
}

impl HostState {
    pub(crate) fn new(
        policy: Arc<PluginPolicy>,
        client: HttpClient,
        budget: Arc<MemoryBudget>,
    ) -> Self {
        // No preopens, no environment, no arguments, no sockets, empty stdin;
        // stdout and stderr are discarded.
        let wasi = WasiCtx::builder()
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        let limits = policy.limits;
        HostState {
            wasi,
            http_ctx: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            http: OutboundHttp::new(
                client,
                policy.allow.clone(),
                policy.name.clone(),
                limits.timeout,
                limits.max_response_bytes(),
                limits.max_requests,
            ),
            limiter: MemoryLimiter::new(limits.memory_bytes(), budget),
            policy,
            task: None,
            overlay: None,
            log_lines: 0,
        }
    }

    /// Resets per-task budgets (log lines, HTTP requests), tags what the
    /// plugin logs with `task` and lays `overlay` (a destination's settings
    /// and secrets) over the plugin's configuration. Called before every
    /// call into the instance.
    pub(crate) fn begin_task(&mut self, task: Option<String>, overlay: Option<Arc<PluginConfig>>) {
        self.http.begin_task(task.clone());
        self.task = task;
        self.overlay = overlay;
        self.log_lines = 0;
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for HostState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            hooks: &mut self.http,
            table: &mut self.table,
            ctx: &mut self.http_ctx,
        }
    }
}

impl notifyhub::plugin::types::Host for HostState {}

impl notifyhub::plugin::host::Host for HostState {
    fn log(&mut self, level: Level, message: String) {
        self.log_lines += 1;
        if self.log_lines > MAX_LOG_LINES {
            if self.log_lines == MAX_LOG_LINES + 1 {
                tracing::warn!(
                    plugin = %self.policy.name,
                    task = self.task.as_deref().unwrap_or("-"),
                    "plugin log limit of {MAX_LOG_LINES} lines reached; further lines dropped"
                );
            }
            return;
        }
        let mut message = message;
        if message.len() > MAX_LOG_LINE_BYTES {
            let mut cut = MAX_LOG_LINE_BYTES;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push_str("… [truncated]");
        }
        let plugin = &*self.policy.name;
        let task = self.task.as_deref().unwrap_or("-");
        match level {
            Level::Trace => tracing::trace!(target: "plugin", plugin, task, "{message}"),
            Level::Debug => tracing::debug!(target: "plugin", plugin, task, "{message}"),
            Level::Info => tracing::info!(target: "plugin", plugin, task, "{message}"),
            Level::Warn => tracing::warn!(target: "plugin", plugin, task, "{message}"),
            Level::Error => tracing::error!(target: "plugin", plugin, task, "{message}"),
        }
    }

    fn get_config(&mut self, key: String) -> Option<String> {
        self.overlay
            .as_ref()
            .and_then(|o| o.get(&key))
            .or_else(|| self.policy.config.get(&key))
            .map(str::to_string)
    }
}
