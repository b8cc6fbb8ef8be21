#!/usr/bin/env python3
"""Self-test of the parity harness, without the probe.

For every case of specs.py, fabricates a probe output folder with the
reference's own code run in float32 (random weights, random batch) and
checks that check.py passes on it. Then fabricates folders from a step
that deviates from the formulas in one place (LUCIR margin 0.6, NCA margin
on the target only, POD-spatial summed over the maps, no gradient clamp,
BatchNorm momentum 0.2, a term mis-weighted in the report, a frozen block
trained, a wrong learning rate) and checks that check.py FAILS on each,
naming the right item.

    selftest.py [--keep DIR] [--verbose]

This documents the probe folder format as much as it tests check.py.
Exit 0 when every expectation holds.
"""

import contextlib
import io
import json
import os
import shutil
import sys
import tempfile

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

import check  # noqa: E402
import reference as R  # noqa: E402
import specs  # noqa: E402
import st  # noqa: E402


def random_model(ns, hs, blocks, gen, dtype=torch.float32):
    v = {}
    for n, (shape, _, kind) in R.model_variables(ns, hs, blocks).items():
        if kind == "conv":
            fan_out = shape[0] * shape[2] * shape[3]
            t = torch.randn(shape, generator=gen) * (2.0 / fan_out) ** 0.5
        elif kind == "gamma":
            t = 1.0 + 0.2 * torch.randn(shape, generator=gen)
        elif kind == "beta":
            t = 0.1 * torch.randn(shape, generator=gen)
        elif kind == "running_mean":
            t = 0.1 * torch.randn(shape, generator=gen)
        elif kind == "running_var":
            t = 0.5 + torch.rand(shape, generator=gen)
        elif kind == "head_weight":
            t = 0.3 * torch.randn(shape, generator=gen)
        elif kind == "head_bias":
            t = 0.1 * torch.randn(shape, generator=gen)
        elif kind == "scale":
            t = 1.0 + torch.rand(shape, generator=gen)
        else:
            raise AssertionError(kind)
        v[n] = t.to(dtype)
    return v


def _relu_inputs(ns, images, cur, prev, dtype):
    out = []
    R.KINKS.log = True
    try:
        with torch.no_grad():
            with R.KINKS.current():
                R.backbone_forward({n: t.to(dtype) for n, t in cur.items()}, ns, images.to(dtype), True, {})
            out += R.KINKS.inputs
            if prev is not None:
                with R.KINKS.current():
                    R.backbone_forward({n: t.to(dtype) for n, t in prev.items()}, ns, images.to(dtype), False)
                out += R.KINKS.inputs
        return out
    finally:
        R.KINKS.log, R.KINKS.inputs = False, []


def _kinks(ns, images, cur, prev):
    """ReLU inputs whose sign differs between a float32 and a float64 run."""
    a = _relu_inputs(ns, images, cur, prev, torch.float32)
    b = _relu_inputs(ns, images, cur, prev, torch.float64)
    return sum(int(((x > 0) != (y > 0)).sum()) for x, y in zip(a, b))


def fabricate(out, sp, knobs=R.Knobs(), seed=0, tamper=None, flips=None):
    """Writes a probe folder for SPEC `sp` computed by the reference in
    float32 with `knobs`; `tamper(result_dict, grads, after)` may edit the
    report before it is written."""
    gen = torch.Generator().manual_seed(seed)
    p = sp["params"]
    method = p["method"]
    start, end = p["start"], p["end"]
    ns = R.NETWORKS[p["network"]]
    hs = R.expected_head(method)
    # Old classes in blocks of 2 (several old blocks from task 2 on).
    prev_blocks = [2] * (start // 2) + ([start % 2] if start % 2 else [])
    blocks = prev_blocks + [end - start]
    os.makedirs(out, exist_ok=True)

    prev = None
    if start > 0:
        prev = random_model(ns, hs, prev_blocks, gen)
        cur = random_model(ns, hs, blocks, gen)
        # The current model starts near the old one (it was copied from it),
        # so distillation terms are small but not degenerate.
        for n, t in prev.items():
            cur[n] = t + (0.05 * torch.randn(t.shape, generator=gen) * t.abs().mean() if "running" not in n else 0)
    else:
        cur = random_model(ns, hs, blocks, gen)
    b, size = sp["batch"], sp["image_size"]
    # A batch whose ReLU inputs keep their sign between float32 and float64
    # (see check.py's note on kinks): the fabricated probe runs in float32,
    # the reference in float64, and a kink taken differently is not what
    # this test is about.
    for _ in range(20):
        images = torch.randn(b, 3, size, size, generator=gen)
        if _kinks(ns, images, cur, prev) == 0:
            break
    # Half old-class samples (exemplars), half new, like a real batch.
    if start > 0:
        labels = torch.cat([
            torch.randint(0, start, (b // 2,), generator=gen),
            torch.randint(start, end, (b - b // 2,), generator=gen),
        ])
    else:
        labels = torch.randint(0, end, (b,), generator=gen)
    counts = torch.tensor([20] * start + [500] * (end - start), dtype=torch.int64)
    if sp["phase"] == "finetune":
        counts = torch.full((end,), 20, dtype=torch.int64)
    if start == 0 and method["bsce"]:
        counts = torch.tensor([500 - 37 * i for i in range(end)], dtype=torch.int64)

    case = R.Case(spec=sp, net=ns, head=hs, blocks=blocks, before=cur,
                  images=images, labels=labels, counts=counts)
    if prev is not None:
        case.prev_net, case.prev_head, case.prev_blocks, case.previous = ns, hs, prev_blocks, prev
    R.KINKS.flips = flips or {}
    try:
        res = R.step(case, torch.float32, knobs)
    finally:
        R.KINKS.flips = {}

    model = {"preset": method["preset"], "net": ns.to_json(), "head": hs.to_json(), "blocks": blocks,
             "features": method["features"], "uses_raw_features": R.uses_raw_features(method["preset"])}
    result = {"phase": sp["phase"], "lr": res.lr, "momentum": res.momentum, "weight_decay": res.weight_decay,
              "gradient_clamp": res.gradient_clamp, "terms": dict(res.terms), "total": res.total,
              "trainable": res.trainable, "bn_train": res.bn_train}
    grads = {n: t.float() for n, t in res.grads.items()}
    after = {n: t.float() for n, t in res.after.items()}
    if tamper:
        tamper(result, grads, after)

    def dump(name, obj):
        with open(os.path.join(out, name), "w") as f:
            json.dump(obj, f, indent=1)

    dump("spec.json", sp)
    dump("model.json", model)
    dump("result.json", result)
    if prev is not None:
        dump("previous.json", dict(model, blocks=prev_blocks))
        st.save(os.path.join(out, "previous.safetensors"), prev)
    st.save(os.path.join(out, "inputs.safetensors"), {"images": images, "labels": labels, "class_counts": counts})
    st.save(os.path.join(out, "before.safetensors"), cur)
    st.save(os.path.join(out, "grads.safetensors"), grads)
    st.save(os.path.join(out, "after.safetensors"), after)
    return res


def run_check(out, verbose):
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rep = check.compare(out, verbose=verbose)
    return rep, buf.getvalue()


def _scale_term(name, factor):
    def tamper(result, grads, after):
        result["terms"][name] *= factor
    return tamper


def _train_frozen(result, grads, after):
    # Report block0 of a LUCIR head as trained (it is frozen from task 1).
    result["trainable"].append("head.block0.weight")


def _wrong_lr(result, grads, after):
    result["lr"] *= 0.1


def _rename(old, new):
    def tamper(result, grads, after):
        result["terms"][new] = result["terms"].pop(old)
    return tamper


# (name, case, knobs, tamper, text every failure report must contain)
NEGATIVE = [
    ("LUCIR margin 0.6", "lucir_t1", R.Knobs(mr_margin=0.6), None, "margin_ranking"),
    ("LUCIR margin ranking K=1", "lucir_t1", R.Knobs(mr_k=1), None, "margin_ranking"),
    ("NCA margin on the target only (paper form)", "podnet_t1", R.Knobs(nca_target_margin=True), None, "nca"),
    ("POD-spatial summed over the maps", "podnet_t1", R.Knobs(pod_spatial_reduce="sum"), None, "pod_spatial"),
    ("no gradient clamp", "podnet_t1_clamp", R.Knobs(apply_clamp=False), None, "grad "),
    ("BatchNorm momentum 0.2", "finetune_t0", R.Knobs(bn_momentum=0.2), None, "running_"),
    ("BatchNorm eps 1e-3", "icarl_t1", R.Knobs(bn_eps=1e-3), None, "term bce"),
    ("less-forget reported unweighted", "lucir_t1", R.Knobs(), _scale_term("less_forget", 1 / (5.0)), "less_forget"),
    ("frozen old block trained", "lucir_t1", R.Knobs(), _train_frozen, "trainable"),
    ("learning rate x0.1", "icarl_t1_bsce", R.Knobs(), _wrong_lr, "lr"),
    ("an unknown term", "finetune_t1", R.Knobs(), _rename("ce", "xent"), "xent"),
]


def kink_test(root, verbose, case="icarl_t1_small"):
    """A probe whose float32 run took one ReLU input near 0 on the other
    side must still pass, with the kink named."""
    for seed in range(200, 220):
        out = os.path.join(root, "ok-kink")
        fabricate(out, specs.CASES[case], seed=seed)
        c, *_ = check.load_case(out)
        check._step(c, R.Knobs(), log=True)
        near = R.KINKS.near_zero(check.KINK_REL)
        R.KINKS.inputs = []
        if near:
            rel, call, j = near[0]
            fabricate(out, specs.CASES[case], seed=seed, flips={call: torch.tensor([j])})
            rep, text = run_check(out, verbose)
            if rep.fail or f"ReLU {call} element {j}" not in text:
                print(f"UNEXPECTED FAIL kink at ReLU {call} element {j}:\n{text}")
                return 1
            print(f"pass  a float32 kink (ReLU {call} element {j}, |x|/max {rel:.1e}) is resolved")
            return 0
    print("kink test: no ReLU input near 0 in 20 batches")
    return 1


def main(argv):
    verbose = "--verbose" in argv
    keep = argv[argv.index("--keep") + 1] if "--keep" in argv else None
    root = keep or tempfile.mkdtemp(prefix="bsce-parity-selftest-")
    bad = 0
    try:
        for i, (name, sp) in enumerate(specs.CASES.items()):
            out = os.path.join(root, "ok-" + name)
            fabricate(out, sp, seed=i)
            rep, text = run_check(out, verbose)
            summary = text.strip().splitlines()[-1]
            if rep.fail:
                bad += 1
                print(f"UNEXPECTED FAIL {name}:\n{text}")
            else:
                print(f"pass  {name:30s} {summary}")
        # A probe that names a term differently still matches via the aliases.
        out = os.path.join(root, "ok-alias")
        fabricate(out, specs.CASES["lucir_t1"], tamper=_rename("margin_ranking", "mr"))
        rep, text = run_check(out, True)
        if rep.fail or "margin_ranking (probe: mr)" not in text:
            bad += 1
            print(f"UNEXPECTED FAIL alias mr -> margin_ranking:\n{text}")
        else:
            print("pass  alias: probe term 'mr' matched to margin_ranking")
        bad += kink_test(root, verbose)
        for j, (name, case, knobs, tamper, needle) in enumerate(NEGATIVE):
            out = os.path.join(root, f"bad-{j}")
            fabricate(out, specs.CASES[case], knobs=knobs, seed=100 + j, tamper=tamper)
            rep, text = run_check(out, verbose)
            hit = [f for f in rep.fail if needle in f]
            if rep.fail and hit:
                print(f"fails {name:45s} -> {hit[0][:110]}")
            else:
                bad += 1
                print(f"NOT DETECTED: {name} (case {case}); check.py said:\n{text}")
        # A folder with a missing file is reported, not a crash.
        out = os.path.join(root, "bad-missing")
        fabricate(out, specs.CASES["finetune_t0"])
        os.remove(os.path.join(out, "grads.safetensors"))
        with contextlib.redirect_stdout(io.StringIO()) as buf:
            code = check.main([out])
        if code != 1:
            bad += 1
            print(f"NOT DETECTED: missing grads.safetensors gave exit {code}: {buf.getvalue()}")
        else:
            print("fails missing grads.safetensors                     -> exit 1")
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
    print(f"selftest {'OK' if bad == 0 else f'FAILED ({bad})'}")
    return 0 if bad == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
