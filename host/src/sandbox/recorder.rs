//! A transport that sends nothing: it records each request a plugin makes
//! (HTTP requests and SMTP messages) and answers it with a canned response.
//!
//! `notifyhub try` runs a plugin through it to show exactly what the plugin
//! would send and how it would classify a given answer, with no daemon and
//! no network. Everything else about the call — the allowlist, the request
//! budget, the deadline, the memory cap — applies as it does in the daemon.

use std::sync::Mutex;

use bytes::Bytes;
use http_body_util::BodyExt;
use wasmtime_wasi_http::{Error as HttpError, WasiBody};

use crate::bindings::smtp::{Envelope, Relay, Reply, Security, SmtpError};

/// The response every recorded request gets.
#[derive(Debug, Clone)]
pub struct CannedAnswer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    /// The reply code every SMTP message gets (to DATA).
    pub smtp_code: u16,
}

impl Default for CannedAnswer {
    fn default() -> Self {
        CannedAnswer {
            status: 200,
            headers: Vec::new(),
            body: Bytes::new(),
            smtp_code: 250,
        }
    }
}

impl CannedAnswer {
    /// The canned SMTP reply: the code, with the text a relay typically
    /// gives for it.
    pub fn smtp_reply(&self) -> Reply {
        let text = match self.smtp_code {
            200..=299 => "2.0.0 Ok: queued as TRY",
            421 => "4.3.2 Service not available, closing transmission channel",
            450 | 451 => "4.3.0 Requested action aborted: try again later",
            452 => "4.5.3 Too many messages, slow down",
            535 => "5.7.8 Authentication credentials invalid",
            550 => "5.1.1 Recipient address rejected: User unknown",
            552 => "5.3.4 Message size exceeds fixed limit",
            553 => "5.1.3 Mailbox name not allowed",
            400..=499 => "4.0.0 Transient failure",
            _ => "5.0.0 Permanent failure",
        };
        Reply {
            code: self.smtp_code,
            text: text.to_string(),
        }
    }
}

/// One SMTP message as the plugin handed it to the host.
#[derive(Debug, Clone)]
pub struct RecordedMail {
    pub host: String,
    pub port: u16,
    pub security: &'static str,
    /// The AUTH user; the password is never kept.
    pub username: Option<String>,
    pub sender: Option<String>,
    pub recipients: Vec<String>,
    pub message: Bytes,
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
    mails: Mutex<Vec<RecordedMail>>,
}

impl Recorder {
    pub fn new(answer: CannedAnswer) -> Self {
        Recorder {
            answer,
            requests: Mutex::default(),
            mails: Mutex::default(),
        }
    }

    /// The SMTP messages recorded so far, in order.
    pub fn mails(&self) -> Vec<RecordedMail> {
        self.mails.lock().expect("never poisoned").clone()
    }

    /// Records one SMTP message (already checked by `sandbox::smtp`) and
    /// answers with the canned reply.
    pub(super) fn mail(
        &self,
        relay: &Relay,
        envelope: &Envelope,
        message: Vec<u8>,
    ) -> Result<Reply, SmtpError> {
        self.mails
            .lock()
            .expect("never poisoned")
            .push(RecordedMail {
                host: relay.host.clone(),
                port: relay.port,
                security: match relay.security {
                    Security::ImplicitTls => "TLS",
                    Security::Starttls => "STARTTLS",
                    Security::None => "no TLS",
                },
                username: relay.credentials.as_ref().map(|c| c.username.clone()),
                sender: envelope.sender.clone(),
                recipients: envelope.recipients.clone(),
                message: message.into(),
            });
        let reply = self.answer.smtp_reply();
        if reply.code < 400 {
            Ok(reply)
        } else {
            Err(SmtpError::Rejected(reply))
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
