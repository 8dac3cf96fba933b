//! The journal's own tests: what a store made before keeps or drops,
//! where each attempt is written and read back, and when an outcome's room
//! comes back.

use super::*;

/// A new store takes the journal's page size; a store made before
/// keeps its own (SQLite changes it only by rewriting the file) and is
/// read and written as before.
#[tokio::test]
async fn a_store_keeps_the_page_size_it_was_made_with() {
    let dir = tempfile::tempdir().unwrap();
    let page_size = |path: &Path| -> i64 {
        Connection::open(path)
            .unwrap()
            .pragma_query_value(None, "page_size", |row| row.get(0))
            .unwrap()
    };
    let new = dir.path().join("new.db");
    drop(Journal::open(&new, None, 1).unwrap());
    assert_eq!(page_size(&new), PAGE_SIZE);

    let old = dir.path().join("old.db");
    Connection::open(&old)
        .unwrap()
        .execute_batch("PRAGMA page_size = 4096; PRAGMA journal_mode = WAL; CREATE TABLE t (x)")
        .unwrap();
    let journal = Journal::open(&old, None, 1).unwrap();
    journal.write(Write::Prune { before: UNIX_EPOCH });
    journal.sync().await.unwrap();
    assert_eq!(journal.list(None, None, 10).unwrap().len(), 0);
    assert_eq!(page_size(&old), 4096);
}

/// A first attempt that finishes its task is written in the task's row
/// only, and read back as the task's first attempt; one that does not
/// finish it, and every later one, has its own row; a revival keeps the
/// first attempt in `attempts` before the row forgets it.
#[tokio::test]
async fn every_attempt_is_read_back_wherever_it_was_written() {
    use crate::task::FailureClass;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tasks.db");
    let journal = Journal::open(&path, None, 1).unwrap();
    let at = |ms: u64| UNIX_EPOCH + Duration::from_millis(1_800_000_000_000 + ms);
    let plugin = PluginRef {
        name: "noop".into(),
        version: "1.0.0".into(),
        digest: "d".into(),
    };
    let attempt = |number: u32, start: u64, outcome: Outcome| Attempt {
        number,
        started_at: at(start),
        ended_at: Some(at(start + 5)),
        outcome: Some(outcome),
        plugin: Some(plugin.clone()),
    };
    let delivered = Outcome::Delivered {
        provider_id: None,
        status: "200".into(),
    };
    let [once, retried, revived] =
        [0, 1, 2].map(|_| TaskRecord::new(Task::text("noop", "-", "b").into(), at(0), None));
    let ids = [&once, &retried, &revived].map(|r| r.task.id);
    let inserts = [once, retried, revived]
        .into_iter()
        .map(|record| Insert { record, key: None })
        .collect();
    journal.submit(inserts).await.unwrap();
    let finish = |id, state, attempt: Attempt| {
        let outcome = attempt.outcome.as_ref().expect("an ended attempt");
        journal.write(Write::Finish {
            id,
            state,
            attempt: EndedAttempt {
                number: attempt.number,
                started_at: attempt.started_at,
                ended_at: attempt.ended_at.expect("an ended attempt"),
                outcome: EncodedOutcome::new(outcome, attempt.plugin.as_ref()),
            },
            not_before: None,
        })
    };
    finish(
        ids[0],
        TaskState::Succeeded,
        attempt(1, 10, delivered.clone()),
    );
    let retry = Outcome::failed(FailureClass::Retryable, "503");
    finish(ids[1], TaskState::Retrying, attempt(1, 10, retry));
    finish(
        ids[1],
        TaskState::Succeeded,
        attempt(2, 20, delivered.clone()),
    );
    let dead = Outcome::failed(FailureClass::Permanent, "404");
    finish(ids[2], TaskState::Dead, attempt(1, 10, dead.clone()));
    journal.sync().await.unwrap();
    let rows = |id: TaskId| -> i64 {
        Connection::open(&path)
            .unwrap()
            .query_row(
                "SELECT COUNT(*) FROM attempts WHERE task_id = ?1",
                [id.to_string()],
                |row| row.get(0),
            )
            .unwrap()
    };
    assert_eq!(ids.map(rows), [0, 2, 0]);
    journal.write(Write::Revive {
        id: ids[2],
        revived_at: 1,
    });
    finish(
        ids[2],
        TaskState::Succeeded,
        attempt(2, 30, delivered.clone()),
    );
    journal.sync().await.unwrap();
    assert_eq!(rows(ids[2]), 2);

    let history = |id| journal.get(id).unwrap().expect("stored").history;
    assert_eq!(history(ids[0]), [attempt(1, 10, delivered.clone())]);
    assert_eq!(
        history(ids[1]),
        [
            attempt(1, 10, Outcome::failed(FailureClass::Retryable, "503")),
            attempt(2, 20, delivered.clone())
        ]
    );
    assert_eq!(
        history(ids[2]),
        [attempt(1, 10, dead), attempt(2, 30, delivered)]
    );
}

/// A store made with the time indexes (before every listing was a merge
/// over the state index) loses them when opened, and lists as before.
#[tokio::test]
async fn a_store_made_with_the_time_indexes_drops_them() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tasks.db");
    let indexes = |path: &Path| -> Vec<String> {
        let conn = Connection::open(path).unwrap();
        let mut stmt = conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'index' ORDER BY name")
            .unwrap();
        stmt.query_map([], |row| row.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    };
    let old = Journal::open(&path, None, 1).unwrap();
    let mut record = TaskRecord::new(Task::text("noop", "-", "b").into(), UNIX_EPOCH, None);
    record.submitted_at = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    old.submit(vec![Insert { record, key: None }])
        .await
        .unwrap();
    drop(old);
    Connection::open(&path)
        .unwrap()
        .execute_batch(
            "CREATE INDEX tasks_by_time ON tasks (submitted_at);
             CREATE INDEX tasks_by_platform_time ON tasks (platform, submitted_at);",
        )
        .unwrap();
    assert!(indexes(&path).contains(&"tasks_by_time".to_string()));

    let journal = Journal::open(&path, None, 1).unwrap();
    let left = indexes(&path);
    assert!(!left.iter().any(|name| name.ends_with("_time")), "{left:?}");
    assert_eq!(journal.list(None, Some("noop"), 10).unwrap().len(), 1);
    assert_eq!(journal.list(None, None, 10).unwrap().len(), 1);
}

/// An outcome's room comes back with the commit that holds the outcome,
/// not when the worker lets go of it: while the writer cannot commit,
/// no more outcomes are taken than the bound.
#[tokio::test]
async fn outcome_room_comes_back_only_after_its_commit() {
    use futures_util::FutureExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tasks.db");
    let journal = Journal::open(&path, None, 1).unwrap();
    let room = journal.room_for_outcome().await;
    assert!(journal.room_for_outcome().now_or_never().is_none());

    // Another connection holds the write lock: the writer waits on it
    // (up to its busy timeout, then fails the commit).
    let blocker = Connection::open(&path).unwrap();
    blocker.execute_batch("BEGIN EXCLUSIVE").unwrap();
    journal.write(Write::Prune { before: UNIX_EPOCH });
    drop(room);
    let early = journal.room_for_outcome().now_or_never();
    // Given back before the commit, it would be free at once; a failed
    // commit (the busy timeout ran out) gives it back too, and says so.
    assert!(
        early.is_none() || journal.health().is_err(),
        "the room came back before its commit"
    );
    drop(early);
    blocker.execute_batch("COMMIT").unwrap();
    let _back = tokio::time::timeout(Duration::from_secs(30), journal.room_for_outcome())
        .await
        .expect("the room comes back once the commit is done");
}
