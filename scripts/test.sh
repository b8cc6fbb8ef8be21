#!/usr/bin/env bash
# Runs the whole test suite: set-up first (reusing caches), then every unit,
# end-to-end and snapshot test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
CACHE="${BSCE_CACHE:-$HOME/.cache/bsce-pipe}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CACHE/target}"
export PATH="$PWD/.venv/bin:$PATH"
exec cargo test --workspace --release --locked "$@"
