//! Winch's compiled functions, reused between components: notifyhub's
//! addition to this crate (see `vendor/README.md`).
//!
//! Plugins written in one language embed the same interpreter, byte for
//! byte: both Python plugins carry CPython's modules, both JavaScript
//! plugins StarlingMonkey's, and they differ in their data (the snapshot of
//! each plugin's own code). Winch caches nothing, so a daemon starting on an
//! empty compile cache compiled each interpreter once a plugin: with the 24
//! shipped plugins, the second Python and the second JavaScript plugin were
//! 1.3 s of a 3.1 s cold start.
//!
//! A [`FunctionStore`] keeps the functions Winch compiles for a component
//! compiled inside a [`Scope`] that keeps, and a compile inside any scope
//! takes an equal function from it instead of compiling it again. A scope
//! that does not keep (the last compile of its kind) takes the functions out
//! of the store rather than copying them: an interpreter's functions are
//! ~100 MB in memory, and two copies of them at once are worth avoiding.
//!
//! ## When two functions are equal
//!
//! A function's key is a SHA-256 of everything Winch's code for it depends
//! on:
//! - the compiler's settings: tunables, target, flags and ISA flags;
//! - the module's bytes before its code section (types, imports, function
//!   signatures, tables, memories, globals, exports, elements, the data
//!   count): the environment Winch reads while compiling a function;
//! - the WebAssembly features the module is validated with;
//! - how the component interned the module's types, the indices the code
//!   finds signatures by;
//! - the module's index in the component, which the code's calls name;
//! - the function's index and its body.
//!
//! Left out: the data section, the memory's initial contents, which no code
//! embeds (the only place two plugins of a language differ), and custom
//! sections (names). A reused function is not validated again: its body
//! validated in the same environment when it was compiled.
//!
//! ## Why a scope
//!
//! A module's part of the key hashes up to 83 KB of its sections: once a
//! module, not once a function. The hash is remembered by the module's
//! address, which names one module only while its bytes are alive. A scope
//! borrows the component's bytes for as long as the compile lasts, so
//! nothing is remembered beyond them. A compile outside any scope is
//! Winch's own, untouched.
//!
//! ## Source positions
//!
//! Winch's code records, for each instruction, its wasm offset in the
//! component, for traps and backtraces. A function reused at the offset it
//! was compiled for keeps them. One reused elsewhere (the second Python
//! plugin's interpreter starts some bytes later than the first's) is given
//! its own start and end but no per-instruction offsets: a trap in it names
//! the function, without an offset. That lasts until the optimizer's code
//! replaces Winch's.
//!
//! What it must never do: hand out code compiled from other inputs than the
//! key names, or hold more than its budget.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use cranelift_codegen::entity::{EntityRef, PrimaryMap};
use cranelift_codegen::ir::{ExternalName, UserExternalName, UserExternalNameRef};
use cranelift_codegen::{Final, FinalizedRelocTarget, MachBufferFinalized};
use sha2::{Digest, Sha256};
use wasmparser::{Parser, Payload, WasmFeatures};
use wasmtime_cranelift::CompiledFunction;
use wasmtime_environ::{DefinedFuncIndex, ModuleTranslation};

type Key = [u8; 32];

/// Functions Winch compiled, by key, up to a budget in bytes.
#[derive(Debug)]
pub struct FunctionStore {
    budget: usize,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    entries: HashMap<Key, Arc<Compiled>>,
    bytes: usize,
    hits: u64,
}

/// What a store holds and has served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    /// Functions held.
    pub entries: usize,
    /// Their code and metadata, roughly, in bytes.
    pub bytes: usize,
    /// Functions taken from the store instead of compiled, since it was
    /// last cleared.
    pub hits: u64,
}

impl FunctionStore {
    /// An empty store that holds at most `budget` bytes; a function that
    /// would take it past that is not kept.
    pub fn new(budget: usize) -> Self {
        FunctionStore {
            budget,
            state: Mutex::default(),
        }
    }

    /// What the store holds and has served.
    pub fn usage(&self) -> Usage {
        self.state().usage()
    }

    /// Forgets every function and the count of hits; returns what it held
    /// and had served.
    pub fn clear(&self) -> Usage {
        let mut state = self.state();
        let usage = state.usage();
        *state = State::default();
        usage
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding it; a poisoned map is still whole.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl State {
    fn usage(&self) -> Usage {
        Usage {
            entries: self.entries.len(),
            bytes: self.bytes,
            hits: self.hits,
        }
    }
}

/// While alive, Winch's compiles of the modules inside `component` reuse
/// the functions in the store and, if asked to, keep theirs there.
pub struct Scope<'a> {
    registered: Arc<Registered>,
    _component: PhantomData<&'a [u8]>,
}

/// A component's bytes being compiled inside a scope.
struct Registered {
    start: usize,
    end: usize,
    store: Arc<FunctionStore>,
    keep: bool,
    /// The module's part of the key, by the module's address and length.
    modules: Mutex<HashMap<(usize, usize), Key>>,
}

static SCOPES: Mutex<Vec<Arc<Registered>>> = Mutex::new(Vec::new());

fn scopes() -> MutexGuard<'static, Vec<Arc<Registered>>> {
    SCOPES.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<'a> Scope<'a> {
    /// Compiles of `component` take functions from `store` until the scope
    /// is dropped. With `keep`, they leave what they take there and add
    /// what they compile, for compiles still to come; without, they take
    /// what they reuse out of the store (no copy is made) and add nothing.
    pub fn enter(store: Arc<FunctionStore>, component: &'a [u8], keep: bool) -> Scope<'a> {
        let start = component.as_ptr() as usize;
        let registered = Arc::new(Registered {
            start,
            end: start + component.len(),
            store,
            keep,
            modules: Mutex::default(),
        });
        scopes().push(registered.clone());
        Scope {
            registered,
            _component: PhantomData,
        }
    }
}

impl Drop for Scope<'_> {
    fn drop(&mut self) {
        scopes().retain(|r| !Arc::ptr_eq(r, &self.registered));
    }
}

/// Reuse for the functions of one module compiled inside a scope.
pub(crate) struct ModuleReuse {
    store: Arc<FunctionStore>,
    keep: bool,
    module: Key,
}

/// Reuse for `translation`'s functions, if its bytes are inside a scope.
pub(crate) fn for_module(
    translation: &ModuleTranslation<'_>,
    compiler: &Key,
    features: WasmFeatures,
) -> Option<ModuleReuse> {
    let wasm = translation.wasm;
    let (start, len) = (wasm.as_ptr() as usize, wasm.len());
    let registered = scopes()
        .iter()
        .find(|r| r.start <= start && start + len <= r.end)?
        .clone();
    let mut modules = registered
        .modules
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    let module = match modules.get(&(start, len)) {
        Some(key) => *key,
        None => {
            let key = module_key(translation, compiler, features)?;
            modules.insert((start, len), key);
            key
        }
    };
    Some(ModuleReuse {
        store: registered.store.clone(),
        keep: registered.keep,
        module,
    })
}

/// The module's part of its functions' keys; `None` when its sections
/// cannot be read (Winch's compile then reports what is wrong).
fn module_key(
    translation: &ModuleTranslation<'_>,
    compiler: &Key,
    features: WasmFeatures,
) -> Option<Key> {
    let wasm = translation.wasm;
    let mut code_start = None;
    for payload in Parser::new(0).parse_all(wasm) {
        if let Payload::CodeSectionStart { range, .. } = payload.ok()? {
            code_start = Some(range.start);
            break;
        }
    }
    let mut hash = Sha256::new();
    hash.update(compiler);
    hash.update(wasm.get(..code_start?)?);
    hash.update(format!("{features:?}"));
    hash.update(format!("{:?}", translation.module.types));
    hash.update(translation.module_index().as_u32().to_le_bytes());
    Some(hash.finalize().into())
}

/// The compiler's part of every key: its settings.
pub(crate) fn compiler_key(settings: &str) -> Key {
    Sha256::digest(settings).into()
}

impl ModuleReuse {
    /// The key of the function `index` whose body is `body`.
    pub(crate) fn key(&self, index: DefinedFuncIndex, body: &[u8]) -> Key {
        let mut hash = Sha256::new();
        hash.update(self.module);
        hash.update(index.as_u32().to_le_bytes());
        hash.update(body);
        hash.finalize().into()
    }

    /// The function under `key`, if the store has it, and where its body
    /// was in the component it was compiled for.
    pub(crate) fn take(&self, key: &Key) -> Option<(CompiledFunction, u32)> {
        let mut state = self.store.state();
        let compiled = if self.keep {
            state.entries.get(key).cloned()?
        } else {
            let compiled = state.entries.remove(key)?;
            state.bytes -= compiled.size();
            compiled
        };
        state.hits += 1;
        drop(state);
        let start = compiled.start;
        let function = match Arc::try_unwrap(compiled) {
            Ok(compiled) => compiled.into_function(),
            Err(shared) => shared.function(),
        };
        Some((function, start))
    }

    /// Keeps `function`, compiled for a body at offset `start` of its
    /// component, under `key`, when compiles to come may reuse it and the
    /// budget allows.
    pub(crate) fn keep(&self, key: Key, function: &CompiledFunction, start: u32) {
        if !self.keep {
            return;
        }
        let compiled = Compiled::of(function, start);
        let size = compiled.size();
        let mut state = self.store.state();
        if state.bytes + size > self.store.budget || state.entries.contains_key(&key) {
            return;
        }
        state.bytes += size;
        state.entries.insert(key, Arc::new(compiled));
    }
}

/// A function as Winch compiled it, and where its body was.
#[derive(Debug)]
pub(crate) struct Compiled {
    buffer: MachBufferFinalized<Final>,
    /// The names its relocations refer to, as `CompiledFunction` keeps
    /// them (the field is private there; rebuilt from the relocations).
    names: PrimaryMap<UserExternalNameRef, UserExternalName>,
    alignment: u32,
    start: u32,
}

impl Compiled {
    fn of(function: &CompiledFunction, start: u32) -> Compiled {
        let mut names = PrimaryMap::new();
        for (reloc, resolved) in function.buffer.relocs().iter().zip(function.relocations()) {
            if let FinalizedRelocTarget::ExternalName(ExternalName::User(name)) = reloc.target {
                // Names no relocation uses are never read: any value will do.
                while names.len() <= name.index() {
                    names.push(UserExternalName::new(u32::MAX, u32::MAX));
                }
                let (namespace, index) = resolved.reloc_target.into_raw_parts();
                names[name] = UserExternalName::new(namespace, index);
            }
        }
        Compiled {
            buffer: function.buffer.clone(),
            names,
            alignment: function.alignment,
            start,
        }
    }

    /// The function again, without its address map and unwind information
    /// (the caller sets them, as after a compile).
    fn function(&self) -> CompiledFunction {
        CompiledFunction::new(self.buffer.clone(), self.names.clone(), self.alignment)
    }

    /// [`Self::function`], without a copy.
    fn into_function(self) -> CompiledFunction {
        CompiledFunction::new(self.buffer, self.names, self.alignment)
    }

    /// Roughly what it takes in memory: its code and the records kept
    /// beside it.
    fn size(&self) -> usize {
        use std::mem::{size_of, size_of_val};
        let buffer = &self.buffer;
        size_of::<Self>()
            + buffer.data().len()
            + size_of_val(buffer.relocs())
            + size_of_val(buffer.traps())
            + size_of_val(buffer.get_srclocs_sorted())
            + size_of::<UserExternalName>() * self.names.len()
    }
}
