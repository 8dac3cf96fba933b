//! The socket protocol: newline-delimited JSON, decoded once into typed
//! requests.
//!
//! Every request is one JSON object on one line with an `op` and an optional
//! `id` (any JSON value), which the response echoes. A response is
//! `{"id":…,"ok":true,"result":{…}}` or
//! `{"id":…,"ok":false,"error":{"code":"…","message":"…"}}`. Responses on one
//! connection may arrive out of order when requests wait (`submit` with
//! `wait: true`); match them by `id`. `docs/protocol.md` has examples.
//!
//! This module knows nothing of queues or plugins' code: it turns bytes
//! into [`Request`]s and [`Response`]s into bytes. Every value is decoded
//! here, once, into a type that bounds it — task ids, states, platform and
//! plugin names, delays and times ([`values`]) — so an operation never parses
//! a string again and never sees a value it cannot store and render. The
//! line itself is parsed strictly ([`json`]): an object that names a key twice
//! is refused. The answers' shapes are in [`views`].

pub mod json;
pub mod values;
pub mod views;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

pub use self::values::{Delay, DeliverAt, ListLimit, MAX_LIST_LIMIT, MAX_SCHEDULE_AHEAD};
pub use self::views::{
    AttemptView, BrokerView, Change, ConsumerView, EventView, HostView, LoadErrorView, PluginView,
    PluginsView, ReloadResult, StatusView, TaskView, WatchLine,
};
use crate::plugin::PluginName;
pub use crate::pool::{MAX_WORKERS, WorkerCount};
pub use crate::task::MAX_RETRY_AFTER;
use crate::task::{Format, PlatformName, Priority, TaskId, TaskState};
pub use crate::time::format_time;

/// Lines longer than this are rejected with [`ErrorCode::LineTooLong`].
pub const DEFAULT_MAX_LINE_BYTES: usize = 1 << 20;

/// A decoded request.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Submit one task (`task`) or several (`tasks`).
    Submit(Submit),
    /// Look up one task, with its attempts.
    Task {
        task_id: TaskId,
    },
    /// List tasks, newest first.
    Tasks {
        #[serde(default)]
        state: Option<TaskState>,
        #[serde(default)]
        platform: Option<PlatformName>,
        #[serde(default)]
        limit: Option<ListLimit>,
    },
    /// Re-queue a dead task (`task_id`) or every dead task (`dead: true`).
    Retry {
        #[serde(default)]
        task_id: Option<TaskId>,
        #[serde(default)]
        dead: bool,
    },
    /// Pool and worker statistics.
    Status,
    /// Loaded plugins and load errors.
    Plugins,
    /// Changes the pool's worker bounds at run time.
    Scale {
        #[serde(default)]
        min: Option<WorkerCount>,
        #[serde(default)]
        max: Option<WorkerCount>,
    },
    /// Reloads one plugin (by file stem) or the whole plugin directory.
    Reload {
        #[serde(default)]
        name: Option<PluginName>,
    },
    /// Streams task events as they happen, until the connection closes.
    Watch(WatchFilter),
    /// Re-reads the config file and applies what can change while running.
    #[serde(rename = "reload-config")]
    ReloadConfig,
    Ping,
}

/// Which events a `watch` wants; every field left out matches all.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatchFilter {
    #[serde(default)]
    pub platform: Option<PlatformName>,
    /// A configured destination's name.
    #[serde(default)]
    pub destination: Option<String>,
    #[serde(default)]
    pub state: Option<TaskState>,
}

impl Request {
    /// The op's name, as on the wire.
    pub fn op(&self) -> &'static str {
        match self {
            Request::Submit(_) => "submit",
            Request::Task { .. } => "task",
            Request::Tasks { .. } => "tasks",
            Request::Retry { .. } => "retry",
            Request::Status => "status",
            Request::Plugins => "plugins",
            Request::Scale { .. } => "scale",
            Request::Reload { .. } => "reload",
            Request::Watch(_) => "watch",
            Request::ReloadConfig => "reload-config",
            Request::Ping => "ping",
        }
    }
}

/// The names of the ops, for error messages.
pub const OPS: &[&str] = &[
    "submit",
    "task",
    "tasks",
    "retry",
    "status",
    "plugins",
    "scale",
    "reload",
    "watch",
    "reload-config",
    "ping",
];

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Submit {
    #[serde(default)]
    task: Option<NewTask>,
    #[serde(default)]
    tasks: Option<Vec<NewTask>>,
    /// Answer only when every submitted task has finished.
    #[serde(default)]
    pub wait: bool,
}

impl Submit {
    /// The submitted tasks, however they were given.
    pub fn into_tasks(self) -> Vec<NewTask> {
        self.task
            .into_iter()
            .chain(self.tasks.into_iter().flatten())
            .collect()
    }
}

/// A task as a client submits it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewTask {
    /// Required unless `target` names a configured destination.
    #[serde(default)]
    pub platform: Option<PlatformName>,
    /// A raw target (webhook URL, chat id, …) or a destination's name.
    pub target: String,
    #[serde(default)]
    pub title: Option<String>,
    pub body: String,
    #[serde(default)]
    pub format: Format,
    #[serde(default)]
    pub priority: Priority,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// A second submit with the same key (within the store's window)
    /// returns the first task's id and is not delivered again.
    #[serde(default)]
    pub idempotency_key: Option<String>,
    /// Not before this time (RFC 3339).
    #[serde(default)]
    pub deliver_at: Option<DeliverAt>,
    /// Not before this long from now (`"90s"`, `"5m"`).
    #[serde(default)]
    pub delay: Option<Delay>,
}

/// What went wrong with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The line is not a JSON object.
    MalformedJson,
    /// `op` names no operation.
    UnknownOp,
    /// A field is missing, unknown or of the wrong type.
    InvalidRequest,
    /// No loaded plugin serves the platform.
    UnknownPlatform,
    /// The line exceeds the size limit.
    LineTooLong,
    /// The task id is unknown.
    NotFound,
    /// The daemon cannot take more work right now; try again later.
    Busy,
    /// The daemon is shutting down.
    ShuttingDown,
    /// The peer may not use the socket.
    Forbidden,
    /// The task store cannot be written (a full disk, say); nothing was
    /// accepted. Retry later.
    Unavailable,
    /// A bug in the daemon; the request may or may not have taken effect.
    Internal,
}

impl ErrorCode {
    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::MalformedJson => "malformed_json",
            ErrorCode::UnknownOp => "unknown_op",
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::UnknownPlatform => "unknown_platform",
            ErrorCode::LineTooLong => "line_too_long",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Busy => "busy",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
        }
    }
}

/// An error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{}: {message}", code.as_str())]
pub struct ErrorBody {
    pub code: ErrorCode,
    pub message: String,
}

impl ErrorBody {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ErrorBody {
            code,
            message: message.into(),
        }
    }
}

/// An answer's `result`, rendered once: the daemon serializes each answer
/// straight from its typed view into JSON text, and the line that carries
/// it copies that text as it is (no tree of `Value`s in between).
pub type Reply = Box<RawValue>;

/// Renders `value` as a [`Reply`]. Rendering a view cannot fail (every
/// map in one has string keys); should it ever, the answer says so rather
/// than the daemon failing.
pub fn reply(value: &impl Serialize) -> Reply {
    serde_json::value::to_raw_value(value).unwrap_or_else(|e| {
        let text = serde_json::json!({ "unrenderable": e.to_string() }).to_string();
        RawValue::from_string(text).expect("a rendered value is JSON")
    })
}

/// A response line. The daemon writes `Response<Reply>`; a client reads
/// `Response` (the result as a [`Value`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response<R = Value> {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Value>,
    pub ok: bool,
    #[serde(default = "none", skip_serializing_if = "Option::is_none")]
    pub result: Option<R>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
}

fn none<R>() -> Option<R> {
    None
}

impl<R> Response<R> {
    pub fn failure(id: Option<Value>, error: ErrorBody) -> Self {
        Response {
            id,
            ok: false,
            result: None,
            error: Some(error),
        }
    }
}

impl Response<Reply> {
    pub fn success(id: Option<Value>, result: Reply) -> Self {
        Response {
            id,
            ok: true,
            result: Some(result),
            error: None,
        }
    }

    /// The response as one line, newline included.
    pub fn to_line(&self) -> Vec<u8> {
        let mut line = serde_json::to_vec(self).expect("responses serialize");
        line.push(b'\n');
        line
    }
}

/// Decodes one line (without its newline). On failure the error carries the
/// request's `id` when it could be read, so the answer can still echo it.
pub fn decode(line: &[u8]) -> Result<(Option<Value>, Request), (Option<Value>, ErrorBody)> {
    let value: Value = json::parse(line).map_err(|e| {
        (
            None,
            ErrorBody::new(
                ErrorCode::MalformedJson,
                format!("the line is not valid JSON: {e}"),
            ),
        )
    })?;
    let Value::Object(mut object) = value else {
        return Err((
            None,
            ErrorBody::new(ErrorCode::MalformedJson, "a request must be a JSON object"),
        ));
    };
    let id = object.remove("id");
    let op = match object.get("op") {
        Some(Value::String(op)) => op.clone(),
        Some(_) => {
            return Err((
                id,
                ErrorBody::new(ErrorCode::InvalidRequest, "`op` must be a string"),
            ));
        }
        None => {
            return Err((
                id,
                ErrorBody::new(ErrorCode::InvalidRequest, "missing field `op`"),
            ));
        }
    };
    if !OPS.contains(&op.as_str()) {
        let message = format!("unknown op `{op}`; expected one of: {}", OPS.join(", "));
        return Err((id, ErrorBody::new(ErrorCode::UnknownOp, message)));
    }
    match serde_json::from_value::<Request>(Value::Object(object)) {
        Ok(request) => Ok((id, request)),
        Err(e) => Err((
            id,
            ErrorBody::new(ErrorCode::InvalidRequest, format!("op `{op}`: {e}")),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn code(line: &str) -> ErrorCode {
        decode(line.as_bytes()).unwrap_err().1.code
    }

    #[test]
    fn decodes_a_submit_with_defaults() {
        let (id, request) = decode(
            br#"{"id":7,"op":"submit","task":{"platform":"slack","target":"t","body":"b"}}"#,
        )
        .unwrap();
        assert_eq!(id, Some(json!(7)));
        let Request::Submit(submit) = request else {
            panic!("not a submit")
        };
        assert!(!submit.wait);
        let tasks = submit.into_tasks();
        assert_eq!(tasks.len(), 1);
        assert_eq!(tasks[0].format, Format::Text);
        assert_eq!(tasks[0].priority, Priority::Normal);
    }

    #[test]
    fn classifies_bad_lines() {
        assert_eq!(code("{not json"), ErrorCode::MalformedJson);
        assert_eq!(code("[1,2]"), ErrorCode::MalformedJson);
        assert_eq!(code(r#"{"id":1}"#), ErrorCode::InvalidRequest);
        assert_eq!(code(r#"{"op":"explode"}"#), ErrorCode::UnknownOp);
        assert_eq!(code(r#"{"op":"task"}"#), ErrorCode::InvalidRequest);
        assert_eq!(
            code(r#"{"op":"task","task_id":"nope"}"#),
            ErrorCode::InvalidRequest
        );
        assert_eq!(
            code(r#"{"op":"reload","name":"../x/evil"}"#),
            ErrorCode::InvalidRequest
        );
        assert_eq!(
            code(r#"{"op":"scale","min":1000000000000,"max":1000000000000}"#),
            ErrorCode::InvalidRequest
        );
        assert_eq!(
            code(
                r#"{"op":"submit","task":{"platform":"x","target":"t","body":"b","delay":"18446744073709551615s"}}"#
            ),
            ErrorCode::InvalidRequest
        );
        assert_eq!(
            code(r#"{"op":"submit","task":{"platform":"x","target":"t","body":"a","body":"b"}}"#),
            ErrorCode::MalformedJson
        );
        assert_eq!(
            code(r#"{"op":"tasks","state":"zombie"}"#),
            ErrorCode::InvalidRequest
        );
        assert_eq!(
            code(r#"{"op":"submit","task":{"platform":"x","target":"t"}}"#),
            ErrorCode::InvalidRequest
        );
        assert_eq!(
            code(r#"{"op":"submit","task":{"platform":"x","target":"t","body":"b","colour":1}}"#),
            ErrorCode::InvalidRequest
        );
    }

    #[test]
    fn error_codes_print_as_on_the_wire() {
        for code in [
            ErrorCode::MalformedJson,
            ErrorCode::LineTooLong,
            ErrorCode::ShuttingDown,
        ] {
            assert_eq!(serde_json::to_value(code).unwrap(), json!(code.as_str()));
        }
    }

    #[test]
    fn echoes_the_id_of_a_bad_request() {
        let (id, error) = decode(br#"{"id":"abc","op":"nope"}"#).unwrap_err();
        assert_eq!(id, Some(json!("abc")));
        assert_eq!(error.code, ErrorCode::UnknownOp);
    }
}
