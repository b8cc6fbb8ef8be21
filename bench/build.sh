#!/usr/bin/env bash
# What the build's polars profile costs and saves: polars compiled at
# opt-level 3 (cargo's release default) against the profile Cargo.toml gives
# it (the block between the `polars build profile` markers), in the same run:
#  1. two cold builds of bsce-pipe (the whole workspace but the libtorch half,
#     which the profile does not touch) in fresh target dirs: CPU seconds
#     (user + system, robust to other load) and wall time;
#  2. the result stages (aggregate, render, plot: the only code polars runs
#     in) forced to rerun over a trained config, each build's binary in turn,
#     five rounds: median wall time of such a run.
# Usage: bash bench/build.sh   (after scripts/setup.sh; about 30 minutes on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/common.sh
TORCH="$(dirname "$BIN")/bsce-torch"
test -x "$TORCH" || { echo "bench/build.sh: no bsce-torch beside $BIN" >&2; exit 1; }

grep -q '^# polars build profile: begin' Cargo.toml ||
  { echo "bench/build.sh: Cargo.toml has no polars build profile block" >&2; exit 1; }

# A copy of this checkout's sources for each variant.
copy_tree() {
  mkdir -p "$1"
  git ls-files -z --cached --others --exclude-standard |
    grep -zv '^\.venv$' | xargs -0 cp --parents -t "$1"
  ln -sfn "$(readlink -f .venv)" "$1/.venv"
}

declare -A CPU WALL
for variant in default profiled; do
  src="$WORK/src-$variant"
  copy_tree "$src"
  if [ "$variant" = default ]; then
    # Drop the block: polars at the release default, opt-level 3.
    sed -i '/^# polars build profile: begin/,/^# polars build profile: end/d' "$src/Cargo.toml"
  fi
  echo "== cold build, polars $( [ $variant = default ] && echo 'at opt-level 3' || echo 'as Cargo.toml says')"
  t0=$(date +%s.%N)
  ( cd "$src" && CARGO_TARGET_DIR="$WORK/target-$variant" \
      /usr/bin/time -f '%U %S' -o "$WORK/time-$variant" \
      cargo build --release --locked -p bsce-pipe --timings >/dev/null 2>&1 )
  t1=$(date +%s.%N)
  read -r u s < "$WORK/time-$variant"
  CPU[$variant]=$(echo "$u + $s" | bc -l)
  WALL[$variant]=$(echo "$t1 - $t0" | bc -l)
  mkdir -p "$WORK/bin-$variant"
  cp "$WORK/target-$variant/release/bsce-pipe" "$TORCH" "$WORK/bin-$variant/"
  printf '%s: %.0f CPU-s, %.0f s wall\n' "$variant" "${CPU[$variant]}" "${WALL[$variant]}"
  rm -rf "$WORK/target-$variant"
done
printf 'cold build of bsce-pipe: %.0f CPU-s with polars at opt-level 3, %.0f CPU-s as profiled (%.2fx less); wall %.0f s against %.0f s\n' \
  "${CPU[default]}" "${CPU[profiled]}" "$(echo "${CPU[default]} / ${CPU[profiled]}" | bc -l)" \
  "${WALL[default]}" "${WALL[profiled]}"

echo "== the result stages, each build in turn"
mkdir -p "$WORK/p" && cd "$WORK/p"
cat > c.yaml <<'EOF'
datasets:
  synth: {synthetic: {classes: 10, train_per_class: 20, test_per_class: 10, image_size: 8, seed: 5}}
orders: {a: {numpy_seed: 1993}, b: {numpy_seed: 7}, c: {numpy_seed: 3}}
settings: {s1: {base: 2, increment: 1}, s2: {base: 2, increment: 2}}
methods:
  ce: {preset: finetune, memory: {per_class: 5}}
  bsce: {extends: ce, bsce: true}
recipes: {r: {epochs: 1, batch_size: 32, lr: 0.05}}
experiments:
  e: {dataset: synth, orders: [a, b, c], settings: [s1, s2], methods: [ce, bsce], recipe: r, network: tiny}
tables:
  acc: {caption: "bench", experiments: [e], columns: [setting]}
EOF
"$WORK/bin-default/bsce-pipe" run c.yaml --store "$WORK/store" --json > /dev/null 2>&1
result_run() { # wall seconds of a run that reruns the result stages only
  "$1/bsce-pipe" run c.yaml --store "$WORK/store" --jobs 1 --json \
    --force aggregate/ --force render/ --force plot/ 2>/dev/null |
    python3 -c 'import json, sys; j = json.load(sys.stdin); assert j["executed"] <= 5, j["executed"]; print(j["wall_seconds"])'
}
declare -A T
for round in 1 2 3 4 5; do
  for variant in default profiled; do
    T[$variant]+="$(result_run "$WORK/bin-$variant") "
  done
done
median() { printf '%s\n' $1 | sort -g | sed -n 3p; }
d=$(median "${T[default]}"); p=$(median "${T[profiled]}")
printf 'result stages (aggregate, render, plot; 5 rounds, median): %.3f s with polars at opt-level 3, %.3f s as profiled (%.2fx)\n' \
  "$d" "$p" "$(echo "$p / $d" | bc -l)"
