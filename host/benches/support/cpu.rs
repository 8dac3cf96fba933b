//! CPU time read from `/proc`: what a task costs the daemon (or one of its
//! threads), whatever else shares the machine. On a noisy 2-core machine
//! this moves much less than tasks/s, since the client and the receiver
//! share the cores.

use std::time::Duration;

/// The daemon's journal writer thread, by the name it gives it
/// (`store/journal`): every commit goes through it.
pub const JOURNAL_WRITER: &str = "notifyhub-store";

/// CPU time (user and system) the process `pid` has used so far.
pub fn process(pid: u32) -> anyhow::Result<Duration> {
    from_stat(&format!("/proc/{pid}/stat"))
}

/// CPU time the threads of `pid` named `name` have used so far (zero if
/// there is none).
pub fn threads(pid: u32, name: &str) -> anyhow::Result<Duration> {
    let mut total = Duration::ZERO;
    for entry in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let dir = entry?.path();
        // A thread may end between the listing and the read.
        let Ok(comm) = std::fs::read_to_string(dir.join("comm")) else {
            continue;
        };
        if comm.trim_end() == name
            && let Ok(cpu) = from_stat(&dir.join("stat").to_string_lossy())
        {
            total += cpu;
        }
    }
    Ok(total)
}

fn from_stat(path: &str) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(path)?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| -> anyhow::Result<u64> {
        Ok(fields
            .get(i)
            .ok_or_else(|| anyhow::anyhow!("short {path}"))?
            .parse()?)
    };
    // utime and stime are fields 14 and 15 of the line; 12 and 13 here.
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Ok(Duration::from_micros(
        (ticks(11)? + ticks(12)?) * 1_000_000 / per_second,
    ))
}
