//! A transport that sends nothing: it records each request a plugin makes
//! and answers it with a canned response.
//!
//! `notifyhub try` runs a plugin through it to show exactly what the plugin
//! would send and how it would classify a given answer, with no daemon and
//! no network. Everything else about the call — the allowlist, the request
//! budget, the deadline, the memory cap — applies as it does in the daemon.

use std::sync::Mutex;

use bytes::Bytes;
use http_body_util::BodyExt;
use wasmtime_wasi_http::{Error as HttpError, WasiBody};

/// The response every recorded request gets.
#[derive(Debug, Clone)]
pub struct CannedAnswer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl Default for CannedAnswer {
    fn default() -> Self {
        CannedAnswer {
            status: 200,
            headers: Vec::new(),
            body: Bytes::new(),
        }
    }
}

/// One request as the plugin made it.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub method: String,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

/// Records requests and answers them.
#[derive(Debug, Default)]
pub struct Recorder {
    answer: CannedAnswer,
    requests: Mutex<Vec<RecordedRequest>>,
}

impl Recorder {
    pub fn new(answer: CannedAnswer) -> Self {
        Recorder {
            answer,
            requests: Mutex::default(),
        }
    }

    /// The requests recorded so far, in order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.requests.lock().expect("never poisoned").clone()
    }

    /// Reads the whole request (at most `max_body` bytes of it), records it
    /// and builds the canned answer.
    pub(super) async fn answer(
        &self,
        request: http::Request<WasiBody>,
        max_body: usize,
    ) -> Result<http::Response<WasiBody>, HttpError> {
        let (parts, body) = request.into_parts();
        let body = http_body_util::Limited::new(body, max_body)
            .collect()
            .await
            .map_err(|_| HttpError::HttpRequestBodySize(Some(max_body as u64)))?
            .to_bytes();
        self.requests
            .lock()
            .expect("never poisoned")
            .push(RecordedRequest {
                method: parts.method.to_string(),
                url: parts.uri.to_string(),
                headers: parts
                    .headers
                    .iter()
                    .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into()))
                    .collect(),
                body,
            });
        let mut response = http::Response::builder().status(self.answer.status);
        for (name, value) in &self.answer.headers {
            response = response.header(name, value);
        }
        let body = http_body_util::Full::new(self.answer.body.clone())
            .map_err(|never| match never {})
            .boxed_unsync();
        response
            .body(body)
            .map_err(|_| HttpError::HttpProtocolError)
    }
}
