#!/usr/bin/env bash
# Runs the whole test suite: set-up first (scripts/setup.sh, then what only
# tests use: scripts/test-setup.sh; both reuse caches), then every unit,
# end-to-end and snapshot test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/test-setup.sh
source scripts/env.sh
# The Slurm tests start a private single-node cluster (scripts/slurm-cluster.sh);
# it is stopped when the tests end.
trap 'bash scripts/slurm-cluster.sh stop' EXIT
cargo test --workspace --release --locked "$@"
# The prepared GPU check (scripts/gpu-check.sh) keeps working: its CPU
# variant, end to end (about a minute).
gpu_out="$(mktemp -d)"
bash scripts/gpu-check.sh "$gpu_out" --cpu > "$gpu_out/stdout.txt" ||
  { cat "$gpu_out/summary.md" "$gpu_out/stdout.txt" >&2; exit 1; }
rm -rf "$gpu_out"
# Last and alone: the end-to-end test that builds a scratch checkout with
# edited sources in the shared target dir (code digests, per-checkout
# binaries). It leaves this checkout's target/ binaries untouched, but the
# scratch set-up cleans the workspace's units in the shared dir, so the
# already-built e2e binary is run directly: through cargo, the other test
# binaries would be gone, and `--test e2e` alone resolves other features
# and rebuilds polars.
e2e="$(cargo test --workspace --release --locked --no-run --message-format=json 2>/dev/null |
  python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "e2e" and m.get("executable"):
        print(m["executable"])')"
[ -x "$e2e" ] || { echo "test.sh: the e2e test binary was not found" >&2; exit 1; }
"$e2e" --ignored
