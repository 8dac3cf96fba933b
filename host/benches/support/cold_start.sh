#!/usr/bin/env bash
# Cold starts of one or more daemon builds, alternating, for A/B runs:
#
#   host/benches/support/cold_start.sh RUNS PLUGIN_DIR BINARY...
#
# Each run starts `BINARY serve` on an empty data directory (so an empty
# compile cache) with the plugins in PLUGIN_DIR, waits for the daemon's
# "plugins loaded … took=" line (every plugin present at start loaded or
# refused), prints that time, and kills the daemon. Then it prints each
# build's median. Only the cold window is run, not the optimizer's
# compiles after it: ~5 s a run, against ~35 s for `--bench startup`, so
# enough runs fit to see a change smaller than the machine's noise.
# Plugins refused for missing config keys are compiled all the same.
# Everything is written under a temporary directory, removed at the end.
set -euo pipefail

if [ $# -lt 3 ]; then
    sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
runs=$1
plugins=$2
shift 2

scratch=$(mktemp -d -t nh-cold-XXXXXX)
daemon=
cleanup() {
    if [ -n "$daemon" ]; then kill -9 "$daemon" 2>/dev/null || true; fi
    rm -rf "$scratch"
}
trap cleanup EXIT

for _ in $(seq "$runs"); do
    for binary in "$@"; do
        rm -rf "$scratch/data"
        mkdir -p "$scratch/data"
        "$binary" serve --data-dir "$scratch/data" --plugins "$plugins" \
            > "$scratch/log" 2>&1 &
        daemon=$!
        took=
        for _ in $(seq 3000); do
            # Debug-formatted: 3.45s, 951.2ms.
            took=$(grep -ao 'plugins loaded.*took=[0-9.]*[mµ]*s' "$scratch/log" |
                sed -E 's/.*took=//' |
                awk '/ms$/ {print $1/1e3; next} /µs$/ {print $1/1e6; next} {print $1+0}' || true)
            [ -n "$took" ] && break
            sleep 0.02
        done
        kill -9 "$daemon" 2>/dev/null || true
        wait "$daemon" 2>/dev/null || true
        daemon=
        [ -n "$took" ] || { echo "$binary: no 'plugins loaded' line within 60 s" >&2; cat "$scratch/log" >&2; exit 1; }
        echo "$binary $took"
        # Let the killed daemon's pages go before the next run.
        sleep 1
    done
done | tee "$scratch/runs"

echo "medians (s):"
for binary in "$@"; do
    grep -F "$binary " "$scratch/runs" | awk '{print $2}' | sort -n |
        awk -v b="$binary" '{v[NR]=$1} END {m = NR%2 ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2; printf "  %s %.3f (%d runs)\n", b, m, NR}'
done
