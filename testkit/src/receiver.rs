//! A local HTTP server that stands in for a platform.
//!
//! It listens on 127.0.0.1 on a free port, records every request in full and
//! answers through a handler the test supplies, so a test can check a request
//! exactly as the platform would and reply with the platform's success or
//! error shapes (429 + `Retry-After`, 5xx, errors inside HTTP 200 bodies).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::sync::Notify;

/// One request as received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub headers: http::HeaderMap,
    pub body: Bytes,
    pub at: Instant,
}

impl Recorded {
    /// A field of a `application/x-www-form-urlencoded` body, decoded.
    pub fn form(&self, key: &str) -> Option<String> {
        let body = String::from_utf8_lossy(&self.body).into_owned();
        body.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            (k == key).then(|| percent_decode(v))
        })
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body parsed as JSON (`Null` if it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// What the receiver answers.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
    pub delay: Duration,
}

impl Reply {
    pub fn new(status: u16, body: impl Into<String>) -> Self {
        Reply {
            status,
            headers: Vec::new(),
            body: body.into(),
            delay: Duration::ZERO,
        }
    }

    pub fn json(status: u16, body: serde_json::Value) -> Self {
        Self::new(status, body.to_string()).header("content-type", "application/json")
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Answers only after `delay`, like a slow platform.
    pub fn after(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

type Handler = Arc<dyn Fn(&Recorded) -> Reply + Send + Sync>;

/// A running receiver; stops when dropped.
pub struct Receiver {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<Recorded>>>,
    /// TCP connections accepted so far.
    connections: Arc<std::sync::atomic::AtomicU64>,
    arrived: Arc<Arrivals>,
    task: tokio::task::JoinHandle<()>,
}

/// Wakes whoever waits for a count of requests, once that count is reached.
/// Woken on every arrival, a bench waiting for 20,000 deliveries woke 20,000
/// times, taking the requests' lock each time, on the cores the daemon
/// under test shares.
struct Arrivals {
    notify: Notify,
    /// The smallest count a waiter waits for; `usize::MAX` when none does.
    wanted: AtomicUsize,
}

impl Arrivals {
    fn new() -> Self {
        Arrivals {
            notify: Notify::new(),
            wanted: AtomicUsize::new(usize::MAX),
        }
    }

    /// Called with the count after each arrival.
    fn arrived(&self, count: usize) {
        if count >= self.wanted.load(Ordering::SeqCst) {
            // Every waiter wakes, checks its own count and asks again.
            self.wanted.store(usize::MAX, Ordering::SeqCst);
            self.notify.notify_waiters();
        }
    }
}

/// Connections waiting to be accepted (the kernel caps it at
/// `net.core.somaxconn`).
const LISTEN_BACKLOG: u32 = 4096;

impl Receiver {
    /// Starts a receiver on 127.0.0.1 that answers every request with `handler`.
    pub async fn start(handler: impl Fn(&Recorded) -> Reply + Send + Sync + 'static) -> Self {
        // A platform's servers queue thousands of connections; tokio's
        // default backlog (1,024) dropped the connects of a pool opening
        // more at once, which then waited a second for the SYN's retry.
        let socket = tokio::net::TcpSocket::new_v4().expect("a TCP socket");
        socket
            .bind("127.0.0.1:0".parse().unwrap())
            .expect("binding 127.0.0.1");
        let listener = socket
            .listen(LISTEN_BACKLOG)
            .expect("listening on 127.0.0.1");
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let arrived = Arc::new(Arrivals::new());
        let handler: Handler = Arc::new(handler);
        let (reqs, notify) = (requests.clone(), arrived.clone());
        let connections = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let accepted = connections.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                accepted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let (handler, reqs, notify) = (handler.clone(), reqs.clone(), notify.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let (handler, reqs, notify) =
                            (handler.clone(), reqs.clone(), notify.clone());
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let recorded = Recorded {
                                method: parts.method.to_string(),
                                path: parts.uri.path().to_string(),
                                query: parts.uri.query().map(str::to_string),
                                headers: parts.headers,
                                body,
                                at: Instant::now(),
                            };
                            let reply = handler(&recorded);
                            let count = {
                                let mut reqs = reqs.lock().unwrap();
                                reqs.push(recorded);
                                reqs.len()
                            };
                            notify.arrived(count);
                            if !reply.delay.is_zero() {
                                tokio::time::sleep(reply.delay).await;
                            }
                            let mut response = hyper::Response::builder().status(reply.status);
                            for (k, v) in &reply.headers {
                                response = response.header(k, v);
                            }
                            Ok::<_, Infallible>(
                                response.body(Full::new(Bytes::from(reply.body))).unwrap(),
                            )
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Receiver {
            addr,
            requests,
            connections,
            arrived,
            task,
        }
    }

    /// TCP connections accepted so far (connection reuse is measured by it).
    pub fn connections(&self) -> u64 {
        self.connections.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `host:port`, for allowlists.
    pub fn authority(&self) -> String {
        self.addr.to_string()
    }

    /// `http://127.0.0.1:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }

    /// How many requests have arrived (without copying them).
    pub fn count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }

    /// Waits until at least `n` requests have arrived; an error (which
    /// fails the test) if they have not within `timeout`.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> anyhow::Result<Vec<Recorded>> {
        self.wait_for_count(n, timeout).await?;
        Ok(self.requests())
    }

    /// [`Receiver::wait_for`] without copying the requests: what a bench
    /// times.
    pub async fn wait_for_count(&self, n: usize, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            // Made before the count is read, so an arrival in between
            // still wakes it.
            let notified = self.arrived.notify.notified();
            self.arrived.wanted.fetch_min(n, Ordering::SeqCst);
            let arrived = self.count();
            if arrived >= n {
                return Ok(());
            }
            if Instant::now() >= deadline {
                anyhow::bail!(
                    "expected {n} requests at the receiver within {timeout:?}, {arrived} arrived"
                );
            }
            let _ = tokio::time::timeout(deadline - Instant::now(), notified).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Decodes `%XX` escapes and `+` (form encoding).
pub fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
