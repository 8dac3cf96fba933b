//! One call into the `noop` plugin through notifyhub's executor, with a
//! fresh instance per call and with a warm instance reused: the in-process
//! figure the `e2e` and `peers` benchmarks both report.

use std::sync::Arc;
use std::time::{Duration, Instant};

use notifyhub::executor::Executor;
use notifyhub::sandbox::{Limits, Sandbox, SandboxSettings, Tier};
use notifyhub::task::Task;

/// Calls made with fresh instances, then with one warm instance.
pub const FRESH_CALLS: u32 = 5_000;
pub const WARM_CALLS: u32 = 50_000;

/// Mean time per call.
#[derive(Debug, Clone, Copy)]
pub struct NoopCalls {
    pub fresh: Duration,
    pub warm: Duration,
}

/// Times the calls; every one must succeed.
pub async fn measure() -> anyhow::Result<NoopCalls> {
    let executor = Executor::new(Arc::new(Sandbox::new(&SandboxSettings::default())?));
    let path = notifyhub_testkit::plugins::path("noop")?;
    let plugin = Arc::new(
        notifyhub::loader::load(&path, &executor, Limits::default(), Tier::Optimized).await?,
    );
    let task = Task::text("noop", "-", "benchmark");

    let started = Instant::now();
    for _ in 0..FRESH_CALLS {
        anyhow::ensure!(executor.send(&plugin, &task, None).await.is_success());
    }
    let fresh = started.elapsed() / FRESH_CALLS;

    let mut instance = executor.instantiate(plugin).await?;
    let started = Instant::now();
    for _ in 0..WARM_CALLS {
        let (outcome, _) = executor.call(&mut instance, &task, None).await;
        anyhow::ensure!(outcome.is_success(), "{outcome:?}");
    }
    let warm = started.elapsed() / WARM_CALLS;
    Ok(NoopCalls { fresh, warm })
}
