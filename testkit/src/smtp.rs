//! A real SMTP relay on 127.0.0.1: aiosmtpd from PyPI, run by
//! `smtp_relay.py` beside this file, with a test CA from `trustme`;
//! killed when dropped.
//!
//! The relay speaks STARTTLS, implicit TLS or plain SMTP, requires AUTH
//! when given a user, records every message it accepts, and answers by the
//! first recipient's local part (`defer@`, `unknown@`, `drop@`, `slow@`, …;
//! the script's docstring lists them), so one relay serves every case.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::Value;

use crate::toolchains;

/// How the relay secures connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayTls {
    Starttls,
    Implicit,
    None,
}

/// A message the relay accepted.
#[derive(Debug, Clone)]
pub struct Received {
    pub mail_from: String,
    pub rcpt_tos: Vec<String>,
    /// The message as sent: headers, blank line, body (CRLF line endings).
    pub data: String,
    /// The user that authenticated, if any.
    pub login: Option<String>,
    /// Whether the session was encrypted when the message came.
    pub tls: bool,
    /// The client's port: messages with the same one came over one
    /// connection.
    pub peer: u16,
}

impl Received {
    /// The first header `name` (case-insensitive), unfolded.
    pub fn header(&self, name: &str) -> Option<String> {
        let head = self.data.split("\r\n\r\n").next()?;
        let mut value: Option<String> = None;
        for line in head.split("\r\n") {
            if let Some(v) = value.as_mut() {
                if line.starts_with([' ', '\t']) {
                    v.push_str(line);
                    continue;
                }
                break;
            }
            if let Some((key, rest)) = line.split_once(':')
                && key.eq_ignore_ascii_case(name)
            {
                value = Some(rest.trim().to_string());
            }
        }
        value
    }
}

pub struct SmtpRelay {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
}

fn python() -> anyhow::Result<PathBuf> {
    static INSTALLED: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    INSTALLED
        .get_or_init(|| toolchains::smtp_relay_python().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

impl SmtpRelay {
    /// Starts a relay and waits until it listens. `auth`: the one user and
    /// password it accepts (AUTH is then required).
    pub async fn start(tls: RelayTls, auth: Option<(&str, &str)>) -> anyhow::Result<SmtpRelay> {
        let dir = tempfile::tempdir()?;
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src/smtp_relay.py");
        let mut command = Command::new(python()?);
        command
            .arg(&script)
            .arg(dir.path())
            .arg("--tls")
            .arg(match tls {
                RelayTls::Starttls => "starttls",
                RelayTls::Implicit => "implicit",
                RelayTls::None => "none",
            });
        if let Some((user, password)) = auth {
            command.args(["--user", user, "--password", password]);
        }
        let port_file = dir.path().join("port");
        let child = command
            .stdin(Stdio::piped())
            .stdout(std::fs::File::create(&port_file)?)
            .stderr(std::fs::File::create(dir.path().join("relay.log"))?)
            .spawn()
            .context("starting the SMTP relay")?;
        let mut relay = SmtpRelay {
            child,
            dir,
            port: 0,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = std::fs::read_to_string(&port_file).unwrap_or_default();
            if let Some(port) = text
                .strip_prefix("PORT ")
                .and_then(|rest| rest.strip_suffix('\n'))
                .and_then(|p| p.parse().ok())
            {
                relay.port = port;
                return Ok(relay);
            }
            if let Some(status) = relay.child.try_wait()? {
                anyhow::bail!("the SMTP relay exited ({status}): {}", relay.log());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the SMTP relay did not listen within 30 s: {}",
                relay.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The CA that signed the relay's certificate (for "localhost" and
    /// 127.0.0.1), as PEM.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// What the relay logged (errors, tracebacks).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("relay.log")).unwrap_or_default()
    }

    /// Every message accepted so far, in order.
    pub fn messages(&self) -> Vec<Received> {
        let text =
            std::fs::read_to_string(self.dir.path().join("messages.jsonl")).unwrap_or_default();
        text.lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .map(|v| Received {
                mail_from: v["mail_from"].as_str().unwrap_or_default().to_string(),
                rcpt_tos: v["rcpt_tos"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|r| r.as_str().map(String::from))
                            .collect()
                    })
                    .unwrap_or_default(),
                data: v["data"].as_str().unwrap_or_default().to_string(),
                login: v["login"].as_str().map(String::from),
                tls: v["tls"].as_bool().unwrap_or(false),
                peer: v["peer"]
                    .as_u64()
                    .and_then(|p| u16::try_from(p).ok())
                    .unwrap_or(0),
            })
            .collect()
    }

    /// Waits until at least `count` messages were accepted; fails after
    /// `within` with what arrived.
    pub async fn wait_for(&self, count: usize, within: Duration) -> anyhow::Result<Vec<Received>> {
        let deadline = Instant::now() + within;
        loop {
            let messages = self.messages();
            if messages.len() >= count {
                return Ok(messages);
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the relay accepted {} of {count} messages within {within:?}: {:?}\nrelay log: {}",
                messages.len(),
                messages,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for SmtpRelay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
