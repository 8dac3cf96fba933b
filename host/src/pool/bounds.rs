//! The pool's size limits: the ceiling no configuration or `scale` may
//! pass, and the worker count type that carries a checked value.
//!
//! They live with the pool, below the protocol that decodes them from the
//! wire, so the pool never depends on the protocol.

/// The most workers a pool may be given (`scale`, `[pool] max_workers`).
pub const MAX_WORKERS: usize = 4096;

/// A worker count: at most [`MAX_WORKERS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerCount(usize);

impl WorkerCount {
    pub fn get(self) -> usize {
        self.0
    }
}

impl TryFrom<u64> for WorkerCount {
    type Error = String;
    fn try_from(n: u64) -> Result<Self, String> {
        if n <= MAX_WORKERS as u64 {
            Ok(WorkerCount(n as usize))
        } else {
            Err(format!(
                "{n} workers is more than the ceiling of {MAX_WORKERS}"
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_bounded() {
        assert!(WorkerCount::try_from(1_000_000_000_000).is_err());
        assert_eq!(WorkerCount::try_from(4096).map(WorkerCount::get), Ok(4096));
    }

    /// The outbound client keeps an idle connection per worker the pool
    /// can run (the sandbox cannot import the pool: it sits below it).
    #[test]
    fn the_http_client_keeps_a_connection_per_worker() {
        assert_eq!(MAX_WORKERS, crate::sandbox::http::MAX_IDLE_PER_HOST);
    }
}
