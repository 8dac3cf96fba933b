//! A TCP relay between notifyhub and nats-server that can lose one publish
//! acknowledgement on purpose.
//!
//! Armed with a subject prefix, it watches what the client sends; when a
//! publish on that subject (`PUB` or `HPUB`) goes by, it still forwards the
//! client's bytes for a moment (so the server stores the message) but drops
//! everything the server sends back, then cuts the connection. The client
//! sees its publish fail although the message landed: the ambiguous
//! `unavailable` a broker outage produces, on demand. It fires once; for
//! the outage asked for, new connections are closed at once (the broker
//! looks down), then the client's reconnection passes through untouched.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;

/// What to lose: the acknowledgement of a publish on a subject starting
/// with `prefix`, then the broker for `outage`.
#[derive(Clone)]
struct Trap {
    prefix: String,
    outage: Duration,
}

pub struct AckCutter {
    port: u16,
    armed: Arc<Mutex<Option<Trap>>>,
    cuts: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl AckCutter {
    /// Listens on a free loopback port and relays to `upstream`
    /// (`nats://127.0.0.1:PORT` or `127.0.0.1:PORT`).
    pub async fn start(upstream: &str) -> anyhow::Result<AckCutter> {
        let upstream = upstream.trim_start_matches("nats://").to_string();
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let armed: Arc<Mutex<Option<Trap>>> = Arc::default();
        let cuts: Arc<AtomicUsize> = Arc::default();
        // Until when new connections are refused (closed on accept).
        let down_until: Arc<Mutex<Instant>> = Arc::new(Mutex::new(Instant::now()));
        let (armed2, cuts2) = (armed.clone(), cuts.clone());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if Instant::now() < *down_until.lock().await {
                    drop(client);
                    continue;
                }
                let Ok(server) = TcpStream::connect(&upstream).await else {
                    continue;
                };
                tokio::spawn(relay(
                    client,
                    server,
                    armed2.clone(),
                    cuts2.clone(),
                    down_until.clone(),
                ));
            }
        });
        Ok(AckCutter {
            port,
            armed,
            cuts,
            task,
        })
    }

    /// `nats://127.0.0.1:PORT`, for the daemon's `[broker] url`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Loses the acknowledgement of the next publish on a subject starting
    /// with `prefix`, then refuses connections for `outage`.
    pub async fn lose_next_ack_on(&self, prefix: &str, outage: Duration) {
        *self.armed.lock().await = Some(Trap {
            prefix: prefix.to_string(),
            outage,
        });
    }

    /// How many acknowledgements were lost so far.
    pub fn cuts(&self) -> usize {
        self.cuts.load(Ordering::SeqCst)
    }
}

impl Drop for AckCutter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn relay(
    client: TcpStream,
    server: TcpStream,
    armed: Arc<Mutex<Option<Trap>>>,
    cuts: Arc<AtomicUsize>,
    down_until: Arc<Mutex<Instant>>,
) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let muted = Arc::new(AtomicBool::new(false));
    let back_muted = muted.clone();
    let back = tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match server_read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if back_muted.load(Ordering::SeqCst) {
                continue;
            }
            if client_write.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
    });
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match client_read.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let chunk = &buf[..n];
        let hit = {
            let mut armed = armed.lock().await;
            let hit = armed.as_ref().is_some_and(|trap| {
                [
                    format!("PUB {}", trap.prefix),
                    format!("HPUB {}", trap.prefix),
                ]
                .iter()
                .any(|needle| contains(chunk, needle.as_bytes()))
            });
            if hit { armed.take() } else { None }
        };
        let hit = match hit {
            Some(trap) => {
                *down_until.lock().await = Instant::now() + trap.outage;
                true
            }
            None => false,
        };
        if hit {
            // From here the server's answers (the acknowledgement among
            // them) go nowhere; what the client still sends reaches the
            // server for a moment, then both sides are cut.
            muted.store(true, Ordering::SeqCst);
        }
        if server_write.write_all(chunk).await.is_err() {
            break;
        }
        if hit {
            let until = Instant::now() + Duration::from_millis(200);
            while let Ok(Ok(n)) = tokio::time::timeout_at(until, client_read.read(&mut buf)).await {
                if n == 0 || server_write.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
            cuts.fetch_add(1, Ordering::SeqCst);
            break;
        }
    }
    back.abort();
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
