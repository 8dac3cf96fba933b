//! Winch's compiled functions, shared by the baseline compiles of a wave:
//! the second plugin of a language does not compile its interpreter again.
//!
//! Both Python plugins embed CPython's modules, both JavaScript plugins
//! StarlingMonkey's, with equal code and different data. Winch, as patched
//! in `vendor/wasmtime-internal-winch` (`reuse.rs` there says when two
//! functions are equal), keeps the functions it compiles for a component
//! inside a scope and reuses them in another. With the 24 shipped plugins
//! and an empty compile cache, compiling them again was 1.3 s of a 3.1 s
//! cold start.
//!
//! An interpreter's functions take ~130 MB in memory, so they are kept only
//! within a wave, and only for what will reuse them. Whoever knows that
//! compiles are coming opens the wave with their kinds (the loads at start,
//! [`Reuse::hold`]); each compile in it holds it until the compile ends.
//! A compile keeps its functions only while others of its kind are still to
//! come, and the last of a kind takes them out of the store. The wave's end
//! drops whatever is left.
//!
//! While a wave lasts, each compile also leaves the memory it freed
//! committed for the next one (`KeepFreedMemory`); the wave's end hands it
//! back.
//!
//! What it must never do: keep the functions once no compile is coming, or
//! hold more than [`BUDGET`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use wasmtime_internal_winch::{FunctionStore, Scope};

use super::Kind;
use crate::allocator::KeepFreedMemory;

/// What the functions kept during a wave may take, in bytes: one Python and
/// one JavaScript interpreter's.
pub(super) const BUDGET: usize = 384 << 20;

/// The store of Winch's functions and the wave that may use it.
#[derive(Debug)]
pub struct Reuse {
    store: Arc<FunctionStore>,
    wave: Mutex<Wave>,
}

#[derive(Debug, Default)]
struct Wave {
    /// Holds alive: compiles running in the wave, and who opened it.
    holders: usize,
    /// The compiles still to come in the wave, by kind: the only ones
    /// whose functions are worth keeping or looking up.
    coming: HashMap<Kind, usize>,
    /// While the wave lasts, what a compile frees stays committed for the
    /// next; handed back when it ends.
    memory: Option<KeepFreedMemory>,
}

/// Keeps the wave open while it lives; the last one dropped empties the
/// store.
#[must_use = "the functions are dropped with the last hold"]
#[derive(Debug)]
pub struct Hold {
    reuse: Arc<Reuse>,
}

impl Reuse {
    pub(super) fn new() -> Arc<Reuse> {
        Arc::new(Reuse {
            store: Arc::new(FunctionStore::new(BUDGET)),
            wave: Mutex::default(),
        })
    }

    /// Opens a wave, or holds the one open, in which a component of each of
    /// `coming` will be compiled: a kind given more than once has its
    /// functions kept for the compiles after the first.
    pub fn hold(self: &Arc<Self>, coming: impl IntoIterator<Item = Kind>) -> Hold {
        let mut wave = self.wave();
        wave.holders += 1;
        wave.memory.get_or_insert_with(KeepFreedMemory::new);
        for kind in coming {
            *wave.coming.entry(kind).or_default() += 1;
        }
        Hold {
            reuse: self.clone(),
        }
    }

    /// For a compile of `component` in a wave where more of its kind are
    /// coming: a hold, and Winch's compiles of `component` sharing
    /// functions while the scope lives (keeping them while others of its
    /// kind are still to come). `None` otherwise: nothing would reuse them.
    pub(super) fn scope<'a>(self: &Arc<Self>, component: &'a [u8]) -> Option<(Hold, Scope<'a>)> {
        let kind = Kind::of_bytes(component)?;
        let mut wave = self.wave();
        if wave.holders == 0 {
            return None;
        }
        let coming = wave.coming.get_mut(&kind)?;
        *coming -= 1;
        let keep = *coming > 0;
        if !keep {
            wave.coming.remove(&kind);
        }
        wave.holders += 1;
        let hold = Hold {
            reuse: self.clone(),
        };
        Some((hold, Scope::enter(self.store.clone(), component, keep)))
    }

    fn wave(&self) -> MutexGuard<'_, Wave> {
        // Only counts are changed under it: never left half-done.
        self.wave.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Hold {
    /// Functions reused in the wave so far.
    pub fn reused(&self) -> u64 {
        self.reuse.store.usage().hits
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        let mut wave = self.reuse.wave();
        wave.holders -= 1;
        if wave.holders == 0 {
            wave.coming.clear();
            let usage = self.reuse.store.clear();
            // What the wave's compiles freed and left committed, handed back.
            wave.memory = None;
            tracing::debug!(
                reused = usage.hits,
                left = usage.entries,
                left_bytes = usage.bytes,
                "the baseline compiler's wave of compiles ended"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use wasmtime::component::{Component, Linker};
    use wasmtime::{Engine, Store};

    use super::super::{SandboxSettings, Tier, config};
    use super::*;

    /// A component whose function `f` returns the number its memory's data
    /// starts with plus `added`: `data` varies the data, `added` the code.
    fn component(data: u8, added: i32) -> Vec<u8> {
        wat::parse_str(format!(
            r#"(component
                 (core module $m
                   (memory 1)
                   (func $load (result i32) i32.const 0 i32.load)
                   (func (export "f") (result i32) call $load i32.const {added} i32.add)
                   (data (i32.const 0) "\{data:02x}"))
                 (core instance $i (instantiate $m))
                 (func (export "f") (result u32) (canon lift (core func $i "f"))))"#
        ))
        .expect("valid")
    }

    fn baseline() -> anyhow::Result<Engine> {
        let config = config(&SandboxSettings::default(), Tier::Baseline, false, None)?;
        Ok(Engine::new(&config)?)
    }

    fn call(engine: &Engine, component: &Component) -> anyhow::Result<u32> {
        let mut store = Store::new(engine, ());
        store.set_epoch_deadline(u64::MAX / 2);
        let instance = Linker::new(engine).instantiate(&mut store, component)?;
        let f = instance.get_typed_func::<(), (u32,)>(&mut store, "f")?;
        Ok(f.call(&mut store, ())?.0)
    }

    /// Compiles `bytes` inside a scope of `store`.
    fn compile_in(
        store: &Arc<FunctionStore>,
        keep: bool,
        engine: &Engine,
        bytes: &[u8],
    ) -> anyhow::Result<Component> {
        let _scope = Scope::enter(store.clone(), bytes, keep);
        Ok(Component::new(engine, bytes)?)
    }

    /// Equal code, other data: every function is reused, and each
    /// component runs on its own data. Other code: only the functions that
    /// changed are compiled.
    #[test]
    fn a_component_with_the_same_code_reuses_its_functions() -> anyhow::Result<()> {
        let engine = baseline()?;
        let store = Arc::new(FunctionStore::new(BUDGET));

        let first = compile_in(&store, true, &engine, &component(7, 1))?;
        let kept = store.usage();
        assert_eq!((kept.entries, kept.hits), (2, 0), "{kept:?}");
        // The last of its kind takes the functions out: no copy is left.
        let second = compile_in(&store, false, &engine, &component(9, 1))?;
        let taken = store.usage();
        assert_eq!(
            (taken.entries, taken.bytes, taken.hits),
            (0, 0, 2),
            "{taken:?}"
        );
        assert_eq!(call(&engine, &first)?, 8);
        assert_eq!(call(&engine, &second)?, 10);

        compile_in(&store, true, &engine, &component(7, 1))?;
        let third = compile_in(&store, true, &engine, &component(7, 5))?;
        let partly = store.usage();
        assert_eq!((partly.entries, partly.hits), (3, 3), "{partly:?}");
        assert_eq!(call(&engine, &third)?, 12);
        Ok(())
    }

    #[test]
    fn only_a_wave_with_more_of_a_kind_to_come_shares_functions() -> anyhow::Result<()> {
        let engine = baseline()?;
        let reuse = Reuse::new();
        let (a, b) = (component(7, 1), component(9, 1));
        let kind = Kind::of_bytes(&a).expect("a kind");
        assert!(reuse.scope(&a).is_none(), "no wave");

        let wave = reuse.hold([kind.clone(), kind]);
        assert!(reuse.scope(&component(7, 2)).is_none(), "not coming");
        let compile = |bytes: &[u8]| -> anyhow::Result<()> {
            let _scope = reuse.scope(bytes).expect("coming");
            Component::new(&engine, bytes)?;
            Ok(())
        };
        compile(&a)?;
        assert_eq!(reuse.store.usage().entries, 2);
        compile(&b)?;
        assert_eq!(reuse.store.usage().hits, 2);
        assert!(reuse.scope(&a).is_none(), "none of its kind left to come");

        drop(wave);
        assert_eq!(reuse.store.usage(), Default::default());
        Ok(())
    }
}
