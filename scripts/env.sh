# Source this to build or test by hand with the project's libtorch:
#   source scripts/env.sh && cargo test --release
# (scripts/setup.sh and scripts/test.sh do the same.)
_bsce_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# The resolved venv path, so the rpath baked into binaries names the shared
# cache, not whichever clone built first.
export PATH="$(readlink -f "$_bsce_root/.venv")/bin:$PATH"
export LIBTORCH_USE_PYTORCH=1
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${BSCE_CACHE:-$HOME/.cache/bsce-pipe}/target}"
unset _bsce_root
