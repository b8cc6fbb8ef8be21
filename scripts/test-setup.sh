#!/usr/bin/env bash
# What only the tests use, on top of scripts/setup.sh (run that first):
# pdflatex (Debian texlive) for the LaTeX test, nginx for the HTTP remote
# cache tests, Slurm and munge for the Slurm executor tests, s3s-fs for the
# S3 remote tests, torchvision and Pillow in the venv for the crops check.
# Each is installed once and reused. Usage: scripts/test-setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE="${BSCE_CACHE:-$HOME/.cache/bsce-pipe}"
say() { printf '\033[1mtest-setup:\033[0m %s\n' "$*" >&2; }

# pdflatex, for the test that compiles the report's LaTeX tables: the two
# Debian texlive packages that hold LaTeX and booktabs (about 40 MB).
if ! command -v pdflatex >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    say "installing texlive-latex-base and texlive-latex-recommended (pdflatex, booktabs)"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      texlive-latex-base texlive-latex-recommended >/dev/null
  else
    say "pdflatex not found: the LaTeX test needs it (apt-get install texlive-latex-base texlive-latex-recommended)"
  fi
fi

# nginx with WebDAV, for the tests of the HTTP remote cache (Bazel's HTTP
# cache protocol: GET/PUT/HEAD). The tests start their own nginx on
# 127.0.0.1 with a config of their own; nothing is enabled system-wide.
if ! command -v nginx >/dev/null && ! [ -x /usr/sbin/nginx ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    say "installing nginx-light and libnginx-mod-http-dav-ext (the HTTP remote cache tests)"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      nginx-light libnginx-mod-http-dav-ext >/dev/null
    # Debian starts the packaged server; the tests run their own.
    { command -v service >/dev/null && service nginx stop; } >/dev/null 2>&1 || true
  else
    say "nginx not found: the HTTP remote tests need it (apt-get install nginx-light libnginx-mod-http-dav-ext)"
  fi
fi

# Slurm (slurmctld, slurmd, the client commands) and munge, for the tests of
# the Slurm executor: scripts/slurm-cluster.sh starts a private single-node
# cluster from them; nothing is enabled system-wide.
if ! command -v slurmctld >/dev/null && ! [ -x /usr/sbin/slurmctld ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    say "installing slurmctld, slurmd, slurm-client and munge (the Slurm executor tests)"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      slurmctld slurmd slurm-client munge >/dev/null
    # Debian may start the packaged daemons; the tests run their own.
    { command -v service >/dev/null && for s in slurmd slurmctld; do service "$s" stop; done; } >/dev/null 2>&1 || true
  else
    say "slurmctld not found: the Slurm tests need it (apt-get install slurmctld slurmd slurm-client munge)"
  fi
fi

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
