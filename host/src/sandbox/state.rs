//! The data each wasmtime store carries: WASI contexts that grant nothing,
//! the plugin's HTTP policy (for `wasi:http` and one-call requests alike)
//! and SMTP policy, its memory limiter, and the `host` interface (logging
//! and configuration) that plugins import.

use std::sync::Arc;

use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use super::PluginPolicy;
use super::http::{OutboundHttp, Transport};
use super::limits::{MemoryBudget, MemoryLimiter};
use super::output::{LogBudget, MAX_LOG_LINE_BYTES, PluginOutput, Stream};
use super::policy::PluginConfig;
use super::smtp::{OutboundSmtp, SmtpPools};
use crate::bindings::{Level, exchange, notifyhub, smtp};
use crate::telemetry::attempt::in_attempt;
use crate::text::cap;

/// What one store knows about the plugin and task it runs.
pub struct HostState {
    wasi: WasiCtx,
    http_ctx: WasiHttpCtx,
    table: ResourceTable,
    http: OutboundHttp,
    smtp: OutboundSmtp,
    pub(crate) limiter: MemoryLimiter,
    policy: Arc<PluginPolicy>,
    /// The task's destination settings, read before the plugin's own.
    overlay: Option<Arc<PluginConfig>>,
    log_budget: Arc<LogBudget>,
    output: PluginOutput,
}

impl HostState {
    pub(crate) fn new(
        policy: Arc<PluginPolicy>,
        transport: Transport,
        smtp: Arc<SmtpPools>,
        budget: Arc<MemoryBudget>,
    ) -> Self {
        // No preopens, no environment, no arguments, no sockets, empty stdin;
        // stdout and stderr become log lines.
        let log_budget = Arc::new(LogBudget::default());
        let output = PluginOutput::new(policy.name.clone(), log_budget.clone());
        let wasi = WasiCtx::builder()
            .stdout(output.stream(Stream::Stdout))
            .stderr(output.stream(Stream::Stderr))
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        let limits = policy.limits;
        HostState {
            wasi,
            http_ctx: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            smtp: OutboundSmtp::new(
                transport.clone(),
                smtp,
                policy.allow.clone(),
                policy.smtp.clone(),
                policy.name.clone(),
                // A quarter of the call's time is left for the plugin to
                // act on the answer; a relay that never answers is then a
                // classified failure, not a trapped call.
                limits.timeout * 3 / 4,
                limits.max_requests,
            ),
            http: OutboundHttp::new(
                transport,
                policy.allow.clone(),
                policy.name.clone(),
                limits.timeout,
                limits.max_response_bytes(),
                limits.max_requests,
            ),
            limiter: MemoryLimiter::new(limits, budget),
            policy,
            overlay: None,
            log_budget,
            output,
        }
    }

    /// Resets per-task budgets (log lines, HTTP requests), tags what the
    /// plugin logs with `task` and lays `overlay` (a destination's settings
    /// and secrets) over the plugin's configuration. Called before every
    /// call into the instance.
    pub(crate) fn begin_task(&mut self, task: Option<String>, overlay: Option<Arc<PluginConfig>>) {
        self.output.flush();
        self.http.begin_task(task.clone());
        self.smtp.begin_task(task.clone());
        self.log_budget.begin(task);
        self.overlay = overlay;
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

impl exchange::Host for HostState {
    async fn send(
        &mut self,
        request: exchange::Request,
    ) -> Result<exchange::Response, exchange::HttpError> {
        super::exchange::send(&mut self.http, request).await
    }
}

impl smtp::Host for HostState {
    async fn send(
        &mut self,
        relay: smtp::Relay,
        envelope: smtp::Envelope,
        message: Vec<u8>,
    ) -> Result<smtp::Reply, smtp::SmtpError> {
        self.smtp.send(relay, envelope, message).await
    }
}

impl notifyhub::plugin::host::Host for HostState {
    fn log(&mut self, level: Level, message: String) {
        let Some(task) = self.log_budget.take(&self.policy.name) else {
            return;
        };
        let task = task.as_str();
        let message = cap(message, MAX_LOG_LINE_BYTES);
        let plugin = &*self.policy.name;
        in_attempt(|| match level {
            Level::Trace => {
                tracing::trace!(target: "plugin", plugin = %plugin, task = %task, "{message}")
            }
            Level::Debug => {
                tracing::debug!(target: "plugin", plugin = %plugin, task = %task, "{message}")
            }
            Level::Info => {
                tracing::info!(target: "plugin", plugin = %plugin, task = %task, "{message}")
            }
            Level::Warn => {
                tracing::warn!(target: "plugin", plugin = %plugin, task = %task, "{message}")
            }
            Level::Error => {
                tracing::error!(target: "plugin", plugin = %plugin, task = %task, "{message}")
            }
        })
    }

    fn get_config(&mut self, key: String) -> Option<String> {
        self.overlay
            .as_ref()
            .and_then(|o| o.get(&key))
            .or_else(|| self.policy.config.get(&key))
            .map(str::to_string)
    }
}
