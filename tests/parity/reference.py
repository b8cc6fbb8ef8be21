"""An independent PyTorch reference for one training step of bsce-torch.

Written from the formulas (/work/shared/reference/method-formulas.md,
cil-protocols.md) and the public reference code (A: PODNet's inclearn @
c09fc54; L: LUCIR @ e5a90ae; P: PyCIL), NOT from our Rust loss code. The
network and head layout and the variable names are ours
(train/src/net.rs, train/src/classifier.rs) because the probe's weights
must load into it; everything a loss computes is from the references.

Everything is functional: a model is a dict `{our variable name: tensor}`,
so the same code runs in float64 (check.py's reference) and in float32
(selftest.py's fabricated probe). README.md lists the assumptions.
"""

import dataclasses
import math
import re
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

BACKBONE = "backbone."
HEAD = "head."


# --------------------------------------------------------------------------
# Constants of the formulas. Knobs exists so the self-test can fabricate a
# probe that deviates from them and prove that check.py notices.
# --------------------------------------------------------------------------


@dataclass
class Knobs:
    # LUCIR margin ranking (L run.sh: --dist 0.5 --K 2 --lw_mr 1).
    mr_margin: float = 0.5
    mr_k: int = 2
    mr_weight: float = 1.0
    # PODNet NCA (A podnet_cnn_cifar100.yaml nca.margin 0.6), subtracted from
    # every class as coded (A losses/base.py `nca`, A#59); `nca_target_margin`
    # True is the paper's form (margin on the target only), for the self-test.
    nca_margin: float = 0.6
    nca_target_margin: bool = False
    # POD-spatial: mean over the maps (A distillation.py `pod`: loss / len);
    # "sum" only for the self-test.
    pod_spatial_reduce: str = "mean"
    # BatchNorm (PyTorch / libtorch defaults).
    bn_momentum: float = 0.1
    bn_eps: float = 1e-5
    # Gradient clamp applied before the step (A podnet.py `_train_task` hook).
    apply_clamp: bool = True
    # CosineEmbeddingLoss's epsilon (torch: EPSILON = 1e-12 on squared norms).
    cos_eps: float = 1e-12


# --------------------------------------------------------------------------
# Network and head specs (serde JSON of NetSpec / HeadSpec).
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class NetSpec:
    arch: str  # cifar_resnet | imagenet_resnet | imagenet_resnet_podnet
    width: int
    blocks: int
    shortcut: str  # "a" (subsample + zero channels) | "b" (1x1 conv + BN)
    last_relu: bool
    zero_init_residual: bool

    @staticmethod
    def from_json(d):
        allowed = {f.name for f in dataclasses.fields(NetSpec)}
        extra = set(d) - allowed
        if extra:
            raise ValueError(f"NetSpec has unknown fields {sorted(extra)}")
        return NetSpec(**d)

    def to_json(self):
        return dataclasses.asdict(self)

    @property
    def stages(self):
        return 3 if self.arch == "cifar_resnet" else 4


def _tiny():
    return NetSpec("cifar_resnet", 4, 1, "a", False, True)


# `network` of TrainParams -> NetSpec (train/src/net.rs constructors,
# train/src/method.rs `net_spec`).
NETWORKS = {
    "resnet32": NetSpec("cifar_resnet", 16, 5, "a", False, True),
    "resnet32_lucir": NetSpec("cifar_resnet", 16, 5, "b", True, False),
    "resnet18": NetSpec("imagenet_resnet", 64, 2, "b", True, False),
    "resnet18_podnet": NetSpec("imagenet_resnet_podnet", 64, 2, "b", False, True),
    "tiny": _tiny(),
    "small": dataclasses.replace(_tiny(), width=8, blocks=2),
}


@dataclass(frozen=True)
class HeadSpec:
    kind: str  # linear | cosine | local_similarity
    proxies: int = 1
    scaling: float = 1.0

    @staticmethod
    def from_json(d):
        if d in ("linear", "cosine"):
            return HeadSpec(d)
        if isinstance(d, dict) and list(d) == ["local_similarity"]:
            inner = d["local_similarity"]
            if set(inner) != {"proxies", "scaling"}:
                raise ValueError(f"local_similarity has fields {sorted(inner)}")
            return HeadSpec("local_similarity", int(inner["proxies"]), float(inner["scaling"]))
        raise ValueError(f"unknown HeadSpec {d!r}")

    def to_json(self):
        if self.kind == "local_similarity":
            return {"local_similarity": {"proxies": self.proxies, "scaling": self.scaling}}
        return self.kind

    @property
    def rows_per_class(self):
        return self.proxies if self.kind == "local_similarity" else 1


def expected_head(method):
    """The classifier each preset uses (cil-protocols.md section 2)."""
    preset = method["preset"]
    if preset in ("finetune", "icarl"):
        return HeadSpec("linear")
    if preset == "lucir":
        return HeadSpec("cosine")
    if preset == "podnet":
        s = method.get("hyper", {}).get("classifier_scaling")
        return HeadSpec("local_similarity", 10, 1.0 if s is None else float(s))
    raise ValueError(f"unknown preset {preset}")


def uses_raw_features(preset):
    """LUCIR and PODNet classify the pre-ReLU pooled feature (L: the last
    block has no ReLU; A: classifier_no_act=True); finetune and iCaRL the
    post-ReLU one (A ICarl: classifier_no_act=False; P resnet32)."""
    return preset in ("lucir", "podnet")


# --------------------------------------------------------------------------
# Backbone layout and variables.
# --------------------------------------------------------------------------


@dataclass
class ConvBnDesc:
    path: str  # without the "backbone." prefix
    c_in: int
    c_out: int
    k: int
    stride: int


@dataclass
class BlockDesc:
    path: str
    a: ConvBnDesc
    b: ConvBnDesc
    shortcut: object  # None | "pad" | ConvBnDesc
    relu: bool


@dataclass
class Layout:
    stem: ConvBnDesc
    stages: list = field(default_factory=list)  # list of list of BlockDesc
    out_dim: int = 0


def layout(spec: NetSpec) -> Layout:
    w = spec.width
    stem_k, stem_s = {"cifar_resnet": (3, 1), "imagenet_resnet": (7, 2), "imagenet_resnet_podnet": (3, 1)}[
        spec.arch
    ]
    lay = Layout(stem=ConvBnDesc("stem", 3, w, stem_k, stem_s))
    c_in = w
    n = spec.stages
    for s in range(n):
        c_out = w << s
        stage = []
        for b in range(spec.blocks):
            last = s + 1 == n and b + 1 == spec.blocks
            p = f"stage{s + 1}.block{b}"
            ci = c_in if b == 0 else c_out
            stride = 1 if ci == c_out else 2
            if spec.arch == "imagenet_resnet_podnet":
                relu = b + 1 < spec.blocks
            else:
                relu = spec.last_relu and not last
            if ci == c_out:
                sc = None
            elif spec.shortcut == "a":
                sc = "pad"
            else:
                sc = ConvBnDesc(p + ".shortcut", ci, c_out, 1, 2)
            stage.append(
                BlockDesc(p, ConvBnDesc(p + ".a", ci, c_out, 3, stride), ConvBnDesc(p + ".b", c_out, c_out, 3, 1), sc, relu)
            )
        lay.stages.append(stage)
        c_in = c_out
    lay.out_dim = c_in
    return lay


def _convbns(lay: Layout):
    yield lay.stem
    for stage in lay.stages:
        for blk in stage:
            yield blk.a
            yield blk.b
            if isinstance(blk.shortcut, ConvBnDesc):
                yield blk.shortcut


def backbone_variables(spec: NetSpec):
    """`{name: (shape, trainable, kind)}` with the "backbone." prefix;
    kind is conv | gamma | beta | running_mean | running_var."""
    out = {}
    for cb in _convbns(layout(spec)):
        p = BACKBONE + cb.path
        out[p + ".conv.weight"] = ((cb.c_out, cb.c_in, cb.k, cb.k), True, "conv")
        out[p + ".bn.weight"] = ((cb.c_out,), True, "gamma")
        out[p + ".bn.bias"] = ((cb.c_out,), True, "beta")
        out[p + ".bn.running_mean"] = ((cb.c_out,), False, "running_mean")
        out[p + ".bn.running_var"] = ((cb.c_out,), False, "running_var")
    return out


def head_variables(hs: HeadSpec, blocks, in_dim):
    out = {}
    for k, n in enumerate(blocks):
        out[f"{HEAD}block{k}.weight"] = ((n * hs.rows_per_class, in_dim), True, "head_weight")
        if hs.kind == "linear":
            out[f"{HEAD}block{k}.bias"] = ((n,), True, "head_bias")
    if hs.kind == "cosine":
        out[HEAD + "sigma"] = ((1,), True, "scale")
    if hs.kind == "local_similarity":
        out[HEAD + "eta"] = ((1,), True, "scale")
    return out


def model_variables(ns: NetSpec, hs: HeadSpec, blocks):
    v = backbone_variables(ns)
    v.update(head_variables(hs, blocks, layout(ns).out_dim))
    return v


# --------------------------------------------------------------------------
# Forward passes.
# --------------------------------------------------------------------------


def batch_norm(v, path, x, train, updates, knobs):
    """y = gamma (x - mu) / sqrt(var + eps) + beta per channel. Train mode:
    biased batch variance for the output; running stats move by momentum
    towards the batch mean and the *unbiased* batch variance (PyTorch)."""
    g = v[path + ".weight"].view(1, -1, 1, 1)
    b = v[path + ".bias"].view(1, -1, 1, 1)
    if train:
        mu = x.mean(dim=(0, 2, 3))
        var = ((x - mu.view(1, -1, 1, 1)) ** 2).mean(dim=(0, 2, 3))
        n = x.numel() // x.shape[1]
        if updates is not None:
            m = knobs.bn_momentum
            with torch.no_grad():
                rm, rv = v[path + ".running_mean"], v[path + ".running_var"]
                updates[path + ".running_mean"] = (1 - m) * rm + m * mu.detach()
                updates[path + ".running_var"] = (1 - m) * rv + m * var.detach() * n / (n - 1)
    else:
        mu, var = v[path + ".running_mean"], v[path + ".running_var"]
    return (x - mu.view(1, -1, 1, 1)) / torch.sqrt(var.view(1, -1, 1, 1) + knobs.bn_eps) * g + b


def conv_bn(v, cb: ConvBnDesc, x, train, updates, knobs):
    p = BACKBONE + cb.path
    y = F.conv2d(x, v[p + ".conv.weight"], stride=cb.stride, padding=cb.k // 2)
    return batch_norm(v, p + ".bn", y, train, updates, knobs)


@dataclass
class BackboneOut:
    raw: torch.Tensor  # GAP of the final block's output, pre-ReLU
    features: torch.Tensor  # GAP(ReLU(...))
    attention: list  # pre-activation block sums for POD-spatial


def backbone_forward(v, spec: NetSpec, x, train, updates=None, knobs=Knobs()):
    lay = layout(spec)
    x = _relu(conv_bn(v, lay.stem, x, train, updates, knobs))
    if spec.arch != "cifar_resnet":
        x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1)
    att = []
    n = len(lay.stages)
    for s, stage in enumerate(lay.stages):
        for b, blk in enumerate(stage):
            y = _relu(conv_bn(v, blk.a, x, train, updates, knobs))
            y = conv_bn(v, blk.b, y, train, updates, knobs)
            if blk.shortcut is None:
                sc = x
            elif blk.shortcut == "pad":
                sub = x[:, :, ::2, ::2]
                sc = torch.cat([sub, torch.zeros_like(sub)], dim=1)
            else:
                sc = conv_bn(v, blk.shortcut, x, train, updates, knobs)
            total = y + sc
            # POD maps: each stage's last block; A's CIFAR `rebuffi` also
            # splits the last stage's final block off as `stage_4`, so the
            # second-to-last block of the last CIFAR stage is a map too.
            split = spec.arch == "cifar_resnet" and s + 1 == n and b + 2 == len(stage)
            if b + 1 == len(stage) or split:
                att.append(total)
            x = _relu(total) if blk.relu else total
    return BackboneOut(raw=x.mean(dim=(2, 3)), features=_relu(x).mean(dim=(2, 3)), attention=att)


# The ReLUs of the current model's forward pass (step() marks it with
# KINKS.current()). check.py logs their inputs and may flip the side a few
# of them take: an input within float32 rounding of 0 has no determined
# side in a float32 run, and the side decides which gradient flows through
# it (README, "Precision"). Everything else uses F.relu unchanged.
class _Kinks:
    def __init__(self):
        self.active = False  # inside the current model's forward
        self.log = False  # record the inputs
        self.calls = 0
        self.inputs = []  # one tensor per ReLU call, in call order
        self.flips = {}  # call index -> LongTensor of flat element indices

    def current(self):
        kinks = self

        class _Scope:
            def __enter__(self):
                kinks.active, kinks.calls, kinks.inputs = True, 0, []

            def __exit__(self, *exc):
                kinks.active = False

        return _Scope()

    def near_zero(self, rel):
        """[(|x| / max|x|, call, flat index)] of logged inputs under `rel`, smallest first."""
        out = []
        for call, t in enumerate(self.inputs):
            scale = float(t.abs().max())
            if scale == 0:
                continue
            r = (t.abs() / scale).flatten()
            for j in torch.nonzero(r < rel).flatten().tolist():
                out.append((float(r[j]), call, j))
        return sorted(out)


KINKS = _Kinks()


def _relu(t):
    if not KINKS.active:
        return F.relu(t)
    call = KINKS.calls
    KINKS.calls += 1
    if KINKS.log:
        KINKS.inputs.append(t.detach().clone())
    idx = KINKS.flips.get(call)
    if idx is None:
        return F.relu(t)
    mask = (t.detach() > 0).to(t.dtype).flatten()
    mask[idx] = 1 - mask[idx]
    return t * mask.view_as(t)


def l2n(x):
    """F.normalize(x, dim=1): x / max(||x||, 1e-12)."""
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)


def head_weights(v, blocks):
    return torch.cat([v[f"{HEAD}block{k}.weight"] for k in range(len(blocks))], dim=0)


def similarities(v, hs: HeadSpec, blocks, f):
    """Per-class scores before any learned scale: linear logits; LUCIR's raw
    cosines (L modified_linear.py); PODNet's merged negative squared
    distances (A classifiers.py CosineClassifier, distance
    neg_stable_cosine_distance, merging softmax with gamma 1)."""
    W = head_weights(v, blocks)
    if hs.kind == "linear":
        bias = torch.cat([v[f"{HEAD}block{k}.bias"] for k in range(len(blocks))])
        return f @ W.t() + bias
    if hs.kind == "cosine":
        return l2n(f) @ l2n(W).t()
    s = hs.scaling
    u = s * l2n(f)
    w = s * l2n(W)
    d = (u.pow(2).sum(1, keepdim=True) + w.pow(2).sum(1, keepdim=True).t() - 2 * u @ w.t()).clamp_min(0.0)
    simi = (-d).view(f.shape[0], sum(blocks), hs.proxies)
    att = torch.softmax(1.0 * simi, dim=-1)
    return (simi * att).sum(-1)


def logits(v, hs: HeadSpec, blocks, f):
    """Evaluation logits: sigma * cos for the cosine head; the merged
    similarity without eta for PODNet (A `_eval_task`)."""
    z = similarities(v, hs, blocks, f)
    if hs.kind == "cosine":
        z = z * v[HEAD + "sigma"]
    return z


# --------------------------------------------------------------------------
# Losses, from the formulas.
# --------------------------------------------------------------------------


def softmax_ce(z, y):
    return -(torch.log_softmax(z, dim=1).gather(1, y.view(-1, 1))).mean()


def balanced_softmax_ce(z, y, counts):
    """Ren et al. 2020 Eq. 4: CE(z + log n, y), batch mean."""
    return softmax_ce(z + torch.log(counts.to(z.dtype)).view(1, -1), y)


def bce_with_logits(z, t):
    """Mean over all entries of -[t log s(z) + (1-t) log(1-s(z))]."""
    return (F.softplus(z) - t * z).mean()


def icarl_bce(z, y, old_logits, n_old):
    """A icarl.py `_compute_loss`: one-hot targets over the seen classes,
    old columns replaced by sigmoid(old model's logits); mean over B x C."""
    t = F.one_hot(y, z.shape[1]).to(z.dtype)
    if old_logits is not None:
        t = torch.cat([torch.sigmoid(old_logits), t[:, n_old:]], dim=1)
    return bce_with_logits(z, t)


def softmax_kd(z_old_cols, z_star, temperature):
    """P icarl.py `_KD_loss`: -(1/B) sum_b sum_c softmax(z*/T) log softmax(z/T),
    no T^2."""
    p = torch.softmax(z_star / temperature, dim=1)
    return -(p * torch.log_softmax(z_old_cols / temperature, dim=1)).sum() / z_old_cols.shape[0]


def sigmoid_kd(z_old_cols, z_star):
    """iCaRL's own distillation: BCE(sigmoid(z_old_cols), sigmoid(z*)) mean
    over B x C_old."""
    return bce_with_logits(z_old_cols, torch.sigmoid(z_star))


def cosine_embedding(a, b, eps):
    """torch cosine_embedding_loss with target +1, mean: 1 - cos(a, b)."""
    cos = (a * b).sum(1) / torch.sqrt((a.pow(2).sum(1) + eps) * (b.pow(2).sum(1) + eps))
    return (1 - cos).mean()


def margin_ranking(cos, y, n_old, k, margin, weight):
    """L incremental_train_and_eval_MR_LF.py: for samples of old classes,
    the ground-truth raw cosine against the top-K new-class cosines,
    MarginRankingLoss mean over H x K pairs; 0 without such samples."""
    hard = y < n_old
    h = int(hard.sum())
    if h == 0:
        return cos.sum() * 0.0
    k = min(k, cos.shape[1] - n_old)
    g = cos.gather(1, y.view(-1, 1))[hard]  # [H, 1]
    top = cos[:, n_old:].topk(k, dim=1)[0][hard]  # [H, K]
    return weight * torch.clamp(margin - g + top, min=0.0).mean()


def nca(z, y, scale, margin, target_margin=False, prior=None, prior_mode=None):
    """A losses/base.py `nca` as coded (exclude_pos_denominator=True): the
    margin subtracted from every class, a max shift (not detached), the
    target column zeroed in the denominator. With BSCE's prior log n_c:
    after_scale a = scale (z - m) + log n; before_scale a = scale (z - m + log n)."""
    if target_margin:
        m = margin * F.one_hot(y, z.shape[1]).to(z.dtype)
    else:
        m = margin
    if prior is not None and prior_mode == "before_scale":
        a = scale * (z - m + prior.view(1, -1))
    else:
        a = scale * (z - m)
        if prior is not None:
            a = a + prior.view(1, -1)
    a = a - a.max(dim=1, keepdim=True)[0]
    onehot = F.one_hot(y, z.shape[1]).to(z.dtype)
    numerator = (a * onehot).sum(1)
    denominator = a - a * onehot
    return -(numerator - torch.log(torch.exp(denominator).sum(-1))).mean()


def pod_spatial(old_maps, maps, reduce="mean"):
    """A distillation.py `pod`, collapse "spatial", normalize True: squared
    activations summed over W (height profile) and over H (width profile),
    concatenated channel-major, one L2 normalisation, unsquared L2 distance,
    batch mean, then mean over the maps."""
    total = 0.0
    for a, b in zip(old_maps, maps):
        a, b = a.pow(2), b.pow(2)
        a = torch.cat([a.sum(dim=3).flatten(1), a.sum(dim=2).flatten(1)], dim=-1)
        b = torch.cat([b.sum(dim=3).flatten(1), b.sum(dim=2).flatten(1)], dim=-1)
        a, b = l2n(a), l2n(b)
        total = total + (a - b).pow(2).sum(-1).sqrt().mean()
    return total / len(maps) if reduce == "mean" else total


# --------------------------------------------------------------------------
# The step.
# --------------------------------------------------------------------------

DEFAULT_ICARL_DISTILLATION = {"kind": "softmax_kd", "temperature": 2.0, "weight": 1.0}


class ProbeError(Exception):
    pass


@dataclass
class Case:
    """Everything the reference needs, as read from a probe folder."""

    spec: dict  # SPEC.json: {"params", "phase", "batch", "image_size", "seed"}
    net: NetSpec
    head: HeadSpec
    blocks: list
    before: dict  # current model, our names
    images: torch.Tensor
    labels: torch.Tensor
    counts: torch.Tensor
    prev_net: NetSpec = None
    prev_head: HeadSpec = None
    prev_blocks: list = None
    previous: dict = None  # old model weights


@dataclass
class StepResult:
    terms: dict
    total: float
    trainable: list
    grads: dict
    grads_unclamped: dict
    after: dict
    bn_train: bool
    lr: float
    momentum: float
    weight_decay: float
    gradient_clamp: object
    info_terms: dict = field(default_factory=dict)


def lr_at_epoch0(base_lr, milestones, gamma):
    passed = sum(1 for m in milestones if 0 >= m)
    return base_lr * gamma**passed


def expected_trainable(case: Case):
    """Variables the step updates (method-formulas.md 3.6, 3.8, 4.4; A
    groupwise_factors old_weights 0; L fc1 lr 0 / wd 0; A#21)."""
    p = case.spec["params"]
    method = p["method"]
    preset = method["preset"]
    phase = case.spec["phase"]
    names = model_variables(case.net, case.head, case.blocks)
    backbone = [n for n, (_, t, _) in names.items() if t and n.startswith(BACKBONE)]
    nb = len(case.blocks)
    all_blocks = [n for n in names if n.startswith(HEAD + "block")]
    newest = [n for n in all_blocks if n.startswith(f"{HEAD}block{nb - 1}.")]
    if phase == "finetune":
        if preset not in ("lucir", "podnet"):
            raise ProbeError(f"preset {preset} has no class-balanced fine-tuning")
        # The head's class blocks, old ones included; backbone and the
        # learned scale (sigma / eta) frozen.
        return sorted(all_blocks)
    if preset in ("finetune", "icarl"):
        return sorted(backbone + all_blocks)
    if preset == "lucir":
        return sorted(backbone + newest + [HEAD + "sigma"])
    if preset == "podnet":
        learned = method.get("hyper", {}).get("learned_scale")
        scale = [HEAD + "eta"] if (learned is None or learned) else []
        return sorted(backbone + newest + scale)
    raise ProbeError(f"unknown preset {preset}")


def expected_bn_train(case: Case):
    if case.spec["phase"] == "main":
        return True
    # PODNet's fine-tuning keeps the network in train() (A base.py
    # train_task); LUCIR's CBF fixes BN (L cbf_...py fix_bn=True).
    return case.spec["params"]["method"]["preset"] == "podnet"


def step(case: Case, dtype=torch.float64, knobs=Knobs()):
    p = case.spec["params"]
    method = p["method"]
    preset = method["preset"]
    hyper = method.get("hyper") or {}
    choices = method.get("bsce_choices") or {}
    phase = case.spec["phase"]
    bsce = bool(method["bsce"])
    start, end = int(p["start"]), int(p["end"])
    n_old, n_new = start, end - start
    has_old = start > 0
    if has_old and case.previous is None:
        raise ProbeError(f"start is {start} but the probe wrote no previous model")
    if sum(case.blocks) != end:
        raise ProbeError(f"model blocks {case.blocks} sum to {sum(case.blocks)}, not end {end}")

    recipe = p["recipe"]
    if phase == "main":
        lr = lr_at_epoch0(recipe["lr"], recipe.get("milestones", []) if recipe["schedule"] == "multistep" else [], recipe["gamma"])
    elif phase == "finetune":
        ft = method.get("finetune")
        if not ft:
            raise ProbeError("phase finetune but params.method.finetune is absent")
        lr = lr_at_epoch0(ft["lr"], ft.get("milestones", []), ft["gamma"])
    else:
        raise ProbeError(f"unknown phase {phase}")
    momentum, wd = float(recipe["momentum"]), float(recipe["weight_decay"])
    clamp = hyper.get("gradient_clamp")

    trainable = expected_trainable(case)
    bn_train = expected_bn_train(case)
    v = {n: t.detach().to(dtype).clone() for n, t in case.before.items()}
    for n in trainable:
        v[n].requires_grad_(True)
    x = case.images.to(dtype)
    y = case.labels.long()
    counts = case.counts.to(dtype)
    prior = torch.log(counts)

    # Old model: frozen, eval mode (BN running statistics), no gradient.
    old = None
    if has_old:
        pv = {n: t.detach().to(dtype) for n, t in case.previous.items()}
        with torch.no_grad():
            ob = backbone_forward(pv, case.prev_net, x, train=False, knobs=knobs)
            of = ob.raw if uses_raw_features(preset) else ob.features
            old = dict(out=ob, logits=logits(pv, case.prev_head, case.prev_blocks, of))

    updates = {}
    with KINKS.current():
        if phase == "finetune":
            with torch.no_grad():
                cb = backbone_forward(v, case.net, x, train=bn_train, updates=updates, knobs=knobs)
        else:
            cb = backbone_forward(v, case.net, x, train=True, updates=updates, knobs=knobs)
    f = cb.raw if uses_raw_features(preset) else cb.features
    sims = similarities(v, case.head, case.blocks, f)

    terms = {}
    info = {}  # terms with no gradient path in this phase (see README)
    if preset == "finetune":
        z = sims
        terms["bsce" if bsce else "ce"] = balanced_softmax_ce(z, y, counts) if bsce else softmax_ce(z, y)
    elif preset == "icarl":
        z = sims
        if not bsce:
            terms["bce"] = icarl_bce(z, y, old["logits"] if has_old else None, n_old)
        else:
            terms["bsce"] = balanced_softmax_ce(z, y, counts)
            if has_old:
                d = choices.get("icarl_distillation") or DEFAULT_ICARL_DISTILLATION
                if d["kind"] == "softmax_kd":
                    terms["kd"] = d["weight"] * softmax_kd(z[:, :n_old], old["logits"], d["temperature"])
                elif d["kind"] == "sigmoid_bce":
                    terms["sigmoid_kd"] = d["weight"] * sigmoid_kd(z[:, :n_old], old["logits"])
                else:
                    raise ProbeError(f"unknown icarl_distillation {d}")
    elif preset == "lucir":
        z = sims * v[HEAD + "sigma"]
        terms["bsce" if bsce else "ce"] = balanced_softmax_ce(z, y, counts) if bsce else softmax_ce(z, y)
        if has_old:
            lam = float(hyper["less_forget"]) * math.sqrt(n_old / n_new)
            lf = lam * cosine_embedding(cb.raw, old["out"].raw, knobs.cos_eps)
            if phase == "main":
                terms["less_forget"] = lf
            else:
                info["less_forget"] = lf
            keep_mr = (not bsce) or choices.get("margin_ranking", True)
            if keep_mr:
                terms["margin_ranking"] = margin_ranking(sims, y, n_old, knobs.mr_k, knobs.mr_margin, knobs.mr_weight)
    elif preset == "podnet":
        learned = hyper.get("learned_scale")
        eta = v[HEAD + "eta"] if (learned is None or learned) else 1.0
        mode = choices.get("nca_prior", "after_scale") if bsce else None
        if mode == "balanced_softmax":
            terms["bsce"] = balanced_softmax_ce(eta * sims, y, counts)
        else:
            terms["nca"] = nca(
                sims, y, eta, knobs.nca_margin, knobs.nca_target_margin, prior if bsce else None, mode
            )
        if has_old:
            factor = math.sqrt(end / n_new)
            flat = float(hyper["pod_flat"]) * factor * cosine_embedding(old["out"].raw, cb.raw, knobs.cos_eps)
            spatial = float(hyper["pod_spatial"]) * factor * pod_spatial(
                old["out"].attention, cb.attention, knobs.pod_spatial_reduce
            )
            if phase == "main":
                terms["pod_flat"], terms["pod_spatial"] = flat, spatial
            else:
                info["pod_flat"], info["pod_spatial"] = flat, spatial
    else:
        raise ProbeError(f"unknown preset {preset}")

    total = sum(terms.values())
    params = [v[n] for n in trainable]
    grads = torch.autograd.grad(total, params, allow_unused=True)
    grad_out, grad_raw, after = {}, {}, {}
    with torch.no_grad():
        for n, t in v.items():
            after[n] = t.detach().clone()
        for n, g in zip(trainable, grads):
            if g is None:  # torch.optim.SGD skips a parameter without a gradient
                continue
            grad_raw[n] = g.detach().clone()
            if clamp is not None and knobs.apply_clamp:
                g = g.clamp(-clamp, clamp)
            grad_out[n] = g.detach().clone()
            d = g + wd * v[n]
            buf = d  # first step of a fresh optimiser: the momentum buffer is d
            after[n] = v[n].detach() - lr * buf
        if bn_train:
            for n, t in updates.items():
                after[n] = t.detach().clone()
    return StepResult(
        terms={k: float(t.detach()) for k, t in terms.items()},
        total=float(total.detach()),
        trainable=trainable,
        grads=grad_out,
        grads_unclamped=grad_raw,
        after=after,
        bn_train=bn_train,
        lr=float(lr),
        momentum=momentum,
        weight_decay=wd,
        gradient_clamp=None if clamp is None else float(clamp),
        info_terms={k: float(t.detach()) for k, t in info.items()},
    )


# --------------------------------------------------------------------------
# Our names -> reference-style PyTorch state-dict keys.
# --------------------------------------------------------------------------

# Backbone component renames. Shortcut A (CIFAR): PyCIL convs/cifar_resnet.py
# `resnet32` (`convnet.` as in PyCIL's IncrementalNet). Shortcut B: LUCIR
# modified_resnet_cifar.py / torchvision resnet18 (A convnet/resnet.py uses
# the same keys for PODNet's ResNet-18).
REFERENCE_NAMES = {
    "a": {
        "stem.conv": "convnet.conv_1_3x3",
        "stem.bn": "convnet.bn_1",
        "stage{s}.block{b}.a.conv": "convnet.stage_{s}.{b}.conv_a",
        "stage{s}.block{b}.a.bn": "convnet.stage_{s}.{b}.bn_a",
        "stage{s}.block{b}.b.conv": "convnet.stage_{s}.{b}.conv_b",
        "stage{s}.block{b}.b.bn": "convnet.stage_{s}.{b}.bn_b",
    },
    "b": {
        "stem.conv": "convnet.conv1",
        "stem.bn": "convnet.bn1",
        "stage{s}.block{b}.a.conv": "convnet.layer{s}.{b}.conv1",
        "stage{s}.block{b}.a.bn": "convnet.layer{s}.{b}.bn1",
        "stage{s}.block{b}.b.conv": "convnet.layer{s}.{b}.conv2",
        "stage{s}.block{b}.b.bn": "convnet.layer{s}.{b}.bn2",
        "stage{s}.block{b}.shortcut.conv": "convnet.layer{s}.{b}.downsample.0",
        "stage{s}.block{b}.shortcut.bn": "convnet.layer{s}.{b}.downsample.1",
    },
    # Heads. linear: PyCIL SimpleLinear `fc` (blocks are row ranges of one
    # matrix); cosine: LUCIR CosineLinear (task 0) / SplitCosineLinear
    # (fc1 = the old blocks' rows, fc2 = the newest block); local
    # similarity: A CosineClassifier (one ParameterList entry per task) and
    # its FactorScalar post-processor.
    "linear": {"block{k}.weight": "fc.weight[rows]", "block{k}.bias": "fc.bias[rows]"},
    "cosine": {"block{k}.weight": "fc.weight | fc.fc1.weight[rows] | fc.fc2.weight", "sigma": "fc.sigma"},
    "local_similarity": {"block{k}.weight": "classifier._weights.{k}", "eta": "post_processor.factor"},
}

_BB = re.compile(r"^backbone\.(stem|stage(\d+)\.block(\d+)\.(a|b|shortcut))\.(conv|bn)\.(.+)$")


def reference_name(name, ns: NetSpec, hs: HeadSpec, blocks):
    m = _BB.match(name)
    if m:
        rules = REFERENCE_NAMES["a" if ns.shortcut == "a" and ns.arch == "cifar_resnet" else "b"]
        if m.group(1) == "stem":
            key = "stem." + m.group(5)
            fmt = {}
        else:
            key = f"stage{{s}}.block{{b}}.{m.group(4)}.{m.group(5)}"
            fmt = {"s": int(m.group(2)), "b": int(m.group(3))}
        if key not in rules:
            return None
        return rules[key].format(**fmt) + "." + m.group(6)
    if not name.startswith(HEAD):
        return None
    rest = name[len(HEAD):]
    if rest == "sigma":
        return "fc.sigma"
    if rest == "eta":
        return "post_processor.factor"
    m = re.match(r"^block(\d+)\.(weight|bias)$", rest)
    if not m:
        return None
    k, what = int(m.group(1)), m.group(2)
    rows = hs.rows_per_class
    lo = sum(blocks[:k]) * rows
    hi = lo + blocks[k] * rows
    if hs.kind == "linear":
        return f"fc.{what}[{lo}:{hi}]"
    if hs.kind == "cosine":
        if len(blocks) == 1:
            return "fc.weight"
        if k == len(blocks) - 1:
            return "fc.fc2.weight"
        return f"fc.fc1.weight[{lo}:{hi}]"
    return f"classifier._weights.{k}"
