#!/usr/bin/env python3
"""Splits a `perf record --call-graph dwarf` profile of the daemon into the
stages of a delivery, by the innermost frame that names one (the journal
also by its thread's name).

Usage: perf_stages.py PERF_DATA [DAEMON_CPU_US_PER_TASK]
With the daemon's CPU time a task (the e2e bench prints it), each stage's
share is also given in µs a task. See docs/profiling.md.
"""

import collections
import re
import subprocess
import sys

# Innermost match wins: the list's order only matters for frames that
# match two patterns.
STAGES = [
    # By thread as well as by frame: with inlined frames left out (below),
    # the writer's loop may not show by name.
    ("journal: commit (SQLite, fsync)", r"store::journal::write_loop|^notifyhub-store\b"),
    ("socket: decode request", r"protocol::decode|protocol::json::parse"),
    ("socket: reply (views, JSON)", r"protocol::reply|views::.*Serialize|From<notifyhub::store::record::TaskRecord>"),
    ("socket: submit into the store", r"TaskBackend>::submit|TaskStore::submit_with"),
    ("worker: outcome (store, waiters)", r"Lifecycle::finish"),
    ("worker: outbound HTTP (wasi-http, hyper send)", r"OutboundHttp|outgoing_handler|wasmtime_wasi_http"),
    ("worker: start attempt", r"TaskStore>::start"),
    ("worker: instance call (guest, bindings)", r"executor::Executor::call|wasmtime::runtime::func|WarmCache"),
    ("dispatcher", r"dispatcher::Dispatcher"),
    ("HTTP connections (hyper tasks)", r"hyper::proto::h1|hyper_util::client"),
    ("socket: other", r"server::serve_connection|server::Server"),
    ("worker: other (guest code, wasmtime)", r"pool::worker::"),
]


def main():
    data = sys.argv[1]
    per_task = float(sys.argv[2]) if len(sys.argv) > 2 else None
    script = subprocess.run(
        # Without inlined frames: resolving them runs addr2line on every
        # mapped file, and on the compile cache's `.cwasm` files it never
        # answered (the script hung). The stages' patterns match real frames.
        ["perf", "script", "-i", data, "-F", "comm,ip,sym", "--no-inline"],
        capture_output=True, text=True, check=True,
    ).stdout
    counts = collections.Counter()
    total = 0
    for sample in script.split("\n\n"):
        frames = [line.strip() for line in sample.splitlines() if line.strip()]
        if not frames:
            continue
        total += 1
        stage = next(
            (name for frame in frames for name, pattern in STAGES if re.search(pattern, frame)),
            "other (runtime, kernel)",
        )
        counts[stage] += 1
    for name, n in counts.most_common():
        share = n / total
        cost = f"{share * per_task:6.1f} µs" if per_task else ""
        print(f"  {name:<48} {100 * share:5.1f} %  {cost}")
    print(f"  ({total} samples)")


if __name__ == "__main__":
    main()
