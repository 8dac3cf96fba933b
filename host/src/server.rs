//! The socket server: accepts connections on a Unix socket and answers
//! newline-delimited JSON requests.
//!
//! Each connection has a reader, which splits lines (rejecting those over the
//! size limit without losing its place in the stream), and a writer, which
//! sends responses as requests complete. Requests on one connection run
//! concurrently up to [`ServerConfig::max_in_flight`], so a `submit` that
//! waits for delivery does not hold up a `status` behind it. A bad line gets
//! an error response and the connection stays usable.

use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use crate::api::Api;
use crate::protocol::{self, ErrorBody, ErrorCode, Response};

/// Socket settings (`[server]` in the config file).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Longest accepted request line, in bytes.
    pub max_line_bytes: usize,
    /// Connections served at once; more wait in the accept backlog.
    pub max_connections: usize,
    /// Requests in progress per connection.
    pub max_in_flight: usize,
    /// A connection with no complete request for this long is closed, so a
    /// client that trickles a byte at a time cannot hold a connection.
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
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serves until `shutdown` is cancelled; then stops accepting, lets
    /// open connections finish what they are doing, and removes the socket.
    pub async fn serve(self, api: Arc<Api>, shutdown: CancellationToken) {
        let connections = Arc::new(Semaphore::new(self.config.max_connections.max(1)));
        let config = Arc::new(self.config.clone());
        let mut tasks = tokio::task::JoinSet::new();
        loop {
            let permit = tokio::select! {
                _ = shutdown.cancelled() => break,
                permit = connections.clone().acquire_owned() => permit.expect("never closed"),
            };
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
            if let Err(refusal) = self.admit(&stream) {
                tracing::warn!("connection refused: {refusal}");
                tasks.spawn(refuse(stream, refusal));
                continue;
            }
            let (api, config, shutdown) = (api.clone(), config.clone(), shutdown.clone());
            tasks.spawn(async move {
                if let Err(e) = serve_connection(stream, api, config, shutdown).await {
                    tracing::debug!("connection closed: {e}");
                }
                drop(permit);
            });
            while tasks.try_join_next().is_some() {}
        }
        drop(self.listener);
        let _ = std::fs::remove_file(&self.path);
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
async fn refuse(mut stream: UnixStream, reason: String) {
    let response = Response::failure(None, ErrorBody::new(ErrorCode::Forbidden, reason));
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
) -> io::Result<()> {
    let (read, mut write) = stream.into_split();
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(64);
    let writer = tokio::spawn(async move {
        while let Some(line) = rx.recv().await {
            if write.write_all(&line).await.is_err() {
                break;
            }
        }
    });

    let in_flight = Arc::new(Semaphore::new(config.max_in_flight.max(1)));
    let mut lines = LineReader::new(read, config.max_line_bytes);
    loop {
        let next = tokio::select! {
            _ = shutdown.cancelled() => break,
            next = tokio::time::timeout(config.idle_timeout, lines.next_line()) => next,
        };
        let line = match next {
            Err(_) => break, // idle
            Ok(Ok(Some(line))) => line,
            Ok(Ok(None)) => break,
            Ok(Err(e)) => return Err(e),
        };
        let line = match line {
            Line::Complete(line) => line,
            Line::TooLong(len) => {
                let error = ErrorBody::new(
                    ErrorCode::LineTooLong,
                    format!("the line exceeds {len} bytes; it was discarded"),
                );
                let _ = tx.send(Response::failure(None, error).to_line()).await;
                continue;
            }
        };
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let permit = in_flight
            .clone()
            .acquire_owned()
            .await
            .expect("never closed");
        let (api, tx) = (api.clone(), tx.clone());
        tokio::spawn(async move {
            let response = match protocol::decode(&line) {
                Ok((id, request)) => match api.handle(request).await {
                    Ok(result) => Response::success(id, result),
                    Err(error) => Response::failure(id, error),
                },
                Err((id, error)) => Response::failure(id, error),
            };
            let _ = tx.send(response.to_line()).await;
            drop(permit);
        });
    }
    drop(tx);
    let _ = writer.await;
    Ok(())
}

enum Line {
    Complete(Vec<u8>),
    /// A line longer than the limit was skipped.
    TooLong(usize),
}

/// Splits a byte stream into lines of at most `max` bytes. An oversize line
/// is skipped up to its newline and reported once, so the stream stays in
/// step and the connection stays usable.
struct LineReader<R> {
    inner: R,
    buf: Vec<u8>,
    max: usize,
    eof: bool,
}

impl<R: AsyncRead + Unpin> LineReader<R> {
    fn new(inner: R, max: usize) -> Self {
        LineReader {
            inner,
            buf: Vec::with_capacity(8192),
            max,
            eof: false,
        }
    }

    async fn next_line(&mut self) -> io::Result<Option<Line>> {
        let mut skipping = false;
        let mut scanned = 0;
        loop {
            if let Some(pos) = self.buf[scanned..].iter().position(|&b| b == b'\n') {
                let end = scanned + pos;
                let mut line: Vec<u8> = self.buf.drain(..=end).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Ok(Some(if skipping || line.len() > self.max {
                    Line::TooLong(self.max)
                } else {
                    Line::Complete(line)
                }));
            }
            if self.buf.len() > self.max {
                skipping = true;
                self.buf.clear();
            }
            scanned = self.buf.len();
            if self.eof {
                return Ok(match (self.buf.is_empty(), skipping) {
                    (_, true) => Some(Line::TooLong(self.max)),
                    (true, false) => None,
                    (false, false) => Some(Line::Complete(std::mem::take(&mut self.buf))),
                });
            }
            let mut chunk = [0u8; 16 * 1024];
            let n = self.inner.read(&mut chunk).await?;
            if n == 0 {
                self.eof = true;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn lines(input: &[u8], max: usize) -> Vec<String> {
        let mut reader = LineReader::new(input, max);
        let mut out = Vec::new();
        while let Some(line) = reader.next_line().await.unwrap() {
            out.push(match line {
                Line::Complete(l) => String::from_utf8(l).unwrap(),
                Line::TooLong(_) => "<too long>".into(),
            });
        }
        out
    }

    #[tokio::test]
    async fn splits_lines_and_skips_oversize_ones() {
        assert_eq!(lines(b"a\nbb\r\nc", 10).await, ["a", "bb", "c"]);
        let long = format!("{}\nok\n", "x".repeat(50_000));
        assert_eq!(lines(long.as_bytes(), 100).await, ["<too long>", "ok"]);
        assert_eq!(lines(&[b'y'; 300], 100).await, ["<too long>"]);
    }
}
