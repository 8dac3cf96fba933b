//! The real `notifyhub` daemon as a child process in a temporary directory.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

use crate::{plugins, process};

/// How long a test waits for the daemon's plugins before failing. A guard,
/// not a measurement: with a cold compile cache the debug daemon compiles
/// the Python and JavaScript plugins from scratch, and two daemons doing so
/// at once on a 2-core machine took 104 s.
const PLUGINS_LOADED_WITHIN: Duration = Duration::from_secs(300);

/// How long a CLI command run by a test may take: a guard, not a measurement.
pub const CLI_EXITS_WITHIN: Duration = Duration::from_secs(120);

/// How long the daemon may take to stop after SIGTERM before a test fails.
pub const STOPS_WITHIN: Duration = Duration::from_secs(60);

/// What to start a daemon with.
pub struct DaemonBuilder {
    bin: PathBuf,
    plugins: Vec<(String, Option<String>)>,
    files: Vec<(String, Vec<u8>)>,
    config: String,
    retry: String,
    env: Vec<(String, String)>,
    data_dir: Option<PathBuf>,
    cache_dir: Option<PathBuf>,
}

/// Unless a test asks for retries ([`DaemonBuilder::retry`]), a failed
/// attempt is final, so tests see each failure's class at once.
const NO_RETRIES: &str = "max_attempts = 1\n";

impl DaemonBuilder {
    /// Deploys a first-party plugin, with an optional manifest (`NAME.toml`).
    pub fn plugin(mut self, name: &str, manifest: Option<&str>) -> Self {
        self.plugins
            .push((name.into(), manifest.map(str::to_string)));
        self
    }

    /// Puts an arbitrary file in the plugin directory (broken plugins, ...).
    pub fn file(mut self, name: &str, bytes: impl Into<Vec<u8>>) -> Self {
        self.files.push((name.into(), bytes.into()));
        self
    }

    /// Config file contents (any tables but `[retry]`).
    pub fn config(mut self, toml: &str) -> Self {
        self.config.push_str(toml);
        self.config.push('\n');
        self
    }

    /// The body of the config file's `[retry]` table.
    pub fn retry(mut self, toml: &str) -> Self {
        self.retry = toml.into();
        self
    }

    /// Keeps the task store in `dir` (a small tmpfs, say) instead of the
    /// daemon's temporary directory.
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = Some(dir.into());
        self
    }

    /// Compiles into `dir` instead of the suite's shared compile cache (a
    /// cold start).
    pub fn cache_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cache_dir = Some(dir.into());
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Starts the daemon and waits until its socket answers and every
    /// plugin it was given has loaded or been refused (the daemon answers
    /// before that; tests that look at start-up itself use
    /// [`DaemonBuilder::start_answering`]).
    pub async fn start(self) -> anyhow::Result<Daemon> {
        let daemon = self.start_answering().await?;
        daemon.wait_plugins_ready(PLUGINS_LOADED_WITHIN).await?;
        Ok(daemon)
    }

    /// Starts the daemon and waits only until its socket answers.
    pub async fn start_answering(self) -> anyhow::Result<Daemon> {
        let dir = tempfile::Builder::new().prefix("nh-").tempdir()?;
        let plugin_dir = dir.path().join("plugins");
        std::fs::create_dir(&plugin_dir)?;
        for (name, manifest) in &self.plugins {
            std::fs::copy(
                plugins::path(name)?,
                plugin_dir.join(format!("{name}.wasm")),
            )?;
            if let Some(manifest) = manifest {
                std::fs::write(plugin_dir.join(format!("{name}.toml")), manifest)?;
            }
        }
        for (name, bytes) in &self.files {
            std::fs::write(plugin_dir.join(name), bytes)?;
        }
        let config = dir.path().join("config.toml");
        std::fs::write(&config, format!("{}\n[retry]\n{}", self.config, self.retry))?;
        let socket = dir.path().join("notifyhub.sock");
        let log = dir.path().join("daemon.log");
        let mut command = Command::new(&self.bin);
        command
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .arg("--data-dir")
            .arg(
                self.data_dir
                    .clone()
                    .unwrap_or_else(|| dir.path().join("data")),
            )
            .arg("--plugins")
            .arg(&plugin_dir)
            .arg("--socket")
            .arg(&socket)
            .arg("--cache-dir")
            .arg(self.cache_dir.clone().unwrap_or_else(shared_cache_dir))
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.path().join("daemon.out"))?)
            .stderr(std::fs::File::create(&log)?);
        for (k, v) in &self.env {
            command.env(k, v);
        }
        let spawned = Instant::now();
        let child = command
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))?;
        let mut daemon = Daemon {
            dir,
            child,
            spawned,
            socket,
            log,
            bin: self.bin,
            command,
            runs: 1,
        };
        daemon.wait_ready(Duration::from_secs(120)).await?;
        Ok(daemon)
    }
}

/// One compile cache for every test daemon (and `check`), so the suite
/// compiles each plugin once, not once per test: the 19 MB Python component
/// takes seconds to compile.
pub fn shared_cache_dir() -> PathBuf {
    crate::repo_root().join("target/notifyhub-test-cache")
}

/// The files under a compile cache `dir` for one compiler's code (`tier`:
/// `baseline` or `optimized`): the code of each plugin (`*.cwasm`) and any
/// copy still being written.
pub fn cache_files(dir: &Path, tier: &str) -> std::io::Result<Vec<PathBuf>> {
    let prefix = format!("{tier}-");
    let mut files = Vec::new();
    for engine in std::fs::read_dir(dir)? {
        let engine = engine?;
        if engine.file_name().to_string_lossy().starts_with(&prefix) {
            for file in std::fs::read_dir(engine.path())? {
                files.push(file?.path());
            }
        }
    }
    Ok(files)
}

/// `BIN try PLUGIN` with the suite's compile cache: add the message and
/// answer options, then run it (under a deadline).
pub fn try_command(bin: &Path, plugin: &Path) -> Command {
    let mut command = Command::new(bin);
    command
        .arg("--cache-dir")
        .arg(shared_cache_dir())
        .arg("try")
        .arg(plugin)
        .env("NO_COLOR", "1");
    command
}

/// A running daemon; killed when dropped.
pub struct Daemon {
    dir: tempfile::TempDir,
    child: Child,
    /// When the process was last spawned: after its directory was filled,
    /// so that benchmarks time the daemon, not the copying of its plugins.
    spawned: Instant,
    socket: PathBuf,
    log: PathBuf,
    bin: PathBuf,
    /// How it was started, to start it again on the same directory.
    command: Command,
    runs: u32,
}

impl Daemon {
    /// `bin` is the `notifyhub` binary (`env!("CARGO_BIN_EXE_notifyhub")` in tests).
    pub fn builder(bin: impl Into<PathBuf>) -> DaemonBuilder {
        DaemonBuilder {
            bin: bin.into(),
            plugins: Vec::new(),
            files: Vec::new(),
            config: String::new(),
            retry: NO_RETRIES.into(),
            env: Vec::new(),
            data_dir: None,
            cache_dir: None,
        }
    }

    async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "the daemon exited during start-up ({status}):\n{}",
                    self.logs()
                );
            }
            if UnixStream::connect(&self.socket).await.is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "the daemon did not open its socket in {timeout:?}:\n{}",
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Asks `request` on a new connection until `done` accepts the answer,
    /// and returns that answer; fails after `timeout` naming `what` and the
    /// last answer. With a small `[server] max_connections` the previous
    /// request's slot may not be given back yet: the daemon answers `busy`
    /// and closes, which the request may see as a broken pipe. Not an
    /// answer yet, either way.
    pub async fn wait_for(
        &self,
        what: &str,
        request: Value,
        timeout: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let answer = match self.request(request.clone()).await {
                Ok(answer) => answer,
                Err(e) => serde_json::json!({ "request failed": e.to_string() }),
            };
            if done(&answer) {
                return Ok(answer);
            }
            if Instant::now() > deadline {
                bail!("{what}: not within {timeout:?}; the last answer: {answer}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until `status` says every plugin present at start has loaded
    /// or been refused.
    pub async fn wait_plugins_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        let ready = |status: &Value| status["result"]["plugins_ready"] == Value::Bool(true);
        self.wait_for(
            "the daemon's plugins ready",
            serde_json::json!({"op": "status"}),
            timeout,
            ready,
        )
        .await
        .map(drop)
        .map_err(|e| anyhow::anyhow!("{e}\n{}", self.logs()))
    }

    /// Waits until `task` answers with task `id` in `state`; an error
    /// naming the last answer if it is not within `timeout`.
    pub async fn wait_task_state(
        &self,
        id: &str,
        state: &str,
        timeout: Duration,
    ) -> anyhow::Result<Value> {
        let reached = |answer: &Value| {
            answer["ok"] == Value::Bool(true) && answer["result"]["state"] == state
        };
        let answer = self
            .wait_for(
                &format!("task {id} {state}"),
                serde_json::json!({"op": "task", "task_id": id}),
                timeout,
                reached,
            )
            .await?;
        Ok(answer["result"].clone())
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn plugin_dir(&self) -> PathBuf {
        self.dir.path().join("plugins")
    }

    /// A memory figure of the daemon's process from `/proc/PID/status`, in
    /// KiB: `VmRSS` (resident now) or `VmHWM` (the peak).
    pub fn memory_kib(&self, field: &str) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .with_context(|| format!("no {field} in /proc/{}/status", self.pid()))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// When the process was last spawned (by the builder or [`Self::restart`]).
    pub fn spawned(&self) -> Instant {
        self.spawned
    }

    /// Everything the daemon has logged so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Everything the daemon wrote to stdout.
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.out")).unwrap_or_default()
    }

    pub async fn connect(&self) -> anyhow::Result<Conn> {
        Conn::connect(&self.socket).await
    }

    /// Sends one request on a new connection and returns the response.
    pub async fn request(&self, request: Value) -> anyhow::Result<Value> {
        let mut conn = self.connect().await?;
        conn.send(&request).await?;
        conn.recv().await
    }

    /// Submits one task with `wait: true` and returns it once it has
    /// succeeded or is dead, as the `task` op shows it.
    pub async fn deliver(&self, task: Value) -> anyhow::Result<Value> {
        let response = self
            .request(serde_json::json!({"op": "submit", "wait": true, "task": task}))
            .await?;
        anyhow::ensure!(response["ok"] == true, "submit failed: {response}");
        Ok(response["result"]["tasks"][0].clone())
    }

    /// Runs the `notifyhub` CLI against this daemon; panics, with what it
    /// printed, if it has not exited within [`CLI_EXITS_WITHIN`].
    pub fn cli(&self, args: &[&str]) -> Output {
        process::output_within(
            Command::new(&self.bin)
                .arg("--socket")
                .arg(&self.socket)
                .args(args)
                .env("NO_COLOR", "1"),
            CLI_EXITS_WITHIN,
        )
        .unwrap_or_else(|e| panic!("running the notifyhub CLI: {e:#}"))
    }

    /// Sends SIGTERM and waits for the process to exit (at most
    /// [`STOPS_WITHIN`]; then it is killed and this fails).
    pub fn terminate(&mut self) -> anyhow::Result<ExitStatus> {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()?;
        if !status.success() {
            bail!("kill -TERM failed");
        }
        process::wait_within(&mut self.child, STOPS_WITHIN)
            .with_context(|| format!("after SIGTERM; its log:\n{}", self.logs()))
    }

    /// Kills the process with SIGKILL, as a crash would.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    /// Starts the daemon again on the same directory (after `kill` or
    /// `terminate`); its log continues in a new file.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.runs += 1;
        self.log = self.dir.path().join(format!("daemon.{}.log", self.runs));
        self.command.stderr(std::fs::File::create(&self.log)?);
        self.command.stdout(std::fs::File::create(
            self.dir.path().join(format!("daemon.{}.out", self.runs)),
        )?);
        self.spawned = Instant::now();
        self.child = self.command.spawn()?;
        self.wait_ready(Duration::from_secs(120)).await?;
        self.wait_plugins_ready(PLUGINS_LOADED_WITHIN).await
    }
}

/// Set by `cargo xtask test` to a directory: every daemon's logs are
/// copied there when it is dropped (its temporary directory goes), so a
/// failed test can be read afterwards.
pub const KEEP_LOGS_ENV: &str = "NOTIFYHUB_TEST_DAEMON_LOGS";

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(keep) = std::env::var_os(KEEP_LOGS_ENV) {
            let test = std::thread::current()
                .name()
                .unwrap_or("test")
                .replace("::", "-");
            let keep = Path::new(&keep);
            let _ = std::fs::create_dir_all(keep);
            for run in 1..=self.runs {
                let from = match run {
                    1 => self.dir.path().join("daemon.log"),
                    n => self.dir.path().join(format!("daemon.{n}.log")),
                };
                let to = keep.join(format!("{test}.{}.{run}.log", self.child.id()));
                let _ = std::fs::copy(from, to);
            }
        }
    }
}

/// A raw connection to the socket.
pub struct Conn {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

impl Conn {
    pub async fn connect(socket: &Path) -> anyhow::Result<Conn> {
        let (read, writer) = UnixStream::connect(socket).await?.into_split();
        Ok(Conn {
            reader: BufReader::new(read),
            writer,
        })
    }

    /// Writes bytes as they are (no newline added).
    pub async fn send_raw(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        self.writer.write_all(bytes).await?;
        Ok(())
    }

    /// Writes a request line.
    pub async fn send(&mut self, request: &Value) -> anyhow::Result<()> {
        let mut line = serde_json::to_vec(request)?;
        line.push(b'\n');
        self.send_raw(&line).await
    }

    /// Reads one response line (30 s at most).
    pub async fn recv(&mut self) -> anyhow::Result<Value> {
        let mut line = String::new();
        let n = tokio::time::timeout(Duration::from_secs(30), self.reader.read_line(&mut line))
            .await
            .context("no response within 30 s")??;
        if n == 0 {
            bail!("the daemon closed the connection");
        }
        Ok(serde_json::from_str(&line)?)
    }

    /// Closes the writing half; the daemon sees end of input.
    pub async fn close_write(&mut self) -> anyhow::Result<()> {
        self.writer.shutdown().await?;
        Ok(())
    }
}
