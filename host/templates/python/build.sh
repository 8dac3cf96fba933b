#!/bin/sh
# Builds {{name}}.wasm with componentize-py (`pip install -r requirements.txt`).
set -eu
cd "$(dirname "$0")"
${COMPONENTIZE_PY:-componentize-py} -d wit -w notifyhub:plugin/fetcher componentize app -o {{name}}.wasm
echo "built {{name}}.wasm"
