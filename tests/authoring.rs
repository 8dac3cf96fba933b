//! The plugin author's tools: `notifyhub check` and `notifyhub new`.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use notifyhub_testkit::daemon::{CLI_EXITS_WITHIN, Daemon, shared_cache_dir};
use notifyhub_testkit::plugins::{self, DEPLOYABLE};
use notifyhub_testkit::process::output_within;
use notifyhub_testkit::receiver::{Receiver, Reply};
use notifyhub_testkit::{repo_root, toolchains};
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_notifyhub");

/// `notifyhub check FILE`, compiling into the suite's shared cache (never
/// the user's own).
fn check(file: &Path) -> (bool, String) {
    let out = output_within(
        Command::new(BIN)
            .arg("--cache-dir")
            .arg(shared_cache_dir())
            .arg("check")
            .arg(file),
        CLI_EXITS_WITHIN,
    )
    .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn check_accepts_every_first_party_plugin() -> anyhow::Result<()> {
    for name in DEPLOYABLE {
        let (ok, out) = check(&plugins::path(name)?);
        assert!(ok, "{name}:\n{out}");
        assert!(
            out.contains("contract   notifyhub:plugin@0.1.0"),
            "{name}:\n{out}"
        );
        assert!(out.contains("platforms  "), "{name}:\n{out}");
    }
    Ok(())
}

/// Each broken file gets an error that says what is wrong and what to do.
#[test]
fn check_explains_what_is_wrong() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let cases: Vec<(&str, Vec<u8>, &[&str])> = vec![
        ("text", b"hello".to_vec(), &["not a WebAssembly file"]),
        (
            "core",
            wat::parse_str("(module (func (export \"send\")))")?,
            &["core WebAssembly module, not a component", "wasm32-wasip2"],
        ),
        (
            "other-world",
            wat::parse_str(
                r#"(component
                    (core module $m (func (export "run") (result i32) i32.const 0))
                    (core instance $i (instantiate $m))
                    (func $run (result (result)) (canon lift (core func $i "run")))
                    (instance $cli (export "run" (func $run)))
                    (export "wasi:cli/run@0.2.0" (instance $cli)))"#,
            )?,
            &[
                "does not export `notifyhub:plugin/handler`",
                "wasi:cli/run@0.2.0",
            ],
        ),
        (
            "next-contract",
            wat::parse_str(
                r#"(component
                    (instance $h)
                    (export "notifyhub:plugin/handler@0.2.0" (instance $h)))"#,
            )?,
            &["built against notifyhub:plugin@0.2.0", "0.1.x"],
        ),
        (
            "foreign-import",
            wat::parse_str(
                r#"(component
                    (import "acme:vault/secrets@1.0.0" (instance))
                    (instance $h)
                    (export "notifyhub:plugin/handler@0.1.0" (instance $h)))"#,
            )?,
            &["imports acme:vault/secrets@1.0.0, which this host does not provide"],
        ),
    ];
    for (name, bytes, expected) in cases {
        let file = dir.path().join(format!("{name}.wasm"));
        std::fs::write(&file, bytes)?;
        let (ok, out) = check(&file);
        assert!(!ok, "{name} passed check:\n{out}");
        for words in expected {
            assert!(out.contains(words), "{name}: no `{words}` in:\n{out}");
        }
    }
    Ok(())
}

/// A plugin built against another contract version is refused by the
/// daemon with a clear error, and the daemon keeps serving the others.
#[tokio::test]
async fn the_daemon_refuses_another_contract_version() -> anyhow::Result<()> {
    let next = wat::parse_str(
        r#"(component (instance $h) (export "notifyhub:plugin/handler@0.2.0" (instance $h)))"#,
    )?;
    let daemon = Daemon::builder(BIN)
        .plugin("noop", None)
        .file("future.wasm", next)
        .start()
        .await?;
    let plugins = daemon.request(serde_json::json!({"op": "plugins"})).await?;
    let errors = plugins["result"]["errors"].to_string();
    assert!(
        errors.contains("future.wasm") && errors.contains("built against notifyhub:plugin@0.2.0"),
        "{plugins}"
    );
    assert_eq!(plugins["result"]["plugins"][0]["name"], "noop", "{plugins}");
    Ok(())
}

/// A scaffolded project's build and test: a cold Rust build of its
/// dependencies takes minutes on two cores.
const PROJECT_TEST_WITHIN: Duration = Duration::from_secs(600);

fn run(command: &mut Command) -> Output {
    let out = output_within(command, PROJECT_TEST_WITHIN).expect("the command runs");
    assert!(
        out.status.success(),
        "{command:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `new` for each language: the project builds with its one command, passes
/// `check`, and its own test delivers through a real daemon to a local
/// receiver. Then each plugin delivers a message larger than one call to
/// the host takes (see [`a_large_body_arrives_whole`]).
#[test]
fn scaffolded_plugins_build_check_and_deliver() -> anyhow::Result<()> {
    plugins::build()?;
    let dir = tempfile::tempdir()?;
    let js = format!("node {}", toolchains::componentize_js()?.display());
    let py = toolchains::componentize_py()?;
    for lang in ["rust", "python", "js"] {
        let name = format!("hello-{lang}");
        let project = dir.path().join(&name);
        let out = run(Command::new(BIN)
            .args(["new", &name, "--lang", lang, "--dir"])
            .arg(&project));
        assert!(String::from_utf8_lossy(&out.stdout).contains("./test.sh"));
        let out = run(Command::new("sh")
            .arg(project.join("test.sh"))
            .env("NOTIFYHUB", BIN)
            // check and serve compile into the suite's cache, not $HOME.
            .env("NOTIFYHUB_CACHE_DIR", shared_cache_dir())
            .env("COMPONENTIZE_PY", &py)
            .env("COMPONENTIZE_JS", &js)
            // Share compiled dependencies between runs of this test.
            .env(
                "CARGO_TARGET_DIR",
                repo_root().join("plugins/target/scaffolded"),
            )
            .env_remove("RUSTFLAGS"));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains("ok: this host can run the plugin"),
            "{lang}:\n{stdout}"
        );
        assert!(
            stdout.contains(&format!("ok: {name} delivered to the local receiver")),
            "{lang}:\n{stdout}"
        );
    }
    let runtime = tokio::runtime::Runtime::new()?;
    for lang in ["rust", "python", "js"] {
        let name = format!("hello-{lang}");
        let wasm = dir.path().join(&name).join(format!("{name}.wasm"));
        runtime.block_on(a_large_body_arrives_whole(&name, &wasm))?;
    }
    Ok(())
}

/// A message whose request is over the 512 KiB a single call to the host
/// takes (`notifyhub:http/client`): each language's helper streams it
/// through `wasi:http` instead, and the receiver gets all of it.
async fn a_large_body_arrives_whole(name: &str, wasm: &Path) -> anyhow::Result<()> {
    let receiver = Receiver::start(|_| Reply::new(200, "ok")).await;
    let daemon = Daemon::builder(BIN)
        .file(&format!("{name}.wasm"), std::fs::read(wasm)?)
        .file(
            &format!("{name}.toml"),
            format!("allowed_hosts = [\"{}\"]\n", receiver.authority()),
        )
        .start()
        .await?;
    let text = "x".repeat(600_000);
    let task = daemon
        .deliver(json!({"platform": name, "target": receiver.url("/hook"), "body": text}))
        .await?;
    assert_eq!(task["state"], "succeeded", "{name}: {task}");
    let requests = receiver.requests();
    assert_eq!(requests.len(), 1, "{name}");
    assert_eq!(
        requests[0].json()["text"],
        text,
        "{name}: the body arrives whole"
    );
    Ok(())
}
