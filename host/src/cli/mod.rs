//! The `notifyhub` command line: one binary for the daemon and its clients.

mod commands;
mod render;
mod top;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

pub use commands::run;

use crate::config::Overrides;
use crate::pool::Strategy;
use crate::scaffold::Language;
use crate::task::{Format, Priority};
pub use crate::telemetry::LogFormat;

/// Deliver notifications through sandboxed WebAssembly plugins.
///
/// `notifyhub serve` runs the daemon: it loads every `*.wasm` plugin in the
/// plugin directory and accepts tasks on a Unix socket. The other commands
/// talk to a running daemon over that socket.
#[derive(Debug, Parser)]
#[command(name = "notifyhub", version, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Where things are. Each flag has an environment variable and a config
/// file key; the flag wins over the variable, which wins over the file.
#[derive(Debug, Clone, Args)]
pub struct CommonArgs {
    /// Config file (TOML). Default: $XDG_CONFIG_HOME/notifyhub/config.toml, if it exists.
    #[arg(long, global = true, env = "NOTIFYHUB_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The daemon's Unix socket. Default: DATA_DIR/notifyhub.sock.
    #[arg(long, global = true, env = "NOTIFYHUB_SOCKET", value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Directory of plugins (*.wasm, each with an optional NAME.toml manifest). Default: DATA_DIR/plugins.
    #[arg(long, global = true, env = "NOTIFYHUB_PLUGINS", value_name = "DIR")]
    pub plugins: Option<PathBuf>,
    /// State directory (socket, task store, compile cache). Default: $XDG_DATA_HOME/notifyhub or ~/.local/share/notifyhub.
    #[arg(long, global = true, env = "NOTIFYHUB_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Where compiled plugins are cached (shared by `serve` and `check`). Default: DATA_DIR/cache.
    #[arg(long, global = true, env = "NOTIFYHUB_CACHE_DIR", value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// How log lines (on stderr) are written: text for people, json (one
    /// object a line, span fields included) for log collectors.
    #[arg(
        long,
        global = true,
        env = "NOTIFYHUB_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: LogFormat,
}

impl CommonArgs {
    pub fn overrides(&self) -> Overrides {
        Overrides {
            config: self.config.clone(),
            data_dir: self.data_dir.clone(),
            plugins: self.plugins.clone(),
            socket: self.socket.clone(),
            cache_dir: self.cache_dir.clone(),
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon in the foreground until SIGINT or SIGTERM.
    Serve(ServeArgs),
    /// Submit a notification.
    Send(SendArgs),
    /// Show the worker pool and its statistics.
    Status(OutputArgs),
    /// List loaded plugins and the files that failed to load.
    Plugins(OutputArgs),
    /// Show one task, its attempts and its outcome.
    Task(TaskArgs),
    /// List tasks, newest first (dead letters: --state dead).
    Tasks(TasksArgs),
    /// Re-queue a dead task, or every dead task with --dead.
    Retry(RetryArgs),
    /// Change the worker pool's bounds while the daemon runs.
    Scale(ScaleArgs),
    /// Reload one plugin, or every plugin in the directory (files are also
    /// picked up automatically when they change).
    Reload(ReloadArgs),
    /// Check a plugin file against the contract without a daemon: is it a
    /// component, which contract version, what it imports beyond what the
    /// host grants, and what describe() says. Exits non-zero on problems.
    Check(CheckArgs),
    /// Start a new plugin project: sources, the WIT contract, a build script
    /// and a test against a local receiver.
    New(NewArgs),
    /// Run a plugin once on a message, without a daemon and without the
    /// network: prints the exact requests it would send (secrets redacted,
    /// bodies pretty-printed) and how it classifies a canned answer. Exits 0
    /// when the plugin reports the message delivered, 1 otherwise.
    Try(TryArgs),
    /// A live view of the daemon in the terminal: workers, queues, throughput,
    /// warm hits, paced destinations, scale events. `q` quits.
    Top,
    /// Re-read the config file and apply what can change while running
    /// (destinations, rate limits, retry policy, pool bounds); a config that
    /// does not load changes nothing. SIGHUP to the daemon does the same.
    ReloadConfig(OutputArgs),
    /// Stream task events as they happen (queued, running, retrying,
    /// succeeded, dead), until interrupted. Applications can do the same with
    /// the socket's `watch` op instead of polling `task`.
    Watch(WatchArgs),
    /// Print a shell completion script, e.g.
    /// `notifyhub completions bash > ~/.local/share/bash-completion/completions/notifyhub`.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), e.g.
    /// `notifyhub man > ~/.local/share/man/man1/notifyhub.1`; with --dir,
    /// write one page per subcommand there.
    Man {
        /// Write notifyhub.1 and notifyhub-COMMAND.1 into this directory.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

#[derive(Debug, Args)]
pub struct TryArgs {
    /// The plugin file (a `NAME.toml` manifest beside it is read too).
    pub file: PathBuf,
    /// Which of the plugin's platforms to try. Default: its first.
    #[arg(long, short)]
    pub platform: Option<String>,
    /// Where the message goes, as the platform expects it (webhook URL, chat
    /// id, address). May start with `-`.
    #[arg(long, short, allow_hyphen_values = true)]
    pub target: String,
    #[command(flatten)]
    pub message: MessageArgs,
    /// The status every request is answered with.
    #[arg(long, value_name = "STATUS", default_value_t = 200,
          value_parser = clap::value_parser!(u16).range(100..=599))]
    pub answer: u16,
    /// A header of the answer, as `Name:value` (repeatable), e.g. `Retry-After:5`.
    #[arg(long, value_name = "NAME:VALUE", value_parser = parse_header)]
    pub answer_header: Vec<(String, String)>,
    /// The body of the answer, e.g. '{"errcode":310000}'.
    #[arg(long, value_name = "BODY", default_value = "")]
    pub answer_body: String,
    /// The reply code every SMTP message is answered with (e.g. 451, 550).
    #[arg(long, value_name = "CODE", default_value_t = 250,
          value_parser = clap::value_parser!(u16).range(200..=599))]
    pub smtp_reply: u16,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The plugin file (a `NAME.toml` manifest beside it is read too).
    pub file: PathBuf,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Args)]
pub struct NewArgs {
    /// The plugin's name (lowercase letters, digits and dashes); also its
    /// platform name and directory.
    pub name: String,
    /// The language to write it in.
    #[arg(long, value_enum, default_value = "rust")]
    pub lang: Language,
    /// Where to create the project. Default: ./NAME.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ReloadArgs {
    /// The plugin's file name without `.wasm`; all plugins when left out.
    pub name: Option<String>,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Fewest workers kept running. Overrides [pool] min_workers (default 4).
    #[arg(long, value_name = "N")]
    pub min_workers: Option<usize>,
    /// Most workers, i.e. deliveries in flight. Overrides [pool] max_workers (default 1024).
    #[arg(long, value_name = "N")]
    pub max_workers: Option<usize>,
    /// How tasks are routed to workers: affinity (default), round-robin, least-loaded, weighted.
    #[arg(long, value_name = "STRATEGY")]
    pub strategy: Option<Strategy>,
    /// Share tasks with other hosts through NATS JetStream at this URL
    /// (e.g. nats://127.0.0.1:4222) instead of the embedded store. Overrides [broker] url.
    #[arg(long, value_name = "URL")]
    pub broker: Option<String>,
}

#[derive(Debug, Args)]
pub struct ScaleArgs {
    /// New minimum number of workers.
    #[arg(long, value_name = "N")]
    pub min: Option<usize>,
    /// New maximum number of workers.
    #[arg(long, value_name = "N")]
    pub max: Option<usize>,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// The message itself, as `send` and `try` take it.
#[derive(Debug, Args)]
pub struct MessageArgs {
    /// Optional title or subject.
    #[arg(long)]
    pub title: Option<String>,
    /// The message text.
    #[arg(long, short)]
    pub body: String,
    /// How the body is written.
    #[arg(long, value_enum, default_value = "text")]
    pub format: FormatArg,
    #[arg(long, value_enum, default_value = "normal")]
    pub priority: PriorityArg,
    /// Extra key=value pairs for the plugin (repeatable).
    #[arg(long = "meta", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub metadata: Vec<(String, String)>,
}

#[derive(Debug, Args)]
pub struct SendArgs {
    /// Platform to deliver to; `notifyhub plugins` lists the loaded ones.
    /// Not needed when --target names a configured destination.
    #[arg(long, short)]
    pub platform: Option<String>,
    /// Where to deliver: a configured destination's name ([destinations.NAME]
    /// in the config file), or a raw webhook URL, chat id or address, as the
    /// platform expects. May start with `-` (a Telegram group chat id such as
    /// -1001234567890).
    #[arg(long, short, allow_hyphen_values = true)]
    pub target: String,
    #[command(flatten)]
    pub message: MessageArgs,
    /// A key that makes the submit idempotent: a second send with the same key
    /// (within the store's window) returns the first task and delivers nothing.
    #[arg(long, value_name = "KEY")]
    pub idempotency_key: Option<String>,
    /// Deliver no sooner than this time (RFC 3339, e.g. 2026-12-01T09:00:00Z).
    #[arg(long, value_name = "TIME", conflicts_with = "delay")]
    pub deliver_at: Option<String>,
    /// Deliver no sooner than this long from now (e.g. 90s, 5m, 2h).
    #[arg(long, value_name = "DURATION")]
    pub delay: Option<String>,
    /// Wait until the task has succeeded or is dead (retries included) and show
    /// the outcome; exits non-zero if it is dead.
    #[arg(long)]
    pub wait: bool,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Args)]
pub struct WatchArgs {
    /// Only tasks for this platform.
    #[arg(long)]
    pub platform: Option<String>,
    /// Only tasks to this configured destination.
    #[arg(long)]
    pub destination: Option<String>,
    /// Only events into this state: queued, running, succeeded, retrying, dead.
    #[arg(long)]
    pub state: Option<String>,
    /// One JSON object a line instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct TasksArgs {
    /// Only tasks in this state: queued, running, succeeded, retrying, dead.
    #[arg(long)]
    pub state: Option<String>,
    /// Only tasks for this platform.
    #[arg(long)]
    pub platform: Option<String>,
    /// At most this many (default 50).
    #[arg(long)]
    pub limit: Option<usize>,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Args)]
pub struct RetryArgs {
    /// The dead task to re-queue.
    pub id: Option<String>,
    /// Re-queue every dead task.
    #[arg(long, conflicts_with = "id")]
    pub dead: bool,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Args)]
pub struct TaskArgs {
    /// The task id printed by `send`.
    pub id: String,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Clone, Copy, Args)]
pub struct OutputArgs {
    /// Print the daemon's answer as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum FormatArg {
    Text,
    Markdown,
    Html,
}

impl From<FormatArg> for Format {
    fn from(f: FormatArg) -> Self {
        match f {
            FormatArg::Text => Format::Text,
            FormatArg::Markdown => Format::Markdown,
            FormatArg::Html => Format::Html,
        }
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum PriorityArg {
    Low,
    Normal,
    High,
}

impl From<PriorityArg> for Priority {
    fn from(p: PriorityArg) -> Self {
        match p {
            PriorityArg::Low => Priority::Low,
            PriorityArg::Normal => Priority::Normal,
            PriorityArg::High => Priority::High,
        }
    }
}

fn parse_header(s: &str) -> Result<(String, String), String> {
    let (name, value) = s
        .split_once(':')
        .ok_or_else(|| format!("expected NAME:VALUE, got `{s}`"))?;
    let name = name.trim();
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return Err(format!("`{name}` is not a header name"));
    }
    Ok((name.to_string(), value.trim().to_string()))
}

fn parse_key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("expected KEY=VALUE, got `{s}`"))
}
