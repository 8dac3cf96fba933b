//! A model test of the backlog's boundary (see `backlog`): submits due
//! around the memory horizon with sub-millisecond times, `unpark` running
//! alongside submits, and restarts, against a reference that keeps every
//! task in memory. The promise it checks: in each run of the store, every
//! accepted task is handed to the scheduler exactly once (held at submit,
//! read back by `unpark`, or recovered at start), none stranded on disk
//! and none twice. And every wait on a task (`wait_anywhere`, made while
//! it was held, parked, or being read back) is answered once the task
//! finishes: none left where nothing answers it.
//!
//! Time is real: the horizon is 40 ms, so a case takes a fraction of a
//! second. Cases: 12 in the everyday suite, 200 under `cargo xtask test
//! --full` (which sets `NOTIFYHUB_TEST_FULL`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use proptest::prelude::*;

use tokio::sync::oneshot;

use super::{Accepted, StoreConfig, Submission, TaskRecord, TaskStore};
use crate::task::{Outcome, Task, TaskId, Verdict};

const HORIZON: Duration = Duration::from_millis(40);

#[derive(Debug, Clone)]
enum Op {
    /// Tasks due at now + horizon + each offset (µs, may be negative).
    Submit(Vec<i64>),
    /// The same, while an `unpark` runs.
    SubmitDuringUnpark(Vec<i64>),
    Unpark,
    /// A wait on one of the tasks submitted so far (by index, modulo).
    Wait(usize),
    /// The same, while an `unpark` runs.
    WaitDuringUnpark(usize),
    Sleep(u64),
    /// Stop the store (everything acknowledged is durable) and open it again.
    Restart,
}

fn offsets() -> impl Strategy<Value = Vec<i64>> {
    // Most near the boundary, in microseconds; some well inside or beyond.
    let offset = prop_oneof![4 => -1_500i64..1_500, 1 => -30_000i64..60_000];
    prop::collection::vec(offset, 1..6)
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => offsets().prop_map(Op::Submit),
        2 => offsets().prop_map(Op::SubmitDuringUnpark),
        2 => Just(Op::Unpark),
        2 => any::<usize>().prop_map(Op::Wait),
        1 => any::<usize>().prop_map(Op::WaitDuringUnpark),
        2 => (0u64..15).prop_map(Op::Sleep),
        1 => Just(Op::Restart),
    ]
}

fn config() -> StoreConfig {
    StoreConfig {
        memory_horizon: HORIZON,
        ..StoreConfig::default()
    }
}

fn open(path: &std::path::Path) -> TaskStore {
    TaskStore::open(path, config(), None).expect("the journal opens")
}

/// What the scheduler was handed in this run of the store, per task.
#[derive(Default)]
struct Handed(HashMap<TaskId, u32>);

impl Handed {
    fn add(&mut self, id: TaskId) {
        *self.0.entry(id).or_default() += 1;
    }
}

async fn submit(
    store: &TaskStore,
    offsets: &[i64],
    due: &mut BTreeMap<TaskId, SystemTime>,
    handed: &mut Handed,
) {
    let now = SystemTime::now() + HORIZON;
    let submissions: Vec<Submission> = offsets
        .iter()
        .map(|&us| {
            let at = if us >= 0 {
                now + Duration::from_micros(us as u64)
            } else {
                now - Duration::from_micros(us.unsigned_abs())
            };
            Submission {
                task: Arc::new(Task::text("noop", "t", "b")),
                not_before: Some(at),
                idempotency_key: None,
            }
        })
        .collect();
    let times: Vec<_> = submissions
        .iter()
        .map(|s| (s.task.id, s.not_before.unwrap()))
        .collect();
    let accepted = store
        .submit(submissions)
        .await
        .expect("the journal takes it");
    for (accepted, (id, at)) in accepted.into_iter().zip(times) {
        due.insert(id, at);
        match accepted {
            Accepted::New(id) => handed.add(id),
            Accepted::Parked(_) => {}
            Accepted::Duplicate(_) => unreachable!("no keys here"),
        }
    }
}

async fn unpark(store: &TaskStore, handed: &mut Handed) {
    for (task, _) in store.unpark().await.expect("the journal reads") {
        handed.add(task.id);
    }
}

/// Waits made in this run of the store, with the task each is for.
type Waits = Vec<(TaskId, oneshot::Receiver<TaskRecord>)>;

async fn wait(
    store: &TaskStore,
    index: usize,
    due: &BTreeMap<TaskId, SystemTime>,
    waits: &mut Waits,
) {
    let Some(&id) = due.keys().nth(index % due.len().max(1)) else {
        return;
    };
    let waiter = store.wait_anywhere(id).await.expect("the journal reads");
    waits.push((id, waiter.expect("a submitted task is known")));
}

async fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("tasks.db");
    let mut store = open(&path);
    let mut due = BTreeMap::new();
    let mut handed = Handed::default();
    let mut waits = Waits::new();
    for op in ops {
        match op {
            Op::Submit(offsets) => submit(&store, &offsets, &mut due, &mut handed).await,
            Op::SubmitDuringUnpark(offsets) => {
                let (mut during, mut unparked) = (Handed::default(), Handed::default());
                tokio::join!(
                    submit(&store, &offsets, &mut due, &mut during),
                    unpark(&store, &mut unparked)
                );
                for id in during.0.keys().chain(unparked.0.keys()) {
                    handed.add(*id);
                }
            }
            Op::Unpark => unpark(&store, &mut handed).await,
            Op::Wait(index) => wait(&store, index, &due, &mut waits).await,
            Op::WaitDuringUnpark(index) => {
                let mut unparked = Handed::default();
                tokio::join!(
                    wait(&store, index, &due, &mut waits),
                    unpark(&store, &mut unparked)
                );
                for id in unparked.0.keys() {
                    handed.add(*id);
                }
            }
            Op::Sleep(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
            Op::Restart => {
                store.flush().await.expect("flushed");
                drop(store);
                store = open(&path);
                handed = Handed::default();
                // Waits end with the store that took them.
                waits.clear();
                for (task, _) in store.recover().await.expect("recovered") {
                    handed.add(task.id);
                }
            }
        }
    }
    // Let every task come within the horizon, then read the backlog back.
    if let Some(last) = due.values().max() {
        let wait = last.duration_since(SystemTime::now()).unwrap_or_default();
        tokio::time::sleep(wait.saturating_sub(HORIZON) + Duration::from_millis(3)).await;
    }
    unpark(&store, &mut handed).await;
    for (id, at) in &due {
        let times = handed.0.get(id).copied().unwrap_or(0);
        prop_assert_eq!(
            times,
            1,
            "task due at {:?} was handed to the scheduler {} times in this run",
            at,
            times
        );
    }
    for id in due.keys() {
        let delivered = Outcome::Delivered {
            provider_id: None,
            status: "ok".into(),
        };
        let _ = store.finish(*id, delivered, None, Verdict::Succeeded);
    }
    for (id, mut waiter) in waits {
        let answered = waiter.try_recv();
        prop_assert!(
            answered.as_ref().is_ok_and(|r| r.task.id == id),
            "a wait on task {} was not answered once it finished: {:?}",
            id,
            answered.map(|r| r.state)
        );
    }
    Ok(())
}

/// A model test's cases: `everyday` in the suite, `full` under `cargo xtask
/// test --full` (which sets `NOTIFYHUB_TEST_FULL`). Shared by the store's
/// model tests.
pub(super) fn cases(everyday: u32, full: u32) -> ProptestConfig {
    let full_run = std::env::var_os("NOTIFYHUB_TEST_FULL").is_some();
    ProptestConfig {
        cases: if full_run { full } else { everyday },
        ..ProptestConfig::default()
    }
}

/// Runs one case on a two-thread runtime, like the daemon's on this
/// machine.
pub(super) fn block_on<F: std::future::Future>(case: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime")
        .block_on(case)
}

proptest! {
    #![proptest_config(cases(12, 200))]

    #[test]
    fn every_accepted_task_is_handed_over_once_per_run(ops in prop::collection::vec(op(), 1..14)) {
        block_on(run(ops))?;
    }
}
