//! Array-to-wasm trampolines made once a signature: notifyhub's addition to
//! this crate (see `vendor/README.md`).
//!
//! The host enters a wasm function through its array-to-wasm trampoline, and
//! every function a table or an export holds has one: thousands in an
//! interpreter. Cranelift makes each from the callee's signature alone and
//! calls the callee by name, so two trampolines for functions of one
//! signature are the same machine code with another relocation target.
//! Cranelift's cache (this crate's first patch) already served their code,
//! but only after building each trampoline's IR and hashing it for the key,
//! and then decoding the cached code: a tenth of Winch's compile of a Python
//! plugin, a sixth of the second one's.
//!
//! So the first trampoline compiled for a signature is kept as a [`Shape`]:
//! its code, with every relocation checked to name its callee. The next
//! trampoline of that signature is the same code with the relocations
//! naming its own callee.
//!
//! What it must never do: give a trampoline code made for another
//! signature, or a relocation that names another callee; keep more than
//! [`CAPACITY`] signatures.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use cranelift_codegen::entity::{EntityRef, PrimaryMap};
use cranelift_codegen::ir::{ExternalName, UserExternalName};
use cranelift_codegen::isa::unwind::UnwindInfo;
use cranelift_codegen::{Final, FinalizedRelocTarget, MachBufferFinalized};
use wasmtime_cranelift::CompiledFunction;
use wasmtime_environ::{FuncKey, WasmFuncType};

/// How many signatures are kept: a plugin has a few hundred. A trampoline
/// of a signature past that is compiled as before.
const CAPACITY: usize = 4096;

/// The trampolines an engine's compiler has made, one a signature.
#[derive(Default)]
pub(crate) struct Trampolines {
    shapes: Mutex<HashMap<WasmFuncType, Arc<Shape>>>,
}

/// A trampoline's code, apart from the callee its relocations name.
struct Shape {
    buffer: MachBufferFinalized<Final>,
    /// How many names the code's relocations index; each is the callee.
    names: usize,
    alignment: u32,
    unwind: Option<UnwindInfo>,
}

impl Trampolines {
    /// The trampoline that calls `callee`, of signature `ty`, if one of that
    /// signature was made before.
    pub(crate) fn get(&self, ty: &WasmFuncType, callee: FuncKey) -> Option<CompiledFunction> {
        let shape = self.shapes().get(ty)?.clone();
        Some(shape.calling(callee))
    }

    /// Keeps `function`, the trampoline of signature `ty` that calls
    /// `callee`, unless its relocations name anything else.
    pub(crate) fn keep(&self, ty: &WasmFuncType, callee: FuncKey, function: &CompiledFunction) {
        let Some(shape) = Shape::of(function, callee) else {
            return;
        };
        let mut shapes = self.shapes();
        if shapes.len() >= CAPACITY || shapes.contains_key(ty) {
            return;
        }
        // Out of memory for a copy of the signature: not kept, compiled again.
        if let Ok(ty) = WasmFuncType::new(ty.params().iter().cloned(), ty.results().iter().cloned())
        {
            shapes.insert(ty, Arc::new(shape));
        }
    }

    fn shapes(&self) -> MutexGuard<'_, HashMap<WasmFuncType, Arc<Shape>>> {
        // Nothing panics while holding it; a poisoned map is still whole.
        self.shapes.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Shape {
    /// `function`'s shape, if every relocation in it names `callee`.
    fn of(function: &CompiledFunction, callee: FuncKey) -> Option<Shape> {
        let mut names = 0;
        for reloc in function.buffer.relocs() {
            // Checked first: `relocations()` panics on any other target.
            let FinalizedRelocTarget::ExternalName(ExternalName::User(name)) = reloc.target else {
                return None;
            };
            names = names.max(name.index() + 1);
        }
        if function.relocations().any(|r| r.reloc_target != callee) {
            return None;
        }
        Some(Shape {
            buffer: function.buffer.clone(),
            names,
            alignment: function.alignment,
            unwind: function.unwind_info().cloned(),
        })
    }

    /// The trampoline of this shape that calls `callee`.
    fn calling(&self, callee: FuncKey) -> CompiledFunction {
        let (namespace, index) = callee.into_raw_parts();
        let mut names = PrimaryMap::with_capacity(self.names);
        for _ in 0..self.names {
            names.push(UserExternalName::new(namespace, index));
        }
        let mut function = CompiledFunction::new(self.buffer.clone(), names, self.alignment);
        if let Some(unwind) = &self.unwind {
            function.set_unwind_info(unwind.clone());
        }
        function
    }
}
