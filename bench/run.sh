#!/usr/bin/env bash
# bsce-pipe benchmarks. Each figure is a ratio against a peer measured in the
# same run on the same machine. Usage: bash bench/run.sh  (after scripts/setup.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/common.sh

best_of() { # best wall time in seconds of N runs of a command
  local n=$1; shift; local best=
  for _ in $(seq "$n"); do
    local s e; s=$(date +%s.%N); "$@" >/dev/null 2>&1; e=$(date +%s.%N)
    local t; t=$(echo "$e - $s" | bc -l)
    if [ -z "$best" ] || (( $(echo "$t < $best" | bc -l) )); then best=$t; fi
  done
  echo "$best"
}

echo "== no-op run on a generated config of 2,000 stages"
python3 bench/gen_config.py 667 > "$WORK/big.yaml"
"$BIN" dag "$WORK/big.yaml" | tail -1
"$BIN" run "$WORK/big.yaml" --store "$WORK/store" --json > "$WORK/first.json" 2>/dev/null
python3 -c "import json,sys; j=json.load(open('$WORK/first.json')); print('first run: executed', j['executed'], 'in %.1fs' % j['wall_seconds'])"
noop=$(best_of 5 "$BIN" run "$WORK/big.yaml" --store "$WORK/store" --json)
# Peer: the floor of any cache check, reading every action record once.
peer=$(best_of 5 sh -c "find '$WORK/store/ac' -type f -exec cat {} + > /dev/null")
printf 'no-op run: %.3fs (target < 0.5s); reading every action record with find+cat: %.3fs; ratio %.2fx\n' \
  "$noop" "$peer" "$(echo "$noop / $peer" | bc -l)"

echo "== hashing throughput on a 1 GiB file"
head -c 1073741824 /dev/urandom > "$WORK/1g.bin"
cat "$WORK/1g.bin" > /dev/null
ours=$(best_of 3 "$BIN" digest "$WORK/1g.bin")
theirs=$(best_of 3 openssl dgst -sha256 "$WORK/1g.bin")
printf 'bsce-pipe digest: %.2fs (%.0f MiB/s); openssl dgst -sha256: %.2fs (%.0f MiB/s); ratio %.2fx of openssl (target >= 0.9)\n' \
  "$ours" "$(echo "1024 / $ours" | bc -l)" "$theirs" "$(echo "1024 / $theirs" | bc -l)" "$(echo "$theirs / $ours" | bc -l)"
rm -f "$WORK/1g.bin"

echo "== CIFAR-100-size preparation (python archive, 60,000 images)"
PY="$PWD/.venv/bin/python"
"$PY" bench/cifar_archive.py "$WORK/cifar-100-python.tar.gz"
cat > "$WORK/cifar.yaml" <<YAML
datasets:
  c: {cifar100: {path: cifar-100-python.tar.gz}}
orders:
  o: {named: podnet_cifar100_0}
settings:
  s: {base: 50, increment: 10}
experiments:
  e: {dataset: c, orders: [o], settings: [s]}
YAML
prep=$("$BIN" run "$WORK/cifar.yaml" --store "$WORK/cstore" --json 2>/dev/null | python3 -c "
import json,sys,glob; j=json.load(sys.stdin)
recs=[json.load(open(f)) for f in glob.glob('$WORK/cstore/ac/*/*.json')]
print('%.3f' % [r for r in recs if r['label']=='prepare/c'][0]['provenance']['wall_seconds'])")
peer=$("$PY" bench/cifar_archive.py --load "$WORK/cifar-100-python.tar.gz")
printf 'prepare stage (read, decode, validate, write, child process): %.2fs; torchvision-style pickle+numpy load: %.2fs; ratio %.2fx\n' \
  "$prep" "$peer" "$(echo "$prep / $peer" | bc -l)"

echo "== ResNet-32 training step (batch 128, random 32x32 inputs, CE, SGD) against PyTorch on the same libtorch"
TORCH_BIN="$(dirname "$BIN")/bsce-torch"
ITERS="${BENCH_TRAIN_ITERS:-10}"
# Alternate the two, three rounds, and keep each one's best: the CPU's
# other load shifts from round to round.
ips() { python3 -c "import json,sys; print(json.load(sys.stdin)['images_per_s'])"; }
ours=0; theirs=0
for _ in 1 2 3; do
  o=$("$TORCH_BIN" bench-train 128 "$ITERS" | ips); t=$("$PY" bench/train_step.py 128 "$ITERS" | ips)
  ours=$(echo "if ($o > $ours) $o else $ours" | bc -l); theirs=$(echo "if ($t > $theirs) $t else $theirs" | bc -l)
done
printf 'bsce-torch: %.1f images/s; PyTorch script: %.1f images/s (best of 3 each); ratio %.2fx (target >= 1.0)\n' \
  "$ours" "$theirs" "$(echo "$ours / $theirs" | bc -l)"

echo "== data path: gather + augment 128-image CIFAR batches from the in-memory u8 array"
loader=$("$TORCH_BIN" bench-loader 128 200 | python3 -c "import json,sys; print(json.load(sys.stdin)['images_per_s'])")
printf 'loader: %.0f images/s, %.0fx the training step above: it never starves it\n' "$loader" "$(echo "$loader / $ours" | bc -l)"

echo "== ImageNet data path: random-resized crops of whole 256-px images cut and resized on the CPU"
# Per core: the CPU's share (crop + resize, one thread); a ResNet-18 on one
# GPU needs its training step's rate (gpu-check's train-resnet18) in all.
"$TORCH_BIN" bench-loader 128 20 --net resnet18 --device cpu --warmup 2 | python3 -c "
import json, sys; j = json.load(sys.stdin)
print('crop + resize to 224: %.0f images/s per core (one thread); whole CPU path with %d threads, normalisation on the CPU included: %.0f images/s' % (j['cpu_crop_images_per_s_per_core'], j['cpu_threads'], j['images_per_s']))"

echo "== warm workers against a fresh process per stage: the quickstart, and its evaluate stages"
# The same config into two fresh stores, alternating which goes first over
# two rounds; each keeps its best. The evaluate figure is the median of
# the stages' own wall time (launch to outputs, from provenance).
cp configs/quickstart.yaml "$WORK/q.yaml"
warm=; cold=; for round in 1 2; do
  for mode in warm cold; do
    if [ "$round" = 2 ]; then mode=$([ "$mode" = warm ] && echo cold || echo warm); fi
    rm -rf "$WORK/q-$mode"
    flag=$([ "$mode" = cold ] && echo --cold || true)
    s=$(date +%s.%N)
    (cd "$WORK" && "$BIN" run q.yaml --store "q-$mode" --jobs 2 $flag >/dev/null 2>&1)
    t=$(echo "$(date +%s.%N) - $s" | bc -l)
    if [ "$mode" = warm ]; then
      if [ -z "$warm" ] || (( $(echo "$t < $warm" | bc -l) )); then warm=$t; fi
    else
      if [ -z "$cold" ] || (( $(echo "$t < $cold" | bc -l) )); then cold=$t; fi
    fi
  done
done
median_eval() { python3 -c "
import json, glob, statistics
w = [json.load(open(f)) for f in glob.glob('$1/ac/*/*.json')]
print('%.3f' % statistics.median(r['provenance']['wall_seconds'] for r in w if r['label'].startswith('evaluate/')))"; }
ew=$(median_eval "$WORK/q-warm"); ec=$(median_eval "$WORK/q-cold")
printf 'quickstart (77 stages, --jobs 2): warm %.1fs, cold %.1fs; %.2fx faster warm (target >= 1.3)\n' \
  "$warm" "$cold" "$(echo "$cold / $warm" | bc -l)"
printf 'evaluate stage (median of 36): warm %.3fs, cold %.3fs; %.2fx faster warm\n' \
  "$ew" "$ec" "$(echo "$ec / $ew" | bc -l)"

echo "== JPEG decode + resize throughput (image-folder preparation)"
cargo bench -q -p bsce-stages --bench jpeg 2>/dev/null | grep images/s
