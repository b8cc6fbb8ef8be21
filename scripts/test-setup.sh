#!/usr/bin/env bash
# What only the tests use, on top of scripts/setup.sh (run that first):
# pdflatex (Debian texlive) for the LaTeX test, nginx for the HTTP remote
# cache tests, Slurm and munge for the Slurm executor tests, s3s-fs for the
# S3 remote tests, torchvision and Pillow in the venv for the crops check,
# the tensorboard package (its own reader of event files) and Chromium
# (headless, for the report's index.html).
# Each is installed once and reused. Usage: scripts/test-setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE="${BSCE_CACHE:-$HOME/.cache/bsce-pipe}"
say() { printf '\033[1mtest-setup:\033[0m %s\n' "$*" >&2; }

# have TOOL: whether TOOL is on PATH or in /usr/sbin (root's PATH may lack it).
have() { command -v "$1" >/dev/null || [ -x "/usr/sbin/$1" ]; }

# apt_install WHY PACKAGE...: the Debian packages, as root; otherwise says
# what to install. Debian may start a packaged daemon; the tests run their
# own, so the services named in $STOP are stopped again.
apt_install() {
  local why=$1; shift
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    say "installing $* ($why)"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
    for s in ${STOP:-}; do
      { command -v service >/dev/null && service "$s" stop; } >/dev/null 2>&1 || true
    done
  else
    say "not installed: $why needs it (apt-get install $*)"
  fi
}

# pdflatex, for the test that compiles the report's LaTeX tables: the two
# Debian texlive packages that hold LaTeX and booktabs (about 40 MB).
have pdflatex ||
  apt_install "the LaTeX test: pdflatex, booktabs" texlive-latex-base texlive-latex-recommended

# nginx with WebDAV, for the tests of the HTTP remote cache (Bazel's HTTP
# cache protocol: GET/PUT/HEAD). The tests start their own nginx on
# 127.0.0.1 with a config of their own; nothing is enabled system-wide.
have nginx || STOP=nginx \
  apt_install "the HTTP remote cache tests" nginx-light libnginx-mod-http-dav-ext

# Slurm (slurmctld, slurmd, the client commands) and munge, for the tests of
# the Slurm executor: scripts/slurm-cluster.sh starts a private single-node
# cluster from them; nothing is enabled system-wide.
have slurmctld || STOP="slurmd slurmctld" \
  apt_install "the Slurm executor tests" slurmctld slurmd slurm-client munge

# s3s-fs, the S3-compatible server the S3 remote tests start on 127.0.0.1
# (built from crates.io once, about 5 minutes, into the shared cache; newer
# s3s-fs versions need a newer Rust than this toolchain).
S3S_ROOT="$CACHE/s3s-fs"
if [ ! -x "$S3S_ROOT/bin/s3s-fs" ]; then
  say "building s3s-fs 0.14.1 into $S3S_ROOT (the S3 remote tests; about 5 minutes, once)"
  CARGO_TARGET_DIR="$CACHE/s3s-build" cargo install --quiet --locked s3s-fs@0.14.1 \
    --features binary --root "$S3S_ROOT"
fi

# torchvision and Pillow, for tests/crops/check.py (the ImageNet data path
# against torchvision on the original images). --no-deps: the venv's torch
# is the one pinned.
if ! .venv/bin/python -c 'import torchvision, PIL' 2>/dev/null; then
  say "installing torchvision==0.28.0 and pillow==13.0.0 into the venv (15 MB, once)"
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps \
    torchvision==0.28.0 pillow==13.0.0
fi

# The tensorboard package, whose own reader (EventAccumulator) the e2e tests
# read the report's and the live event files back with
# (tests/tensorboard/dump.py); with the two modules its reader imports
# (protobuf, absl-py). --no-deps: nothing else of TensorBoard's server.
if ! .venv/bin/python -c 'from tensorboard.backend.event_processing import event_accumulator' 2>/dev/null; then
  say "installing tensorboard==2.20.0, protobuf==6.33.0 and absl-py==2.3.1 into the venv (about 12 MB, once)"
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps \
    tensorboard==2.20.0 protobuf==6.33.0 absl-py==2.3.1
fi

# Chromium, headless, for the test that opens the report's index.html from
# disk (no network), checks its console and images, and screenshots it.
have chromium || apt_install "the report page test: headless Chromium" chromium
