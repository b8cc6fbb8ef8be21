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
# binaries). It leaves this checkout's target/ binaries untouched. The same
# package selection as above, so cargo resolves the same features and reuses
# every compiled dependency (`--test e2e` alone would rebuild polars).
cargo test --workspace --release --locked -- --ignored
