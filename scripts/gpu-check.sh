#!/usr/bin/env bash
# The prepared GPU check: one command, on a machine with an NVIDIA GPU, that
# says whether bsce-pipe drives it and how fast, in under 8 minutes.
#
#   bash scripts/gpu-check.sh OUTDIR          # on a GPU node (cuda:0)
#   bash scripts/gpu-check.sh OUTDIR --cpu    # everything on the CPU, smaller
#                                             # (a few minutes on 2 cores; CI)
#   bash scripts/gpu-check.sh OUTDIR --pilot icarl-bsce   # then a pilot config
#
# Needs what scripts/setup.sh builds: target/bsce-pipe, target/bsce-torch
# (or BSCE_PIPE / BSCE_TORCH) and the venv's PyTorch (.venv/bin/python).
# Writes under OUTDIR: summary.md (a Markdown table of the figures, the
# failures with the tail of their logs), summary.json (the same, for
# machines), doctor.json, bench/*.jsonl (every measurement, ours and the
# peer's), smoke/ (the config run, its store, run.json, results.json, the
# report), determinism.json, and logs/<step>.{out,err}.
#
# Steps, each bounded by `timeout` (limits below; GPU_CHECK_<STEP>_S
# overrides one). A step that fails, times out or finds a wrong answer is
# marked FAIL in the summary and the others still run; the exit status is 1
# if any step failed (2: bad usage).
#
#   doctor        `bsce-pipe doctor --json`: what the build contains (libtorch,
#                 CUDA and cuDNN versions) and what the machine offers (driver,
#                 GPUs, what libtorch sees). On a GPU run it fails when
#                 libtorch sees no GPU.
#   train-resnet32  images/s of one training step (forward, cross-entropy,
#                 backward, SGD momentum 0.9, wd 5e-4; loss read back every
#                 step) of PODNet's ResNet-32 on random 32x32 inputs, batch
#                 128: `bsce-torch bench-train` against the same network and
#                 step in PyTorch on the same libtorch (bench/train_step.py);
#                 the two alternate for ROUNDS rounds and each keeps its best.
#                 Ratio = ours / PyTorch (>= 1: no overhead of ours).
#   train-resnet18  the same for LUCIR's ImageNet ResNet-18 at 224x224.
#   loader-resnet32 images/s of the data path alone (`bsce-torch bench-loader`):
#                 gather 128-image batches from an in-memory u8 CIFAR-sized
#                 array onto the device and augment them there (crop, flip,
#                 brightness, normalise). Ratio = loader / our training step:
#                 above 1, the loader never starves the step.
#   loader-resnet18 the same from whole images stored at a short side of
#                 256 (256x341, 341x256, 256x256) with ImageNet's augmentation:
#                 each window cut and resized to 224 on the CPU's cores (its
#                 JSON says how many: cpu_threads), then flipped and
#                 normalised; the rate ResNet-18 needs is its train step's.
#   cost          `bsce-pipe calibrate configs/paper.yaml --device cuda:0` (each
#                 network of the paper, a few seconds each) into a fresh store,
#                 then `status configs/paper.yaml --cost` with it: the paper's
#                 GPU-hours per experiment on this GPU (cost/cost.txt, .json).
#                 --cpu: the quickstart's network and config (the ResNet-18s
#                 at 224 px take minutes on a CPU).
#   smoke         `bsce-pipe run configs/gpu-smoke.yaml --gpus 0` end to end:
#                 synthetic data of CIFAR-100's shape (100 classes, 500 + 100
#                 32x32 images each), 50 base classes then 5 steps of 10,
#                 LUCIR and LUCIR+BSCE, 2 epochs per task, every stage
#                 (prepare, order, split, train, evaluate, aggregate, render,
#                 plot, report) into a fresh store. Fails unless every stage
#                 succeeds and, on a GPU run, every train and evaluate stage
#                 ran on cuda:0 (their records' provenance). Reports the
#                 average incremental accuracy (CNN and NME) of both methods.
#   determinism   reruns one train stage of the smoke run (the last task of
#                 LUCIR+BSCE: old model, memory, BSCE, herding; the config
#                 sets `deterministic: true`) with `--force LABEL` and
#                 compares its outputs' digests with the first run's, byte
#                 for byte: model.safetensors, model.json, memory.json must be
#                 identical; log.json holds wall times, so it is compared
#                 with its `seconds` fields removed. On a GPU this says
#                 whether cuDNN's deterministic settings suffice; the README
#                 expects close, not identical, GPU results, so a FAIL there
#                 is a finding, not a broken build.
#   warm-cold     reruns every evaluate stage of the smoke run cold
#                 (`--force evaluate/ --cold`: a fresh bsce-torch process per
#                 stage, CUDA context included) and sets their wall times
#                 against the smoke run's, which ran in warm workers; their
#                 outputs must be byte-identical. Ratio = cold / warm median.
#   pilot         with --pilot NAME only: `bsce-pipe run configs/pilot-NAME.yaml
#                 --gpus 0` (one CIFAR-100 order, 5 steps: the choices only a
#                 GPU run settles; the file's header says what to look at),
#                 limit GPU_CHECK_PILOT_S (1800). Results in pilot/results.json.
#
# --cpu: the same steps on the CPU (the summary says so): ResNet-32 batch 128
# x 3 iterations and ResNet-18 batch 8 x 2, one round; loaders 20 / 5
# batches; the smoke config shrunk to 30 + 10 images per class and the tiny
# network (same classes, tasks, methods, epochs).
set -uo pipefail
SELF="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")"
ROOT="$(cd "$(dirname "$SELF")/.." && pwd)"
PY="${BSCE_PYTHON:-$ROOT/.venv/bin/python}"
# JSON handling and the summary: any python3 (the venv's without one).
JPY="$(command -v python3 || echo "$PY")"

# ---------------------------------------------------------------------------
# Internal subcommands, each run as one bounded step by the main part below.
case "${1:-}" in
__bench) # NET BATCH ITERS WARMUP ROUNDS DEVICE OUTPREFIX: ours and the peer, alternating
  shift
  net=$1 batch=$2 iters=$3 warmup=$4 rounds=$5 dev=$6 out=$7 ours=0 peer=0
  # A side that fails once is not run again.
  for r in $(seq "$rounds"); do
    if [ $ours = 0 ]; then
      echo "round $r: bsce-torch bench-train $batch $iters --net $net --device $dev --warmup $warmup" >&2
      "$TORCH" bench-train "$batch" "$iters" --net "$net" --device "$dev" --warmup "$warmup" \
        >> "$out-ours.jsonl" || ours=1
    fi
    if [ $peer = 0 ]; then
      echo "round $r: bench/train_step.py $batch $iters --net $net --device $dev --warmup $warmup" >&2
      "$PY" "$ROOT/bench/train_step.py" "$batch" "$iters" --net "$net" --device "$dev" --warmup "$warmup" \
        >> "$out-peer.jsonl" || peer=1
    fi
  done
  exit $((ours | peer)) ;;
__smoke) # CONFIG STORE GPUARGS...: the run, then its results from the store
  shift
  cfg=$1 store=$2; shift 2
  # Started beside the config, so that (outside a git checkout) its report
  # lands under OUTDIR/smoke/reports/out/.
  cd "$(dirname "$cfg")" || exit 2
  "$PIPE" run "$cfg" --store "$store" "$@" --json > "$(dirname "$cfg")/run.json"
  rc=$?
  "$PIPE" results "$cfg" --store "$store" --json > "$(dirname "$cfg")/results.json" || true
  exit $rc ;;
__determinism) # CONFIG STORE OUTJSON GPUARGS...
  shift
  cfg=$1 store=$2 out=$3; shift 3
  label=$("$JPY" - "$store" <<'PY'
import glob, json, re, sys
best = None
for f in glob.glob(sys.argv[1] + "/ac/*/*.json"):
    r = json.load(open(f))
    m = re.match(r"train/.*/t(\d+)$", r["label"])
    if m:
        rank = ("bsce" in r["label"], int(m.group(1)), r["label"])
        best = max(best or rank, rank)
print(best[2] if best else "")
PY
)
  [ -n "$label" ] || { echo "no train stage in the smoke store $store" >&2; exit 3; }
  echo "forcing $label" >&2
  "$JPY" - "$store" "$label" > "$out.before" <<'PY'
import glob, json, sys
for f in glob.glob(sys.argv[1] + "/ac/*/*.json"):
    r = json.load(open(f))
    if r["label"] == sys.argv[2]:
        print(json.dumps(r))
PY
  "$PIPE" run "$cfg" --store "$store" "$@" --force "$label" --json > "$out.run" || exit $?
  "$JPY" - "$store" "$label" "$out" <<'PY'
import glob, json, sys
store, label, out = sys.argv[1:4]
before = json.load(open(out + ".before"))
after = [json.load(open(f)) for f in glob.glob(store + "/ac/*/*.json")]
after = [r for r in after if r["label"] == label][0]
hexd = lambda d: str(d).split(":")[-1]
def blob(d):
    h = hexd(d)
    return json.load(open(f"{store}/cas/{h[:2]}/{h[2:]}"))
def strip(v):
    if isinstance(v, dict):
        return {k: strip(x) for k, x in v.items() if k != "seconds"}
    if isinstance(v, list):
        return [strip(x) for x in v]
    return v
outputs = {}
for name in sorted(set(before["outputs"]) | set(after["outputs"])):
    a, b = before["outputs"].get(name, {}).get("digest"), after["outputs"].get(name, {}).get("digest")
    e = {"first": a, "second": b, "identical": a == b}
    if name == "log.json" and a != b and a and b:
        e["identical_without_seconds"] = strip(blob(a)) == strip(blob(b))
    outputs[name] = e
def find(v, key):
    if isinstance(v, dict):
        if key in v:
            return v[key]
        v = list(v.values())
    for x in v if isinstance(v, list) else []:
        r = find(x, key)
        if r is not None:
            return r
rerun = before["provenance"]["started_unix_ms"] != after["provenance"]["started_unix_ms"]
ok = rerun and all(e["identical"] or e.get("identical_without_seconds") for e in outputs.values())
res = {"label": label, "rerun": rerun, "device": after["provenance"]["device"],
       "deterministic": find(after["provenance"]["stage"], "deterministic"),
       "outputs": outputs, "identical": ok}
json.dump(res, open(out, "w"), indent=1)
print(json.dumps(res, indent=1))
sys.exit(0 if ok else 1)
PY
  exit $? ;;
__cost) # DEVICE OUTDIR: calibrate this node, then a config's cost with it
  shift
  dev=$1 dir=$2
  rm -rf "$dir" && mkdir -p "$dir" || exit 1
  if [ "$dev" = cpu ]; then cfg="$ROOT/configs/quickstart.yaml"; else cfg="$ROOT/configs/paper.yaml"; fi
  "$PIPE" calibrate "$cfg" --device "$dev" --store "$dir/store" --json > "$dir/calibration.json" || exit $?
  "$PIPE" status "$cfg" --cost --store "$dir/store" --json > "$dir/cost.json" || exit $?
  "$PIPE" status "$cfg" --cost --store "$dir/store" > "$dir/cost.txt" || exit $?
  cat "$dir/cost.txt"
  exit 0 ;;
__warmcold) # CONFIG STORE OUTJSON GPUARGS...
  shift
  cfg=$1 store=$2 out=$3; shift 3
  snapshot() { "$JPY" - "$store" <<'PY'
import glob, json, sys
recs = [json.load(open(f)) for f in glob.glob(sys.argv[1] + "/ac/*/*.json")]
print(json.dumps({r["label"]: {"wall": r["provenance"]["wall_seconds"],
                               "outputs": {k: v["digest"] for k, v in r["outputs"].items()},
                               "worker": r["provenance"]["stage"].get("worker")}
                  for r in recs if r["label"].startswith("evaluate/")}))
PY
  }
  snapshot > "$out.warm"
  "$PIPE" run "$cfg" --store "$store" "$@" --force evaluate/ --cold --json > "$out.run" || exit $?
  snapshot > "$out.cold"
  "$JPY" - "$out" <<'PY'
import json, statistics, sys
out = sys.argv[1]
warm, cold = json.load(open(out + ".warm")), json.load(open(out + ".cold"))
same = all(warm[l]["outputs"] == cold[l]["outputs"] for l in warm)
was_warm = sum(1 for w in warm.values() if w["worker"])
rerun_cold = sum(1 for c in cold.values() if not c["worker"])
res = {"stages": len(warm), "ran_warm": was_warm, "reran_cold": rerun_cold,
       "warm_median_s": statistics.median(w["wall"] for w in warm.values()),
       "cold_median_s": statistics.median(c["wall"] for c in cold.values()),
       "identical": same}
json.dump(res, open(out, "w"), indent=1)
print(json.dumps(res, indent=1))
sys.exit(0 if same and was_warm == len(warm) and rerun_cold == len(cold) else 1)
PY
  exit $? ;;
esac

# ---------------------------------------------------------------------------
usage() { echo "usage: bash scripts/gpu-check.sh OUTDIR [--cpu] [--pilot NAME]" >&2; exit 2; }
[ $# -ge 1 ] || usage
case "$1" in -*) usage ;; esac
OUT="$1"; shift
CPU=0 PILOT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --cpu) CPU=1 ;;
    --pilot) [ $# -ge 2 ] || usage; PILOT="$2"; shift ;;
    *) usage ;;
  esac
  shift
done
if [ -n "$PILOT" ]; then
  PILOT_CONFIG="$ROOT/configs/pilot-$PILOT.yaml"
  if [ ! -f "$PILOT_CONFIG" ]; then
    known=$(cd "$ROOT/configs" && ls pilot-*.yaml 2>/dev/null | sed 's/^pilot-//; s/\.yaml$//' | tr '\n' ' ')
    echo "gpu-check: no pilot '$PILOT' (configs/pilot-$PILOT.yaml); known: ${known:-none}" >&2
    exit 2
  fi
  if [ $CPU = 1 ]; then
    echo "gpu-check: --pilot is GPU work (CIFAR-100 for 15-20 GPU-minutes, days on a CPU); run it without --cpu" >&2
    exit 2
  fi
fi
mkdir -p "$OUT" || exit 2
OUT="$(cd "$OUT" && pwd)"
mkdir -p "$OUT/logs" "$OUT/bench"
: > "$OUT/steps.tsv"
STARTED=$(date +%s.%N)

# Our own copies of the binaries, so a rebuild of target/ during the check
# cannot pull them from under it (bsce-pipe finds bsce-torch beside itself).
BIN="$(mktemp -d)"
trap 'rm -rf "$BIN"' EXIT
for b in "${BSCE_PIPE:-$ROOT/target/bsce-pipe}" "${BSCE_TORCH:-$ROOT/target/bsce-torch}"; do
  if [ -x "$b" ]; then cp "$b" "$BIN/"; else echo "missing $b: run scripts/setup.sh first" >&2; fi
done
export PIPE="$BIN/bsce-pipe" TORCH="$BIN/bsce-torch" PY ROOT

if [ $CPU = 1 ]; then
  MODE=cpu DEV=cpu GPUARGS=()
  R32=(128 3 1 1) R18=(8 2 1 1)            # batch iters warmup rounds
  L32=(128 20) L18=(16 5)                  # batch batches
  : "${GPU_CHECK_DOCTOR_S:=60}" "${GPU_CHECK_TRAIN_S:=240}" "${GPU_CHECK_LOADER_S:=90}" "${GPU_CHECK_COST_S:=120}"
  : "${GPU_CHECK_SMOKE_S:=600}" "${GPU_CHECK_DETERMINISM_S:=240}" "${GPU_CHECK_WARMCOLD_S:=240}"
else
  MODE=gpu DEV=cuda:0 GPUARGS=(--gpus 0)
  R32=(128 200 20 3) R18=(128 30 5 3)
  L32=(128 400) L18=(128 40)
  # Worst case, every step at its limit: 30 + 2 x 75 + 2 x 30 + 60 + 180 + 60 + 60 = 600 s.
  : "${GPU_CHECK_DOCTOR_S:=30}" "${GPU_CHECK_TRAIN_S:=75}" "${GPU_CHECK_LOADER_S:=30}" "${GPU_CHECK_COST_S:=60}"
  : "${GPU_CHECK_SMOKE_S:=180}" "${GPU_CHECK_DETERMINISM_S:=60}" "${GPU_CHECK_WARMCOLD_S:=60}"
fi
: "${GPU_CHECK_PILOT_S:=1800}"

# step NAME LIMIT_S STDOUT_FILE CMD...: runs CMD under timeout, records
# status, exit code and wall time in steps.tsv.
step() {
  local name=$1 limit=$2 stdout=$3; shift 3
  echo "== $name (limit ${limit}s)" >&2
  local s e rc status
  s=$(date +%s.%N)
  timeout --kill-after=10 "$limit" "$@" > "$stdout" 2> "$OUT/logs/$name.err"
  rc=$?
  e=$(date +%s.%N)
  case $rc in
    0) status=ok ;;
    124|137) status=timeout ;;
    *) status=failed ;;
  esac
  printf '%s\t%s\t%s\t%.2f\t%s\n' "$name" "$status" "$rc" "$(echo "$e - $s" | bc -l)" "$limit" >> "$OUT/steps.tsv"
  echo "   $status (exit $rc)" >&2
}

step doctor "$GPU_CHECK_DOCTOR_S" "$OUT/doctor.json" "$PIPE" doctor --json

rm -f "$OUT"/bench/*.jsonl
step train-resnet32 "$GPU_CHECK_TRAIN_S" "$OUT/logs/train-resnet32.out" \
  bash "$SELF" __bench resnet32 "${R32[@]}" "$DEV" "$OUT/bench/train-resnet32"
step train-resnet18 "$GPU_CHECK_TRAIN_S" "$OUT/logs/train-resnet18.out" \
  bash "$SELF" __bench resnet18 "${R18[@]}" "$DEV" "$OUT/bench/train-resnet18"
step loader-resnet32 "$GPU_CHECK_LOADER_S" "$OUT/bench/loader-resnet32.jsonl" \
  "$TORCH" bench-loader "${L32[@]}" --net resnet32 --device "$DEV"
step loader-resnet18 "$GPU_CHECK_LOADER_S" "$OUT/bench/loader-resnet18.jsonl" \
  "$TORCH" bench-loader "${L18[@]}" --net resnet18 --device "$DEV" --warmup 1

step cost "$GPU_CHECK_COST_S" "$OUT/logs/cost.out" bash "$SELF" __cost "$DEV" "$OUT/cost"

# The smoke run: a copy of the config in OUTDIR/smoke, run from there (so its
# report, written to reports/out/ at the project root, lands there too), a fresh
# store. --cpu shrinks the copy; every substitution must apply.
rm -rf "$OUT/smoke"
mkdir -p "$OUT/smoke"
SMOKE="$OUT/smoke/gpu-smoke.yaml"
cp "$ROOT/configs/gpu-smoke.yaml" "$SMOKE"
shrunk=ok
if [ $CPU = 1 ]; then
  for sub in 's/train_per_class: 500/train_per_class: 30/' 's/test_per_class: 100/test_per_class: 10/' \
             's/^    deterministic: true$/    deterministic: true\n    network: tiny/'; do
    before=$(md5sum < "$SMOKE")
    sed -i "$sub" "$SMOKE"
    [ "$before" != "$(md5sum < "$SMOKE")" ] || { shrunk="no match for $sub"; echo "$shrunk" >&2; }
  done
fi
if [ "$shrunk" = ok ]; then
  step smoke "$GPU_CHECK_SMOKE_S" "$OUT/logs/smoke.out" \
    bash "$SELF" __smoke "$SMOKE" "$OUT/smoke/store" "${GPUARGS[@]}"
else
  printf 'smoke\tfailed\t2\t0\t%s\n' "$GPU_CHECK_SMOKE_S" >> "$OUT/steps.tsv"
  echo "could not shrink configs/gpu-smoke.yaml for --cpu: $shrunk" > "$OUT/logs/smoke.err"
fi

if [ "$(cut -f1,2 "$OUT/steps.tsv" | grep -c '^smoke	ok$')" = 1 ]; then
  step determinism "$GPU_CHECK_DETERMINISM_S" "$OUT/logs/determinism.out" \
    bash "$SELF" __determinism "$SMOKE" "$OUT/smoke/store" "$OUT/determinism.json" "${GPUARGS[@]}"
else
  printf 'determinism\tskipped\t-\t0\t%s\n' "$GPU_CHECK_DETERMINISM_S" >> "$OUT/steps.tsv"
  echo "skipped: it reruns a stage of the smoke run, which did not complete" > "$OUT/logs/determinism.err"
fi

if [ "$(cut -f1,2 "$OUT/steps.tsv" | grep -c '^smoke	ok$')" = 1 ]; then
  step warm-cold "$GPU_CHECK_WARMCOLD_S" "$OUT/logs/warm-cold.out" \
    bash "$SELF" __warmcold "$SMOKE" "$OUT/smoke/store" "$OUT/warm-cold.json" "${GPUARGS[@]}"
else
  printf 'warm-cold\tskipped\t-\t0\t%s\n' "$GPU_CHECK_WARMCOLD_S" >> "$OUT/steps.tsv"
  echo "skipped: it reruns stages of the smoke run, which did not complete" > "$OUT/logs/warm-cold.err"
fi

# A pilot (--pilot NAME): configs/pilot-NAME.yaml, copied into OUTDIR/pilot
# with its data paths made absolute (data/ of this checkout, downloaded there
# when missing), run like the smoke config.
if [ -n "$PILOT" ]; then
  rm -rf "$OUT/pilot"
  mkdir -p "$OUT/pilot"
  sed "s#path: \.\./data/#path: $ROOT/data/#" "$PILOT_CONFIG" > "$OUT/pilot/pilot-$PILOT.yaml"
  step pilot "$GPU_CHECK_PILOT_S" "$OUT/logs/pilot.out" \
    bash "$SELF" __smoke "$OUT/pilot/pilot-$PILOT.yaml" "$OUT/pilot/store" "${GPUARGS[@]}"
fi

ENDED=$(date +%s.%N)
COMMIT="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
git -C "$ROOT" diff --quiet HEAD 2>/dev/null || COMMIT="$COMMIT-dirty"
"$JPY" "$ROOT/scripts/gpu-check-summary.py" "$OUT" "$MODE" "$(echo "$ENDED - $STARTED" | bc -l)" \
  "$COMMIT" "$(hostname)"
