//! The socket protocol under good and bad input: every bad line gets a
//! clear error and the connection, and the daemon, keep serving.

use notifyhub_testkit::daemon::{Conn, Daemon};
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_notifyhub");

async fn daemon() -> anyhow::Result<Daemon> {
    Daemon::builder(BIN)
        .plugin("noop", None)
        .config("[server]\nmax_line_bytes = 4096\n")
        .start()
        .await
}

#[tokio::test]
async fn bad_lines_get_error_codes_and_the_connection_stays_usable() -> anyhow::Result<()> {
    let daemon = daemon().await?;
    let mut conn = daemon.connect().await?;
    let cases: &[(&[u8], &str)] = &[
        (b"{this is not json\n", "malformed_json"),
        (b"[1, 2, 3]\n", "malformed_json"),
        (b"\xff\xfe\x00binary\n", "malformed_json"),
        (br#"{"id": 1}"#, "invalid_request"),
        (br#"{"op": "explode"}"#, "unknown_op"),
        (br#"{"op": 42}"#, "invalid_request"),
        (br#"{"op": "task"}"#, "invalid_request"),
        (br#"{"op": "task", "task_id": "nope"}"#, "invalid_request"),
        (br#"{"op": "task", "task_id": "0192f0c1-0000-7000-8000-000000000000"}"#, "not_found"),
        (br#"{"op": "submit"}"#, "invalid_request"),
        (br#"{"op": "submit", "task": {"platform": "noop", "target": "t"}}"#, "invalid_request"),
        (br#"{"op": "submit", "task": {"platform": "noop", "target": "", "body": "b"}}"#, "invalid_request"),
        (br#"{"op": "submit", "task": {"platform": "pigeon", "target": "t", "body": "b"}}"#, "unknown_platform"),
        (br#"{"op": "submit", "task": {"platform": "noop", "target": "t", "body": "b", "format": "rtf"}}"#, "invalid_request"),
    ];
    for (line, code) in cases {
        let mut line = line.to_vec();
        if line.last() != Some(&b'\n') {
            line.push(b'\n');
        }
        conn.send_raw(&line).await?;
        let response = conn.recv().await?;
        assert_eq!(response["ok"], false, "{}", String::from_utf8_lossy(&line));
        assert_eq!(
            response["error"]["code"],
            *code,
            "{}: {response}",
            String::from_utf8_lossy(&line)
        );
        assert!(!response["error"]["message"].as_str().unwrap().is_empty());
    }

    // An oversize line is skipped up to its newline, then the next line works.
    let mut big = vec![b'x'; 100_000];
    big.push(b'\n');
    conn.send_raw(&big).await?;
    let response = conn.recv().await?;
    assert_eq!(response["error"]["code"], "line_too_long", "{response}");

    conn.send(&json!({"id": "after", "op": "ping"})).await?;
    let response = conn.recv().await?;
    assert_eq!(
        response,
        json!({"id": "after", "ok": true, "result": {"pong": true}})
    );
    Ok(())
}

#[tokio::test]
async fn unknown_platform_errors_name_the_loaded_ones() -> anyhow::Result<()> {
    let daemon = daemon().await?;
    let response = daemon
        .request(json!({"id": 9, "op": "submit", "task": {"platform": "pigeon", "target": "t", "body": "b"}}))
        .await?;
    assert_eq!(response["id"], 9);
    let message = response["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("pigeon") && message.contains("noop"),
        "{message}"
    );
    Ok(())
}

#[tokio::test]
async fn a_batch_with_one_bad_task_is_rejected_whole() -> anyhow::Result<()> {
    let daemon = daemon().await?;
    let response = daemon
        .request(json!({"op": "submit", "tasks": [
            {"platform": "noop", "target": "t", "body": "fine"},
            {"platform": "pigeon", "target": "t", "body": "bad"}
        ]}))
        .await?;
    assert_eq!(response["error"]["code"], "unknown_platform");
    assert!(
        response["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("task 1:")
    );
    let status = daemon.request(json!({"op": "status"})).await?;
    assert_eq!(
        status["result"]["pool"]["processed"], 0,
        "nothing of the batch ran"
    );
    Ok(())
}

#[tokio::test]
async fn submit_task_and_status_answer() -> anyhow::Result<()> {
    let daemon = daemon().await?;
    let response = daemon
        .request(json!({"op": "submit", "tasks": [
            {"platform": "noop", "target": "t", "body": "a"},
            {"platform": "noop", "target": "t", "body": "b"}
        ]}))
        .await?;
    let ids = response["result"]["task_ids"].as_array().unwrap().clone();
    assert_eq!(ids.len(), 2);
    for id in &ids {
        // Poll until done: without `wait` the submit answers at once.
        let mut task = json!(null);
        for _ in 0..200 {
            task = daemon.request(json!({"op": "task", "task_id": id})).await?["result"].clone();
            if task["state"] == "succeeded" {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(task["state"], "succeeded", "{task}");
        assert_eq!(
            task["outcome"]["provider_id"], *id,
            "noop echoes the task id"
        );
    }
    let status = daemon.request(json!({"op": "status"})).await?["result"].clone();
    assert_eq!(status["pool"]["processed"], 2);
    assert_eq!(status["platforms"], json!(["noop"]));
    let plugins = daemon.request(json!({"op": "plugins"})).await?["result"].clone();
    assert_eq!(plugins["plugins"][0]["name"], "noop");
    assert_eq!(plugins["plugins"][0]["digest"].as_str().unwrap().len(), 64);
    Ok(())
}

#[tokio::test]
async fn many_connections_are_served_while_one_misbehaves() -> anyhow::Result<()> {
    let daemon = daemon().await?;
    // One client sends half a line and stalls.
    let mut stalled = daemon.connect().await?;
    stalled.send_raw(br#"{"op": "pi"#).await?;
    let mut handles = Vec::new();
    for i in 0..20 {
        let socket = daemon.socket().to_path_buf();
        handles.push(tokio::spawn(async move {
            let mut conn = notifyhub_testkit::daemon::Conn::connect(&socket).await?;
            conn.send(&json!({"id": i, "op": "ping"})).await?;
            anyhow::Ok(conn.recv().await?)
        }));
    }
    for handle in handles {
        assert_eq!(handle.await??["ok"], true);
    }
    // The stalled client finishes its line and gets an answer too.
    stalled.send_raw(b"ng\"}\n").await?;
    assert_eq!(stalled.recv().await?["result"]["pong"], true);
    Ok(())
}

#[tokio::test]
async fn a_line_without_newline_before_eof_is_still_answered() -> anyhow::Result<()> {
    let daemon = daemon().await?;
    let mut conn = daemon.connect().await?;
    conn.send_raw(br#"{"op":"ping","id":3}"#).await?;
    conn.close_write().await?;
    assert_eq!(conn.recv().await?["id"], 3);
    Ok(())
}

/// A request belongs to its connection: clients that give up on a `wait`
/// (killed by `timeout`, say) give their connection slots back at once,
/// so later clients are served instead of being refused `busy` until the
/// abandoned tasks run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_give_up_a_wait_free_their_slots() -> anyhow::Result<()> {
    const SLOTS: usize = 4;
    let daemon = Daemon::builder(BIN)
        .plugin("noop", None)
        .config(&format!("[server]\nmax_connections = {SLOTS}\n"))
        .start()
        .await?;
    for round in 0..3 {
        // Every slot is free again (on the first round: free at all).
        let mut waiting = served(&daemon, SLOTS).await?;
        for conn in &mut waiting {
            conn.send(&json!({"op": "submit", "wait": true, "id": 1, "task": {
                "platform": "noop", "target": "t", "body": "b", "delay": "1h"}}))
                .await?;
        }
        // Every slot is taken: one more client is refused.
        let refused = status_or_refusal(&daemon).await?;
        anyhow::ensure!(
            refused["error"]["code"] == "busy",
            "round {round}: {refused}"
        );
        // The waiting clients go away without an answer.
        drop(waiting);
    }
    served(&daemon, SLOTS).await?;
    Ok(())
}

/// A client waiting on a `submit` sends nothing for longer than
/// `idle_timeout`: that is not idle. The connection still takes requests,
/// and once the client gives up its slot is free at once, not when the
/// abandoned task runs an hour later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_longer_than_the_idle_timeout_keeps_its_connection_until_the_client_goes()
-> anyhow::Result<()> {
    let daemon = Daemon::builder(BIN)
        .plugin("noop", None)
        .config("[server]\nmax_connections = 2\nidle_timeout = \"1s\"\n")
        .start()
        .await?;
    let mut waiting = served(&daemon, 1).await?.remove(0);
    waiting
        .send(&json!({"op": "submit", "wait": true, "id": 1, "task": {
            "platform": "noop", "target": "t", "body": "b", "delay": "1h"}}))
        .await?;
    // Accepted: the connection's reader had read the line, and its idle
    // clock started, before the task could be listed.
    let listed = |answer: &serde_json::Value| {
        answer["result"]["tasks"]
            .as_array()
            .is_some_and(|t| t.len() == 1)
    };
    daemon
        .wait_for(
            "the submit accepted",
            json!({"op": "tasks"}),
            std::time::Duration::from_secs(20),
            listed,
        )
        .await?;
    // Twice the idle timeout, the wait still in flight: the passing of time
    // is the condition here, and nothing the daemon does shows it.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    waiting.send(&json!({"op": "ping", "id": 2})).await?;
    let answer = waiting.recv().await?;
    anyhow::ensure!(answer["id"] == 2 && answer["ok"] == true, "{answer}");
    // The client gives up: both slots are free again.
    drop(waiting);
    served(&daemon, 2).await?;
    Ok(())
}

/// A client that fills its connection's request slots with waits, sends
/// one more request and goes: the reader, stopped for lack of a slot,
/// still sees it go, and the connection's slot is free at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_gone_while_its_requests_wait_for_a_slot_frees_its_connection()
-> anyhow::Result<()> {
    let daemon = Daemon::builder(BIN)
        .plugin("noop", None)
        .config("[server]\nmax_connections = 1\nmax_in_flight = 2\n")
        .start()
        .await?;
    let mut conn = served(&daemon, 1).await?.remove(0);
    for id in 0..3 {
        conn.send(&json!({"op": "submit", "wait": true, "id": id, "task": {
            "platform": "noop", "target": "t", "body": "b", "delay": "1h"}}))
            .await?;
    }
    drop(conn);
    served(&daemon, 1).await?;
    Ok(())
}

/// `n` connections at once, each served (it answers a ping); tries again
/// while the daemon has fewer free slots, failing after a while with what
/// the last refused client was told.
async fn served(daemon: &Daemon, n: usize) -> anyhow::Result<Vec<Conn>> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    'again: loop {
        let mut conns = Vec::with_capacity(n);
        for _ in 0..n {
            let mut conn = daemon.connect().await?;
            let _ = conn.send(&json!({"op": "ping"})).await;
            let answer = conn.recv().await?;
            if answer["ok"] != true {
                anyhow::ensure!(
                    std::time::Instant::now() < deadline,
                    "only {} of {n} connection slots free: {answer}",
                    conns.len()
                );
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue 'again;
            }
            conns.push(conn);
        }
        return Ok(conns);
    }
}

/// The first line a new connection gets for a `status`: the answer, or
/// the `busy` refusal the daemon sends (and closes) when it is full; the
/// request itself may then meet a closed socket.
async fn status_or_refusal(daemon: &Daemon) -> anyhow::Result<serde_json::Value> {
    let mut conn = daemon.connect().await?;
    let _ = conn.send(&json!({"op": "status"})).await;
    conn.recv().await
}

/// A client that only shuts down its writing half still gets the answer
/// to a `wait` in flight: end of input is not the client going away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_closed_client_still_gets_its_wait_answered() -> anyhow::Result<()> {
    let daemon = daemon().await?;
    let mut conn = daemon.connect().await?;
    conn.send(&json!({"op": "submit", "wait": true, "id": 7, "task": {
        "platform": "noop", "target": "t", "body": "b", "delay": "1s"}}))
        .await?;
    conn.close_write().await?;
    let answer = conn.recv().await?;
    anyhow::ensure!(answer["id"] == 7, "{answer}");
    anyhow::ensure!(
        answer["result"]["tasks"][0]["state"] == "succeeded",
        "{answer}"
    );
    Ok(())
}
