//! Outbound HTTP for plugins: policy and a shared keep-alive client.
//!
//! Every request a plugin makes through `wasi:http/outgoing-handler` reaches
//! [`OutboundHttp::send_request`] (wasmtime-wasi-http's `WasiHttpHooks`),
//! which checks the plugin's [`AllowList`] and per-task request budget, then
//! sends through one pooled client shared by all plugins, so deliveries to the
//! same platform reuse TCP (and TLS) connections instead of opening one per
//! request. Redirects are not followed by the host; a plugin that follows one
//! sends a new request, which is checked again.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};

use super::allowlist::AllowList;
use crate::redact;

type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

/// The pooled client shared by every plugin call.
#[derive(Clone)]
pub struct HttpClient {
    client: Client<Connector, WasiBody>,
}

impl HttpClient {
    pub fn new() -> Self {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(Duration::from_secs(10)));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(64)
            .build(https);
        HttpClient { client }
    }
}

impl Default for HttpClient {
    fn default() -> Self {
        Self::new()
    }
}

/// Per-call HTTP policy: the `WasiHttpHooks` of one plugin store.
pub struct OutboundHttp {
    client: HttpClient,
    allow: Arc<AllowList>,
    plugin: Arc<str>,
    task: Option<String>,
    timeout: Duration,
    max_response_bytes: u64,
    max_requests: u32,
    requests_left: u32,
}

impl OutboundHttp {
    pub fn new(
        client: HttpClient,
        allow: Arc<AllowList>,
        plugin: Arc<str>,
        timeout: Duration,
        max_response_bytes: u64,
        max_requests: u32,
    ) -> Self {
        OutboundHttp {
            client,
            allow,
            plugin,
            task: None,
            timeout,
            max_response_bytes,
            max_requests,
            requests_left: max_requests,
        }
    }

    /// Resets the per-task budget before a call for `task`.
    pub(crate) fn begin_task(&mut self, task: Option<String>) {
        self.task = task;
        self.requests_left = self.max_requests;
    }

    fn deny(&self, uri: &http::Uri, reason: &str) -> HttpError {
        tracing::warn!(
            plugin = %self.plugin,
            task = self.task.as_deref().unwrap_or("-"),
            url = %redact::target(&uri.to_string()),
            "outbound request denied: {reason}"
        );
        HttpError::HttpRequestDenied
    }
}

type IoFuture = Box<dyn Future<Output = Result<(), HttpError>> + Send>;
type SendFuture =
    Box<dyn Future<Output = Result<(http::Response<WasiBody>, IoFuture), HttpError>> + Send>;

impl WasiHttpHooks for OutboundHttp {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: IoFuture,
    ) -> SendFuture {
        let uri = request.uri().clone();
        let verdict = if !self.allow.permits(&uri) {
            Err(self.deny(&uri, "host not in allowed_hosts"))
        } else if self.requests_left == 0 {
            Err(self.deny(&uri, "request budget for this task used up"))
        } else {
            self.requests_left -= 1;
            Ok(())
        };
        let client = self.client.client.clone();
        let max_bytes = self.max_response_bytes;
        let timeout = options
            .and_then(|o| o.first_byte_timeout)
            .map_or(self.timeout, |t| t.min(self.timeout));
        Box::new(async move {
            verdict?;
            let response = tokio::time::timeout(timeout, client.request(request))
                .await
                .map_err(|_| HttpError::ConnectionReadTimeout)?
                .map_err(|e| {
                    tracing::debug!(url = %redact::target(&uri.to_string()), "request failed: {e:?}");
                    if e.is_connect() { HttpError::ConnectionRefused } else { HttpError::HttpProtocolError }
                })?;
            let response = response.map(|body| CappedBody::new(body, max_bytes).boxed_unsync());
            Ok((response, Box::new(async { Ok(()) }) as IoFuture))
        })
    }
}

/// A response body that fails once it grows past `max_bytes`.
struct CappedBody {
    inner: hyper::body::Incoming,
    remaining: u64,
    max_bytes: u64,
}

impl CappedBody {
    fn new(inner: hyper::body::Incoming, max_bytes: u64) -> Self {
        CappedBody {
            inner,
            remaining: max_bytes,
            max_bytes,
        }
    }
}

impl Body for CappedBody {
    type Data = Bytes;
    type Error = HttpError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, HttpError>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let len = frame.data_ref().map_or(0, |d| d.len() as u64);
                if len > self.remaining {
                    return Poll::Ready(Some(Err(HttpError::HttpResponseBodySize(Some(
                        self.max_bytes,
                    )))));
                }
                self.remaining -= len;
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(HttpError::from(e)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
