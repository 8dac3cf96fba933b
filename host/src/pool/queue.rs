//! The waiting room: tasks not yet given to a worker.
//!
//! Three lanes, one per priority, served in a fixed pattern (four high, two
//! normal, one low out of every seven picks, skipping empty lanes), so high
//! priority goes first but low priority is never starved. Inside a lane each
//! platform has its own FIFO and platforms take turns, so a flood of one
//! platform cannot hold back another platform's task.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use crate::task::{Priority, Task};

const PATTERN: [usize; 7] = [HIGH, HIGH, HIGH, HIGH, NORMAL, NORMAL, LOW];
const HIGH: usize = 0;
const NORMAL: usize = 1;
const LOW: usize = 2;

fn lane_of(priority: Priority) -> usize {
    match priority {
        Priority::High => HIGH,
        Priority::Normal => NORMAL,
        Priority::Low => LOW,
    }
}

/// One priority's tasks, by platform, with platforms taking turns.
#[derive(Default)]
struct Lane {
    queues: HashMap<String, VecDeque<Arc<Task>>>,
    /// Platforms with waiting tasks, in turn order.
    turns: VecDeque<String>,
}

impl Lane {
    fn push(&mut self, task: Arc<Task>, front: bool) {
        let queue = self.queues.entry(task.platform.clone()).or_default();
        if queue.is_empty() {
            self.turns.push_back(task.platform.clone());
        }
        if front {
            queue.push_front(task)
        } else {
            queue.push_back(task)
        }
    }

    /// The oldest task of the next platform not in `skip`; that platform
    /// goes to the back.
    fn pop_turn(&mut self, skip: &HashSet<String>) -> Option<Arc<Task>> {
        let turn = self.turns.iter().position(|p| !skip.contains(p))?;
        let platform = self.turns.remove(turn).expect("position is in range");
        let queue = self
            .queues
            .get_mut(&platform)
            .expect("turns only name queued platforms");
        let task = queue.pop_front().expect("turns only name non-empty queues");
        if queue.is_empty() {
            self.queues.remove(&platform);
        } else {
            self.turns.push_back(platform);
        }
        Some(task)
    }

    fn pop_platform(&mut self, platform: &str) -> Option<Arc<Task>> {
        let queue = self.queues.get_mut(platform)?;
        let task = queue.pop_front();
        if queue.is_empty() {
            self.queues.remove(platform);
            self.turns.retain(|p| p != platform);
        }
        task
    }

    fn is_empty(&self) -> bool {
        self.turns.is_empty()
    }
}

/// Tasks waiting for a worker.
#[derive(Default)]
pub struct WaitQueue {
    lanes: [Lane; 3],
    cursor: usize,
    len: usize,
}

impl WaitQueue {
    pub fn push(&mut self, task: Arc<Task>) {
        self.len += 1;
        self.lanes[lane_of(task.priority)].push(task, false);
    }

    /// Puts a task back at the head of its queue (it was taken but not run).
    pub fn push_front(&mut self, task: Arc<Task>) {
        self.len += 1;
        self.lanes[lane_of(task.priority)].push(task, true);
    }

    /// The next task by priority pattern and platform turns.
    pub fn pop(&mut self) -> Option<Arc<Task>> {
        self.pop_skipping(&HashSet::new())
    }

    /// Like [`WaitQueue::pop`], leaving the platforms in `skip` waiting.
    pub fn pop_skipping(&mut self, skip: &HashSet<String>) -> Option<Arc<Task>> {
        for step in 0..PATTERN.len() {
            let lane = PATTERN[(self.cursor + step) % PATTERN.len()];
            if let Some(task) = self.lanes[lane].pop_turn(skip) {
                self.cursor = (self.cursor + step + 1) % PATTERN.len();
                self.len -= 1;
                return Some(task);
            }
        }
        None
    }

    /// The next task of `platform`, highest priority first (for batches).
    pub fn pop_platform(&mut self, platform: &str) -> Option<Arc<Task>> {
        let task = self
            .lanes
            .iter_mut()
            .find_map(|lane| lane.pop_platform(platform))?;
        self.len -= 1;
        Some(task)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.lanes.iter().all(Lane::is_empty)
    }

    /// Waiting tasks of `platform`.
    pub fn len_of(&self, platform: &str) -> usize {
        self.lanes
            .iter()
            .filter_map(|l| l.queues.get(platform))
            .map(VecDeque::len)
            .sum()
    }

    /// Waiting tasks per platform.
    pub fn depths(&self) -> BTreeMap<String, usize> {
        let mut depths = BTreeMap::new();
        for lane in &self.lanes {
            for (platform, queue) in &lane.queues {
                *depths.entry(platform.clone()).or_insert(0) += queue.len();
            }
        }
        depths
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::{Format, TaskId};

    fn task(platform: &str, priority: Priority) -> Arc<Task> {
        Arc::new(Task {
            id: TaskId::new(),
            platform: platform.into(),
            target: "t".into(),
            destination: None,
            title: None,
            body: String::new(),
            format: Format::Text,
            priority,
            metadata: Default::default(),
        })
    }

    #[test]
    fn platforms_take_turns() {
        let mut q = WaitQueue::default();
        for _ in 0..1000 {
            q.push(task("flood", Priority::Normal));
        }
        q.push(task("quiet", Priority::Normal));
        let first_two: Vec<String> = (0..2).map(|_| q.pop().unwrap().platform.clone()).collect();
        assert!(first_two.contains(&"quiet".to_string()), "{first_two:?}");
        assert_eq!(q.len(), 999);
        assert_eq!(q.len_of("flood"), 999);
    }

    #[test]
    fn priorities_lead_but_low_is_not_starved() {
        let mut q = WaitQueue::default();
        for _ in 0..100 {
            q.push(task("p", Priority::High));
            q.push(task("p", Priority::Normal));
        }
        q.push(task("p", Priority::Low));
        let picks: Vec<Priority> = (0..7).map(|_| q.pop().unwrap().priority).collect();
        assert_eq!(picks.iter().filter(|p| **p == Priority::High).count(), 4);
        assert_eq!(picks.iter().filter(|p| **p == Priority::Normal).count(), 2);
        assert!(
            picks.contains(&Priority::Low),
            "low priority got no turn: {picks:?}"
        );
    }

    #[test]
    fn batches_take_the_same_platform_and_put_back_goes_first() {
        let mut q = WaitQueue::default();
        let a = task("a", Priority::Normal);
        q.push(a.clone());
        q.push(task("b", Priority::Normal));
        q.push(task("a", Priority::Low));
        assert_eq!(q.pop_platform("a").unwrap().id, a.id);
        assert_eq!(q.pop_platform("a").unwrap().priority, Priority::Low);
        assert!(q.pop_platform("a").is_none());
        let skip: HashSet<String> = ["b".to_string()].into();
        assert!(q.pop_skipping(&skip).is_none(), "only b is waiting");
        let b = q.pop().unwrap();
        q.push(task("b", Priority::Normal));
        q.push_front(b.clone());
        assert_eq!(q.pop().unwrap().id, b.id);
        assert_eq!(q.depths().get("b"), Some(&1));
    }
}
