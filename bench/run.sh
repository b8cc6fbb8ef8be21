#!/usr/bin/env bash
# bsce-pipe benchmarks. Each figure is a ratio against a peer measured in the
# same run on the same machine. Usage: bash bench/run.sh  (after scripts/setup.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${BSCE_BIN:-$PWD/target/bsce-pipe}"
test -x "$BIN" || { echo "run scripts/setup.sh first" >&2; exit 1; }
WORK="${BENCH_DIR:-$(mktemp -d)}"
trap 'rm -rf "$WORK"' EXIT

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
