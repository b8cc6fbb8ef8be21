#!/usr/bin/env bash
# Sets up bsce-pipe to run on a Debian machine: the project-local Python
# venv with PyPI torch==2.13.0 (libtorch for tch, numpy for class orders)
# and the release build. What only the tests use (servers, LaTeX, extra
# Python packages) is scripts/test-setup.sh's. Reuses caches kept outside
# the clone when they exist:
#   $BSCE_CACHE (default ~/.cache/bsce-pipe)/torch-2.13.0   the venv
#   $BSCE_CACHE/target                                      cargo's target dir
# Usage: scripts/setup.sh [--run CONFIG]
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_VERSION=2.13.0
CACHE="${BSCE_CACHE:-$HOME/.cache/bsce-pipe}"
VENV_CACHE="$CACHE/torch-$TORCH_VERSION"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CACHE/target}"
mkdir -p "$CACHE"

say() { printf '\033[1msetup:\033[0m %s\n' "$*" >&2; }

command -v cargo >/dev/null || { echo "setup: cargo not found; install the Rust toolchain (rustup) first" >&2; exit 1; }
command -v python3 >/dev/null || { echo "setup: python3 not found; apt-get install python3 python3-venv" >&2; exit 1; }

# The venv: a symlink .venv -> the shared cache, so every clone reuses one
# 4.7 GB install. A half-finished install is never taken as done: the marker
# file is written last.
if [ ! -f "$VENV_CACHE/.bsce-ready" ]; then
  say "creating the torch==$TORCH_VERSION venv in $VENV_CACHE (about 4.7 GB, once)"
  rm -rf "$VENV_CACHE"
  python3 -m venv "$VENV_CACHE"
  "$VENV_CACHE/bin/pip" install --quiet --disable-pip-version-check "torch==$TORCH_VERSION" numpy
  touch "$VENV_CACHE/.bsce-ready"
else
  say "reusing the venv in $VENV_CACHE"
fi
if [ ! -e .venv ] || [ -L .venv ]; then
  ln -sfn "$VENV_CACHE" .venv
fi

# Every checkout shares the dependency build in $CARGO_TARGET_DIR, but gets
# binaries of its own source. Cargo names the workspace's own units by their
# path inside the workspace, so two checkouts map to the same artefacts and
# their mtime checks can take one checkout's build for the other's. So: when
# the shared dir was last built from another checkout, its workspace units
# are cleaned first (dependencies stay), and the binaries are copied (not
# linked) into this checkout's target/. One setup at a time builds there.
source scripts/env.sh
mkdir -p "$CARGO_TARGET_DIR" target
here="$(pwd -P)"
exec 9>"$CARGO_TARGET_DIR/.bsce-build.lock"
flock 9
last="$(cat "$CARGO_TARGET_DIR/.bsce-last-checkout" 2>/dev/null || true)"
if [ -n "$last" ] && [ "$last" != "$here" ]; then
  say "the shared build was last made from $last; rebuilding this checkout's crates"
  cargo clean --release -p bsce-pipe -p bsce-pipeline -p bsce-stages -p bsce-reports -p bsce-train 2>/dev/null
fi
echo "$here" > "$CARGO_TARGET_DIR/.bsce-last-checkout"
say "building (cargo build --release --workspace, target dir $CARGO_TARGET_DIR)"
cargo build --release --workspace --locked
for bin in bsce-pipe bsce-torch; do
  rm -f "target/$bin"
  cp "$CARGO_TARGET_DIR/release/$bin" "target/$bin.tmp"
  mv -f "target/$bin.tmp" "target/$bin"
done
exec 9>&-
say "built $(target/bsce-pipe --version) into target/ (bsce-torch: the libtorch half, run by bsce-pipe)"

if [ "${1:-}" = "--run" ]; then
  shift
  say "bsce-pipe run $*"
  exec target/bsce-pipe run "$@"
fi
