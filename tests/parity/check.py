#!/usr/bin/env python3
"""Compares one `bsce-torch probe` output folder with the reference step.

    check.py OUT_DIR              compare; exit 0 when everything is within
                                  tolerance, 1 otherwise (2: bad arguments)
    check.py --verbose OUT_DIR    also print every compared item
    check.py --names OUT_DIR      print our variable names and their
                                  reference-style PyTorch state-dict keys

Tolerance, per tensor: max|ours - ref| <= 1e-5 * max|ref| + 1e-7
+ 4 * max|ref32 - ref| (the same for each scalar term and the total; a
clamped gradient's max|ref| is the unclamped one's). The reference runs in
float64 from the probe's float32 weights; ref32 is the same reference step
in float32, so the last term is the float32 noise of that very quantity (a
gradient that cancels to far below its summands, such as PODNet's learned
scale's). ReLU inputs within float32 rounding of 0 may be taken on the
other side (README.md, "Precision").
"""

import json
import math
import os
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

import reference as R  # noqa: E402
import st  # noqa: E402

RTOL = 1e-5
ATOL = 1e-7
# Times the float32 reference's own distance from the float64 one.
NOISE = 4.0

# Reference term -> names the probe may use for it, in order of preference.
TERM_ALIASES = {
    "ce": ["ce", "cross_entropy", "cce"],
    "bsce": ["bsce", "balanced_softmax", "balanced_softmax_ce"],
    "bce": ["bce", "icarl_bce"],
    "kd": ["kd", "softmax_kd", "distillation"],
    "sigmoid_kd": ["sigmoid_kd", "kd_bce", "sigmoid_bce", "bce_kd", "kd_sigmoid", "sigmoid_distillation", "distillation"],
    "less_forget": ["less_forget", "lf"],
    "margin_ranking": ["margin_ranking", "mr"],
    # NCA carrying BSCE's prior may be reported under "bsce".
    "nca": ["nca", "bsce"],
    "pod_flat": ["pod_flat", "flat"],
    "pod_spatial": ["pod_spatial", "spatial", "pod"],
}


def _json(path):
    with open(path) as f:
        return json.load(f)


def load_case(out):
    """(Case, result.json, grads, after, problems) from a probe folder."""
    problems = []
    spec = _json(os.path.join(out, "spec.json"))
    model = _json(os.path.join(out, "model.json"))
    result = _json(os.path.join(out, "result.json"))
    params = spec["params"]
    method = params["method"]
    preset = method["preset"]

    # Structure: what the reference expects from the params, beside what the
    # probe built. The probe's own spec is used to load its weights, so the
    # rest can still be compared; a difference here is a failure anyway.
    net = R.NetSpec.from_json(model["net"])
    want_net = R.NETWORKS.get(params["network"])
    if want_net is None:
        problems.append(f"network {params['network']!r} is unknown to the reference")
    elif net != want_net:
        problems.append(f"model.json net {net} differs from {params['network']}: {want_net}")
    head = R.HeadSpec.from_json(model["head"])
    want_head = R.expected_head(method)
    if head != want_head:
        problems.append(f"model.json head {head} differs from the preset's {want_head}")
    if model.get("preset") != preset:
        problems.append(f"model.json preset {model.get('preset')!r} != params preset {preset!r}")
    if bool(model.get("uses_raw_features")) != R.uses_raw_features(preset):
        problems.append(
            f"model.json uses_raw_features {model.get('uses_raw_features')} but {preset} classifies "
            f"{'pre' if R.uses_raw_features(preset) else 'post'}-activation features"
        )
    if model.get("features") != method.get("features"):
        problems.append(f"model.json features {model.get('features')!r}, params {method.get('features')!r}")
    blocks = [int(b) for b in model["blocks"]]
    start, end = int(params["start"]), int(params["end"])
    if start > 0 and blocks[-1] != end - start:
        problems.append(f"model blocks {blocks}: the newest block should hold this task's {end - start} classes")

    before = st.load(os.path.join(out, "before.safetensors"))
    _check_variables("before", before, R.model_variables(net, head, blocks), problems)

    inputs = st.load(os.path.join(out, "inputs.safetensors"))
    images, labels, counts = inputs["images"], inputs["labels"], inputs["class_counts"]
    b, size = int(spec.get("batch", images.shape[0])), int(spec.get("image_size", images.shape[-1]))
    if list(images.shape) != [b, 3, size, size]:
        problems.append(f"images {list(images.shape)}, spec asks [{b}, 3, {size}, {size}]")
    if list(labels.shape) != [images.shape[0]] or int(labels.min()) < 0 or int(labels.max()) >= end:
        problems.append(f"labels {labels.tolist()} are not {images.shape[0]} positions in 0..{end}")
    if list(counts.shape) != [end]:
        problems.append(f"class_counts has shape {list(counts.shape)}, not [{end}]")

    case = R.Case(
        spec=spec, net=net, head=head, blocks=blocks, before=before,
        images=images, labels=labels, counts=counts,
    )
    prev_path = os.path.join(out, "previous.json")
    if os.path.exists(prev_path):
        prev = _json(prev_path)
        case.prev_net = R.NetSpec.from_json(prev["net"])
        case.prev_head = R.HeadSpec.from_json(prev["head"])
        case.prev_blocks = [int(x) for x in prev["blocks"]]
        case.previous = st.load(os.path.join(out, "previous.safetensors"))
        if sum(case.prev_blocks) != start:
            problems.append(f"previous blocks {case.prev_blocks} do not sum to start {start}")
        if case.prev_net != net or case.prev_head != head:
            problems.append("previous.json's net or head differs from model.json's")
        _check_variables(
            "previous", case.previous,
            R.model_variables(case.prev_net, case.prev_head, case.prev_blocks), problems,
        )
    elif start > 0:
        problems.append("start > 0 but there is no previous.json")

    grads = st.load(os.path.join(out, "grads.safetensors"))
    after = st.load(os.path.join(out, "after.safetensors"))
    return case, result, grads, after, problems


def _check_variables(what, got, want, problems):
    for n, (shape, _, _) in want.items():
        if n not in got:
            problems.append(f"{what}: variable {n} missing")
        elif list(got[n].shape) != list(shape):
            problems.append(f"{what}: {n} has shape {list(got[n].shape)}, expected {list(shape)}")
    for n in got:
        if n not in want:
            problems.append(f"{what}: unexpected variable {n} {list(got[n].shape)}")


class Report:
    """Collects one line per compared item; `fail` holds the failing ones."""

    def __init__(self, verbose=False):
        self.fail = []
        self.lines = []
        self.verbose = verbose
        self.counts = {"terms": 0, "grads": 0, "params": 0}
        self.max_rel = 0.0
        self.max_use = 0.0
        self.notes = []

    def problem(self, line):
        self.fail.append(line)
        self.lines.append("FAIL " + line)

    def scalar(self, kind, name, ours, ref, noise=0.0):
        self.counts[kind] += 1
        err = abs(ours - ref) if math.isfinite(ours) else math.inf
        bound = RTOL * abs(ref) + ATOL + NOISE * noise
        self._note(err, abs(ref), bound)
        ratio = f", ours/ref {ours / ref:.6g}" if ref != 0 else ""
        line = f"{kind[:-1]} {name}: ours {ours:.9g} ref {ref:.9g} (|diff| {err:.3g}, bound {bound:.3g}{ratio})"
        if not err <= bound:
            self.problem(line)
        elif self.verbose:
            self.lines.append("ok   " + line)

    def tensor(self, kind, name, ours, ref, scale=None, noise=0.0):
        """`scale`: max|ref| unless given (a clamped gradient's is the
        unclamped gradient's: the clamp cuts the values, not their error)."""
        self.counts[kind] += 1
        if list(ours.shape) != list(ref.shape):
            self.problem(f"{kind[:-1]} {name}: shape {list(ours.shape)}, reference {list(ref.shape)}")
            return
        ours = ours.to(torch.float64)
        ref = ref.to(torch.float64)
        top = float(ref.abs().max()) if ref.numel() else 0.0
        scale = top if scale is None else max(scale, top)
        diff = (ours - ref).abs()
        err = float(diff.max()) if diff.numel() else 0.0
        if not torch.isfinite(ours).all():
            err = math.inf
        bound = RTOL * scale + ATOL + NOISE * noise
        self._note(err, scale, bound)
        line = f"{kind[:-1]} {name}: max|diff| {err:.3g}, max|ref| {top:.3g}"
        if scale != top:
            line += f" (unclamped {scale:.3g})"
        line += f", bound {bound:.3g}"
        if not err <= bound:
            i = int(diff.flatten().argmax()) if math.isfinite(err) else 0
            line += f" (worst element {i}: ours {float(ours.flatten()[i]):.9g} ref {float(ref.flatten()[i]):.9g})"
            self.problem(line)
        elif self.verbose:
            self.lines.append("ok   " + line)

    def _note(self, err, scale, bound):
        if scale > 0:
            self.max_rel = max(self.max_rel, err / scale)
        self.max_use = max(self.max_use, err / bound)

    def summary(self):
        c = self.counts
        tail = (
            f"{c['terms']} terms, {c['grads']} gradients, {c['params']} parameters, "
            f"max relative error {self.max_rel:.3g} (worst item at {self.max_use:.3g} of its bound)"
        )
        if self.fail:
            return f"parity FAILED: {len(self.fail)} of them out of tolerance or mismatched; {tail}"
        return f"parity OK: {tail}"


def match_terms(ref_terms, probe_terms):
    """{reference name: probe name} and the probe names left over."""
    used, mapping = set(), {}
    # Exact names first, so "bsce" goes to a reference "bsce" before "nca".
    for r in ref_terms:
        if r in probe_terms:
            mapping[r] = r
            used.add(r)
    for r in ref_terms:
        if r in mapping:
            continue
        for alias in TERM_ALIASES.get(r, [r]):
            if alias in probe_terms and alias not in used:
                mapping[r] = alias
                used.add(alias)
                break
    return mapping, [t for t in probe_terms if t not in used]


def _step(case, knobs, flips=None, log=False, dtype=torch.float64):
    R.KINKS.flips = flips or {}
    R.KINKS.log = log
    try:
        return R.step(case, dtype, knobs)
    finally:
        R.KINKS.flips, R.KINKS.log = {}, False


def _noise(a, b):
    """max|a - b| of two tensors or numbers, as a float (0 when either is missing)."""
    if a is None or b is None:
        return 0.0
    if isinstance(a, torch.Tensor):
        if list(a.shape) != list(b.shape) or a.numel() == 0:
            return 0.0
        return float((a.double() - b.double()).abs().max())
    return abs(float(a) - float(b))


class Noise:
    """The float32 reference's distance from the float64 one, per term,
    gradient and parameter: the float32 noise of each quantity."""

    def __init__(self, ref, ref32):
        self.terms = {k: _noise(v, ref32.terms.get(k)) for k, v in ref.terms.items()}
        self.total = _noise(ref.total, ref32.total)
        self.grads = {k: _noise(v, ref32.grads.get(k)) for k, v in ref.grads.items()}
        self.after = {k: _noise(v, ref32.after.get(k)) for k, v in ref.after.items()}


def _judge(case, result, grads, after, problems, ref, verbose, noise):
    rep = Report(verbose)
    for p in problems:
        rep.problem(p)

    if result.get("phase") != case.spec["phase"]:
        rep.problem(f"result phase {result.get('phase')!r}, spec phase {case.spec['phase']!r}")
    for key in ("lr", "momentum", "weight_decay"):
        ours, want = result.get(key), getattr(ref, key)
        if ours is None or abs(float(ours) - want) > 1e-12 * max(1.0, abs(want)):
            rep.problem(f"{key}: probe {ours}, expected {want}")
    clamp = result.get("gradient_clamp")
    if (clamp is None) != (ref.gradient_clamp is None) or (
        clamp is not None and abs(float(clamp) - ref.gradient_clamp) > 1e-12
    ):
        rep.problem(f"gradient_clamp: probe {clamp}, expected {ref.gradient_clamp}")
    if bool(result.get("bn_train")) != ref.bn_train:
        rep.problem(f"bn_train: probe {result.get('bn_train')}, expected {ref.bn_train}")

    probe_terms = {k: float(v) for k, v in result.get("terms", {}).items()}
    mapping, extra = match_terms(list(ref.terms), probe_terms)
    info_used = 0.0
    for r, val in ref.terms.items():
        if r not in mapping:
            rep.problem(f"term {r}: reference value {val:.9g}, missing from the probe's terms {sorted(probe_terms)}")
            continue
        name = r if mapping[r] == r else f"{r} (probe: {mapping[r]})"
        rep.scalar("terms", name, probe_terms[mapping[r]], val, noise.terms.get(r, 0.0))
    for t in extra:
        if t in ref.info_terms:
            # A term that has no gradient path in this phase (README): the
            # references compute it, ours may or may not report it.
            rep.scalar("terms", f"{t} (no gradient in this phase)", probe_terms[t], ref.info_terms[t])
            info_used += ref.info_terms[t]
        else:
            rep.problem(f"term {t}: probe value {probe_terms[t]:.9g}, not a term of this case in the reference")
    if "total" not in result:
        rep.problem("result.json has no total")
    else:
        rep.scalar("terms", "total", float(result["total"]), ref.total + info_used, noise.total)

    ours_tr, ref_tr = set(result.get("trainable", [])), set(ref.trainable)
    for n in sorted(ref_tr - ours_tr):
        rep.problem(f"trainable: {n} is updated by the reference step, not listed by the probe")
    for n in sorted(ours_tr - ref_tr):
        rep.problem(f"trainable: {n} is listed by the probe, frozen in the reference step")

    for n in sorted(set(ref.grads) | set(grads)):
        if n not in grads:
            rep.problem(f"gradient {n}: missing from grads.safetensors")
        elif n not in ref.grads:
            if n in ref_tr:
                rep.tensor("grads", n + " (no gradient in the reference)", grads[n], torch.zeros_like(grads[n]))
            else:
                rep.problem(f"gradient {n}: present, but the reference step does not train it")
        else:
            scale = None
            if ref.gradient_clamp is not None:
                scale = float(ref.grads_unclamped[n].abs().max())
            rep.tensor("grads", n, grads[n], ref.grads[n], scale, noise.grads.get(n, 0.0))

    for n in sorted(ref.after):
        if n not in after:
            rep.problem(f"parameter {n}: missing from after.safetensors")
        else:
            rep.tensor("params", n, after[n], ref.after[n], noise=noise.after.get(n, 0.0))
    for n in sorted(set(after) - set(ref.after)):
        rep.problem(f"parameter {n}: in after.safetensors, not a variable of the reference model")
    return rep


KINK_REL = 1e-6  # |x| / max|x| of its layer under which a float32 run may take either side
KINK_MAX = 48  # candidates tried


def _grad_misfit(ref, grads):
    total = 0.0
    for n, g in ref.grads.items():
        if n in grads and list(grads[n].shape) == list(g.shape):
            scale = float(ref.grads_unclamped[n].abs().max())
            bound = RTOL * scale + ATOL
            total += float((((grads[n].double() - g) / bound) ** 2).sum())
    return total


def resolve_kinks(case, grads, knobs, candidates):
    """Greedy: flips, one at a time (smallest |x| first), the ReLU inputs
    within float32 rounding of 0 whose other side brings the reference's
    gradients closer to the probe's. Returns {call: LongTensor}, [(rel, call, idx)]."""
    flips, taken = {}, []
    best = _grad_misfit(_step(case, knobs), grads)
    for rel, call, j in candidates[:KINK_MAX]:
        trial = {k: v.clone() for k, v in flips.items()}
        trial[call] = torch.cat([trial.get(call, torch.zeros(0, dtype=torch.long)), torch.tensor([j])])
        misfit = _grad_misfit(_step(case, knobs, trial), grads)
        if misfit < 0.5 * best:
            flips, best = trial, misfit
            taken.append((rel, call, j))
    return flips, taken


def compare(out, verbose=False, knobs=None):
    knobs = knobs or R.Knobs()
    case, result, grads, after, problems = load_case(out)
    ref = _step(case, knobs, log=True)
    candidates = R.KINKS.near_zero(KINK_REL)
    R.KINKS.inputs = []
    noise = Noise(ref, _step(case, knobs, dtype=torch.float32))
    rep = _judge(case, result, grads, after, problems, ref, verbose, noise)
    tensor_fails = [f for f in rep.fail if f.startswith(("grad ", "param "))]
    taken = []
    if tensor_fails and candidates and len(tensor_fails) == len(rep.fail):
        flips, taken = resolve_kinks(case, grads, knobs, candidates)
        if taken:
            ref2 = _step(case, knobs, flips)
            rep2 = _judge(case, result, grads, after, problems, ref2, verbose, noise)
            where = ", ".join(f"ReLU {c} element {j} (|x|/max {r:.1e})" for r, c, j in taken)
            note = (
                f"kinks: {len(taken)} of {len(candidates)} ReLU inputs within {KINK_REL:g} x their "
                f"layer's max of zero taken on the other side, as the probe's float32 run did: {where}"
            )
            if len(rep2.fail) < len(rep.fail):
                rep = rep2
                rep.notes.append(note)
            else:
                rep.notes.append("kinks tried, no better: " + note)
        if rep.fail:
            rep.notes.append(
                f"note: {len(candidates)} ReLU input(s) of this batch lie within {KINK_REL:g} x their "
                "layer's max of zero; a float32 run can land on the other side of such a kink, which "
                "changes the gradients upstream of it. If the terms and the head's gradients pass, rerun "
                "the probe with another seed before suspecting a formula."
            )
    for line in rep.lines + rep.notes:
        print(line)
    resolved = f" ({len(taken)} float32 ReLU kink(s) resolved)" if taken and not rep.fail else ""
    print(rep.summary() + resolved)
    return rep


def print_names(out):
    model = _json(os.path.join(out, "model.json"))
    net = R.NetSpec.from_json(model["net"])
    head = R.HeadSpec.from_json(model["head"])
    blocks = [int(b) for b in model["blocks"]]
    path = os.path.join(out, "before.safetensors")
    if os.path.exists(path):
        shapes = {n: list(t.shape) for n, t in st.load(path).items()}
    else:
        shapes = {n: list(s) for n, (s, _, _) in R.model_variables(net, head, blocks).items()}
    width = max(len(n) for n in shapes)
    for n in sorted(shapes, key=_natural):
        ref = R.reference_name(n, net, head, blocks) or "(no counterpart)"
        print(f"{n:<{width}}  {ref:<48} {shapes[n]}")


def _natural(name):
    import re

    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def main(argv):
    args = [a for a in argv if not a.startswith("--")]
    flags = {a for a in argv if a.startswith("--")}
    unknown = flags - {"--names", "--verbose"}
    if len(args) != 1 or unknown:
        print(__doc__, file=sys.stderr)
        return 2
    out = args[0]
    if "--names" in flags:
        print_names(out)
        return 0
    try:
        rep = compare(out, verbose="--verbose" in flags)
    except (OSError, KeyError, ValueError, R.ProbeError) as e:
        print(f"parity FAILED: cannot read {out}: {type(e).__name__}: {e}")
        return 1
    return 1 if rep.fail else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
