//! A model test of a task's attempts and retries: attempts that deliver,
//! fail for good or fail worth retrying (with and without a platform's
//! retry-after), attempts a crash cuts off, `retry` of dead and of live
//! tasks, and restarts, against a reference that counts attempts as the
//! retry policy should.
//!
//! The promises it checks, after every step and across restarts: attempt
//! numbers only go up, one per attempt that ended (one a crash cut off is
//! not counted, and its task is back as it was);
//! the policy counts the attempts since the last `retry`, so a task gets at
//! most `max_attempts` in each round and is dead after the last; a retry
//! is never due sooner than the platform's retry-after nor later than the
//! backoff's cap allows; only a dead task can be retried; a state once
//! acknowledged is the state read back after a restart.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use proptest::prelude::*;

use super::model::{block_on, cases};

use super::{StoreConfig, StoreError, Submission, TaskStore};
use crate::pool::retry::RetryConfig;
use crate::task::{FailureClass, Outcome, Task, TaskId, TaskState, Verdict};

const TASKS: usize = 3;
const MAX_ATTEMPTS: u32 = 3;
const CAP: Duration = Duration::from_millis(4);

#[derive(Debug, Clone)]
enum Ending {
    Delivered,
    Permanent,
    /// Worth retrying, after at least this many ms if the platform said.
    Retryable(Option<u64>),
}

#[derive(Debug, Clone)]
enum Op {
    Attempt(usize, Ending),
    /// An attempt starts; the daemon is killed before it ends.
    Interrupted(usize),
    Retry(usize),
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    let ending = prop_oneof![
        1 => Just(Ending::Delivered),
        1 => Just(Ending::Permanent),
        4 => prop::option::of(0u64..50).prop_map(Ending::Retryable),
    ];
    let task = 0..TASKS;
    prop_oneof![
        6 => (task.clone(), ending).prop_map(|(t, e)| Op::Attempt(t, e)),
        1 => task.clone().prop_map(Op::Interrupted),
        2 => task.prop_map(Op::Retry),
        1 => Just(Op::Restart),
    ]
}

/// What the store should say about one task.
#[derive(Debug, Clone, Copy)]
struct Model {
    state: TaskState,
    attempts: u32,
    revived_at: u32,
    /// For a retrying task: when its retry may run, at the earliest and
    /// the latest the policy allows.
    due: Option<(SystemTime, SystemTime)>,
}

fn policy() -> RetryConfig {
    RetryConfig {
        max_attempts: MAX_ATTEMPTS,
        base: Duration::from_millis(1),
        cap: CAP,
        ..RetryConfig::default()
    }
}

fn open(path: &std::path::Path) -> TaskStore {
    TaskStore::open(path, StoreConfig::default(), None).expect("the journal opens")
}

fn outcome(ending: &Ending) -> Outcome {
    match ending {
        Ending::Delivered => Outcome::Delivered {
            provider_id: None,
            status: "HTTP 200".into(),
        },
        Ending::Permanent => Outcome::failed(FailureClass::Permanent, "no such channel"),
        Ending::Retryable(after) => Outcome::Failed {
            class: FailureClass::Retryable,
            message: "HTTP 503".into(),
            retry_after_ms: *after,
        },
    }
}

/// Runs one attempt of a runnable task the way a worker does.
fn attempt(
    store: &TaskStore,
    id: TaskId,
    model: &mut Model,
    ending: &Ending,
) -> Result<(), TestCaseError> {
    let count = store.start(id);
    model.attempts += 1;
    prop_assert_eq!(count.number, model.attempts);
    prop_assert_eq!(count.in_round, model.attempts - model.revived_at);
    let outcome = outcome(ending);
    let verdict = policy().decide("noop", &outcome, count.in_round);
    let before = SystemTime::now();
    let _ = store.finish(id, outcome, None, verdict);
    let after = SystemTime::now();
    let last = count.in_round >= MAX_ATTEMPTS;
    let (state, due) = match ending {
        Ending::Delivered => (TaskState::Succeeded, None),
        Ending::Permanent => (TaskState::Dead, None),
        Ending::Retryable(_) if last => (TaskState::Dead, None),
        Ending::Retryable(after_ms) => {
            let floor = Duration::from_millis(after_ms.unwrap_or(0));
            // Stored at whole milliseconds, rounded up: at most 1 ms later.
            let latest = after + CAP.max(floor) + Duration::from_millis(1);
            (TaskState::Retrying, Some((before + floor, latest)))
        }
    };
    prop_assert_eq!(
        matches!(verdict, Verdict::Retry { .. }),
        state == TaskState::Retrying,
        "verdict {:?} on attempt {} of the round",
        verdict,
        count.in_round
    );
    model.state = state;
    model.due = due;
    Ok(())
}

async fn check(store: &TaskStore, id: TaskId, model: &Model) -> Result<(), TestCaseError> {
    let record = store.get(id).await.expect("readable").expect("recorded");
    prop_assert_eq!(record.state, model.state, "task {}", id);
    prop_assert_eq!(record.attempts, model.attempts, "task {}", id);
    prop_assert_eq!(record.revived_at, model.revived_at, "task {}", id);
    if let Some((earliest, latest)) = model.due {
        let due = record.not_before.expect("a retrying task has its time");
        prop_assert!(
            earliest <= due && due <= latest,
            "retry due {:?}, outside {:?}..={:?}",
            due,
            earliest,
            latest
        );
    }
    Ok(())
}

async fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("tasks.db");
    let mut store = open(&path);
    let submissions: Vec<Submission> = (0..TASKS)
        .map(|_| Submission {
            task: Arc::new(Task::text("noop", "t", "b")),
            not_before: None,
            idempotency_key: None,
        })
        .collect();
    let ids: Vec<TaskId> = submissions.iter().map(|s| s.task.id).collect();
    store
        .submit(submissions)
        .await
        .expect("the journal takes it");
    let mut models = vec![
        Model {
            state: TaskState::Queued,
            attempts: 0,
            revived_at: 0,
            due: None,
        };
        TASKS
    ];
    for op in ops {
        match op {
            Op::Attempt(t, ending) => {
                if matches!(models[t].state, TaskState::Queued | TaskState::Retrying) {
                    attempt(&store, ids[t], &mut models[t], &ending)?;
                }
            }
            Op::Interrupted(t) => {
                if matches!(models[t].state, TaskState::Queued | TaskState::Retrying) {
                    // Attempts are written when they end (docs/durability.md):
                    // one a crash cuts off is not counted, and the task is
                    // back as it was (queued, or retrying at its time), to
                    // be delivered again.
                    store.start(ids[t]);
                    store.flush().await.expect("flushed");
                    drop(store);
                    store = open(&path);
                    store.recover().await.expect("recovered");
                }
            }
            Op::Retry(t) => {
                let answer = store.retry(ids[t]).await;
                if models[t].state == TaskState::Dead {
                    prop_assert!(
                        answer.is_ok(),
                        "a dead task was not revived: {:?}",
                        answer.err()
                    );
                    models[t].state = TaskState::Queued;
                    models[t].revived_at = models[t].attempts;
                } else {
                    prop_assert!(
                        matches!(answer, Err(StoreError::NotDead { .. })),
                        "a {:?} task was retried: {:?}",
                        models[t].state,
                        answer.map(|_| ())
                    );
                }
            }
            Op::Restart => {
                store.flush().await.expect("flushed");
                drop(store);
                store = open(&path);
                store.recover().await.expect("recovered");
            }
        }
        for (id, model) in ids.iter().zip(&models) {
            check(&store, *id, model).await?;
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(cases(24, 500))]

    #[test]
    fn attempts_are_counted_and_retried_as_the_policy_says(
        ops in prop::collection::vec(op(), 1..40)
    ) {
        block_on(run(ops))?;
    }
}
