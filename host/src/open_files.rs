//! The process's open-files limit, raised at start to what the pool needs.
//!
//! Every delivery in flight holds a connection, every client a socket, and
//! the store, the plugin directory's watch and the listeners a few more. The
//! soft `RLIMIT_NOFILE` most shells and systemd hand a service is 1,024,
//! below what a pool of `max_workers` (1,024 by default, up to 4,096) and
//! `max_connections` clients can use at once; past it, connects and accepts
//! fail with `EMFILE` under exactly the load the pool grew for. So the
//! daemon raises its soft limit to the hard one at start, as Go's runtime
//! and nginx do (the hard limit is the operator's to set), and says so in
//! the log when even that is short of what the config asks for.
//!
//! It never lowers a limit, and failing to raise it is a warning, not an
//! error: the daemon still runs, with the limit it was given.

/// A number of open files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Files(pub u64);

/// Beyond this, a raised limit buys nothing: kernels cap `nr_open` at
/// 2^20 by default, and some hard limits are "unlimited".
const CEILING: u64 = 1 << 20;

/// Open files the daemon may need at once, besides one per worker and one
/// per client: the store's connections and WAL, the socket, listeners,
/// the plugin directory's watch, plugin files while they load.
const BASE: u64 = 64;

/// What a pool of `max_workers` serving `max_connections` clients may hold.
pub fn needed(max_workers: usize, max_connections: usize) -> Files {
    Files(BASE + max_workers as u64 + max_connections as u64)
}

/// Raises the soft limit to the hard one (at most [`CEILING`]); returns the
/// soft limit before and after.
pub fn raise() -> std::io::Result<(Files, Files)> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid, writable `rlimit` for the call's duration.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let before = limit.rlim_cur;
    let target = limit.rlim_max.min(CEILING).max(before);
    if target > before {
        limit.rlim_cur = target;
        // SAFETY: as above; the new soft limit is at most the hard one.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok((Files(before), Files(target)))
}

/// Raises the limit and logs what came of it against what is `needed`.
pub fn raise_for(needed: Files) {
    match raise() {
        Ok((before, after)) => {
            if after > before {
                tracing::debug!(from = before.0, to = after.0, "raised the open-files limit");
            }
            if after < needed {
                tracing::warn!(
                    "the open-files limit is {} (the hard limit), below the {} that max_workers and max_connections can use: deliveries and clients past it fail with \"too many open files\"; raise it (ulimit -Hn, systemd LimitNOFILE=) or lower [pool] max_workers",
                    after.0,
                    needed.0
                );
            }
        }
        Err(e) => tracing::warn!("cannot read or raise the open-files limit: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Raising twice changes nothing the second time and never lowers the
    /// soft limit (the test process's own; raising it harms nothing).
    #[test]
    fn raises_to_the_hard_limit_and_never_lowers() {
        let (before, after) = raise().unwrap();
        assert!(after >= before);
        let (again, same) = raise().unwrap();
        assert_eq!(again, after);
        assert_eq!(same, after);
    }
}
