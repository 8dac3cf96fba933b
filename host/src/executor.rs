//! The executor: runs calls into plugins, safely, and says what happened.
//!
//! An [`Instance`] is one instantiated plugin in its own store. It can serve
//! many tasks ("warm"), which is what makes affinity routing pay: calling a
//! warm instance costs about a microsecond for a Rust plugin, instantiating
//! one tens of microseconds (a Python one: milliseconds).
//!
//! Every call re-arms the store's epoch deadline and runs under an outer
//! tokio timeout slightly longer than the deadline: epochs only interrupt
//! guest code, so a guest blocked in a host call (an HTTP request that never
//! answers) is caught by the outer timeout. Traps, timeouts and limit
//! violations become [`Outcome::Failed`] with a [`FailureClass`] and a
//! reason, and the call reports the instance as no longer reusable: a
//! trapped instance is never entered again.

use std::sync::Arc;
use std::time::Duration;

use wasmtime::{Store, Trap};

use crate::bindings::{Plugin, PluginPre, wit};
use crate::destination::Route;
use crate::plugin::LoadedPlugin;
use crate::sandbox::limits::MemoryCap;
use crate::sandbox::{HostState, MAX_GUEST_TRANSFER_BYTES, PluginPolicy, Sandbox, arm_deadline};
use crate::task::MAX_RETRY_AFTER;
use crate::task::{FailureClass, Format, Outcome, Priority, Task};
use crate::text::cap;

/// How much longer than the epoch deadline the outer timeout waits.
const OUTER_GRACE: Duration = Duration::from_millis(500);
/// `describe()` must answer quickly: it does no I/O.
const DESCRIBE_TIMEOUT: Duration = Duration::from_secs(5);
/// Caps on what a plugin may return.
const MAX_STATUS_BYTES: usize = 1024;
const MAX_PROVIDER_ID_BYTES: usize = 256;
const MAX_ERROR_BYTES: usize = 2048;

/// Calls into plugins.
pub struct Executor {
    sandbox: Arc<Sandbox>,
}

/// Why a call produced no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct CallFailure {
    pub class: FailureClass,
    pub message: String,
}

/// An instantiated plugin that can serve tasks until it is retired.
pub struct Instance {
    store: Store<HostState>,
    bindings: Plugin,
    plugin: Arc<LoadedPlugin>,
    calls: u64,
}

impl Instance {
    /// The plugin version this instance runs.
    pub fn plugin(&self) -> &Arc<LoadedPlugin> {
        &self.plugin
    }

    /// Calls served so far.
    pub fn calls(&self) -> u64 {
        self.calls
    }

    /// Linear memory the instance holds, in bytes.
    pub fn memory_bytes(&self) -> usize {
        self.store.data().limiter.bytes()
    }
}

/// What a call did to its instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// The instance may serve another task.
    Reusable,
    /// The instance trapped, timed out or hit a limit; drop it.
    Retired,
}

impl Executor {
    pub fn new(sandbox: Arc<Sandbox>) -> Self {
        Executor { sandbox }
    }

    pub fn sandbox(&self) -> &Arc<Sandbox> {
        &self.sandbox
    }

    /// Instantiates `plugin` in a new store.
    pub async fn instantiate(&self, plugin: Arc<LoadedPlugin>) -> Result<Instance, CallFailure> {
        let timeout = plugin.policy.limits.timeout;
        let mut store = self
            .sandbox
            .store(plugin.pre().engine(), plugin.policy.clone());
        arm_deadline(&mut store, timeout);
        let result = tokio::time::timeout(
            timeout + OUTER_GRACE,
            plugin.pre().instantiate_async(&mut store),
        )
        .await;
        match result {
            Ok(Ok(bindings)) => Ok(Instance {
                store,
                bindings,
                plugin,
                calls: 0,
            }),
            Ok(Err(error)) => Err(classify(&error, &store, timeout)),
            Err(_) => Err(blocked(timeout)),
        }
    }

    /// Delivers `task` through a warm `instance`, to `route` when the task
    /// was submitted to a named destination.
    pub async fn call(
        &self,
        instance: &mut Instance,
        task: &Task,
        route: Option<&Route>,
    ) -> (Outcome, Health) {
        let timeout = instance.plugin.policy.limits.timeout;
        let store = &mut instance.store;
        store
            .data_mut()
            .begin_task(Some(task.id.to_string()), route.map(|r| r.config.clone()));
        arm_deadline(store, timeout);
        let message = to_wit(task, route.map_or(task.target.as_str(), Route::target));
        let handler = instance.bindings.notifyhub_plugin_handler();
        let result = tokio::time::timeout(
            timeout + OUTER_GRACE,
            handler.call_send(&mut *store, &message),
        )
        .await;
        instance.calls += 1;
        let outcome = match result {
            Ok(Ok(Ok(receipt))) => Outcome::Delivered {
                provider_id: receipt.provider_id.map(|id| cap(id, MAX_PROVIDER_ID_BYTES)),
                status: cap(receipt.status, MAX_STATUS_BYTES),
            },
            Ok(Ok(Err(error))) => from_send_error(error),
            Ok(Err(error)) => {
                let failure = classify(&error, store, timeout);
                return (
                    Outcome::failed(failure.class, failure.message),
                    Health::Retired,
                );
            }
            Err(_) => {
                let failure = blocked(timeout);
                return (
                    Outcome::failed(failure.class, failure.message),
                    Health::Retired,
                );
            }
        };
        (outcome, Health::Reusable)
    }

    /// Delivers `task` in a one-shot instance of `plugin`.
    pub async fn send(
        &self,
        plugin: &Arc<LoadedPlugin>,
        task: &Task,
        route: Option<&Route>,
    ) -> Outcome {
        match self.instantiate(plugin.clone()).await {
            Ok(mut instance) => self.call(&mut instance, task, route).await.0,
            Err(failure) => Outcome::failed(failure.class, failure.message),
        }
    }

    /// Instantiates a freshly compiled plugin and asks it to describe itself.
    pub async fn describe(
        &self,
        pre: &PluginPre<HostState>,
        policy: Arc<PluginPolicy>,
    ) -> Result<wit::PluginInfo, CallFailure> {
        let timeout = policy.limits.timeout.min(DESCRIBE_TIMEOUT);
        let mut store = self.sandbox.store(pre.engine(), policy);
        arm_deadline(&mut store, timeout);
        let result = {
            let store = &mut store;
            let call = async {
                let instance = pre.instantiate_async(&mut *store).await?;
                instance
                    .notifyhub_plugin_handler()
                    .call_describe(&mut *store)
                    .await
            };
            tokio::time::timeout(timeout + OUTER_GRACE, call).await
        };
        match result {
            Ok(Ok(info)) => Ok(info),
            Ok(Err(error)) => Err(classify(&error, &store, timeout)),
            Err(_) => Err(blocked(timeout)),
        }
    }
}

fn blocked(timeout: Duration) -> CallFailure {
    CallFailure {
        class: FailureClass::TimedOut,
        message: format!(
            "the plugin did not answer within its {} deadline (blocked in a host call)",
            humantime::format_duration(timeout)
        ),
    }
}

/// Explains a trap or instantiation error.
fn classify(error: &wasmtime::Error, store: &Store<HostState>, timeout: Duration) -> CallFailure {
    let (class, message) = if let Some(cap) = store.data().limiter.exceeded() {
        let which = match cap {
            MemoryCap::Plugin => "its own cap (manifest [limits] memory_mib)",
            MemoryCap::Host => "the host-wide guest memory budget ([sandbox] max_guest_memory_mib)",
        };
        (
            FailureClass::Crashed,
            format!("the plugin exceeded its memory limit: {which}"),
        )
    } else {
        match error.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) => (
                FailureClass::TimedOut,
                format!(
                    "the plugin ran past its {} deadline and was interrupted",
                    humantime::format_duration(timeout)
                ),
            ),
            Some(Trap::StackOverflow) => (
                FailureClass::Crashed,
                "the plugin overflowed its stack".to_string(),
            ),
            Some(trap) => (FailureClass::Crashed, format!("the plugin trapped: {trap}")),
            // The host's own instance slots, memories or stacks ran out: the
            // plugin did nothing wrong, and the task runs when one is free.
            None if error
                .chain()
                .any(|e| e.is::<wasmtime::PoolConcurrencyLimitError>()) =>
            {
                (
                    FailureClass::Retryable,
                    format!("the host is at its instance limit: {}", root_cause(error)),
                )
            }
            None if root_cause(error).contains("fuel allocated for hostcalls") => (
                FailureClass::Crashed,
                format!(
                    "the plugin handed the host more than {} KiB in one call (a receipt, an error, \
                     a description, a log line or a request that large); the host copies at most \
                     that much",
                    MAX_GUEST_TRANSFER_BYTES >> 10
                ),
            ),
            None => (
                FailureClass::Crashed,
                format!("the plugin failed: {}", root_cause(error)),
            ),
        }
    };
    CallFailure { class, message }
}

fn root_cause(error: &wasmtime::Error) -> String {
    let chain: Vec<String> = error.chain().map(|e| e.to_string()).collect();
    cap(chain.join(": "), MAX_ERROR_BYTES)
}

fn from_send_error(error: wit::SendError) -> Outcome {
    let (class, message, retry_after_ms) = match error {
        wit::SendError::Retryable(f) => (FailureClass::Retryable, f.message, f.retry_after_ms),
        wit::SendError::RateLimited(r) => {
            (FailureClass::RateLimited, r.message, Some(r.retry_after_ms))
        }
        wit::SendError::Permanent(m) => (FailureClass::Permanent, m, None),
        wit::SendError::Invalid(m) => (FailureClass::Invalid, m, None),
    };
    // A retry-after is foreign input (from the platform, through the
    // plugin): it enters the host here, bounded.
    let most = MAX_RETRY_AFTER.as_millis() as u64;
    Outcome::Failed {
        class,
        message: cap(message, MAX_ERROR_BYTES),
        retry_after_ms: retry_after_ms.map(|ms| ms.min(most)),
    }
}

fn to_wit(task: &Task, target: &str) -> wit::Message {
    wit::Message {
        task_id: task.id.to_string(),
        platform: task.platform.clone(),
        target: target.to_string(),
        title: task.title.clone(),
        body: task.body.clone(),
        format: match task.format {
            Format::Text => wit::Format::Text,
            Format::Markdown => wit::Format::Markdown,
            Format::Html => wit::Format::Html,
        },
        priority: match task.priority {
            Priority::Low => wit::Priority::Low,
            Priority::Normal => wit::Priority::Normal,
            Priority::High => wit::Priority::High,
        },
        metadata: task
            .metadata
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    }
}
