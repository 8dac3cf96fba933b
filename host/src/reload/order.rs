//! The order plugin files load in at start.
//!
//! Smallest first: on an empty compile cache the many small plugins then
//! serve within a second, while the few large ones (an interpreter inside:
//! Python, JavaScript) take their seconds after them.
//!
//! And a file that embeds the same code as one before it loads after the
//! first of every kind. Plugins of one language carry the same interpreter,
//! whose functions the baseline compiler reuses from a compile that has
//! ended (`sandbox::reuse`). By size alone, the two JavaScript plugins
//! were next to each other, and so were the two Python ones: the loaders
//! compiled each pair side by side, each interpreter twice. Now one of each
//! language compiles first, side by side, and the second of each reuses it.
//! A loader never takes a file whose kind another loader is loading
//! ([`StartQueue`]): it would compile the functions beside it instead of
//! reusing them.
//!
//! A file's [`Kind`] is read from its section headers, not the whole file:
//! this runs before any plugin loads, but after the socket answers (done
//! before, with a read for each section, it put the socket's first answer
//! at 254 ms instead of 132 in a `--bench startup` run).
//! A file whose headers cannot be read is of no kind, and its load reports
//! what is wrong with it.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::Notify;

use crate::sandbox::Kind;

/// `paths` in the order they load in: smallest first, and each file that
/// shares its kind with an earlier one after the first of every kind.
pub(super) fn at_start(paths: Vec<PathBuf>) -> StartQueue {
    let mut sized: Vec<(u64, Option<Kind>, PathBuf)> = paths
        .into_iter()
        .map(|path| {
            let size = std::fs::metadata(&path).map_or(u64::MAX, |m| m.len());
            let kind = Kind::of_file(&path).ok().flatten();
            (size, kind, path)
        })
        .collect();
    sized.sort_by_key(|(size, ..)| *size);
    // A file's rank: how many of its kind come before it.
    let mut seen: HashMap<Kind, usize> = HashMap::new();
    let mut ranked: Vec<(usize, Option<Kind>, PathBuf)> = sized
        .into_iter()
        .map(|(_, kind, path)| {
            let rank = kind.as_ref().map_or(0, |kind| {
                let before = seen.entry(kind.clone()).or_default();
                *before += 1;
                *before - 1
            });
            (rank, kind, path)
        })
        .collect();
    // Stable: by size within a rank.
    ranked.sort_by_key(|(rank, ..)| *rank);
    StartQueue::new(
        ranked
            .into_iter()
            .map(|(_, kind, path)| (path, kind))
            .collect(),
    )
}

/// `paths` in the order given, each of no kind.
pub(super) fn as_listed(paths: Vec<PathBuf>) -> StartQueue {
    StartQueue::new(paths.into_iter().map(|path| (path, None)).collect())
}

/// The files still to load at start, handed to the loaders in order, but
/// never one whose kind another loader is loading: it would compile the
/// same functions beside it instead of reusing them.
#[derive(Debug)]
pub(super) struct StartQueue {
    state: Mutex<Waiting>,
    /// Signalled when a load ends, for loaders waiting on a kind.
    finished: Notify,
}

#[derive(Debug)]
struct Waiting {
    files: VecDeque<(PathBuf, Option<Kind>)>,
    /// The kinds being loaded now.
    loading: Vec<Kind>,
}

/// A file handed to a loader; its kind is free again when this is dropped.
#[derive(Debug)]
pub(super) struct Loading {
    queue: Arc<StartQueue>,
    kind: Option<Kind>,
}

impl StartQueue {
    fn new(files: VecDeque<(PathBuf, Option<Kind>)>) -> StartQueue {
        StartQueue {
            state: Mutex::new(Waiting {
                files,
                loading: Vec::new(),
            }),
            finished: Notify::new(),
        }
    }

    /// Every file, in order.
    #[cfg(test)]
    fn paths(&self) -> Vec<PathBuf> {
        self.state()
            .files
            .iter()
            .map(|(path, _)| path.clone())
            .collect()
    }

    /// The kind of every file that shares its kind with another.
    pub(super) fn shared_kinds(&self) -> Vec<Kind> {
        let mut files: HashMap<&Kind, usize> = HashMap::new();
        let state = self.state();
        for kind in state.files.iter().filter_map(|(_, kind)| kind.as_ref()) {
            *files.entry(kind).or_default() += 1;
        }
        files
            .into_iter()
            .filter(|(_, files)| *files > 1)
            .flat_map(|(kind, files)| std::iter::repeat_n(kind.clone(), files))
            .collect()
    }

    /// The next file to load, once one can be; `None` when none is left.
    pub(super) async fn next(self: &Arc<Self>) -> Option<(PathBuf, Loading)> {
        loop {
            // Made before looking: a load that ends meanwhile still wakes it.
            let finished = self.finished.notified();
            {
                let mut state = self.state();
                if state.files.is_empty() {
                    return None;
                }
                let free = state.files.iter().position(|(_, kind)| {
                    kind.as_ref()
                        .is_none_or(|kind| !state.loading.contains(kind))
                });
                if let Some((path, kind)) = free.and_then(|i| state.files.remove(i)) {
                    state.loading.extend(kind.clone());
                    let loading = Loading {
                        queue: self.clone(),
                        kind,
                    };
                    return Some((path, loading));
                }
            }
            finished.await;
        }
    }

    fn state(&self) -> MutexGuard<'_, Waiting> {
        // Nothing panics while holding it.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for Loading {
    fn drop(&mut self) {
        if let Some(kind) = &self.kind {
            let mut state = self.queue.state();
            if let Some(i) = state.loading.iter().position(|k| k == kind) {
                state.loading.swap_remove(i);
            }
        }
        self.queue.finished.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::kind::component;

    fn write(dir: &std::path::Path, name: &str, bytes: Vec<u8>) -> anyhow::Result<PathBuf> {
        let path = dir.join(name);
        std::fs::write(&path, bytes)?;
        Ok(path)
    }

    #[test]
    fn a_file_that_shares_its_code_with_an_earlier_one_loads_after_the_first_of_each_kind()
    -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let write = |name: &str, bytes: Vec<u8>| write(dir.path(), name, bytes);
        // By size: small, a1, a2 (a1's code, more data), b1, b2 (b1's code).
        let small = write("small.wasm", component(1, 7, ""))?;
        let a1 = write("a1.wasm", component(40, 1, "x"))?;
        let a2 = write("a2.wasm", component(40, 1, "xx"))?;
        let b1 = write("b1.wasm", component(80, 2, ""))?;
        let b2 = write("b2.wasm", component(80, 2, "y"))?;
        let not_wasm = write("broken.wasm", b"\0asm\x0d\x00\x01\x00\x01\xff".to_vec())?;

        let queue = at_start(vec![
            b2.clone(),
            a2.clone(),
            not_wasm.clone(),
            b1.clone(),
            small.clone(),
            a1.clone(),
        ]);
        assert_eq!(queue.paths(), vec![not_wasm, small, a1.clone(), b1, a2, b2]);
        // Two kinds of two files each; `small` shares its kind with none.
        let shared = queue.shared_kinds();
        assert_eq!(shared.len(), 4, "{shared:?}");
        assert!(shared.contains(&Kind::of_file(&a1)?.expect("a kind")));
        Ok(())
    }

    #[tokio::test]
    async fn a_file_waits_while_another_of_its_kind_loads() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let write = |name: &str, bytes: Vec<u8>| write(dir.path(), name, bytes);
        let a1 = write("a1.wasm", component(40, 1, "x"))?;
        let b1 = write("b1.wasm", component(80, 2, ""))?;
        let b2 = write("b2.wasm", component(80, 2, "y"))?;
        let a2 = write("a2.wasm", component(40, 1, "xx"))?;
        let queue = Arc::new(at_start(vec![
            a1.clone(),
            b1.clone(),
            a2.clone(),
            b2.clone(),
        ]));

        let (first, loading_a1) = queue.next().await.expect("a file");
        let (second, loading_b1) = queue.next().await.expect("a file");
        assert_eq!((first, second), (a1, b1.clone()));
        // a2 and b2 wait for their kind's first.
        let mut third = Box::pin(queue.next());
        assert!(futures_util::poll!(&mut third).is_pending());
        drop(loading_b1);
        let (third, _loading_b2) = third.await.expect("a file");
        assert_eq!(third, b2);
        drop(loading_a1);
        let (fourth, _loading_a2) = queue.next().await.expect("a file");
        assert_eq!(fourth, a2);
        assert!(queue.next().await.is_none());
        Ok(())
    }
}
