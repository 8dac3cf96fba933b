#!/bin/sh
# Builds {{name}}.wasm with componentize-js (`npm install` first, or set
# COMPONENTIZE_JS to the command that runs it).
set -eu
cd "$(dirname "$0")"
${COMPONENTIZE_JS:-npx --no-install componentize-js} plugin.js --wit wit -n notifyhub:plugin/fetcher -o {{name}}.wasm
echo "built {{name}}.wasm"
