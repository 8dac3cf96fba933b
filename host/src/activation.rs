//! systemd socket activation: the listening socket the service manager
//! passes, instead of one the daemon binds.
//!
//! With a `.socket` unit, systemd creates and binds the socket (it exists
//! before the daemon runs, so clients can connect during a restart) and
//! passes it as fd 3 with `LISTEN_FDS=1` and `LISTEN_PID` set to the
//! daemon's pid (`sd_listen_fds(3)`). `sd_notify::listen_fds` reads those;
//! this module checks that what it got is what notifyhub can serve — one
//! Unix stream socket, listening — and refuses anything else with the
//! reason, rather than serving a socket of the wrong kind.

use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::net::UnixListener;

#[derive(Debug, thiserror::Error)]
pub enum ActivationError {
    #[error("socket activation: {0}")]
    Env(std::io::Error),
    #[error(
        "socket activation passed {0} sockets; notifyhub serves exactly one (ListenStream= once)"
    )]
    Count(usize),
    #[error(
        "socket activation passed fd {fd}, which is not a listening Unix stream socket ({why})"
    )]
    Kind { fd: RawFd, why: &'static str },
}

/// The listening socket systemd passed this process, if it passed one.
pub fn listener() -> Result<Option<UnixListener>, ActivationError> {
    let fds: Vec<RawFd> = sd_notify::listen_fds()
        .map_err(ActivationError::Env)?
        .collect();
    match fds.as_slice() {
        [] => Ok(None),
        [fd] => {
            check(*fd)?;
            // SAFETY: systemd handed this fd to this process for it to own
            // (LISTEN_PID is ours), it is open, and `check` confirmed it is
            // a listening Unix stream socket; nothing else in the process
            // uses fd 3.
            Ok(Some(unsafe { UnixListener::from_raw_fd(*fd) }))
        }
        more => Err(ActivationError::Count(more.len())),
    }
}

fn option(fd: RawFd, name: libc::c_int) -> Option<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `value`, which is a
    // c_int of exactly that size; an fd that is not a socket makes it fail.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            name,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some(value)
}

fn check(fd: RawFd) -> Result<(), ActivationError> {
    let kind = |why| ActivationError::Kind { fd, why };
    let domain = option(fd, libc::SO_DOMAIN).ok_or_else(|| kind("not a socket"))?;
    if domain != libc::AF_UNIX {
        return Err(kind("not a Unix socket: use ListenStream=/path"));
    }
    if option(fd, libc::SO_TYPE) != Some(libc::SOCK_STREAM) {
        return Err(kind("not a stream socket"));
    }
    if option(fd, libc::SO_ACCEPTCONN) != Some(1) {
        return Err(kind("not listening"));
    }
    Ok(())
}
