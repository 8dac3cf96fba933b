#!/usr/bin/env bash
# Submits a notification straight over the socket, the way an application
# would, and waits for the outcome. Needs socat.
#   examples/submit.sh https://hooks.slack.com/services/T…/B…/…
set -euo pipefail
socket=${NOTIFYHUB_SOCKET:-${XDG_DATA_HOME:-$HOME/.local/share}/notifyhub/notifyhub.sock}
target=${1:?usage: $0 SLACK_WEBHOOK_URL}
printf '{"id":1,"op":"submit","wait":true,"task":{"platform":"slack","target":"%s","title":"Hello","body":"from *notifyhub*","format":"markdown"}}\n' "$target" \
  | socat -t 30 - "UNIX-CONNECT:$socket"
