//! A real nats-server with JetStream, on a free loopback port with its store
//! in a temporary directory; killed when dropped.
//!
//! The binary comes from `NATS_SERVER_BIN`, else the pinned release that
//! [`toolchains::nats_server`] installs under the build directory (a
//! distribution's package may be years old: Debian 12 ships 2.9).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::toolchains;

pub struct NatsServer {
    child: Child,
    dir: tempfile::TempDir,
    url: String,
    jetstream: bool,
}

fn binary() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("NATS_SERVER_BIN") {
        return Ok(path.into());
    }
    static INSTALLED: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    INSTALLED
        .get_or_init(|| toolchains::nats_server().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

impl NatsServer {
    /// Starts a server and waits until it accepts connections.
    pub async fn start() -> anyhow::Result<NatsServer> {
        Self::start_with(true).await
    }

    /// Starts a server without JetStream (plain NATS).
    pub async fn start_without_jetstream() -> anyhow::Result<NatsServer> {
        Self::start_with(false).await
    }

    async fn start_with(jetstream: bool) -> anyhow::Result<NatsServer> {
        let dir = tempfile::tempdir()?;
        let (child, url) = spawn(dir.path(), None, jetstream).await?;
        Ok(NatsServer {
            child,
            dir,
            url,
            jetstream,
        })
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// kill -9, then start again on the same port with the same store.
    pub async fn kill_and_restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.restart().await
    }

    /// kill -9: the broker is gone until [`NatsServer::restart`].
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the server again on the same port with the same store.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        let port: u16 = self.url.rsplit(':').next().unwrap_or_default().parse()?;
        let (child, _) = spawn(self.dir.path(), Some(port), self.jetstream).await?;
        self.child = child;
        Ok(())
    }
}

async fn spawn(dir: &Path, port: Option<u16>, jetstream: bool) -> anyhow::Result<(Child, String)> {
    let ports_dir = dir.join(format!("ports-{}", port.unwrap_or(0)));
    std::fs::create_dir_all(&ports_dir)?;
    let port_arg = port.map_or("-1".to_string(), |p| p.to_string());
    let mut command = Command::new(binary()?);
    command.args(["-a", "127.0.0.1", "-p", &port_arg]);
    if jetstream {
        command.args(["-js", "-sd"]).arg(dir.join("store"));
    }
    let child = command
        .arg("--ports_file_dir")
        .arg(&ports_dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let ports_file = ports_dir.join(format!("nats-server_{}.ports", child.id()));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(text) = std::fs::read_to_string(&ports_file)
            && let Ok(ports) = serde_json::from_str::<serde_json::Value>(&text)
            && let Some(url) = ports["nats"][0].as_str()
        {
            let addr = url.trim_start_matches("nats://").to_string();
            if tokio::net::TcpStream::connect(&addr).await.is_ok() {
                return Ok((child, url.to_string()));
            }
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "nats-server did not start within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
