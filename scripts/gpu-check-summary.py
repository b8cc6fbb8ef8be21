"""Writes scripts/gpu-check.sh's summary (OUTDIR/summary.md and summary.json)
from what its steps left in OUTDIR, checks the answers the exit codes do not
(a GPU run that saw no GPU, smoke stages that ran on the CPU), prints the
summary, and exits 1 if any step failed.

Usage (by gpu-check.sh): python3 gpu-check-summary.py OUTDIR MODE WALL_S COMMIT HOST"""
import glob, json, os, sys, time

out, mode, wall, commit, host = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4], sys.argv[5]
gpu = mode == "gpu"


def load(path):
    try:
        with open(os.path.join(out, path)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def lines(path):
    try:
        with open(os.path.join(out, path)) as f:
            return [json.loads(l) for l in f if l.strip()]
    except (OSError, ValueError):
        return []


def rate(v):
    return f"{v:,.0f} images/s" if v >= 100 else f"{v:,.1f} images/s"


steps = []
for row in open(os.path.join(out, "steps.tsv")):
    name, status, rc, secs, limit = row.rstrip("\n").split("\t")
    steps.append({"step": name, "status": status, "exit": rc, "wall_s": float(secs), "limit_s": int(limit),
                  "ours": "", "peer": "", "ratio": "", "note": ""})
by = {s["step"]: s for s in steps}


def fail(name, note):
    s = by[name]
    if s["status"] == "ok":
        s["status"] = "failed"
    s["note"] = note


# doctor
doctor = load("doctor.json")
if "doctor" in by:
    if doctor:
        b, m = doctor.get("build", {}), doctor.get("machine", {})
        by["doctor"]["ours"] = doctor.get("summary", "")
        gpus = ", ".join(g.get("model", "?") for g in m.get("installed_gpus", []))
        by["doctor"]["peer"] = (f"libtorch {b.get('torch_distribution') or b.get('libtorch')}; "
                                f"driver {m.get('nvidia_driver') or 'none'}" + (f"; {gpus}" if gpus else ""))
        if gpu and not m.get("cuda_available", doctor.get("cuda_available")):
            fail("doctor", "libtorch sees no GPU on this machine")
    elif by["doctor"]["status"] == "ok":
        fail("doctor", "no JSON on stdout")

# training steps: ours against PyTorch, best of the rounds each
best = {}
for net in ("resnet32", "resnet18"):
    name = f"train-{net}"
    if name not in by:
        continue
    ours, peer = lines(f"bench/{name}-ours.jsonl"), lines(f"bench/{name}-peer.jsonl")
    o = max((r["images_per_s"] for r in ours), default=None)
    p = max((r["images_per_s"] for r in peer), default=None)
    best[net] = o
    s = by[name]
    if ours:
        r = ours[0]
        s["ours"] = f"{rate(o)} (batch {r['batch']}, {r['image_size']} px, {r['device']}, best of {len(ours)})"
    if peer:
        s["peer"] = f"PyTorch {peer[0].get('torch', '')}: {rate(p)} (best of {len(peer)})"
    if o and p:
        s["ratio"] = f"{o / p:.2f}x"
    if s["status"] == "ok" and not (o and p):
        fail(name, "a side printed no measurement")

# loaders against our step
for net in ("resnet32", "resnet18"):
    name = f"loader-{net}"
    if name not in by:
        continue
    rows = lines(f"bench/{name}.jsonl")
    s = by[name]
    if rows:
        r = rows[0]
        stored = ", ".join(f"{h}x{w}" for h, w in r["stored_sizes"])
        s["ours"] = (f"{rate(r['images_per_s'])} ({stored} px stored -> {r['image_size']} px, "
                     f"batch {r['batch']}, {r['device']}")
        if r.get("cpu_crop_images_per_s_per_core"):
            # ImageNet style: the crops are cut on the CPU; one core's rate.
            s["ours"] += (f"; crops cut on the CPU at {rate(r['cpu_crop_images_per_s_per_core'])} "
                          f"per core, {r['cpu_threads']} threads")
        s["ours"] += ")"
        if best.get(net):
            s["peer"] = f"our {net} training step: {rate(best[net])}"
            s["ratio"] = f"{r['images_per_s'] / best[net]:.1f}x"
    elif s["status"] == "ok":
        fail(name, "no measurement printed")

# a config run: the smoke config, and a pilot (--pilot)
def config_run(name, folder):
    s = by[name]
    run, res = load(f"{folder}/run.json"), load(f"{folder}/results.json")
    parts = []
    if run:
        parts.append(f"{run.get('executed')} stages executed, {run.get('failed')} failed, "
                     f"{run.get('skipped')} skipped")
        if run.get("failed"):
            fail(name, f"{run.get('failed')} stage(s) failed")
    recs = [json.load(open(f)) for f in glob.glob(os.path.join(out, folder, "store/ac/*/*.json"))]
    torch_recs = [r for r in recs if r["label"].split("/")[0] in ("train", "evaluate")]
    devices = sorted({r["provenance"]["device"] for r in torch_recs})
    if torch_recs:
        parts.append(f"{len(torch_recs)} train/evaluate stages on {', '.join(devices)}")
        if gpu and any(not d.startswith("cuda") for d in devices):
            fail(name, "train/evaluate stages ran on the CPU under --gpus 0")
    if res and res.get("runs"):
        acc = []
        for r in res["runs"]:
            a = r.get("average_incremental_accuracy", {})
            acc.append(f"{r['method']} {a.get('cnn', float('nan')):.2f} / {a.get('nme', float('nan')):.2f}")
        s["peer"] = "average incremental accuracy, CNN / NME (%): " + "; ".join(acc)
        if res.get("missing"):
            fail(name, "runs missing from the store after the run")
    elif s["status"] == "ok":
        fail(name, "no results for the runs")
    s["ours"] = "; ".join(parts)


for name in ("smoke", "pilot"):
    if name in by:
        config_run(name, name)

# determinism
if "determinism" in by:
    s = by["determinism"]
    d = load("determinism.json")
    if d:
        outs = d["outputs"]
        same = [n for n, e in outs.items() if e["identical"]]
        timeless = [n for n, e in outs.items() if not e["identical"] and e.get("identical_without_seconds")]
        differ = [n for n, e in outs.items() if not e["identical"] and not e.get("identical_without_seconds")]
        txt = f"`{d['label']}` twice on {d['device']} (deterministic: {json.dumps(d.get('deterministic'))}): "
        txt += ", ".join(same) + " identical" if same else "nothing identical"
        if timeless:
            txt += "; " + ", ".join(timeless) + " identical but for wall times"
        if differ:
            txt += "; DIFFER: " + ", ".join(differ)
        if not d.get("rerun"):
            txt += "; the stage was not rerun"
        s["ours"] = txt
        if not d.get("identical"):
            fail("determinism", "outputs differ between two runs of the same stage")

# warm workers against a fresh process per stage
if "warm-cold" in by:
    s = by["warm-cold"]
    d = load("warm-cold.json")
    if d:
        s["ours"] = (f"{d['stages']} evaluate stages in warm workers: median {d['warm_median_s']:.2f} s"
                     + ("" if d["identical"] else "; OUTPUTS DIFFER"))
        s["peer"] = f"the same stages cold (a process each): median {d['cold_median_s']:.2f} s"
        if d["warm_median_s"] > 0:
            s["ratio"] = f"{d['cold_median_s'] / d['warm_median_s']:.2f}x"
        if not d["identical"]:
            fail("warm-cold", "outputs differ between warm and cold")

# the calibrated cost of a config (paper.yaml on a GPU, the quickstart on --cpu)
if "cost" in by:
    s = by["cost"]
    c = load(os.path.join("cost", "cost.json"))
    if c:
        t = c["total"]["to_run"]
        hours = ", ".join((f"{h:,.1f}" if h >= 10 else f"{h:.3f}") + f" h on {d}"
                          for d, h in t["hours"].items() if h is not None)
        s["ours"] = (f"{os.path.basename(c['config'])}: {t['stages']:,} train and evaluate stages, "
                     f"{t['image_passes'] / 1e6:,.1f} M image passes: {hours or 'no hours'}")
        s["peer"] = "per experiment: cost/cost.txt"
        if not hours:
            fail("cost", "the calibration did not cover every network")
    elif s["status"] == "ok":
        fail("cost", "no cost/cost.json")

failed = [s for s in steps if s["status"] != "ok"]
when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
where = "the CPU (`--cpu`: smaller sizes and fewer iterations; not GPU figures)" if not gpu else "cuda:0"
if gpu and doctor:
    models = [g.get("model") for g in doctor.get("machine", {}).get("installed_gpus", [])]
    if models:
        where += f" ({models[0]})"
md = [f"# GPU check: {'FAILED (' + str(len(failed)) + ' of ' + str(len(steps)) + ' steps)' if failed else 'all steps ok'}",
      "",
      f"Ran on **{where}**, host `{host}`, {when}, bsce-pipe commit `{commit}`; "
      f"{wall:.0f} s in all.",
      "",
      "| step | ours | peer / reference | ratio | wall (s) | status |",
      "|:---|:---|:---|---:|---:|:---|"]
esc = lambda t: str(t).replace("|", "\\|")
for s in steps:
    status = s["status"] if s["status"] == "ok" else f"**{s['status'].upper()}**"
    if s["status"] == "timeout":
        status += f" (limit {s['limit_s']} s)"
    elif s["status"] == "failed" and s["exit"] != "0":
        status += f" (exit {s['exit']})"
    if s["note"]:
        status += f": {s['note']}"
    md.append(f"| {s['step']} | {esc(s['ours'])} | {esc(s['peer'])} | {s['ratio']} | {s['wall_s']:.1f} | {esc(status)} |")
md += ["", "Ratios: training, ours / PyTorch (above 1: faster); loader, loader / our training step "
       "(above 1: the loader never starves the step). What each step measures: the header of "
       "scripts/gpu-check.sh. Raw figures: bench/*.jsonl, doctor.json, cost/, smoke/, determinism.json, warm-cold.json; logs in logs/."]
for s in failed:
    md += ["", f"## {s['step']}: {s['status']}" + (f" ({s['note']})" if s["note"] else ""), "", "```"]
    try:
        with open(os.path.join(out, "logs", s["step"] + ".err"), errors="replace") as f:
            log = f.read().splitlines()
    except OSError:
        log = ["(no log)"]
    # The first error lines (a run's cause comes before its list of
    # skipped stages), then the end of the log.
    first = [l for l in log[:-15] if l.strip(" |").lower().startswith(("failed", "error"))][:8]
    if first:
        md += [f"(first error lines of logs/{s['step']}.err)"] + first + ["(its last lines)"]
    md += log[-15:] + ["```"]
text = "\n".join(md) + "\n"
with open(os.path.join(out, "summary.md"), "w") as f:
    f.write(text)
with open(os.path.join(out, "summary.json"), "w") as f:
    json.dump({"mode": mode, "host": host, "commit": commit, "wall_s": wall, "steps": steps,
               "failed": [s["step"] for s in failed]}, f, indent=1)
print(text, end="")
sys.exit(1 if failed else 0)
