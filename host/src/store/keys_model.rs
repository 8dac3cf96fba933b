//! A model test of idempotency keys: batches of submits with keys from a
//! small set (repeated within a batch too), pauses around the window,
//! pruning and restarts, against a reference that remembers each key's
//! first task and when it was claimed, at the journal's millisecond.
//!
//! The promise it checks: within the window a key answers `duplicate`
//! naming its first task, which exists; after the window it is a new task;
//! a restart changes neither. The store's clock is read inside `submit`,
//! so the reference only judges a submit whose whole call falls on one
//! side of the window's end, and otherwise takes the store's answer.
//!
//! Time is real: the window is 30 ms. Cases: 12 in the everyday suite, 200
//! under `cargo xtask test --full` (which sets `NOTIFYHUB_TEST_FULL`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use proptest::prelude::*;

use super::model::{block_on, cases};

use super::time::recorded;
use super::{Accepted, StoreConfig, Submission, TaskStore};
use crate::task::{Task, TaskId};

const WINDOW: Duration = Duration::from_millis(30);

#[derive(Debug, Clone)]
enum Op {
    /// One batch: a key (of three) or none per task.
    Submit(Vec<Option<u8>>),
    Sleep(u64),
    Prune,
    /// Stop the store (everything acknowledged is durable) and open it again.
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    let key = prop_oneof![1 => Just(None), 4 => (0u8..3).prop_map(Some)];
    prop_oneof![
        4 => prop::collection::vec(key, 1..5).prop_map(Op::Submit),
        3 => (0u64..25).prop_map(Op::Sleep),
        1 => Just(Op::Prune),
        1 => Just(Op::Restart),
    ]
}

fn open(path: &std::path::Path) -> TaskStore {
    let config = StoreConfig {
        idempotency_window: WINDOW,
        ..StoreConfig::default()
    };
    TaskStore::open(path, config, None).expect("the journal opens")
}

/// A key's first task and when it was claimed, as the journal keeps it.
type Claims = HashMap<String, (TaskId, SystemTime)>;

async fn submit(
    store: &TaskStore,
    keys: &[Option<u8>],
    claims: &mut Claims,
) -> Result<(), TestCaseError> {
    let submissions: Vec<Submission> = keys
        .iter()
        .map(|key| Submission {
            task: Arc::new(Task::text("noop", "t", "b")),
            not_before: None,
            idempotency_key: key.map(|k| format!("key-{k}")),
        })
        .collect();
    let asked: Vec<_> = submissions
        .iter()
        .map(|s| (s.task.id, s.idempotency_key.clone()))
        .collect();
    let before = SystemTime::now();
    let accepted = store
        .submit(submissions)
        .await
        .expect("the journal takes it");
    let after = SystemTime::now();
    for (answer, (id, key)) in accepted.into_iter().zip(asked) {
        let Some(key) = key else {
            prop_assert_eq!(answer, Accepted::New(id));
            continue;
        };
        // Within the window for the whole call, past it for the whole call,
        // or on its edge (either answer, and the reference follows).
        let held = claims.get(&key).copied();
        let expected = match held {
            None => Some(Accepted::New(id)),
            Some((first, at)) => {
                let age = |t: SystemTime| t.duration_since(at).unwrap_or_default();
                if age(after) < WINDOW {
                    Some(Accepted::Duplicate(first))
                } else if age(before) >= WINDOW {
                    Some(Accepted::New(id))
                } else {
                    None
                }
            }
        };
        if let Some(expected) = expected {
            prop_assert_eq!(answer, expected, "key {} (held: {:?})", key, held);
        }
        match answer {
            Accepted::New(new) => {
                prop_assert_eq!(new, id);
                let record = store.get(id).await.expect("readable").expect("recorded");
                claims.insert(key, (id, recorded(record.submitted_at)));
            }
            Accepted::Duplicate(first) => {
                prop_assert_eq!(Some(first), held.map(|(first, _)| first));
                prop_assert!(
                    store.get(first).await.expect("readable").is_some(),
                    "duplicate of task {} that is not there",
                    first
                );
            }
            Accepted::Parked(_) => prop_assert!(false, "nothing here is due later"),
        }
    }
    Ok(())
}

async fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("tasks.db");
    let mut store = open(&path);
    let mut claims = Claims::new();
    for op in ops {
        match op {
            Op::Submit(keys) => submit(&store, &keys, &mut claims).await?,
            Op::Sleep(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
            Op::Prune => store.prune(),
            Op::Restart => {
                store.flush().await.expect("flushed");
                drop(store);
                store = open(&path);
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(cases(12, 200))]

    #[test]
    fn a_key_answers_its_first_task_for_its_window_and_only_then(
        ops in prop::collection::vec(op(), 1..40)
    ) {
        block_on(run(ops))?;
    }
}
