# Sourced by every bench script from the repository root: the project's
# build environment, the binary under test ($BIN, or BSCE_BIN) and a work
# folder ($WORK, or BENCH_DIR) removed on exit.
source scripts/env.sh
BIN="${BSCE_BIN:-$PWD/target/bsce-pipe}"
test -x "$BIN" || { echo "run scripts/setup.sh first" >&2; exit 1; }
WORK="${BENCH_DIR:-$(mktemp -d)}"
trap 'rm -rf "$WORK"' EXIT
# The bench runs its own copy of the binaries, so a set-up rebuilding
# target/ while a long bench runs cannot pull them from under it.
mkdir -p "$WORK/bin"
for b in "$BIN" "$(dirname "$BIN")/bsce-torch"; do
  [ -x "$b" ] && cp "$b" "$WORK/bin/"
done
BIN="$WORK/bin/$(basename "$BIN")"
