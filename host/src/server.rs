//! The socket server: accepts connections on a Unix socket and answers
//! newline-delimited JSON requests.
//!
//! Each connection has a reader, which frames lines with tokio-util's
//! `LinesCodec` (a line over the size limit is skipped to its newline and
//! answered `line_too_long`, so the stream stays in step), and a writer,
//! which sends responses as requests complete. Requests on one connection
//! run concurrently up to [`ServerConfig::max_in_flight`], so a `submit`
//! that waits for delivery does not hold up a `status` behind it. A bad line
//! gets an error response and the connection stays usable.
//!
//! Bounds, and what happens at each:
//! - connections: at most `max_connections` are served; one more is
//!   answered `busy` and closed at once (it never waits unanswered);
//! - requests per connection: at most `max_in_flight` run; the reader stops
//!   reading until one finishes (back-pressure through the socket), and
//!   meanwhile probes for the client closing the connection, which it
//!   could no longer read;
//! - answers per connection: at most [`ANSWERS_BUFFERED`] wait for a slow
//!   reader; requests then wait for room;
//! - a connection with no complete line for `idle_timeout`, and nothing in
//!   flight (no request being answered, no `watch` streaming), is closed.
//!   A client waiting on a long `submit` sends nothing and is not idle: had
//!   its reader stopped, a later request on that connection would go
//!   unanswered, and no one would notice the client leave, so an abandoned
//!   wait would hold its slot until its task ran (an hour later, say);
//! - a request belongs to its connection: once the client has gone (closed
//!   its socket, or the connection broke), what it left in flight ends, a
//!   `submit` waiting for delivery included (its tasks stay accepted), and
//!   the connection's slot is free at once. A client that only shuts down
//!   its writing half still gets its answers.
//!
//! A request handler that panics is answered `internal` and logged; the
//! connection and the daemon go on.

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::codec::{Decoder, FramedRead, LinesCodec, LinesCodecError};
use tokio_util::sync::CancellationToken;

use crate::api::{Api, Watch};
use crate::protocol::{self, ErrorBody, ErrorCode, Reply, Request, Response};

/// Answers waiting for a slow reader, per connection.
pub const ANSWERS_BUFFERED: usize = 64;

/// Socket settings (`[server]` in the config file).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Longest accepted request line, in bytes.
    pub max_line_bytes: usize,
    /// Connections served at once; one more is answered `busy` and closed.
    pub max_connections: usize,
    /// Requests in progress per connection.
    pub max_in_flight: usize,
    /// A connection with no complete request for this long, and nothing in
    /// flight, is closed, so a client that trickles a byte at a time cannot
    /// hold a connection.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Users besides the daemon's own that may connect (checked with
    /// SO_PEERCRED). The socket file is mode 0600 as well.
    pub allowed_uids: Vec<u32>,
    /// Groups whose members may connect.
    pub allowed_gids: Vec<u32>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_line_bytes: protocol::DEFAULT_MAX_LINE_BYTES,
            max_connections: 256,
            max_in_flight: 1024,
            idle_timeout: Duration::from_secs(60),
            allowed_uids: Vec::new(),
            allowed_gids: Vec::new(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("another notifyhub is already listening on {0}")]
    InUse(PathBuf),
    #[error("cannot create the socket directory {dir}: {error}")]
    Dir { dir: PathBuf, error: io::Error },
    #[error("cannot listen on {path}: {error}")]
    Listen { path: PathBuf, error: io::Error },
}

/// A bound listener.
pub struct Server {
    listener: UnixListener,
    path: PathBuf,
    config: ServerConfig,
    /// The daemon's own uid: the owner of the socket file it created.
    owner: u32,
    /// Whether systemd made the socket (socket activation): then it is
    /// systemd's to remove, not ours.
    activated: bool,
}

impl Server {
    /// Binds `path` with mode 0600, creating its directory (mode 0700) if
    /// needed and replacing a stale socket file that nobody listens on.
    pub async fn bind(path: &Path, config: ServerConfig) -> Result<Self, BindError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|error| BindError::Dir {
                    dir: dir.into(),
                    error,
                })?;
        }
        if path.exists() {
            if UnixStream::connect(path).await.is_ok() {
                return Err(BindError::InUse(path.into()));
            }
            let _ = std::fs::remove_file(path);
        }
        let listen_err = |error| BindError::Listen {
            path: path.into(),
            error,
        };
        let listener = UnixListener::bind(path).map_err(listen_err)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(listen_err)?;
        let owner = std::fs::metadata(path).map_err(listen_err)?.uid();
        Ok(Server {
            listener,
            path: path.into(),
            config,
            owner,
            activated: false,
        })
    }

    /// Serves a listening socket systemd passed (see `activation`).
    pub fn activated(
        listener: std::os::unix::net::UnixListener,
        config: ServerConfig,
    ) -> Result<Self, BindError> {
        let path = listener
            .local_addr()
            .ok()
            .and_then(|a| a.as_pathname().map(Path::to_path_buf))
            .unwrap_or_default();
        let listen_err = |error| BindError::Listen {
            path: path.clone(),
            error,
        };
        listener.set_nonblocking(true).map_err(listen_err)?;
        let listener = UnixListener::from_std(listener).map_err(listen_err)?;
        // SAFETY: geteuid has no preconditions and cannot fail.
        let owner = unsafe { libc::geteuid() };
        Ok(Server {
            listener,
            path,
            config,
            owner,
            activated: true,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serves until `shutdown` is cancelled; then stops accepting, lets
    /// open connections finish what they are doing until `drained` (the
    /// pool has stopped): requests still in flight then are answered
    /// `shutting_down`, so no client waits on a daemon that is going away.
    /// Removes the socket.
    pub async fn serve(
        self,
        api: Arc<Api>,
        shutdown: CancellationToken,
        drained: CancellationToken,
    ) {
        let connections = Arc::new(Semaphore::new(self.config.max_connections.max(1)));
        let config = Arc::new(self.config.clone());
        let mut tasks = tokio::task::JoinSet::new();
        loop {
            let stream = tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        tracing::warn!("accept failed: {e}");
                        continue;
                    }
                },
            };
            while tasks.try_join_next().is_some() {}
            if let Err(refusal) = self.admit(&stream) {
                tracing::warn!("connection refused: {refusal}");
                tasks.spawn(refuse(
                    stream,
                    ErrorBody::new(ErrorCode::Forbidden, refusal),
                ));
                continue;
            }
            let Ok(permit) = connections.clone().try_acquire_owned() else {
                let busy = format!(
                    "every connection slot is taken ([server] max_connections = {}); try again later",
                    self.config.max_connections
                );
                tasks.spawn(refuse(stream, ErrorBody::new(ErrorCode::Busy, busy)));
                continue;
            };
            let (api, config) = (api.clone(), config.clone());
            let (shutdown, drained) = (shutdown.clone(), drained.clone());
            tasks.spawn(async move {
                let metrics = api.metrics().cloned();
                if let Some(m) = &metrics {
                    m.connection(true);
                }
                if let Err(e) = serve_connection(stream, api, config, shutdown, drained).await {
                    tracing::debug!("connection closed: {e}");
                }
                if let Some(m) = &metrics {
                    m.connection(false);
                }
                drop(permit);
            });
        }
        drop(self.listener);
        if !self.activated {
            let _ = std::fs::remove_file(&self.path);
        }
        while tasks.join_next().await.is_some() {}
    }
}

impl Server {
    /// Checks the peer's credentials: the daemon's own user, or an allowed
    /// uid or gid.
    fn admit(&self, stream: &UnixStream) -> Result<(), String> {
        let cred = stream
            .peer_cred()
            .map_err(|e| format!("cannot read peer credentials: {e}"))?;
        let (uid, gid) = (cred.uid(), cred.gid());
        if uid == self.owner
            || self.config.allowed_uids.contains(&uid)
            || self.config.allowed_gids.contains(&gid)
        {
            Ok(())
        } else {
            Err(format!(
                "uid {uid} (gid {gid}) may not use this socket; allow it with [server] allowed_uids or allowed_gids"
            ))
        }
    }
}

/// Tells a refused peer why, then closes.
async fn refuse(mut stream: UnixStream, error: ErrorBody) {
    let response = Response::failure(None, error);
    let _ = tokio::time::timeout(
        Duration::from_secs(1),
        stream.write_all(&response.to_line()),
    )
    .await;
}

async fn serve_connection(
    stream: UnixStream,
    api: Arc<Api>,
    config: Arc<ServerConfig>,
    shutdown: CancellationToken,
    drained: CancellationToken,
) -> io::Result<()> {
    let (read, mut write) = stream.into_split();
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(ANSWERS_BUFFERED);
    let writer = tokio::spawn(async move {
        while let Some(line) = rx.recv().await {
            if write.write_all(&line).await.is_err() {
                break;
            }
        }
    });

    let max_in_flight = config.max_in_flight.max(1);
    let in_flight = Arc::new(Semaphore::new(max_in_flight));
    let mut lines = FramedRead::new(read, RequestLines::new(config.max_line_bytes));
    // Streams of `watch` on this connection: while one runs, as while a
    // request is answered, a client that sends nothing is not idle, and
    // when the connection ends, they end.
    let watching = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let closed = CancellationToken::new();
    // Cancelled once the client has gone: the requests it left in flight
    // (a `submit` waiting an hour for its task) end with it, and give back
    // the connection's slot.
    let gone = CancellationToken::new();
    let fd = lines.get_ref().as_ref().as_raw_fd();
    let ended = loop {
        let next = tokio::select! {
            _ = shutdown.cancelled() => break Ok(End::Shutdown),
            next = tokio::time::timeout(config.idle_timeout, lines.next()) => next,
        };
        let line = match next {
            Err(_)
                if watching.load(std::sync::atomic::Ordering::Acquire) > 0
                    || in_flight.available_permits() < max_in_flight =>
            {
                continue;
            }
            Err(_) => break Ok(End::Idle),
            Ok(None) => break Ok(End::Eof),
            Ok(Some(Err(e))) => break Err(e),
            Ok(Some(Ok(line))) => line,
        };
        let line = match line {
            Line::Complete(line) => line,
            Line::Rejected(error) => {
                let _ = tx.send(Response::failure(None, error).to_line()).await;
                continue;
            }
        };
        if line.trim().is_empty() {
            continue;
        }
        let (id, request) = match protocol::decode(line.as_bytes()) {
            Ok(decoded) => decoded,
            Err((id, error)) => {
                let _ = tx.send(Response::failure(id, error).to_line()).await;
                continue;
            }
        };
        if let Request::Watch(filter) = request {
            match api.watch(filter) {
                Ok(watch) => {
                    watching.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                    let (tx, closed, watching) = (tx.clone(), closed.clone(), watching.clone());
                    tokio::spawn(async move {
                        stream_events(watch, id, &tx, &closed).await;
                        watching.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
                    });
                }
                Err(error) => {
                    let _ = tx.send(Response::failure(id, error).to_line()).await;
                }
            }
            continue;
        }
        // With every request slot taken the reader stops reading, so it
        // would not see the client go: while it waits, a probe does. (Only
        // then: a free slot is taken without a probe's system call.)
        let permit = match in_flight.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => tokio::select! {
                biased;
                permit = in_flight.clone().acquire_owned() => permit.expect("never closed"),
                _ = shutdown.cancelled() => break Ok(End::Shutdown),
                () = hung_up(fd) => break Ok(End::Gone),
            },
        };
        let (api, tx, gone, drained) = (api.clone(), tx.clone(), gone.clone(), drained.clone());
        tokio::spawn(async move {
            gone.run_until_cancelled(async {
                let response = tokio::select! {
                    response = answer(&api, id.clone(), request) => response,
                    () = drained.cancelled() => Response::failure(id, stopped()),
                };
                let _ = tx.send(response.to_line()).await;
            })
            .await;
            drop(permit);
        });
    };
    closed.cancel();
    drop(tx);
    let mut writer = writer;
    let written = match ended {
        // The client shut down its writing half, or closed the connection:
        // answer what is in flight unless it has hung up entirely.
        Ok(End::Eof) => {
            tokio::select! {
                _ = &mut writer => true,
                () = hung_up(fd) => false,
            }
        }
        // The connection broke, or the client closed it: nobody is left to
        // answer.
        Err(_) | Ok(End::Gone) => false,
        // Idle: nothing was in flight. Shutting down: what is in flight is
        // still answered (waits end as the pool stops).
        Ok(End::Idle | End::Shutdown) => {
            let _ = (&mut writer).await;
            true
        }
    };
    // Everything is answered, or nobody is left to read it (the writer
    // also stops at the first failed write): end what is still in flight.
    gone.cancel();
    if !written {
        let _ = writer.await;
    }
    ended.map(drop)
}

/// The answer to a request the daemon stopped before finishing.
fn stopped() -> ErrorBody {
    ErrorBody::new(
        ErrorCode::ShuttingDown,
        "the daemon stopped before this request finished; tasks it accepted are kept and run after a restart",
    )
}

/// Why a connection's reader stopped.
enum End {
    /// The client will send nothing more (it may still read answers).
    Eof,
    /// The client closed the connection while requests waited for a slot.
    Gone,
    Idle,
    Shutdown,
}

/// How often a connection whose client stopped sending, with requests still
/// in flight, checks whether the client is still there to read the answers.
const HANGUP_PROBE: Duration = Duration::from_millis(200);

/// Resolves once the peer of the socket `fd` has closed its end entirely.
///
/// End of input alone cannot tell a client that shut down only its
/// writing half (and waits for its answers, as `nc -N` does) from one that
/// has gone; `poll` can: a Unix socket reports `POLLHUP` only when both
/// directions are shut. Tokio's readiness keeps a closed state once seen,
/// so it cannot wait for this edge; a probe every [`HANGUP_PROBE`] can, and
/// runs only for connections in that state.
async fn hung_up(fd: std::os::fd::RawFd) {
    loop {
        let mut probe = libc::pollfd {
            fd,
            events: libc::POLLRDHUP,
            revents: 0,
        };
        // SAFETY: one valid pollfd, a zero timeout; `fd` stays open while
        // the connection's reader (which owns it) is alive, as it is here.
        let n = unsafe { libc::poll(&mut probe, 1, 0) };
        if n < 0 || probe.revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0 {
            return;
        }
        tokio::time::sleep(HANGUP_PROBE).await;
    }
}

/// Streams a `watch`: first `{"watching": true}`, then one line per event
/// (or per run of dropped events), each with the request's id, until the
/// connection closes. A slow reader makes `tx.send` wait, so this watcher
/// falls behind in the store's event buffer and loses the oldest events it
/// has not read, not the delivery speed (see `store::events`).
async fn stream_events(
    mut watch: Watch,
    id: Option<serde_json::Value>,
    tx: &mpsc::Sender<Vec<u8>>,
    closed: &CancellationToken,
) {
    let first = Response::success(
        id.clone(),
        protocol::reply(&serde_json::json!({ "watching": true })),
    );
    if tx.send(first.to_line()).await.is_err() {
        return;
    }
    loop {
        let line = tokio::select! {
            _ = closed.cancelled() => return,
            line = watch.next() => line,
        };
        let Some(line) = line else { return };
        if tx
            .send(Response::success(id.clone(), protocol::reply(&line)).to_line())
            .await
            .is_err()
        {
            return;
        }
    }
}

/// Handles one decoded request. A panic in the handler is caught here and
/// answered `internal`.
async fn answer(api: &Api, id: Option<serde_json::Value>, request: Request) -> Response<Reply> {
    let op = request.op();
    match caught(api.handle(request)).await {
        Ok(Ok(result)) => Response::success(id, result),
        Ok(Err(error)) => Response::failure(id, error),
        Err(what) => {
            tracing::error!(op, "request handler panicked: {what}");
            Response::failure(
                id,
                ErrorBody::new(
                    ErrorCode::Internal,
                    format!(
                        "the daemon failed while handling this request ({what}); this is a bug, and it was logged"
                    ),
                ),
            )
        }
    }
}

/// Runs `work`, turning a panic into its message.
async fn caught<T>(work: impl Future<Output = T>) -> Result<T, String> {
    std::panic::AssertUnwindSafe(work)
        .catch_unwind()
        .await
        .map_err(|panic| {
            panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "a panic".into())
        })
}

/// A framed request line, or why the line was refused.
enum Line {
    Complete(String),
    Rejected(ErrorBody),
}

/// `LinesCodec` with a length limit, whose per-line errors (too long, not
/// UTF-8) become answers instead of ending the stream.
struct RequestLines {
    inner: LinesCodec,
    max: usize,
}

impl RequestLines {
    fn new(max: usize) -> Self {
        RequestLines {
            inner: LinesCodec::new_with_max_length(max),
            max,
        }
    }

    fn map(&self, decoded: Result<Option<String>, LinesCodecError>) -> io::Result<Option<Line>> {
        match decoded {
            Ok(line) => Ok(line.map(Line::Complete)),
            Err(LinesCodecError::MaxLineLengthExceeded) => {
                Ok(Some(Line::Rejected(ErrorBody::new(
                    ErrorCode::LineTooLong,
                    format!("the line exceeds {} bytes; it was discarded", self.max),
                ))))
            }
            Err(LinesCodecError::Io(e)) if e.kind() == io::ErrorKind::InvalidData => {
                Ok(Some(Line::Rejected(ErrorBody::new(
                    ErrorCode::MalformedJson,
                    "the line is not valid UTF-8",
                ))))
            }
            Err(LinesCodecError::Io(e)) => Err(e),
        }
    }
}

impl Decoder for RequestLines {
    type Item = Line;
    type Error = io::Error;

    fn decode(&mut self, buf: &mut bytes::BytesMut) -> io::Result<Option<Line>> {
        let decoded = self.inner.decode(buf);
        self.map(decoded)
    }

    fn decode_eof(&mut self, buf: &mut bytes::BytesMut) -> io::Result<Option<Line>> {
        let decoded = self.inner.decode_eof(buf);
        self.map(decoded)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn lines(input: &[u8], max: usize) -> Vec<String> {
        let mut framed = FramedRead::new(input, RequestLines::new(max));
        let mut out = Vec::new();
        while let Some(line) = framed.next().await {
            out.push(match line.unwrap() {
                Line::Complete(l) => l,
                Line::Rejected(e) => format!("<{}>", e.code.as_str()),
            });
        }
        out
    }

    #[tokio::test]
    async fn a_panic_becomes_its_message() {
        assert_eq!(caught(async { 7 }).await, Ok(7));
        let stored = std::hint::black_box(u64::MAX);
        let boom = caught(async move {
            std::time::Duration::from_secs(stored)
                .checked_mul(2)
                .expect("stored time out of range")
        });
        assert_eq!(boom.await, Err("stored time out of range".to_string()));
    }

    #[tokio::test]
    async fn splits_lines_and_skips_oversize_ones() {
        assert_eq!(lines(b"a\nbb\r\nc", 10).await, ["a", "bb", "c"]);
        let long = format!("{}\nok\n", "x".repeat(50_000));
        assert_eq!(lines(long.as_bytes(), 100).await, ["<line_too_long>", "ok"]);
        assert_eq!(lines(&[b'y'; 300], 100).await, ["<line_too_long>"]);
        assert_eq!(
            lines(b"\xff\xfe\nok\n", 100).await,
            ["<malformed_json>", "ok"]
        );
    }
}
