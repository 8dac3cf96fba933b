//! Outbound HTTP for plugins: policy and a shared keep-alive client.
//!
//! Every request a plugin makes through `wasi:http/outgoing-handler` reaches
//! [`OutboundHttp::send_request`] (wasmtime-wasi-http's `WasiHttpHooks`), as
//! does every one made in one call through `notifyhub:http/client`
//! ([`OutboundHttp::exchange`]). It checks the plugin's [`AllowList`] and
//! per-task request budget, then
//! sends through one pooled client shared by all plugins, so deliveries to the
//! same platform reuse TCP (and TLS) connections instead of opening one per
//! request. Redirects are not followed by the host; a plugin that follows one
//! sends a new request, which is checked again.
//!
//! SSRF: a request the allowlist permits only through a wildcard goes
//! through a client whose resolver drops loopback, private and link-local
//! addresses ([`PublicResolver`]), so a public-looking name that resolves
//! inward is refused after resolution, where the allowlist alone cannot
//! see it. Requests to hosts the allowlist names go through a client that
//! resolves normally.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::{GaiResolver, Name};
use hyper_util::rt::TokioExecutor;
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};

use super::allowlist::{AllowList, Reach, is_internal_ip};
use super::recorder::Recorder;
use crate::redact;
use crate::telemetry::attempt::in_attempt;

/// The largest request body a [`Recorder`] keeps.
const MAX_RECORDED_BODY: usize = 16 << 20;

type Connector<R> = hyper_rustls::HttpsConnector<HttpConnector<R>>;

/// The pooled clients shared by every plugin call: one for hosts the
/// allowlist names, one that reaches public addresses only.
#[derive(Clone)]
pub struct HttpClient {
    any: Client<Connector<GaiResolver>, WasiBody>,
    public: Client<Connector<PublicResolver>, WasiBody>,
}

impl HttpClient {
    pub fn new() -> Self {
        HttpClient {
            any: client(GaiResolver::new()),
            public: client(PublicResolver(GaiResolver::new())),
        }
    }
}

/// Idle connections kept per host: one for every delivery that may be in
/// flight to it, that is one per worker at the pool's ceiling
/// (`pool::MAX_WORKERS`, which a unit test there keeps equal). With
/// fewer, a pool running more workers than that closes and reopens
/// connections on every burst. Written here, not imported, because the
/// pool sits above the sandbox.
pub const MAX_IDLE_PER_HOST: usize = 4096;

fn client<R>(resolver: R) -> Client<Connector<R>, WasiBody>
where
    R: tower_service::Service<Name> + Clone + Send + Sync + 'static,
    R::Response: Iterator<Item = SocketAddr>,
    R::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    R::Future: Send,
{
    let mut http = HttpConnector::new_with_resolver(resolver);
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(Duration::from_secs(10)));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(MAX_IDLE_PER_HOST)
        .build(https)
}

/// Resolves names like the system does, then drops internal addresses.
#[derive(Clone)]
pub struct PublicResolver(GaiResolver);

/// A name resolved only to loopback, private or link-local addresses.
#[derive(Debug, thiserror::Error)]
#[error("{0} resolves only to internal addresses")]
pub struct InternalAddress(String);

impl tower_service::Service<Name> for PublicResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future =
        Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send + 'static>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let lookup = self.0.call(name.clone());
        Box::pin(async move {
            let public: Vec<SocketAddr> = lookup
                .await?
                .filter(|addr| !is_internal_ip(addr.ip()))
                .collect();
            if public.is_empty() {
                return Err(InternalAddress(name.as_str().to_string()).into());
            }
            Ok(public.into_iter())
        })
    }
}

/// Whether `error` (or what caused it) is an [`InternalAddress`].
fn is_internal_address(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if e.is::<InternalAddress>() {
            return true;
        }
        cause = e.source();
    }
    false
}

impl Default for HttpClient {
    fn default() -> Self {
        Self::new()
    }
}

/// Where plugins' requests go.
#[derive(Clone)]
pub enum Transport {
    /// Out to the network, through the pooled clients (shared: every
    /// store and every request holds the same two).
    Network(Arc<HttpClient>),
    /// Nowhere: recorded and answered with a canned response (`notifyhub try`).
    Recorder(Arc<Recorder>),
}

/// Per-call HTTP policy: the `WasiHttpHooks` of one plugin store.
pub struct OutboundHttp {
    transport: Transport,
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
        transport: Transport,
        allow: Arc<AllowList>,
        plugin: Arc<str>,
        timeout: Duration,
        max_response_bytes: u64,
        max_requests: u32,
    ) -> Self {
        OutboundHttp {
            transport,
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
        in_attempt(|| {
            tracing::warn!(
                plugin = %self.plugin,
                task = self.task.as_deref().unwrap_or("-"),
                url = %redact::target(&uri.to_string()),
                "outbound request denied: {reason}"
            )
        });
        HttpError::HttpRequestDenied
    }

    /// A request made in one call (`notifyhub:http/client`, see
    /// `sandbox::exchange`): the same checks and clients as a `wasi:http`
    /// request's. Answers once the response's head has arrived.
    pub(crate) async fn exchange(
        &mut self,
        request: http::Request<WasiBody>,
    ) -> Result<http::Response<WasiBody>, HttpError> {
        let send = self.send_request(request, None, Box::new(async { Ok(()) }));
        Box::into_pin(send).await.map(|(response, _)| response)
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
        let reach = self.allow.reach(&uri);
        // A recorder sends nothing: `notifyhub try` shows every request and
        // flags the ones the daemon's allowlist would refuse.
        let recording = matches!(self.transport, Transport::Recorder(_));
        let verdict = match reach {
            None if !recording => Err(self.deny(&uri, "host not in allowed_hosts")),
            _ if self.requests_left == 0 => {
                Err(self.deny(&uri, "request budget for this task used up"))
            }
            _ => {
                self.requests_left -= 1;
                Ok(())
            }
        };
        let client = match &self.transport {
            Transport::Network(client) => Arc::clone(client),
            Transport::Recorder(recorder) => {
                let recorder = recorder.clone();
                return Box::new(async move {
                    verdict?;
                    let response = recorder.answer(request, MAX_RECORDED_BODY).await?;
                    Ok((response, Box::new(async { Ok(()) }) as IoFuture))
                });
            }
        };
        let (plugin, task) = (self.plugin.clone(), self.task.clone());
        let max_bytes = self.max_response_bytes;
        let timeout = options
            .and_then(|o| o.first_byte_timeout)
            .map_or(self.timeout, |t| t.min(self.timeout));
        Box::new(async move {
            verdict?;
            let send = async {
                let (head, body) = request.into_parts();
                let request =
                    http::Request::from_parts(head, Primed::new(body).await?.boxed_unsync());
                Ok::<_, HttpError>(match reach {
                    Some(Reach::Any) => client.any.request(request).await,
                    _ => client.public.request(request).await,
                })
            };
            let response = tokio::time::timeout(timeout, send)
                .await
                .map_err(|_| HttpError::ConnectionReadTimeout)??
                .map_err(|e| {
                    let url = redact::target(&uri.to_string());
                    if is_internal_address(&e) {
                        tracing::warn!(
                            plugin = %plugin,
                            task = task.as_deref().unwrap_or("-"),
                            url = %url,
                            "outbound request denied: the host resolves to an internal address \
                             and only a wildcard allows it (name it in allowed_hosts to allow it)"
                        );
                        return HttpError::HttpRequestDenied;
                    }
                    tracing::debug!(url = %url, "request failed: {e:?}");
                    if e.is_connect() {
                        HttpError::ConnectionRefused
                    } else {
                        HttpError::HttpProtocolError
                    }
                })?;
            let response = response.map(|body| CappedBody::new(body, max_bytes).boxed_unsync());
            Ok((response, Box::new(async { Ok(()) }) as IoFuture))
        })
    }
}

/// A request body whose first frame has arrived. The guest writes the body
/// after `handle` returns; handed over before it, hyper wrote the request's
/// head at once and the body in a second write, so the platform's side got
/// two segments and woke twice. Waiting for the first frame, a small body
/// (a webhook's JSON) goes out with the head in one write.
struct Primed {
    first: Option<Frame<Bytes>>,
    /// `None` once the body ended.
    rest: Option<WasiBody>,
}

impl Primed {
    async fn new(mut body: WasiBody) -> Result<Self, HttpError> {
        Ok(match body.frame().await.transpose()? {
            Some(first) => Primed {
                first: Some(first),
                rest: Some(body),
            },
            None => Primed {
                first: None,
                rest: None,
            },
        })
    }
}

impl Body for Primed {
    type Data = Bytes;
    type Error = HttpError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, HttpError>>> {
        if let Some(first) = self.first.take() {
            return Poll::Ready(Some(Ok(first)));
        }
        match &mut self.rest {
            Some(rest) => Pin::new(rest).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.first.is_none() && self.rest.as_ref().is_none_or(|r| r.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        let first = self
            .first
            .as_ref()
            .and_then(Frame::data_ref)
            .map_or(0, |d| d.len() as u64);
        let rest = self
            .rest
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint);
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower().saturating_add(first));
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper.saturating_add(first));
        }
        hint
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
