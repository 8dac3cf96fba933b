//! Bounds for every wait in tests and benchmarks: a wait that can hang
//! costs hours, one that fails after a bound costs its bound and says what
//! it was waiting for.

use std::future::Future;
use std::time::Duration;

/// Awaits `future`; fails naming `what` if it takes longer than `limit`.
pub async fn within<T>(
    what: &str,
    limit: Duration,
    future: impl Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    tokio::time::timeout(limit, future)
        .await
        .map_err(|_| anyhow::anyhow!("{what}: not done within {limit:?}"))?
}

/// Set to a number of seconds to change [`bench_limit`].
pub const BENCH_LIMIT_ENV: &str = "NOTIFYHUB_BENCH_LIMIT_SECS";

/// How long a whole benchmark may run before it fails: a guard against a
/// hang, well above a default-sized run (each finishes in under 3 minutes);
/// raise it with [`BENCH_LIMIT_ENV`] for big sizes.
pub fn bench_limit() -> Duration {
    std::env::var(BENCH_LIMIT_ENV)
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(Duration::from_secs(600), Duration::from_secs)
}

/// Runs a benchmark's body under [`bench_limit`].
pub async fn bench<T>(future: impl Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    within(
        &format!("the benchmark (raise {BENCH_LIMIT_ENV} for big sizes)"),
        bench_limit(),
        future,
    )
    .await
}
