//! Cranelift's incremental compilation cache, kept in memory: a function an
//! engine has compiled once, it does not compile again.
//!
//! Plugins written in one language embed the same interpreter: both Python
//! plugins carry CPython, both JavaScript plugins StarlingMonkey, byte for
//! byte, and wasmtime compiles every component from scratch. Cranelift can
//! key each function it compiles by a SHA-256 of its IR and the target's
//! flags, with the functions it calls kept out of the key (two functions
//! that differ only in their callee share an entry), and reuse the machine
//! code of an equal function made before. Two compilers profit:
//!
//! - **Baseline (Winch).** Winch compiles the functions itself, uncached,
//!   but Cranelift compiles the trampolines the host calls them through: one
//!   for every function a table or export holds, thousands in an
//!   interpreter, and they differ only in their signature. Cached, a Python
//!   or JavaScript plugin compiles in 0.7–0.8 of the time, and the cache holds
//!   under 1 MiB (`cargo bench -p notifyhub --bench compile`). wasmtime's
//!   Winch refuses a cache; `vendor/wasmtime-internal-winch` passes it on to
//!   the Cranelift that compiles Winch's trampolines (see `vendor/README.md`).
//!   The same patched crate makes the array-to-wasm trampolines, the most
//!   numerous, once a signature without asking Cranelift again: the cache
//!   serves the first of each signature to every engine after the first,
//!   and the other kinds of trampoline.
//! - **The optimizer (Cranelift).** The second plugin of a language reuses
//!   nearly every function of the first: it compiles in 0.4 of the time.
//!   These entries are large (73 MB for the two Python and two JavaScript
//!   plugins), so the optimizer empties its cache whenever its queue runs
//!   dry: they are kept while a wave of compiles lasts.
//!
//! What it must never do: grow without bound. An entry that would take the
//! cache past its budget is not kept; that costs a later compile, nothing
//! more. What it holds is only machine code this process made.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use wasmtime::CacheStore;

/// What the baseline engine's cache may hold, in bytes. It keeps its entries
/// for the daemon's life: Cranelift compiles only trampolines for it, whose
/// entries for every shipped plugin take 0.75 MB.
pub(super) const BASELINE_BUDGET: usize = 16 << 20;

/// What the optimizer's cache may hold during a wave of compiles, in bytes:
/// two interpreters' worth (the two Python and two JavaScript plugins' take
/// 73 MB).
pub(super) const OPTIMIZER_BUDGET: usize = 128 << 20;

/// An in-memory [`CacheStore`] of at most `budget` bytes of keys and code.
#[derive(Debug)]
pub(super) struct FunctionCache {
    budget: usize,
    entries: Mutex<Entries>,
}

#[derive(Debug, Default)]
struct Entries {
    code: HashMap<Box<[u8]>, Box<[u8]>>,
    /// Keys and code together.
    bytes: usize,
    /// Functions served from the cache since it was last cleared.
    hits: u64,
}

/// How much a cache holds and has served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Usage {
    pub entries: usize,
    pub bytes: usize,
    /// Functions served from the cache instead of compiled.
    pub hits: u64,
}

impl FunctionCache {
    pub(super) fn new(budget: usize) -> Self {
        FunctionCache {
            budget,
            entries: Mutex::default(),
        }
    }

    /// Forgets every entry and the count of hits; returns what the cache
    /// held and had served.
    pub(super) fn clear(&self) -> Usage {
        let mut entries = self.lock();
        let usage = entries.usage();
        *entries = Entries::default();
        usage
    }

    #[cfg(test)]
    fn usage(&self) -> Usage {
        self.lock().usage()
    }

    /// The entries; a panic elsewhere while they were locked cannot have
    /// left them inconsistent (no code here panics while holding them).
    fn lock(&self) -> MutexGuard<'_, Entries> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Entries {
    fn usage(&self) -> Usage {
        Usage {
            entries: self.code.len(),
            bytes: self.bytes,
            hits: self.hits,
        }
    }
}

impl CacheStore for FunctionCache {
    fn get(&self, key: &[u8]) -> Option<Cow<'_, [u8]>> {
        // Copied out: the entry cannot be lent past the lock. A copy of a
        // function's code costs far less than compiling it.
        let mut entries = self.lock();
        let code = entries.code.get(key).map(|code| code.to_vec())?;
        entries.hits += 1;
        Some(Cow::Owned(code))
    }

    fn insert(&self, key: &[u8], value: Vec<u8>) -> bool {
        let size = key.len() + value.len();
        let mut entries = self.lock();
        let replaced = entries.code.get(key).map_or(0, |old| key.len() + old.len());
        let after = entries.bytes - replaced + size;
        if after > self.budget {
            return false;
        }
        entries.code.insert(key.into(), value.into_boxed_slice());
        entries.bytes = after;
        true
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use wasmtime::component::{Component, Linker};
    use wasmtime::{Engine, Store};

    use super::super::{SandboxSettings, Tier, config};
    use super::*;

    /// A component exporting `functions` functions of one signature, each
    /// returning its own index: every one escapes, so each gets a
    /// trampoline, and they differ only in the callee.
    fn component(functions: u32) -> String {
        let core: String = (0..functions)
            .map(|i| format!("(func (export \"f{i}\") (param i32) (result i32) i32.const {i})"))
            .collect();
        let lifted: String = (0..functions)
            .map(|i| format!("(func (export \"f{i}\") (param \"x\" u32) (result u32) (canon lift (core func $i \"f{i}\")))"))
            .collect();
        format!("(component (core module $m {core}) (core instance $i (instantiate $m)) {lifted})")
    }

    fn baseline(functions: &Arc<FunctionCache>) -> anyhow::Result<Engine> {
        let config = config(
            &SandboxSettings::default(),
            Tier::Baseline,
            false,
            Some(functions.clone()),
        )?;
        Ok(Engine::new(&config)?)
    }

    /// Winch (as patched in `vendor/`) takes the cache and passes it to the
    /// Cranelift that compiles its trampolines: another engine with the
    /// same settings compiles none of a component's trampolines again.
    #[test]
    fn the_baseline_compiler_reuses_trampolines_across_engines() -> anyhow::Result<()> {
        let functions = Arc::new(FunctionCache::new(BASELINE_BUDGET));
        Component::new(&baseline(&functions)?, component(2))?;
        let first = functions.usage();
        assert!(first.entries > 0, "nothing was cached: {first:?}");

        Component::new(&baseline(&functions)?, component(3))?;
        let second = functions.usage();
        assert_eq!(second.entries, first.entries, "{first:?} then {second:?}");
        assert!(second.hits > first.hits, "{first:?} then {second:?}");
        Ok(())
    }

    /// Winch (as patched in `vendor/`) makes one array-to-wasm trampoline a
    /// signature: the others of that signature never reach Cranelift, not
    /// even its cache, and each still calls its own function.
    #[test]
    fn one_trampoline_a_signature_calls_every_function() -> anyhow::Result<()> {
        let functions = Arc::new(FunctionCache::new(BASELINE_BUDGET));
        let engine = baseline(&functions)?;
        Component::new(&engine, component(1))?;
        let first = functions.usage();
        assert!(first.entries > 0, "nothing was cached: {first:?}");
        // What any component asks of the cache: its other trampolines.
        Component::new(&engine, component(1))?;
        let again = functions.usage();

        let many = Component::new(&engine, component(40))?;
        let after = functions.usage();
        assert_eq!(after.entries, first.entries, "{first:?} then {after:?}");
        assert_eq!(
            after.hits - again.hits,
            again.hits - first.hits,
            "Cranelift was asked for trampolines of one signature: {first:?}, {again:?}, {after:?}"
        );
        let mut store = Store::new(&engine, ());
        store.set_epoch_deadline(u64::MAX / 2);
        let instance = Linker::new(&engine).instantiate(&mut store, &many)?;
        for i in 0..40 {
            let f = instance.get_typed_func::<(u32,), (u32,)>(&mut store, &format!("f{i}"))?;
            assert_eq!(f.call(&mut store, (7,))?, (i,), "f{i}");
        }
        Ok(())
    }

    #[test]
    fn keeps_entries_within_its_budget() {
        let cache = FunctionCache::new(10);
        assert!(cache.insert(b"ab", vec![0; 4]));
        assert!(!cache.insert(b"cd", vec![0; 5]), "6 + 7 bytes exceed 10");
        assert!(cache.get(b"cd").is_none());
        // Replacing an entry counts its new size, not both.
        assert!(cache.insert(b"ab", vec![1; 8]));
        assert_eq!(cache.get(b"ab").as_deref(), Some(&[1; 8][..]));
        assert_eq!(
            cache.usage(),
            Usage {
                entries: 1,
                bytes: 10,
                hits: 1
            }
        );
    }

    #[test]
    fn clearing_frees_the_budget_and_restarts_the_count_of_hits() {
        let cache = FunctionCache::new(10);
        assert!(cache.insert(b"ab", vec![0; 8]));
        assert!(cache.get(b"ab").is_some());
        let held = cache.clear();
        assert_eq!((held.entries, held.bytes, held.hits), (1, 10, 1));
        assert!(cache.get(b"ab").is_none());
        assert!(cache.insert(b"cd", vec![0; 8]));
        assert_eq!(
            cache.usage(),
            Usage {
                entries: 1,
                bytes: 10,
                hits: 0
            }
        );
    }
}
