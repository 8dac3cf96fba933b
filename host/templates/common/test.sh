#!/bin/sh
# Builds the plugin, checks it against the contract, and delivers one
# message through a real notifyhub daemon to a local receiver
# (receiver.py). Needs `notifyhub` on PATH, or NOTIFYHUB=/path/to/notifyhub.
set -eu
cd "$(dirname "$0")"
NOTIFYHUB=${NOTIFYHUB:-notifyhub}
./build.sh

tmp=$(mktemp -d)
daemon=""
receiver=""
cleanup() {
    [ -n "$daemon" ] && kill "$daemon" 2>/dev/null || true
    [ -n "$receiver" ] && kill "$receiver" 2>/dev/null || true
    rm -rf "$tmp"
}
trap cleanup EXIT
wait_for() {
    for _ in $(seq 100); do [ -e "$1" ] && return 0; sleep 0.1; done
    echo "timed out waiting for $1" >&2
    exit 1
}

mkdir "$tmp/plugins"
cp {{name}}.wasm "$tmp/plugins/"
python3 receiver.py "$tmp/port" "$tmp/request.json" &
receiver=$!
wait_for "$tmp/port"
port=$(cat "$tmp/port")
printf 'allowed_hosts = ["127.0.0.1:%s"]\n' "$port" > "$tmp/plugins/{{name}}.toml"

"$NOTIFYHUB" check "$tmp/plugins/{{name}}.wasm"

"$NOTIFYHUB" --data-dir "$tmp/data" --plugins "$tmp/plugins" serve 2> "$tmp/daemon.log" &
daemon=$!
wait_for "$tmp/data/notifyhub.sock"
# A deadline: a plugin that never answers fails the test instead of hanging it.
timeout 120 "$NOTIFYHUB" --data-dir "$tmp/data" send -p {{name}} -t "http://127.0.0.1:$port/hook" \
    --title "Hello" -b "from {{name}}" --wait || {
    echo "no outcome within 120 s (or the send failed); the daemon's log:" >&2
    cat "$tmp/daemon.log" >&2
    exit 1
}

python3 - "$tmp/request.json" <<'PY'
import json, sys
request = json.load(open(sys.argv[1]))
assert request["path"] == "/hook", request
assert request["body"]["title"] == "Hello" and request["body"]["text"] == "from {{name}}", request
PY
echo "ok: {{name}} delivered to the local receiver"
