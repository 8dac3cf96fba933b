//! What each subcommand does.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::{Cli, Command, OutputArgs, SendArgs, ServeArgs, render};
use crate::client::Client;
use crate::config::{Config, Overrides};
use crate::daemon::Daemon;
use crate::open_files;
use crate::protocol::{Change, PluginsView, ReloadResult, StatusView, TaskView, WatchLine};
use crate::reconfigure::ConfigSource;
use crate::sandbox::recorder::CannedAnswer;
use crate::task::{Format, Priority, TaskState};
use crate::trial::{self, TrialMessage};
use crate::{check, scaffold, telemetry};

/// Runs the parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    // Generated from the CLI definition itself, so they never drift.
    match &cli.command {
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            // Into a buffer first: clap_complete panics on a closed pipe.
            let mut script = Vec::new();
            clap_complete::generate(*shell, &mut command, "notifyhub", &mut script);
            std::io::Write::write_all(&mut std::io::stdout(), &script)?;
            return Ok(ExitCode::SUCCESS);
        }
        Command::Man { dir } => {
            let command = <Cli as clap::CommandFactory>::command();
            match dir {
                Some(dir) => {
                    std::fs::create_dir_all(dir)
                        .with_context(|| format!("creating {}", dir.display()))?;
                    clap_mangen::generate_to(command, dir)
                        .with_context(|| format!("writing man pages to {}", dir.display()))?;
                }
                None => clap_mangen::Man::new(command).render(&mut std::io::stdout())?,
            }
            return Ok(ExitCode::SUCCESS);
        }
        _ => {}
    }
    let config = Config::resolve(&cli.common.overrides())?;
    // The daemon logs at info by default and may export its spans; client
    // commands only report problems.
    let serving = matches!(cli.command, Command::Serve(_));
    // The NATS client reports each reconnection attempt at info.
    let level = if serving {
        "info,async_nats=warn"
    } else {
        "warn"
    };
    let _telemetry = telemetry::init(
        cli.common.log_format,
        level,
        serving.then_some(&config.traces),
    )?;
    match cli.command {
        Command::Completions { .. } | Command::Man { .. } => unreachable!("handled above"),
        Command::Serve(args) => serve(config, args, cli.common.overrides()).await,
        Command::Check(args) => {
            let report = check::check(&args.file, Some(config.cache_dir())).await;
            print(args.output, &report, render::check)?;
            Ok(if report.ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::New(args) => {
            let dir = args.dir.unwrap_or_else(|| args.name.clone().into());
            let created = scaffold::create(&args.name, args.lang, &dir)?;
            println!("created {} ({} files)", dir.display(), created.len());
            println!("{}", scaffold::next_steps(args.lang, &dir));
            Ok(ExitCode::SUCCESS)
        }
        Command::Try(args) => {
            let m = args.message;
            let message = TrialMessage {
                platform: args.platform,
                target: args.target,
                title: m.title,
                body: m.body,
                format: m.format.into(),
                priority: m.priority.into(),
                metadata: m.metadata.into_iter().collect(),
            };
            let answer = CannedAnswer {
                status: args.answer,
                headers: args.answer_header,
                body: args.answer_body.into_bytes().into(),
                smtp_code: args.smtp_reply,
            };
            let report = trial::run(&args.file, message, answer, Some(config.cache_dir()))
                .await
                .with_context(|| format!("trying {}", args.file.display()))?;
            print(args.output, &report, render::trial)?;
            Ok(if report.outcome.is_success() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Watch(args) => watch(&config, args).await,
        Command::Top => {
            super::top::run(&config.socket).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::ReloadConfig(out) => {
            let result = call(&config, json!({"op": "reload-config"})).await?;
            if out.json {
                println!("{}", serde_json::to_string_pretty(&result)?);
            } else {
                let list = |v: &Value| {
                    v.as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                println!("applied: {}", list(&result["applied"]));
                println!("destinations: {}", list(&result["destinations"]));
                println!(
                    "workers: min {} max {}",
                    result["min_workers"], result["max_workers"]
                );
                let restart = list(&result["needs_restart"]);
                if !restart.is_empty() {
                    println!("changed, but need a restart: {restart}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Send(args) => send(&config, args).await,
        Command::Status(out) => {
            let status: StatusView = decode(call(&config, json!({"op": "status"})).await?)?;
            print(out, &status, render::status)
        }
        Command::Plugins(out) => {
            let plugins: PluginsView = decode(call(&config, json!({"op": "plugins"})).await?)?;
            print(out, &plugins, render::plugins)
        }
        Command::Scale(args) => {
            anyhow::ensure!(
                args.min.is_some() || args.max.is_some(),
                "give --min, --max or both"
            );
            let result = call(
                &config,
                json!({"op": "scale", "min": args.min, "max": args.max}),
            )
            .await?;
            if args.output.json {
                println!("{}", serde_json::to_string_pretty(&result)?);
            } else {
                println!(
                    "workers: min {} max {}",
                    result["min_workers"], result["max_workers"]
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Tasks(args) => {
            let request = json!({"op": "tasks", "state": args.state, "platform": args.platform, "limit": args.limit});
            let tasks: Vec<TaskView> = decode(call(&config, request).await?["tasks"].clone())?;
            print(args.output, &tasks, render::tasks)
        }
        Command::Retry(args) => {
            let request = match (&args.id, args.dead) {
                (Some(id), false) => json!({"op": "retry", "task_id": id}),
                (None, true) => json!({"op": "retry", "dead": true}),
                _ => anyhow::bail!("give a task id or --dead"),
            };
            let result = call(&config, request).await?;
            if args.output.json {
                println!("{}", serde_json::to_string_pretty(&result)?);
            } else {
                let ids = result["requeued"].as_array().cloned().unwrap_or_default();
                println!("re-queued {} task(s)", ids.len());
                ids.iter()
                    .filter_map(|id| id.as_str())
                    .for_each(|id| println!("{id}"));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Reload(args) => {
            let result = call(&config, json!({"op": "reload", "name": args.name})).await?;
            let results: Vec<ReloadResult> = decode(result["results"].clone())?;
            print(args.output, &results, render::reload)?;
            let failed = results
                .iter()
                .any(|r| matches!(r.change, Change::Failed { .. }));
            Ok(if failed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Task(args) => {
            // Showing a dead task is not a failure: only `send --wait`
            // reports a task's fate through its exit code.
            let task: TaskView =
                decode(call(&config, json!({"op": "task", "task_id": args.id})).await?)?;
            print(args.output, &task, render::task)
        }
    }
}

/// The `serve` flags laid over a config.
fn with_serve_flags(mut config: Config, args: &ServeArgs) -> Config {
    if let Some(min) = args.min_workers {
        config.pool.min_workers = min;
    }
    if let Some(max) = args.max_workers {
        config.pool.max_workers = max;
    }
    if let Some(strategy) = args.strategy {
        config.pool.strategy = strategy;
    }
    if let Some(url) = &args.broker {
        config.broker.url = Some(url.clone());
    }
    config
}

async fn serve(config: Config, args: ServeArgs, overrides: Overrides) -> anyhow::Result<ExitCode> {
    let config = with_serve_flags(config, &args);
    config
        .pool
        .validate()
        .map_err(|e| anyhow::anyhow!("invalid [pool] settings: {e}"))?;
    config.metrics.validate().map_err(anyhow::Error::msg)?;
    config.store.validate().map_err(anyhow::Error::msg)?;
    config.broker.validate().map_err(anyhow::Error::msg)?;
    let shutdown = CancellationToken::new();
    stop_on_signal(shutdown.clone())?;
    // `reload-config` and SIGHUP read the file again, with the same flags.
    let source: ConfigSource = Arc::new(move || {
        Config::resolve(&overrides)
            .map(|c| with_serve_flags(c, &args))
            .map_err(|e| e.to_string())
    });
    open_files::raise_for(open_files::needed(
        config.pool.max_workers,
        config.server.max_connections,
    ));
    let daemon = Daemon::start(&config, source)
        .await
        .context("notifyhub could not start")?;
    let report = daemon.run(shutdown).await;
    eprintln!(
        "notifyhub stopped: {} in-flight task(s) finished, {} cancelled, {} left queued",
        report.finished, report.cancelled, report.left_queued
    );
    Ok(if report.cancelled == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Cancels `shutdown` on the first SIGTERM or SIGINT. The handlers are
/// installed here, before the socket opens, so a signal that arrives while the
/// daemon starts is not lost (nor does it kill the process outright).
///
/// A second SIGTERM or SIGINT exits at once, for an operator who will not
/// wait for the drain: accepted tasks are already durable, and an attempt
/// cut off runs again after a restart.
fn stop_on_signal(shutdown: CancellationToken) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing a SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing a SIGINT handler")?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!(
            "stopping: finishing in-flight attempts; a second SIGTERM or SIGINT exits at once"
        );
        shutdown.cancel();
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        eprintln!(
            "notifyhub: a second signal: exiting now; accepted tasks are kept and run after a restart"
        );
        std::process::exit(1);
    });
    Ok(())
}

async fn send(config: &Config, args: SendArgs) -> anyhow::Result<ExitCode> {
    let m = args.message;
    let metadata: serde_json::Map<String, Value> =
        m.metadata.into_iter().map(|(k, v)| (k, json!(v))).collect();
    let request = json!({
        "op": "submit",
        "wait": args.wait,
        "task": {
            "platform": args.platform,
            "target": args.target,
            "title": m.title,
            "body": m.body,
            "format": Format::from(m.format),
            "priority": Priority::from(m.priority),
            "metadata": metadata,
            "idempotency_key": args.idempotency_key,
            "deliver_at": args.deliver_at,
            "delay": args.delay,
        }
    });
    let result = call(config, request).await?;
    if !args.wait {
        if args.output.json {
            println!("{}", serde_json::to_string_pretty(&result)?);
        } else {
            // One id per delivery: a fan-out destination gives several.
            for id in result["task_ids"].as_array().into_iter().flatten() {
                println!("{}", id.as_str().unwrap_or_default());
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let tasks: Vec<TaskView> = decode(result["tasks"].clone())?;
    let mut exit = ExitCode::SUCCESS;
    for task in &tasks {
        print(args.output, task, render::task)?;
        if exit_for(task) != ExitCode::SUCCESS {
            exit = ExitCode::FAILURE;
        }
    }
    Ok(exit)
}

async fn watch(config: &Config, args: super::WatchArgs) -> anyhow::Result<ExitCode> {
    let mut client = Client::connect(&config.socket).await?;
    client
        .call(json!({"op": "watch", "platform": args.platform,
                     "destination": args.destination, "state": args.state}))
        .await?;
    let id = client.last_id();
    loop {
        let line: WatchLine = decode(client.next_result(id).await?)?;
        if args.json {
            println!("{}", serde_json::to_string(&line)?);
        } else {
            print!("{}", render::watch_line(&line));
        }
    }
}

fn exit_for(task: &TaskView) -> ExitCode {
    if task.state == TaskState::Dead {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

async fn call(config: &Config, request: Value) -> anyhow::Result<Value> {
    let mut client = Client::connect(&config.socket).await?;
    Ok(client.call(request).await?)
}

fn decode<T: serde::de::DeserializeOwned>(value: Value) -> anyhow::Result<T> {
    serde_json::from_value(value).context("unexpected answer from the daemon")
}

fn print<T: serde::Serialize>(
    out: OutputArgs,
    value: &T,
    human: fn(&T) -> String,
) -> anyhow::Result<ExitCode> {
    if out.json {
        println!("{}", serde_json::to_string_pretty(value)?);
    } else {
        print!("{}", human(value));
    }
    Ok(ExitCode::SUCCESS)
}
