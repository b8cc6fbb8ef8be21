# Sourced by every bench script from the repository root: the project's
# build environment, the binary under test ($BIN, or BSCE_BIN) and a work
# folder ($WORK, or BENCH_DIR) removed on exit.
source scripts/env.sh
BIN="${BSCE_BIN:-$PWD/target/bsce-pipe}"
test -x "$BIN" || { echo "run scripts/setup.sh first" >&2; exit 1; }
WORK="${BENCH_DIR:-$(mktemp -d)}"
trap 'rm -rf "$WORK"' EXIT
