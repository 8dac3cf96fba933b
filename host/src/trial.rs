//! `notifyhub try FILE.wasm`: one call into a plugin, with nothing sent.
//!
//! The plugin is compiled and configured exactly as the daemon would (its
//! manifest beside it, secrets resolved, limits applied), then given one
//! message. Its outbound requests go to a [`Recorder`], which keeps them and
//! answers each with a canned response (`--answer 429 --answer-header
//! Retry-After:5`; `--smtp-reply 451` for e-mail), so an author sees the
//! exact requests and SMTP messages the plugin would send and how it
//! classifies that answer — with no daemon and no network.
//! Any host may be reached (nothing leaves the machine); a request the
//! manifest's `allowed_hosts` would refuse in the daemon is flagged.
//! Secret values from the manifest are redacted wherever they appear.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;

use crate::executor::{CallFailure, Executor};
use crate::loader::{self, PluginFile};
use crate::manifest::{Manifest, ManifestError};
use crate::sandbox::recorder::{CannedAnswer, RecordedMail, RecordedRequest, Recorder};
use crate::sandbox::smtp::relay_uri;
use crate::sandbox::{AllowList, Sandbox, SandboxError, SandboxSettings, Tier, Transport};
use crate::task::{Format, Outcome, Priority, Task, TaskId};

/// The message to try.
#[derive(Debug, Clone)]
pub struct TrialMessage {
    /// Default: the first platform the plugin serves.
    pub platform: Option<String>,
    pub target: String,
    pub title: Option<String>,
    pub body: String,
    pub format: Format,
    pub priority: Priority,
    pub metadata: BTreeMap<String, String>,
}

/// What a trial showed.
#[derive(Debug, Clone, Serialize)]
pub struct TrialReport {
    pub plugin: String,
    pub version: String,
    pub platform: String,
    pub requests: Vec<ShownRequest>,
    pub answer_status: u16,
    /// SMTP messages, for plugins that send e-mail.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mails: Vec<ShownMail>,
    /// The SMTP reply each message got, e.g. "250 2.0.0 Ok: queued as TRY".
    pub smtp_reply: String,
    pub outcome: Outcome,
}

/// A recorded SMTP message, as the dialogue with the relay would go.
#[derive(Debug, Clone, Serialize)]
pub struct ShownMail {
    /// `host:port`.
    pub relay: String,
    /// "STARTTLS", "TLS" or "no TLS".
    pub security: String,
    pub username: Option<String>,
    /// `MAIL FROM`; `None` is the null path.
    pub sender: Option<String>,
    /// `RCPT TO`, in order.
    pub recipients: Vec<String>,
    /// The message (DATA), secrets redacted.
    pub message: String,
    pub message_bytes: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub denied_in_daemon: Option<String>,
}

/// A recorded request, secrets redacted, body made readable.
#[derive(Debug, Clone, Serialize)]
pub struct ShownRequest {
    pub method: String,
    pub url: String,
    pub headers: Vec<(String, String)>,
    /// JSON pretty-printed, a form one field a line, else the text.
    pub body: String,
    pub body_bytes: usize,
    /// Set when the manifest's `allowed_hosts` would refuse this request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub denied_in_daemon: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum TrialError {
    #[error("{0}")]
    Load(#[from] loader::LoadError),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("cannot start the sandbox: {0}")]
    Sandbox(#[from] SandboxError),
    #[error("the plugin does not serve platform `{0}` (it serves: {1})")]
    Platform(String, String),
    #[error("the plugin could not be instantiated: {0}")]
    Instantiate(CallFailure),
}

/// Runs `message` through the plugin at `path` once, answering every
/// request with `answer`.
pub async fn run(
    path: &Path,
    message: TrialMessage,
    answer: CannedAnswer,
    cache_dir: Option<PathBuf>,
) -> Result<TrialReport, TrialError> {
    let recorder = Arc::new(Recorder::new(answer.clone()));
    let settings = SandboxSettings {
        cache_dir,
        max_instances: 16,
        transport: Some(Transport::Recorder(recorder.clone())),
        ..SandboxSettings::default()
    };
    let executor = Executor::new(Arc::new(Sandbox::new(&settings)?));
    let file = PluginFile::read_async(path).await?;
    let manifest = Manifest::load_async(&loader::manifest_path(path)).await?;
    // One call: the baseline compiler's code, made several times sooner,
    // serves it as well (an author runs a trial after every build).
    let compiled = loader::compile(file, &executor, Tier::Baseline).await?;
    let configured = loader::configure(
        &compiled,
        manifest.clone(),
        &executor,
        manifest.limits.unwrap_or_default(),
    )
    .await?;
    let daemon_allow = configured.policy.allow.clone();
    let plugin = Arc::new(configured);
    let platform = match message.platform {
        Some(p) if plugin.platforms.iter().any(|q| *q == p) => p,
        Some(p) => {
            let served: Vec<String> = plugin.platforms.iter().map(|p| p.to_string()).collect();
            return Err(TrialError::Platform(p, served.join(", ")));
        }
        None => plugin.platforms[0].to_string(),
    };
    let task = Task {
        id: TaskId::new(),
        platform: platform.clone(),
        target: message.target,
        destination: None,
        title: message.title,
        body: message.body,
        format: message.format,
        priority: message.priority,
        metadata: message.metadata,
    };
    let mut instance = executor
        .instantiate(plugin.clone())
        .await
        .map_err(TrialError::Instantiate)?;
    let (outcome, _) = executor.call(&mut instance, &task, None).await;
    let secrets: Vec<String> = plugin
        .policy
        .config
        .secret_values()
        .filter(|s| s.len() >= 3)
        .map(str::to_string)
        .collect();
    let requests = recorder
        .requests()
        .into_iter()
        .map(|r| show(r, &secrets, &daemon_allow))
        .collect();
    let mails = recorder
        .mails()
        .into_iter()
        .map(|m| show_mail(m, &secrets, &daemon_allow))
        .collect();
    let reply = answer.smtp_reply();
    Ok(TrialReport {
        plugin: plugin.name.clone(),
        version: plugin.version.clone(),
        platform,
        requests,
        answer_status: answer.status,
        mails,
        smtp_reply: format!("{} {}", reply.code, reply.text),
        outcome,
    })
}

/// `text` with every secret value replaced by `[secret]`.
fn redact(text: &str, secrets: &[String]) -> String {
    secrets
        .iter()
        .fold(text.to_string(), |t, s| t.replace(s.as_str(), "[secret]"))
}

fn show_mail(mail: RecordedMail, secrets: &[String], allow: &AllowList) -> ShownMail {
    let relay = format!("{}:{}", mail.host, mail.port);
    let denied_in_daemon = relay_uri(&mail.host, mail.port)
        .filter(|uri| allow.reach(uri).is_none())
        .map(|_| {
            format!(
                "the manifest's allowed_hosts does not name {relay}: the daemon would refuse this relay"
            )
        });
    ShownMail {
        security: mail.security.to_string(),
        username: mail.username.map(|u| redact(&u, secrets)),
        sender: mail.sender,
        recipients: mail.recipients,
        message: redact(&String::from_utf8_lossy(&mail.message), secrets),
        message_bytes: mail.message.len(),
        relay,
        denied_in_daemon,
    }
}

fn show(request: RecordedRequest, secrets: &[String], allow: &AllowList) -> ShownRequest {
    let redact = |text: &str| redact(text, secrets);
    let denied_in_daemon = request
        .url
        .parse::<http::Uri>()
        .ok()
        .filter(|uri| allow.reach(uri).is_none())
        .map(|uri| {
            format!(
                "the manifest's allowed_hosts does not name {}: the daemon would refuse this request",
                uri.authority().map_or("this host", |a| a.as_str())
            )
        });
    let content_type = request
        .headers
        .iter()
        .find(|(k, _)| k == "content-type")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&request.body).into_owned();
    let body = if content_type.starts_with("application/json") {
        serde_json::from_slice::<serde_json::Value>(&request.body)
            .ok()
            .and_then(|v| serde_json::to_string_pretty(&v).ok())
            .unwrap_or(text)
    } else if content_type.starts_with("application/x-www-form-urlencoded") {
        text.split('&')
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                format!("{} = {}", decode_form(k), decode_form(v))
            })
            .collect::<Vec<_>>()
            .join("\n")
    } else {
        text
    };
    ShownRequest {
        method: request.method,
        url: redact(&request.url),
        headers: request
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), redact(v)))
            .collect(),
        body: redact(&body),
        body_bytes: request.body.len(),
        denied_in_daemon,
    }
}

fn decode_form(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = |b: u8| (b as char).to_digit(16);
                match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                    (Some(high), Some(low)) => {
                        out.push((high * 16 + low) as u8);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
