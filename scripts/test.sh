#!/usr/bin/env bash
# Runs the whole test suite: set-up first (reusing caches), then every unit,
# end-to-end and snapshot test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh
cargo test --workspace --release --locked "$@"
# Last and alone: the end-to-end test that builds a scratch checkout with
# edited sources in the shared target dir (code digests, per-checkout
# binaries). It leaves this checkout's target/ binaries untouched.
cargo test --release --locked --test e2e -- --ignored
