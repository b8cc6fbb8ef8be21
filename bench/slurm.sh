#!/usr/bin/env bash
# What Slurm adds per stage, on the single-node test cluster
# (scripts/slurm-cluster.sh): a DAG of 199 trivial stages (bench/gen_config.py
# 66: one dataset, 66 orders, 132 task splits) submitted at once.
#
#   bash bench/slurm.sh            (STAGES_N=66 by default)
#
# Prints, from one run each:
#   - a training DAG (the quickstart at 1 epoch: 77 stages, 16 training
#     runs) through Slurm with `group: stage` and no local kinds (a job per
#     stage) against `group: run` with the default local kinds (a job per
#     run chain; orders, task splits and result stages on the submitting
#     machine): jobs submitted and wall time, side by side;
#   - the whole DAG through the local executor (--jobs 2) against through
#     Slurm (attached, one CPU per job), wall time and the difference per
#     stage;
#   - submission: `run --detach` wall time per job (one sbatch each);
#   - per job, from the outcome files the jobs write: submission (or the
#     end of its last dependency) to the job's start, the job's own start-up
#     before its stage (config, plan, inputs' keys), and its stage's end to
#     the outcome the submitter reads (ingestion and record included).
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/common.sh
N="${STAGES_N:-66}"
export SLURM_CONF="$(bash scripts/slurm-cluster.sh start)"

python3 bench/gen_config.py "$N" > "$WORK/base.yaml"
stages=$((1 + 3 * N))
slurm_cfg() {
  cat "$WORK/base.yaml"
  printf 'executor:\n  slurm: {cpus: 1, poll_seconds: 0.5, group: stage, local_kinds: []}\n'
}

now() { date +%s.%N; }

# Job per stage against job per run chain, on the quickstart at 1 epoch.
group_run() { # name, executor.slurm lines
  mkdir -p "$WORK/$1"
  sed 's/^    epochs: 12$/    epochs: 1/' configs/quickstart.yaml > "$WORK/$1/q.yaml"
  printf 'executor:\n  slurm:\n    cpus: 1\n    poll_seconds: 0.5\n%b' "$2" >> "$WORK/$1/q.yaml"
  local t0; t0=$(now)
  (cd "$WORK/$1" && "$BIN" run q.yaml --executor slurm >/dev/null 2>"$WORK/$1.err") || {
    tail -20 "$WORK/$1.err"; exit 1; }
  python3 - "$WORK/$1" "$(python3 -c "print($(now) - $t0)")" <<'EOF2'
import glob, json, sys
d, wall = sys.argv[1], float(sys.argv[2])
run = json.load(open(glob.glob(d + "/.bsce/slurm/*/run.json")[0]))
ids = {j["id"] for j in run["jobs"].values()}
print(f"{len(ids)} {len(run['jobs'])} {wall:.1f}")
EOF2
}
read -r jobs_stage staged_stage wall_stage < <(group_run stage "    group: stage\n    local_kinds: []\n")
read -r jobs_run staged_run wall_run < <(group_run run "    group: run\n")
echo
echo "quickstart at 1 epoch (77 stages), single-node Slurm, 1 CPU per job:"
echo
echo "| executor.slurm | jobs submitted | stages in jobs | wall time |"
echo "|---|---|---|---|"
echo "| group: stage, local_kinds: [] | $jobs_stage | $staged_stage | ${wall_stage} s |"
echo "| group: run (default local kinds) | $jobs_run | $staged_run | ${wall_run} s |"
echo "ratio (stage / run): $(python3 -c "print(f'{$wall_stage / $wall_run:.2f}x')") wall time, $(python3 -c "print(f'{$jobs_stage / $jobs_run:.1f}x')") jobs"

mkdir -p "$WORK/local" "$WORK/attached" "$WORK/detached"
cp "$WORK/base.yaml" "$WORK/local/c.yaml"
slurm_cfg > "$WORK/attached/c.yaml"
slurm_cfg > "$WORK/detached/c.yaml"

t0=$(now)
(cd "$WORK/local" && "$BIN" run c.yaml --jobs 2 >/dev/null 2>&1)
t_local=$(python3 -c "print($(now) - $t0)")

t0=$(now)
(cd "$WORK/attached" && "$BIN" run c.yaml --executor slurm >/dev/null 2>"$WORK/attached.err") || {
  tail -20 "$WORK/attached.err"; exit 1; }
t_slurm=$(python3 -c "print($(now) - $t0)")

t0=$(now)
(cd "$WORK/detached" && "$BIN" run c.yaml --executor slurm --detach >/dev/null 2>&1)
t_submit=$(python3 -c "print($(now) - $t0)")
run_dir="$(ls -d "$WORK"/detached/.bsce/slurm/*)"
name="bsce-$(basename "$run_dir")"
for _ in $(seq 1200); do
  [ -z "$(squeue --noheader --name "$name")" ] && break
  sleep 0.5
done

python3 - "$run_dir" "$stages" "$t_local" "$t_slurm" "$t_submit" <<'EOF'
import json, os, statistics, sys
run_dir, stages, t_local, t_slurm, t_submit = sys.argv[1], int(sys.argv[2]), *map(float, sys.argv[3:])
run = json.load(open(os.path.join(run_dir, "run.json")))
jobs = run["jobs"]
out = {}
for label, j in jobs.items():
    out[j["id"]] = json.load(open(os.path.join(run_dir, "outcomes", f"{j['n']}.json")))
assert len(out) == stages, (len(out), stages)
assert all(o["outcome"] == "executed" for o in out.values())
dispatch, startup, finish = [], [], []
for label, j in jobs.items():
    o = out[j["id"]]
    ready = max([run["submitted_unix_ms"]] + [out[a]["written_ms"] for a in j["after"]])
    dispatch.append(o["job_started_ms"] - ready)
    startup.append(o["stage_started_ms"] - o["job_started_ms"])
    finish.append(o["written_ms"] - o["stage_ended_ms"])
def row(name, v):
    print(f"| {name} | {statistics.mean(v):.0f} ms | {statistics.median(v):.0f} ms | {max(v):.0f} ms |")
print(f"\n{stages} stages, 2 cores, single-node Slurm {os.popen('sbatch --version').read().strip()}\n")
print("| whole DAG | local executor (--jobs 2) | Slurm executor | difference per stage |")
print("|---|---|---|---|")
print(f"| first run | {t_local:.1f} s | {t_slurm:.1f} s | +{(t_slurm - t_local) / stages * 1000:.0f} ms |")
print(f"\nsubmission: `run --detach` {t_submit:.1f} s, {t_submit / stages * 1000:.1f} ms per job (one sbatch each)\n")
print("| per job | mean | median | max |")
print("|---|---|---|---|")
row("ready (submitted, or its last input's job ended) to job start", dispatch)
row("job start to stage start (exec-node start-up)", startup)
row("stage end (outputs ingested) to outcome written", finish)
EOF
