//! The notifyhub plugin SDK for Rust.
//!
//! A notifyhub plugin is a WebAssembly component that targets the
//! `notifyhub:plugin/plugin` world (`wit/plugin.wit`), or `full` when it
//! makes requests in one call or sends e-mail over SMTP (this crate's HTTP
//! client does the former). This crate wraps the
//! generated bindings so that a handler is a few dozen lines:
//!
//! ```ignore
//! use notifyhub_plugin_sdk::{http, Message, Plugin, PluginInfo, Receipt, SendError};
//!
//! struct Echo;
//!
//! impl Plugin for Echo {
//!     fn describe() -> PluginInfo { /* name, version, platforms, ... */ }
//!     fn send(message: Message) -> Result<Receipt, SendError> {
//!         let response = http::Request::post(&message.target).json_body(b"{}").send()?;
//!         response.into_receipt()
//!     }
//! }
//!
//! notifyhub_plugin_sdk::export_plugin!(Echo);
//! ```
//!
//! What is here:
//! - [`http`]: a small blocking client over `notifyhub:http/client` (one
//!   call a request) and `wasi:http` (bodies too large for one call) that
//!   maps transport failures and HTTP status codes onto [`SendError`]
//!   classes;
//! - [`format`]: truncation with a visible marker and markdown dialects;
//! - [`sign`]: HMAC signing schemes used by webhook platforms;
//! - [`form`]: `application/x-www-form-urlencoded` bodies and query values;
//! - [`smtp`] and [`mail`]: e-mail through the host's SMTP capability, and
//!   the subject and HTML alternative every e-mail plugin builds;
//! - [`log`] and [`config`]: the host's logging and configuration imports.
//!
//! State: the host may reuse an instance for many `send` calls, so anything a
//! plugin keeps in statics survives between tasks of the same plugin. Keep
//! caches there if you like, never per-task secrets.

pub mod fit;
pub mod form;
pub mod format;
pub mod html;
pub mod http;
pub mod mail;
pub mod mrkdwn;
pub mod sign;
pub mod smtp;
pub mod time;

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        // `full` is `plugin` plus SMTP and one-call HTTP; a component
        // imports only what it calls, so a plugin that never sends mail
        // does not import SMTP.
        world: "notifyhub:plugin/full",
        generate_all,
        pub_export_macro: true,
        export_macro_name: "export_handler",
        default_bindings_module: "notifyhub_plugin_sdk::bindings",
    });
}

pub use bindings::exports::notifyhub::plugin::handler::Guest as Plugin;
pub use bindings::notifyhub::plugin::types::{
    ConfigKey, Failure, Format, Message, PluginInfo, Priority, RateLimit, RateLimitRule, Receipt,
    SendError,
};

/// Exports a type implementing [`Plugin`] as the component's handler.
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ident) => {
        $crate::bindings::export_handler!($plugin with_types_in $crate::bindings);
    };
}

/// Reads a configuration value from the plugin's manifest (settings and
/// secrets). `None` when the operator did not configure it.
pub fn config(key: &str) -> Option<String> {
    bindings::notifyhub::plugin::host::get_config(key)
}

/// A configuration value the plugin cannot work without; the error names
/// the missing key.
pub fn required_config(key: &str) -> Result<String, SendError> {
    config(key).ok_or_else(|| {
        SendError::invalid(format!(
            "config key `{key}` is not set (the manifest's [config], or [secrets] for a credential)"
        ))
    })
}

impl Message {
    /// The first metadata value under `key`.
    pub fn meta(&self, key: &str) -> Option<&str> {
        self.metadata
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Writes to the host's log; lines are tagged with the plugin and task.
pub mod log {
    use crate::bindings::notifyhub::plugin::host::{Level, log};

    pub fn debug(message: &str) {
        log(Level::Debug, message);
    }
    pub fn info(message: &str) {
        log(Level::Info, message);
    }
    pub fn warn(message: &str) {
        log(Level::Warn, message);
    }
    pub fn error(message: &str) {
        log(Level::Error, message);
    }
}

impl Receipt {
    /// A receipt with a status and no provider id.
    pub fn status(status: impl Into<String>) -> Self {
        Receipt {
            provider_id: None,
            status: status.into(),
        }
    }
}

impl SendError {
    pub fn invalid(message: impl Into<String>) -> Self {
        SendError::Invalid(message.into())
    }
    pub fn permanent(message: impl Into<String>) -> Self {
        SendError::Permanent(message.into())
    }
    /// A transient failure; the wait is capped at [`http::MAX_RETRY_AFTER_MS`].
    pub fn retryable(message: impl Into<String>, retry_after_ms: Option<u64>) -> Self {
        SendError::Retryable(Failure {
            message: message.into(),
            retry_after_ms: retry_after_ms.map(|ms| ms.min(http::MAX_RETRY_AFTER_MS)),
        })
    }
    /// "Slow down"; the wait is capped at [`http::MAX_RETRY_AFTER_MS`].
    pub fn rate_limited(message: impl Into<String>, retry_after_ms: u64) -> Self {
        SendError::RateLimited(RateLimit {
            message: message.into(),
            retry_after_ms: retry_after_ms.min(http::MAX_RETRY_AFTER_MS),
        })
    }
}

/// Declares a config key for [`PluginInfo::config_keys`].
pub fn config_key(name: &str, required: bool, secret: bool, description: &str) -> ConfigKey {
    ConfigKey {
        name: name.into(),
        required,
        secret,
        description: description.into(),
    }
}
