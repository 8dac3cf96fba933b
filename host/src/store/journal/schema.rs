//! The journal's tables, indexes and statements, and why each index is
//! there.
//!
//! Two rules, each with a test below: every read a large store makes (what
//! comes due, a start's resume, `task`, `tasks` with each filter) walks an
//! index in `LIMIT` steps and never scans or sorts the table; and no write
//! builds a temporary table, since a statement that does builds one for
//! every row it writes. Statements are named here, not inline in the
//! writer, so the tests can ask SQLite how it runs each one.
//!
//! Every index is paid for by every write that touches its columns: its
//! B-tree work, and the pages a commit writes whole to the WAL. So the
//! journal keeps the fewest that answer its reads. A task's outcome changes
//! its state, and each index holding the state takes a delete and an
//! insert per task: the state is in one index only, `tasks_by_state
//! (state, platform, submitted_at)`. It answers every listing: one by state
//! and platform directly, every other one as a merge of such listings, one
//! per state and platform that has tasks (see [`NEWEST_IN`]): a listing of
//! `limit` tasks reads up to `limit` entries of that index per state and
//! platform, no rows, then the `limit` rows it keeps. Work per listing
//! instead of index changes per task. (A second state index,
//! `tasks_by_state_time (state, submitted_at)`, was a sixth of SQLite's
//! work for a no-op task; the time indexes `tasks_by_time` and
//! `tasks_by_platform_time`, for the listings without a state, were ~0.6
//! µs of the writer's ~8 µs a durable no-op, `cargo bench -p notifyhub
//! --bench store`. Stores made before drop them.)

pub(super) const SCHEMA: &str = "
    PRAGMA journal_mode = WAL;
    CREATE TABLE IF NOT EXISTS tasks (
        id TEXT PRIMARY KEY,
        platform TEXT NOT NULL,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL,
        submitted_at INTEGER NOT NULL,
        not_before INTEGER,
        finished_at INTEGER,
        idempotency_key TEXT,
        task TEXT NOT NULL,
        outcome TEXT,
        plugin TEXT,
        revived_at INTEGER NOT NULL DEFAULT 0,
        first_started_at INTEGER
    );
    CREATE INDEX IF NOT EXISTS tasks_by_state ON tasks (state, platform, submitted_at);
    DROP INDEX IF EXISTS tasks_by_state_time;
    DROP INDEX IF EXISTS tasks_by_time;
    DROP INDEX IF EXISTS tasks_by_platform_time;
    -- Only tasks with a time enter the due index: most tasks have none and
    -- finish within milliseconds, and keeping them out of it halves the cost
    -- of a task's writes. (`tasks_by_due` indexed them all; stores made
    -- before this drop it.)
    --
    -- Unfinished is `state NOT IN ('succeeded', 'dead')`: SQLite checks an
    -- IN list of three or more through a temporary table, built for every
    -- row a statement writes (four per outcome, two per submit); two values
    -- are compared one by one. (`tasks_by_due_time` and `tasks_untimed`
    -- said `IN ('queued', 'running', 'retrying')`; stores made before this
    -- drop them and build these once.)
    DROP INDEX IF EXISTS tasks_by_due;
    DROP INDEX IF EXISTS tasks_by_due_time;
    DROP INDEX IF EXISTS tasks_untimed;
    CREATE INDEX IF NOT EXISTS tasks_due ON tasks (not_before)
        WHERE not_before IS NOT NULL AND state NOT IN ('succeeded', 'dead');
    CREATE INDEX IF NOT EXISTS tasks_by_key ON tasks (idempotency_key) WHERE idempotency_key IS NOT NULL;
    -- What a start resumes besides what comes due: unfinished tasks without
    -- a time. Through the state index, that read walked every task parked
    -- for later too (all `queued`): a restart on ten million scheduled
    -- tasks took seconds before the socket answered.
    CREATE INDEX IF NOT EXISTS tasks_unfinished_untimed ON tasks (submitted_at)
        WHERE not_before IS NULL AND state NOT IN ('succeeded', 'dead');
    CREATE TABLE IF NOT EXISTS attempts (
        task_id TEXT NOT NULL,
        n INTEGER NOT NULL,
        started_at INTEGER NOT NULL,
        ended_at INTEGER,
        outcome TEXT,
        plugin TEXT,
        PRIMARY KEY (task_id, n)
    );
    CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v INTEGER NOT NULL);
";

/// Unfinished tasks due in `(?1, ?2]`, in time order: a range read of
/// `tasks_due`, named because the planner may otherwise pick a state index
/// and sort the lot.
pub(super) const DUE_BETWEEN: &str =
    "SELECT task, state, attempts, submitted_at, not_before, idempotency_key, revived_at
    FROM tasks INDEXED BY tasks_due
    WHERE not_before IS NOT NULL AND state NOT IN ('succeeded', 'dead')
      AND not_before > ?1 AND not_before <= ?2 ORDER BY not_before";

/// Unfinished tasks without a time, through their own partial index (an
/// OR with [`DUE_BETWEEN`] would scan the table, and the state index walks
/// the tasks parked for later too).
pub(super) const UNTIMED: &str =
    "SELECT task, state, attempts, submitted_at, not_before, idempotency_key, revived_at
    FROM tasks INDEXED BY tasks_unfinished_untimed
    WHERE not_before IS NULL AND state NOT IN ('succeeded', 'dead')";

/// Idempotency keys used since `?1`, read at start: through the keys'
/// partial index, which holds only keyed tasks. Left to itself the planner
/// takes the time index for the range and walks every task of the window
/// (a restart on millions of tasks without keys spent its time there).
pub(super) const KEYS_SINCE: &str =
    "SELECT idempotency_key, id, submitted_at FROM tasks INDEXED BY tasks_by_key
    WHERE idempotency_key IS NOT NULL AND submitted_at >= ?1";

/// The newest `?3` tasks in state `?1` of platform `?2`, newest first: their
/// times and row ids only, from `tasks_by_state` alone (it holds both). A
/// listing merges these over the states and platforms it asks for, keeps the
/// newest, and only then reads their rows ([`RECORD`]).
pub(super) const NEWEST_IN: &str = "SELECT submitted_at, rowid FROM tasks
    WHERE state = ?1 AND platform = ?2 ORDER BY submitted_at DESC LIMIT ?3";

/// A statement reading a task's record: the columns the journal's
/// `record_from_row` reads, in its order, then `rest`.
macro_rules! record {
    ($rest:literal) => {
        concat!(
            "SELECT task, state, attempts, submitted_at, not_before, finished_at, outcome, plugin, revived_at",
            $rest
        )
    };
}

/// A listed task's record, by row id.
pub(super) const RECORD: &str = record!(" FROM tasks WHERE rowid = ?1");

/// A task's record and, after it, the start of a first attempt kept in its
/// row (see the journal's guide), by id.
pub(super) const RECORD_BY_ID: &str = record!(", first_started_at FROM tasks WHERE id = ?1");

/// The platforms with tasks in state `?1`, one seek of `tasks_by_state`
/// each: the next platform after the last one found, until there is none
/// (SQLite has no skip scan for `DISTINCT`).
pub(super) const PLATFORMS_IN_STATE: &str = "WITH RECURSIVE platforms(name) AS (
        SELECT MIN(platform) FROM tasks WHERE state = ?1
        UNION ALL
        SELECT (SELECT MIN(platform) FROM tasks WHERE state = ?1 AND platform > name)
        FROM platforms WHERE name IS NOT NULL
    ) SELECT name FROM platforms WHERE name IS NOT NULL";

pub(super) const INSERT_TASK: &str = "INSERT INTO tasks
    (id, platform, state, attempts, submitted_at, not_before, idempotency_key, task)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)";

/// `?8`: when the attempt started, if it is the task's first and finished
/// it ([`FINISH_ATTEMPT`] is then not run: see the journal's guide), else
/// NULL.
pub(super) const FINISH_TASK: &str =
    "UPDATE tasks SET state = ?2, not_before = ?3, finished_at = ?4,
    outcome = ?5, plugin = ?6, attempts = MAX(attempts, ?7), first_started_at = ?8
    WHERE id = ?1";

pub(super) const FINISH_ATTEMPT: &str = "INSERT OR IGNORE INTO attempts
    (task_id, n, started_at, ended_at, outcome, plugin) VALUES (?1, ?2, ?3, ?4, ?5, ?6)";

pub(super) const REQUEUE: &str =
    "UPDATE tasks SET state = 'queued', not_before = ?2, finished_at = NULL WHERE id = ?1";

/// A task's first attempt, kept in its row because it finished the task,
/// into `attempts`: run before [`REVIVE`] clears what it is read from.
pub(super) const KEEP_FIRST_ATTEMPT: &str = "INSERT OR IGNORE INTO attempts
    (task_id, n, started_at, ended_at, outcome, plugin)
    SELECT id, 1, first_started_at, finished_at, outcome, plugin FROM tasks
    WHERE id = ?1 AND first_started_at IS NOT NULL";

pub(super) const REVIVE: &str =
    "UPDATE tasks SET state = 'queued', not_before = NULL, finished_at = NULL,
    revived_at = ?2, first_started_at = NULL WHERE id = ?1";

#[cfg(test)]
mod tests {
    use rusqlite::Connection;

    use super::*;

    /// How SQLite would answer `sql` on a store with this schema.
    fn plan(conn: &Connection, sql: &str) -> Vec<String> {
        let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        // Parameters stay unbound: the plan does not depend on them.
        let mut rows = stmt.raw_query();
        let mut steps = Vec::new();
        while let Some(row) = rows.next().unwrap() {
            steps.push(row.get::<_, String>(3).unwrap());
        }
        steps
    }

    /// A task's writes (its submit, its outcome and attempt, a requeue and
    /// a revival) build no temporary table: SQLite makes one for every IN
    /// list of three or more values it checks, per row written, and the
    /// partial indexes' conditions are checked on every write.
    #[test]
    fn no_write_builds_a_temporary_table() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(SCHEMA).unwrap();
        for sql in [
            INSERT_TASK,
            FINISH_TASK,
            FINISH_ATTEMPT,
            REQUEUE,
            KEEP_FIRST_ATTEMPT,
            REVIVE,
        ] {
            let mut stmt = conn.prepare(&format!("EXPLAIN {sql}")).unwrap();
            let mut rows = stmt.raw_query();
            while let Some(row) = rows.next().unwrap() {
                let opcode: String = row.get(1).unwrap();
                assert_ne!(opcode, "OpenEphemeral", "{sql}");
            }
        }
    }

    /// The reads a large backlog makes (unparking what comes due, `task`,
    /// `tasks` with each filter) walk an index; none scans the table or
    /// sorts it.
    #[test]
    fn every_read_is_answered_from_an_index() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(SCHEMA).unwrap();
        let mut statements = vec![
            DUE_BETWEEN.to_owned(),
            UNTIMED.to_owned(),
            KEYS_SINCE.to_owned(),
            "SELECT task FROM tasks WHERE id = ?1".to_owned(),
            "SELECT n FROM attempts WHERE task_id = ?1 ORDER BY n".to_owned(),
        ];
        statements.extend([NEWEST_IN, RECORD, RECORD_BY_ID, PLATFORMS_IN_STATE].map(str::to_owned));
        // A start walks the partial indexes that hold only what it reads
        // (unfinished untimed tasks, keyed tasks); every other read seeks.
        // The platforms' recursion has steps of its own (its rows, not the
        // table's).
        for sql in statements {
            let plan = plan(&conn, &sql);
            assert!(!plan.is_empty(), "{sql}");
            for step in &plan {
                let reads_a_table = step
                    .split_whitespace()
                    .any(|word| word == "tasks" || word == "attempts");
                if !reads_a_table {
                    assert_eq!(sql, PLATFORMS_IN_STATE, "{step}");
                    continue;
                }
                let seeks = step.starts_with("SEARCH")
                    || (sql == UNTIMED
                        && step == "SCAN tasks USING INDEX tasks_unfinished_untimed")
                    || (sql == KEYS_SINCE && step == "SCAN tasks USING INDEX tasks_by_key");
                assert!(seeks && !step.contains("TEMP B-TREE"), "{sql}\n{plan:?}");
            }
        }
        assert!(
            plan(&conn, DUE_BETWEEN)
                .iter()
                .any(|s| s.contains("tasks_due")),
            "unparking reads the due index"
        );
        assert_eq!(
            plan(&conn, NEWEST_IN),
            ["SEARCH tasks USING COVERING INDEX tasks_by_state (state=? AND platform=?)"],
            "a listing's merge reads only the state index"
        );
        let platforms = plan(&conn, PLATFORMS_IN_STATE);
        let seeks: Vec<_> = platforms
            .iter()
            .filter(|s| s.starts_with("SEARCH"))
            .collect();
        assert!(
            !seeks.is_empty() && seeks.iter().all(|s| s.contains("tasks_by_state")),
            "the platforms in a state are found in the state index: {platforms:?}"
        );
        assert!(
            plan(&conn, UNTIMED)
                .iter()
                .all(|s| s.contains("tasks_unfinished_untimed")),
            "a start reads the untimed index, not every queued task"
        );
    }
}
