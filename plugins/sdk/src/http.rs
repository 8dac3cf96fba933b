//! A small blocking HTTP client over the host's `notifyhub:http/client`.
//!
//! A request whose body fits in one call ([`ONE_CALL_MAX_BODY`]: every
//! notification) goes to the host whole and its response comes back whole:
//! one call across the sandbox's boundary where `wasi:http/outgoing-handler`
//! takes about thirty (fields, request, body stream, future, response, body
//! stream), which measured as more of the host's CPU than the plugin's own
//! code. Larger bodies stream through `wasi:http`. Either way the request
//! goes through the host, which enforces the plugin's allowlist, timeouts
//! and response size cap. Transport failures come back as [`SendError`]s
//! already classified, and [`Response::classify`] maps HTTP status codes
//! the way most platforms use them, so a plugin only handles what is
//! special about its platform.

use crate::SendError;
use crate::bindings::notifyhub::http::client as exchange;
use crate::bindings::wasi::http::outgoing_handler;
use crate::bindings::wasi::http::types::{
    ErrorCode, Fields, IncomingBody, Method, OutgoingBody, OutgoingRequest, Scheme,
};
use crate::bindings::wasi::io::streams::StreamError;

/// Responses larger than this are cut off (the host has its own, larger cap).
const MAX_RESPONSE_BYTES: usize = 1 << 20;
/// The largest body the host takes in one call (`wit/deps/notifyhub-http`).
pub const ONE_CALL_MAX_BODY: usize = 512 * 1024;
/// `wasi:io` streams accept at most 4096 bytes per blocking write.
const WRITE_CHUNK: usize = 4096;
/// Used when a 429 carries no usable `Retry-After`.
pub const DEFAULT_RETRY_AFTER_MS: u64 = 1_000;

/// An outgoing request.
#[derive(Debug, Clone)]
pub struct Request {
    method: Method,
    url: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

/// A response with its whole body read.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn post(url: &str) -> Self {
        Self::new(Method::Post, url)
    }

    /// For idempotent APIs that name the resource in the path (Matrix's
    /// transaction ids).
    pub fn put(url: &str) -> Self {
        Self::new(Method::Put, url)
    }

    pub fn get(url: &str) -> Self {
        Self::new(Method::Get, url)
    }

    fn new(method: Method, url: &str) -> Self {
        Request {
            method,
            url: url.to_string(),
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// Sets a header, replacing any earlier value of the same name: a
    /// request never carries one header twice (platforms such as DingTalk
    /// refuse two `Content-Type`s).
    pub fn header(mut self, name: &str, value: impl Into<String>) -> Self {
        let name = name.to_ascii_lowercase();
        self.headers.retain(|(n, _)| *n != name);
        self.headers.push((name, value.into()));
        self
    }

    /// Sets a JSON body and its `content-type`.
    pub fn json_body(self, body: impl Into<Vec<u8>>) -> Self {
        self.body("application/json", body)
    }

    pub fn body(mut self, content_type: &str, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self.header("content-type", content_type)
    }

    /// Sends the request and reads the whole response.
    pub fn send(self) -> Result<Response, SendError> {
        if self.body.len() > ONE_CALL_MAX_BODY {
            return self.stream();
        }
        let Request {
            method,
            url: target,
            headers,
            body,
        } = self;
        let url = Url::parse(&target)?;
        let request = exchange::Request {
            method,
            url: target.clone(),
            headers: headers
                .into_iter()
                .map(|(name, value)| (name, value.into_bytes()))
                .collect(),
            body,
        };
        match exchange::send(&request) {
            Ok(response) => {
                let mut body = response.body;
                body.truncate(MAX_RESPONSE_BYTES);
                Ok(Response {
                    status: response.status,
                    headers: response
                        .headers
                        .into_iter()
                        .map(|(name, value)| (name, String::from_utf8_lossy(&value).into_owned()))
                        .collect(),
                    body,
                })
            }
            Err(exchange::HttpError::Invalid(reason)) => Err(SendError::invalid(format!(
                "the request to {} cannot be sent: {reason}",
                url.redacted()
            ))),
            Err(exchange::HttpError::Transport(code)) => Err(classify_transport(&code, &url)),
        }
    }

    /// Sends through `wasi:http`, the body streamed 4 KiB a write.
    fn stream(self) -> Result<Response, SendError> {
        let url = Url::parse(&self.url)?;
        // A known length spares servers a chunked body, which some
        // (simple ones among them) do not read.
        let length = (!matches!(self.method, Method::Get)).then(|| {
            (
                "content-length".to_string(),
                self.body.len().to_string().into_bytes(),
            )
        });
        let entries: Vec<(String, Vec<u8>)> = self
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), v.as_bytes().to_vec()))
            .chain(length)
            .collect();
        let fields = Fields::from_list(&entries)
            .map_err(|e| SendError::invalid(format!("invalid request header: {e:?}")))?;
        let request = OutgoingRequest::new(fields);
        let scheme = if url.https {
            Scheme::Https
        } else {
            Scheme::Http
        };
        let set = request.set_method(&self.method).is_ok()
            && request.set_scheme(Some(&scheme)).is_ok()
            && request.set_authority(Some(url.authority)).is_ok()
            && request
                .set_path_with_query(Some(url.path_and_query))
                .is_ok();
        if !set {
            return Err(SendError::invalid(format!(
                "invalid request URL {}",
                url.redacted()
            )));
        }
        let body = request
            .body()
            .expect("the body of a new request is taken once");
        let response = outgoing_handler::handle(request, None)
            .map_err(|code| classify_transport(&code, &url))?;

        // A denied or failed request closes the body stream; the response
        // future then carries the real reason, so a write error is not
        // reported on its own.
        if write_body(&body, &self.body).is_ok() {
            let _ = OutgoingBody::finish(body, None);
        }

        response.subscribe().block();
        let incoming = match response.get() {
            Some(Ok(Ok(incoming))) => incoming,
            Some(Ok(Err(code))) => return Err(classify_transport(&code, &url)),
            Some(Err(())) | None => {
                return Err(SendError::retryable("the HTTP response was lost", None));
            }
        };
        let status = incoming.status();
        let headers = incoming
            .headers()
            .entries()
            .into_iter()
            .map(|(k, v)| {
                (
                    k.to_ascii_lowercase(),
                    String::from_utf8_lossy(&v).into_owned(),
                )
            })
            .collect();
        let body = incoming
            .consume()
            .map_err(|()| SendError::retryable("the HTTP response body was already taken", None))
            .and_then(|b| read_body(b, &url))?;
        Ok(Response {
            status,
            headers,
            body,
        })
    }
}

fn write_body(body: &OutgoingBody, bytes: &[u8]) -> Result<(), StreamError> {
    let stream = body.write().expect("the body stream is taken once");
    for chunk in bytes.chunks(WRITE_CHUNK) {
        stream.blocking_write_and_flush(chunk)?;
    }
    Ok(())
}

fn read_body(body: IncomingBody, url: &Url<'_>) -> Result<Vec<u8>, SendError> {
    let mut out = Vec::new();
    {
        let stream = body
            .stream()
            .map_err(|()| SendError::retryable("the HTTP response body was already taken", None))?;
        loop {
            match stream.blocking_read(64 * 1024) {
                Ok(chunk) => {
                    out.extend_from_slice(&chunk);
                    if out.len() >= MAX_RESPONSE_BYTES {
                        out.truncate(MAX_RESPONSE_BYTES);
                        break;
                    }
                }
                Err(StreamError::Closed) => break,
                Err(StreamError::LastOperationFailed(e)) => {
                    return Err(SendError::retryable(
                        format!(
                            "reading the response from {} failed: {}",
                            url.redacted(),
                            e.to_debug_string()
                        ),
                        None,
                    ));
                }
            }
        }
    }
    drop(body);
    Ok(out)
}

/// Maps a `wasi:http` error code to a delivery error class.
fn classify_transport(code: &ErrorCode, url: &Url<'_>) -> SendError {
    let host = url.redacted();
    match code {
        ErrorCode::HttpRequestDenied => SendError::permanent(format!(
            "the host denied the request to {host}: add it to the plugin's allowed_hosts"
        )),
        ErrorCode::HttpRequestUriInvalid | ErrorCode::HttpRequestMethodInvalid => {
            SendError::invalid(format!("the host rejected the request to {host}: {code:?}"))
        }
        other => SendError::retryable(format!("request to {host} failed: {other:?}"), None),
    }
}

impl Response {
    /// The first value of a header (names are compared case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as text (lossy UTF-8).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// `Retry-After` in milliseconds, from delta-seconds (integer or
    /// fractional); HTTP-date values are not supported and yield `None`.
    pub fn retry_after_ms(&self) -> Option<u64> {
        parse_seconds_ms(self.header("retry-after")?)
    }

    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The usual meaning of an unsuccessful status: 429 → rate limited,
    /// 408/425/5xx → retryable, 401/403/404/410 → permanent, other 4xx →
    /// invalid. `Ok(())` for 2xx. Plugins check platform-specific bodies first.
    pub fn classify(&self) -> Result<(), SendError> {
        let detail = || {
            let text = self.text();
            let text = crate::format::truncate(text.trim(), 300);
            if text.is_empty() {
                format!("HTTP {}", self.status)
            } else {
                format!("HTTP {}: {text}", self.status)
            }
        };
        match self.status {
            200..=299 => Ok(()),
            429 => Err(SendError::rate_limited(
                detail(),
                self.retry_after_ms().unwrap_or(DEFAULT_RETRY_AFTER_MS),
            )),
            408 | 425 | 500..=599 => Err(SendError::retryable(detail(), self.retry_after_ms())),
            401 | 403 | 404 | 410 => Err(SendError::permanent(detail())),
            _ => Err(SendError::invalid(detail())),
        }
    }
}

impl Response {
    /// An answer the plugin did not accept, classified by its status as
    /// [`Response::classify`] does, with `detail` (the platform's own error,
    /// read from the body) as the message. A 2xx that reached here (a body
    /// the plugin could not make sense of) is retryable.
    pub fn failure(&self, detail: String) -> SendError {
        match self.classify() {
            Ok(()) => SendError::retryable(detail, None),
            Err(SendError::Permanent(_)) => SendError::permanent(detail),
            Err(SendError::Invalid(_)) => SendError::invalid(detail),
            Err(SendError::Retryable(f)) => SendError::retryable(detail, f.retry_after_ms),
            Err(SendError::RateLimited(r)) => SendError::rate_limited(detail, r.retry_after_ms),
        }
    }

    /// For platforms that answer HTTP 200 with a business code in a JSON
    /// body (DingTalk and WeCom `errcode`/`errmsg`, Feishu `code`/`msg`):
    /// the first of the `code` fields present and a one-line detail naming
    /// the platform. An unsuccessful status is classified first; a body
    /// without any of the code fields is a retryable failure.
    pub fn business_code(
        &self,
        platform: &str,
        code: &[&str],
        message: &[&str],
    ) -> Result<(i64, String), SendError> {
        self.classify()?;
        let answer: serde_json::Value =
            serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null);
        let Some(value) = code.iter().find_map(|field| answer[field].as_i64()) else {
            return Err(SendError::retryable(
                format!(
                    "{platform} answered HTTP {} without a result code",
                    self.status
                ),
                None,
            ));
        };
        let text = message
            .iter()
            .find_map(|field| answer[field].as_str())
            .unwrap_or("(no message)");
        Ok((value, format!("{platform} code {value}: {text}")))
    }
}

/// The longest wait a platform can ask for and get: a `Retry-After` (or
/// reset time, or `retry_after` in a body) beyond it counts as this. The
/// host applies the same bound.
pub const MAX_RETRY_AFTER_MS: u64 = 3_600_000;

/// Parses delta-seconds like `"2"` or `"64.57"` into milliseconds, at most
/// [`MAX_RETRY_AFTER_MS`] (`"1e30"` is an hour, not 10^30 s).
pub fn parse_seconds_ms(value: &str) -> Option<u64> {
    seconds_ms(value.trim().parse().ok()?)
}

/// Seconds (from a header or a JSON body) as milliseconds, at most
/// [`MAX_RETRY_AFTER_MS`]; `None` for a negative or non-finite number.
pub fn seconds_ms(seconds: f64) -> Option<u64> {
    (seconds.is_finite() && seconds >= 0.0)
        .then(|| (seconds * 1000.0).ceil().min(MAX_RETRY_AFTER_MS as f64) as u64)
}

/// Milliseconds from now until a Unix time in seconds (a rate-limit reset
/// header), at least one second and at most [`MAX_RETRY_AFTER_MS`].
pub fn until_unix_ms(reset_unix_seconds: u64) -> u64 {
    reset_unix_seconds
        .saturating_sub(crate::time::unix_seconds())
        .max(1)
        .saturating_mul(1000)
        .min(MAX_RETRY_AFTER_MS)
}

/// The parts of a URL that `wasi:http` needs.
struct Url<'a> {
    https: bool,
    authority: &'a str,
    path_and_query: &'a str,
}

impl<'a> Url<'a> {
    fn parse(url: &'a str) -> Result<Self, SendError> {
        let (https, rest) = if let Some(rest) = url.strip_prefix("https://") {
            (true, rest)
        } else if let Some(rest) = url.strip_prefix("http://") {
            (false, rest)
        } else {
            return Err(SendError::invalid(
                "the target must be an http:// or https:// URL",
            ));
        };
        let split = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(split);
        if authority.is_empty() {
            return Err(SendError::invalid("the target URL has no host"));
        }
        let path_and_query = if path.is_empty() { "/" } else { path };
        Ok(Url {
            https,
            authority,
            path_and_query,
        })
    }

    /// Scheme and host only: paths of webhook URLs carry credentials.
    fn redacted(&self) -> String {
        format!(
            "{}://{}",
            if self.https { "https" } else { "http" },
            self.authority
        )
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_retry_after() {
        assert_eq!(super::parse_seconds_ms("2"), Some(2000));
        assert_eq!(super::parse_seconds_ms("64.57"), Some(64570));
        assert_eq!(super::parse_seconds_ms("soon"), None);
        assert_eq!(
            super::parse_seconds_ms("1e30"),
            Some(super::MAX_RETRY_AFTER_MS)
        );
        assert_eq!(super::parse_seconds_ms("-5"), None);
        assert_eq!(super::parse_seconds_ms("inf"), None);
        assert_eq!(super::until_unix_ms(u64::MAX), super::MAX_RETRY_AFTER_MS);
        assert_eq!(super::until_unix_ms(0), 1000);
    }
}
