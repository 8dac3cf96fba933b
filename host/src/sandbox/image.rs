//! The memory image a component's instances start from, made at load.
//!
//! Wasmtime starts every instance's linear memory copy-on-write from an
//! image of the module's data segments. On Linux it writes that image to a
//! `memfd` and seals it read-only. The kernel refuses the seal (`EBUSY`)
//! while a page of the fresh file still holds an extra reference (a busy
//! machine reclaiming, migrating or batching it), and waits only ~150 ms
//! for them to go. Wasmtime makes the image lazily, at the first
//! instantiation, so that passing refusal surfaced as a failed `describe()`
//! and a good plugin reported unloadable (seen once in CI: "cannot add seals
//! to the memfd: Device or resource busy" for a 13 MB Python plugin).
//!
//! [`make`] builds the image on the blocking thread that compiled the
//! component, retrying that one refusal with backoff, so a plugin is either
//! loaded with its image or refused with the last error; the first task no
//! longer pays for the image either. It must never retry any other error:
//! those are real and retrying only delays the report.

use std::io;
use std::thread;
use std::time::Duration;

use wasmtime::component::Component;

/// Tries in all; with [`FIRST_PAUSE`] doubling, about 3 s of pauses on top of
/// the kernel's own waits.
const ATTEMPTS: u32 = 6;
const FIRST_PAUSE: Duration = Duration::from_millis(100);

/// Makes `component`'s memory images now, retrying the kernel's passing
/// refusal to seal them. Blocks: call it from a blocking thread.
pub(super) fn make(component: &Component) -> wasmtime::Result<()> {
    let mut pause = FIRST_PAUSE;
    for attempt in 1..ATTEMPTS {
        match component.initialize_copy_on_write_image() {
            Err(error) if is_passing(&error) => {
                tracing::debug!(
                    attempt,
                    "memory image not sealed yet ({error:#}); trying again"
                );
                thread::sleep(pause);
                pause *= 2;
            }
            done => return done,
        }
    }
    component.initialize_copy_on_write_image()
}

/// Whether `error` is the kernel's `EBUSY`, which ends once the pages'
/// references go.
fn is_passing(error: &wasmtime::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<io::Error>()
            .and_then(io::Error::raw_os_error)
            == Some(libc::EBUSY)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_busy_file_is_worth_another_try() {
        let busy = wasmtime::Error::new(io::Error::from_raw_os_error(libc::EBUSY))
            .context("cannot add seals to the memfd");
        assert!(is_passing(&busy));
        let no_memory = wasmtime::Error::new(io::Error::from_raw_os_error(libc::ENOMEM))
            .context("cannot create a memfd");
        assert!(!is_passing(&no_memory));
        assert!(!is_passing(&wasmtime::format_err!("a trap")));
    }
}
