//! The stdlib Python client in examples/python, run by its own unittest
//! suite against the real daemon.

use notifyhub_testkit::daemon::{CLI_EXITS_WITHIN, Daemon};

const BIN: &str = env!("CARGO_BIN_EXE_notifyhub");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_client_s_own_tests_pass_against_the_daemon() -> anyhow::Result<()> {
    let daemon = Daemon::builder(BIN).plugin("noop", None).start().await?;
    let dir = notifyhub_testkit::repo_root().join("examples/python");
    let out = tokio::time::timeout(
        CLI_EXITS_WITHIN,
        tokio::process::Command::new("python3")
            .current_dir(&dir)
            .args(["-m", "unittest", "-v", "test_notifyhub_client"])
            .env("NOTIFYHUB_SOCKET", daemon.socket())
            // The timeout drops the future: the client goes with it.
            .kill_on_drop(true)
            .output(),
    )
    .await
    .map_err(|_| anyhow::anyhow!("the Python client's tests ran over {CLI_EXITS_WITHIN:?}"))??;
    let report = String::from_utf8_lossy(&out.stderr);
    anyhow::ensure!(
        out.status.success(),
        "the Python client's tests failed:\n{report}"
    );
    anyhow::ensure!(report.contains("Ran 3 tests"), "{report}");
    Ok(())
}
