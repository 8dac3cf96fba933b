//! The journal's listings against a model: for every filter (none, state,
//! platform, both) and limit, `tasks` gives the newest tasks that match,
//! whatever mix of platforms, states and equal times the store holds. Every
//! listing but one by state and platform is a merge of one listing per state
//! and platform (see the schema's guide), which is where a mistake would
//! hide.

use std::time::{Duration, UNIX_EPOCH};

use proptest::prelude::*;

use super::{Insert, Journal};
use crate::store::TaskRecord;
use crate::store::model::{block_on, cases};
use crate::task::{Task, TaskState};

const PLATFORMS: [&str; 3] = ["alpha", "beta", "gamma"];
const STATES: [TaskState; 5] = TaskState::ALL;

proptest! {
    #![proptest_config(cases(24, 300))]

    #[test]
    fn a_listing_is_the_newest_tasks_that_match(
        // (platform, state, milliseconds after the previous task: 0 is the
        // same time, as a batch's tasks have)
        tasks in prop::collection::vec((0..3usize, 0..5usize, 0..3u64), 0..40),
        limit in 1..12usize,
    ) {
        block_on(check(tasks, limit))?;
    }
}

async fn check(tasks: Vec<(usize, usize, u64)>, limit: usize) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let journal = Journal::open(&dir.path().join("tasks.db"), None, 1).expect("a new store");
    let mut at = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let mut model = Vec::new();
    let mut inserts = Vec::new();
    for (platform, state, step) in tasks {
        at += Duration::from_millis(step);
        let mut record =
            TaskRecord::new(Task::text(PLATFORMS[platform], "-", "b").into(), at, None);
        record.state = STATES[state];
        model.push((record.task.id, PLATFORMS[platform], STATES[state], at));
        inserts.push(Insert { record, key: None });
    }
    journal.submit(inserts).await.expect("committed");

    let states = [None].into_iter().chain(STATES.map(Some));
    for state in states {
        let platforms = [None].into_iter().chain(PLATFORMS.map(Some));
        for platform in platforms {
            let matches = |p: &str, s: TaskState| {
                state.is_none_or(|want| want == s) && platform.is_none_or(|want| want == p)
            };
            let listed = journal.list(state, platform, limit).expect("a listing");
            // Tasks of the same millisecond may come in any order: the
            // times must be the newest ones, and every task one that matches.
            let mut newest: Vec<_> = model
                .iter()
                .filter(|(_, p, s, _)| matches(p, *s))
                .map(|(.., at)| *at)
                .collect();
            newest.sort_by_key(|at| std::cmp::Reverse(*at));
            newest.truncate(limit);
            let times: Vec<_> = listed.iter().map(|r| r.submitted_at).collect();
            prop_assert_eq!(
                &times,
                &newest,
                "state {:?}, platform {:?}",
                state,
                platform
            );
            let mut ids: Vec<_> = listed.iter().map(|r| r.task.id).collect();
            for record in &listed {
                prop_assert!(
                    matches(&record.task.platform, record.state),
                    "state {:?}, platform {:?}: listed {:?} of {} in {:?}",
                    state,
                    platform,
                    record.task.id,
                    record.task.platform,
                    record.state
                );
            }
            ids.sort();
            ids.dedup();
            prop_assert_eq!(ids.len(), listed.len(), "a task listed twice");
        }
    }
    Ok(())
}
