//! A component's kind: which components share most of their code.
//!
//! Plugins of one language embed the same interpreter: its modules' code is
//! equal, byte for byte, and only their data (each plugin's own code,
//! snapshotted) differs. Such components are of one kind, and the baseline
//! compiler reuses one's functions for the other ([`super::reuse`]); the
//! loads at start are ordered by kind (`reload::order`).
//!
//! A kind is the largest core module's code section: its length and a
//! SHA-256 of its first [`SAMPLE`] bytes. It is read from section headers,
//! so a file's kind costs a few small reads, not the file. It decides what
//! to keep and in which order to load, never what code runs: two components
//! of one kind share only the functions whose every input is equal (the
//! vendored Winch keys each function on them).

use std::fs::File;
use std::io::{self, BufReader, Cursor, Read, Seek, SeekFrom};
use std::path::Path;

use sha2::{Digest, Sha256};

/// How much of a code section names its kind.
const SAMPLE: u64 = 64 << 10;

/// A core module's code section.
const CODE: u8 = 10;
/// A core module inside a component.
const CORE_MODULE: u8 = 1;

/// What components with the same code share.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Kind {
    code_len: u64,
    sample: [u8; 32],
}

impl Kind {
    /// The kind of the component at `path`; `None` when it is not a
    /// component or has no core module with code.
    pub fn of_file(path: &Path) -> io::Result<Option<Kind>> {
        Kind::of(BufReader::new(File::open(path)?))
    }

    /// The kind of the component `bytes`.
    pub fn of_bytes(bytes: &[u8]) -> Option<Kind> {
        Kind::of(Cursor::new(bytes)).ok().flatten()
    }

    fn of(mut wasm: impl Read + Seek) -> io::Result<Option<Kind>> {
        let mut header = [0; 8];
        wasm.read_exact(&mut header)?;
        // The preamble of a component (layer 1), not of a core module.
        if header != *b"\0asm\x0d\x00\x01\x00" {
            return Ok(None);
        }
        let end = wasm.seek(SeekFrom::End(0))?;
        let mut largest: Option<(u64, u64)> = None;
        for (id, start, len) in sections(&mut wasm, 8, end)? {
            if id != CORE_MODULE {
                continue;
            }
            let code = sections(&mut wasm, start + 8, start + len)?
                .into_iter()
                .find(|(id, ..)| *id == CODE);
            if let Some((_, at, len)) = code
                && largest.is_none_or(|(largest, _)| len > largest)
            {
                largest = Some((len, at));
            }
        }
        let Some((code_len, at)) = largest else {
            return Ok(None);
        };
        wasm.seek(SeekFrom::Start(at))?;
        let mut sample = Vec::new();
        wasm.take(SAMPLE.min(code_len)).read_to_end(&mut sample)?;
        Ok(Some(Kind {
            code_len,
            sample: Sha256::digest(&sample).into(),
        }))
    }
}

/// The sections between `from` and `to`: id, where the contents start, and
/// their length. Skipped with relative seeks: a buffered reader keeps its
/// buffer across small sections instead of reading again.
fn sections(wasm: &mut (impl Read + Seek), from: u64, to: u64) -> io::Result<Vec<(u8, u64, u64)>> {
    let mut found = Vec::new();
    wasm.seek(SeekFrom::Start(from))?;
    let mut at = from;
    while at < to {
        let mut id = [0];
        wasm.read_exact(&mut id)?;
        let (len, len_bytes) = leb128(wasm)?;
        let start = at + 1 + len_bytes;
        let end = start
            .checked_add(len)
            .filter(|end| *end <= to)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "section past its end"))?;
        found.push((id[0], start, len));
        // At most 35 bits (`leb128`): no wrap.
        wasm.seek_relative(len as i64)?;
        at = end;
    }
    Ok(found)
}

/// An unsigned LEB128 of at most 32 bits, as wasm sizes are, and how many
/// bytes it took.
fn leb128(wasm: &mut impl Read) -> io::Result<(u64, u64)> {
    let mut value = 0u64;
    for (i, shift) in (0..35).step_by(7).enumerate() {
        let mut byte = [0];
        wasm.read_exact(&mut byte)?;
        value |= u64::from(byte[0] & 0x7f) << shift;
        if byte[0] & 0x80 == 0 {
            return Ok((value, i as u64 + 1));
        }
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidData,
        "size over 32 bits",
    ))
}

/// Components for tests: `functions` functions returning `constant`, and
/// `data` in memory.
#[cfg(test)]
pub(crate) fn component(functions: usize, constant: i32, data: &str) -> Vec<u8> {
    let funcs: String = (0..functions)
        .map(|i| format!("(func (export \"f{i}\") (result i32) i32.const {constant})"))
        .collect();
    wat::parse_str(format!(
        "(component (core module (memory 1) {funcs} (data (i32.const 0) \"{data}\")))"
    ))
    .expect("valid")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kind_is_the_largest_modules_code_not_its_data() -> anyhow::Result<()> {
        let kind = |bytes: Vec<u8>| Kind::of_bytes(&bytes);
        let a = kind(component(3, 1, "one"));
        assert!(a.is_some(), "no kind for a component with code");
        assert_eq!(a, kind(component(3, 1, "other data")));
        assert_ne!(a, kind(component(3, 2, "one")));
        // A core module alone is no component; a cut file has no kind.
        assert_eq!(kind(wat::parse_str("(module (func))")?), None);
        assert_eq!(kind(b"\0asm\x0d\x00\x01\x00\x01\xff".to_vec()), None);

        let dir = tempfile::tempdir()?;
        let path = dir.path().join("a.wasm");
        std::fs::write(&path, component(3, 1, "one"))?;
        assert_eq!(Kind::of_file(&path)?, a);
        Ok(())
    }
}
