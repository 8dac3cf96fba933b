//! A client for the daemon's socket, used by the CLI.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

use crate::protocol::{ErrorBody, Response};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {path}: is `notifyhub serve` running? ({error})")]
    Connect {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("lost the connection to the daemon")]
    Io(#[from] std::io::Error),
    #[error("the daemon closed the connection")]
    Closed,
    #[error("unreadable answer from the daemon: {0}")]
    Decode(#[from] serde_json::Error),
    #[error(transparent)]
    Daemon(ErrorBody),
}

/// One connection to the daemon.
pub struct Client {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    next_id: u64,
}

impl Client {
    pub async fn connect(path: &Path) -> Result<Client, ClientError> {
        let stream = UnixStream::connect(path)
            .await
            .map_err(|error| ClientError::Connect {
                path: path.into(),
                error,
            })?;
        let (read, writer) = stream.into_split();
        Ok(Client {
            reader: BufReader::new(read),
            writer,
            next_id: 1,
        })
    }

    /// Sends `request` (an object with an `op`) and returns its `result`.
    pub async fn call(&mut self, mut request: Value) -> Result<Value, ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        request["id"] = json!(id);
        let mut line = serde_json::to_vec(&request)?;
        line.push(b'\n');
        // A daemon that refuses us answers and closes at once: read its
        // answer even if our write did not get through.
        let written = self.writer.write_all(&line).await;
        loop {
            let mut answer = String::new();
            if self.reader.read_line(&mut answer).await? == 0 {
                written?;
                return Err(ClientError::Closed);
            }
            let response: Response = serde_json::from_str(&answer)?;
            let refusal = response.id.is_none() && !response.ok;
            if response.id != Some(json!(id)) && !refusal {
                continue;
            }
            return match (response.ok, response.result, response.error) {
                (true, Some(result), _) => Ok(result),
                (true, None, _) => Ok(Value::Null),
                (false, _, Some(error)) => Err(ClientError::Daemon(error)),
                (false, _, None) => Err(ClientError::Closed),
            };
        }
    }

    /// The next `result` on this connection that answers request `id`
    /// (after [`Client::call`] started a stream such as `watch`).
    pub async fn next_result(&mut self, id: u64) -> Result<Value, ClientError> {
        loop {
            let mut answer = String::new();
            if self.reader.read_line(&mut answer).await? == 0 {
                return Err(ClientError::Closed);
            }
            let response: Response = serde_json::from_str(&answer)?;
            if response.id != Some(json!(id)) {
                continue;
            }
            return match (response.ok, response.result, response.error) {
                (true, result, _) => Ok(result.unwrap_or(Value::Null)),
                (false, _, Some(error)) => Err(ClientError::Daemon(error)),
                (false, _, None) => Err(ClientError::Closed),
            };
        }
    }

    /// The id the last [`Client::call`] used.
    pub fn last_id(&self) -> u64 {
        self.next_id - 1
    }
}
