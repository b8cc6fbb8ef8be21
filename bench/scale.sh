#!/usr/bin/env bash
# Scheduler scaling: bsce-pipe against Snakemake on the same DAG of trivial
# stages, side by side in one run on the same machine.
#
#   bash bench/scale.sh                 # first runs at 2k/10k/50k, no-op at 2k/10k/100k
#   FIRST="2000" NOOP="2000" bash bench/scale.sh   # a quick look
#
# The DAG is bench/gen_config.py's: one dataset, N class orders, two task
# splits per order (1 + 3N stages), a chain prepare -> order -> tasks. The
# Snakemake peer is the same chain as three shell rules, run with the same
# number of parallel jobs. Snakemake comes from PyPI into a venv under
# $BSCE_CACHE made on first use. A peer run longer than PEER_TIMEOUT seconds
# (default 1800) is reported as such; bsce-pipe's runs have no limit. For Snakemake's no-op at a size it did
# not run first, its outputs are made with `snakemake --touch` (no jobs run),
# which is the state a finished run leaves.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/common.sh
FIRST="${FIRST:-2000 10000 50000}"
NOOP="${NOOP:-2000 10000 100000}"
JOBS="${JOBS:-$(nproc)}"
PEER_TIMEOUT="${PEER_TIMEOUT:-1800}"
CACHE="${BSCE_CACHE:-$HOME/.cache/bsce-pipe}"
SMK_VENV="$CACHE/snakemake-venv"
if [ ! -f "$SMK_VENV/.bsce-ready" ]; then
  echo "creating the snakemake venv in $SMK_VENV (once)" >&2
  rm -rf "$SMK_VENV"
  python3 -m venv "$SMK_VENV"
  "$SMK_VENV/bin/pip" install --quiet --disable-pip-version-check snakemake
  touch "$SMK_VENV/.bsce-ready"
fi
SMK="$SMK_VENV/bin/snakemake"

# measure OUT CMD...: runs CMD with its output kept in OUT.out and OUT.err,
# writes "<wall seconds> <peak RSS KiB>" to OUT; "timeout" when it ran past PEER_TIMEOUT.
measure() {
  local out=$1; shift
  # Only the peer is cut off: bsce-pipe's own runs are always measured whole.
  local limit=$PEER_TIMEOUT; [ "$1" = ours_run ] && limit=0
  if /usr/bin/time -f '%e %M' -o "$out.t" timeout --kill-after=10 "$limit" bash -c '"$@"' _ "$@" >"$out.out" 2>"$out.err"; then
    tail -1 "$out.t" > "$out"
  else
    local rc=$?
    # 124: cut off at the limit; 137: killed after the grace --kill-after gives.
    if [ "$rc" = 124 ] || { [ "$rc" = 137 ] && [ "$limit" != 0 ]; }; then echo timeout > "$out"; else
      echo "failed (exit $rc): $*" >&2; tail -5 "$out.err" >&2; exit 1; fi
  fi
}
nodes_for() { echo $(( ($1 - 1 + 2) / 3 )); } # orders N for about S = 1 + 3N stages

make_dirs() { # S: a bsce-pipe config and a Snakemake project of 1 + 3N stages
  local n; n=$(nodes_for "$1"); local d="$WORK/$1"
  [ -d "$d" ] && return 0
  mkdir -p "$d/ours" "$d/smk"
  python3 bench/gen_config.py "$n" > "$d/ours/c.yaml"
  cat > "$d/smk/Snakefile" <<SMK
N = $n
rule all:
    input: expand("tasks/{i}_{s}", i=range(N), s=["a", "b"])
rule prepare:
    output: "dataset"
    shell: "echo dataset > {output}"
rule order:
    input: "dataset"
    output: "order/{i}"
    shell: "echo {wildcards.i} > {output}"
rule tasks:
    input: "order/{i}"
    output: "tasks/{i}_{s}"
    shell: "cat {input} > {output}; echo {wildcards.s} >> {output}"
SMK
}
# Each execs its tool, so `timeout` signals the tool itself: a Snakemake cut
# off at PEER_TIMEOUT must not live on and load the cores under later rows.
ours_run() { cd "$WORK/$1/ours" && exec "$BIN" run c.yaml --store store --jobs "$JOBS" --json; }
smk_run() { cd "$WORK/$1/smk" && exec "$SMK" --cores "$JOBS" --quiet all "${@:2}"; }
export -f ours_run smk_run
export BIN WORK JOBS SMK
stages_of() { echo $(( 1 + 3 * $(nodes_for "$1") )); }
field() { if [ "$(cat "$1")" = timeout ]; then echo timeout; else cut -d' ' -f"$2" "$1"; fi; }
ram() { local k; k=$(field "$1" 2); [ "$k" = timeout ] && echo - || printf '%.0f' "$(echo "$k / 1024" | bc -l)"; }
ratio() { [ "$2" = timeout ] && echo - || printf '%.1fx' "$(echo "$2 / $1" | bc -l)"; } # OURS PEER seconds
per_stage_ms() { # FILE STAGES
  local t; t=$(field "$1" 1)
  if [ "$t" = timeout ]; then echo ">$PEER_TIMEOUT s"; else printf '%.2f' "$(echo "$t * 1000 / $2" | bc -l)"; fi
}

echo "bsce-pipe $("$BIN" --version | cut -d' ' -f2-), snakemake $("$SMK" --version), $JOBS parallel jobs, $(nproc) cores"
echo
echo "== first run (every stage executes): ms per stage, wall s"
printf '%8s  %14s %10s  %14s %10s  %8s\n' stages "bsce-pipe ms" "wall s" "snakemake ms" "wall s" ratio
for s in $FIRST; do
  make_dirs "$s"; st=$(stages_of "$s")
  measure "$WORK/$s/ours.first" ours_run "$s"
  measure "$WORK/$s/smk.first" smk_run "$s"
  a=$(field "$WORK/$s/ours.first" 1); b=$(field "$WORK/$s/smk.first" 1)
  printf '%8d  %14s %10s  %14s %10s  %8s\n' "$st" "$(per_stage_ms "$WORK/$s/ours.first" "$st")" "$a" \
    "$(per_stage_ms "$WORK/$s/smk.first" "$st")" "$b" "$(ratio "$a" "$b")"
done
echo
echo "== no-op run (everything up to date): wall s and peak RSS, best of 3"
printf '%8s  %12s %10s  %12s %10s  %8s\n' stages "bsce-pipe s" "RSS MiB" "snakemake s" "RSS MiB" ratio
best() { # OUT CMD...: best of 3 by wall time
  local out=$1; shift; rm -f "$out"
  for i in 1 2 3; do
    measure "$out.$i" "$@"
    if [ "$(cat "$out.$i")" = timeout ]; then cp "$out.$i" "$out"; return; fi
    if [ ! -f "$out" ] || (( $(echo "$(cut -d' ' -f1 "$out.$i") < $(cut -d' ' -f1 "$out")" | bc -l) )); then
      cp "$out.$i" "$out"; fi
  done
}
for s in $NOOP; do
  make_dirs "$s"; st=$(stages_of "$s")
  [ -d "$WORK/$s/ours/store" ] || measure "$WORK/$s/ours.first" ours_run "$s"
  # A first run that timed out left part of the outputs: touch the rest.
  if [ ! -d "$WORK/$s/smk/tasks" ] || [ "$(cat "$WORK/$s/smk.first" 2>/dev/null)" = timeout ]; then
    # a killed Snakemake leaves its working directory locked
    (cd "$WORK/$s/smk" && "$SMK" --unlock --quiet >/dev/null 2>&1) || true
    measure "$WORK/$s/smk.touch" smk_run "$s" --touch --rerun-incomplete
  fi
  best "$WORK/$s/ours.noop" ours_run "$s"
  python3 -c "import json,sys; assert json.load(open(sys.argv[1]))['executed'] == 0" "$WORK/$s/ours.noop.1.out" \
    || { echo "the no-op run at $s stages executed stages" >&2; exit 1; }
  # a Snakemake that could not even touch its outputs in time has no no-op to measure
  if [ "$(cat "$WORK/$s/smk.touch" 2>/dev/null)" = timeout ]; then echo timeout > "$WORK/$s/smk.noop"
  else best "$WORK/$s/smk.noop" smk_run "$s"; fi
  a=$(field "$WORK/$s/ours.noop" 1); b=$(field "$WORK/$s/smk.noop" 1)
  printf '%8d  %12s %10s  %12s %10s  %8s\n' "$st" "$a" "$(ram "$WORK/$s/ours.noop")" "$b" "$(ram "$WORK/$s/smk.noop")" "$(ratio "$a" "$b")"
done
