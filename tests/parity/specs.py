"""The parity cases: SPEC.json documents for `bsce-torch probe`.

Each case is a TrainParams (pipeline/src/params.rs) with the CIFAR-100
recipe and loss weights of its preset (pipeline/src/config/presets.rs
defaults), a phase, a batch of 8 and 32-pixel images.

    specs.py --list               case names
    specs.py --write DIR          one DIR/<case>.json per case
"""

import copy
import json
import os
import sys

RECIPES = {
    # name: (epochs, lr, weight_decay, schedule, milestones, gamma)
    "finetune": (160, 0.1, 5e-4, "multistep", [80, 120], 0.1),
    "icarl": (70, 2.0, 1e-5, "multistep", [49, 63], 0.2),
    "icarl_bsce": (160, 0.1, 5e-4, "multistep", [80, 120], 0.1),
    "lucir": (160, 0.1, 5e-4, "multistep", [80, 120], 0.1),
    "podnet": (160, 0.1, 5e-4, "cosine", [], 0.1),
}

HYPER = {
    "finetune": {},
    "icarl": {},
    "lucir": {"less_forget": 5.0},
    "podnet": {
        "pod_flat": 1.0,
        "pod_spatial": 3.0,
        "classifier_scaling": 1.0,
        "learned_scale": True,
        "gradient_clamp": 5.0,
    },
}

AUGMENT = {"finetune": "cifar_lucir", "icarl": "cifar_lucir", "lucir": "cifar_lucir", "podnet": "cifar_podnet"}


def train_params(preset, bsce, start=2, end=4, task=None, network="tiny", finetune=False,
                 nca_prior="after_scale", margin_ranking=True, icarl_distillation=None,
                 hyper=None):
    task = (0 if start == 0 else 1) if task is None else task
    method = {
        "preset": preset,
        "bsce": bsce,
        "balanced_finetune": finetune,
        "memory_per_class": 20,
        "memory_total": None,
        "selection": "herding",
        "features": "post_activation" if preset == "finetune" else "pre_activation",
        "hyper": copy.deepcopy(HYPER[preset]),
    }
    if hyper:
        method["hyper"].update(hyper)
    if finetune:
        lr, milestones = (0.01, [10]) if preset == "lucir" else (0.05, [])
        method["finetune"] = {"epochs": 20, "lr": lr, "milestones": milestones, "gamma": 0.1}
    if bsce:
        choices = {}
        if preset == "podnet":
            choices["nca_prior"] = nca_prior
        if preset == "lucir" and start > 0:
            choices["margin_ranking"] = margin_ranking
        if preset == "icarl" and start > 0:
            choices["icarl_distillation"] = icarl_distillation or {
                "kind": "softmax_kd", "temperature": 2.0, "weight": 1.0,
            }
        if choices:
            method["bsce_choices"] = choices
    epochs, lr, wd, schedule, milestones, gamma = RECIPES[
        "icarl_bsce" if (preset == "icarl" and bsce) else preset
    ]
    return {
        "task": task,
        "start": start,
        "end": end,
        "method": method,
        "recipe": {
            "epochs": epochs,
            "batch_size": 128,
            "lr": lr,
            "momentum": 0.9,
            "weight_decay": wd,
            "schedule": schedule,
            "milestones": milestones,
            "gamma": gamma,
        },
        "network": network,
        "augment": AUGMENT[preset],
        "seed": 0,
        "deterministic": True,
    }


def spec(params, phase="main", batch=8, image_size=32, seed=0):
    return {"params": params, "phase": phase, "batch": batch, "image_size": image_size, "seed": seed}


def _cases():
    c = {}
    # The first probe target, then every preset at task 1 (2 old, 2 new).
    c["finetune_t0"] = spec(train_params("finetune", False, start=0, end=2))
    for preset in ("finetune", "icarl", "lucir", "podnet"):
        for bsce in (False, True):
            c[f"{preset}_t1{'_bsce' if bsce else ''}"] = spec(train_params(preset, bsce))
    # Base tasks.
    c["icarl_t0"] = spec(train_params("icarl", False, start=0, end=2))
    c["icarl_t0_bsce"] = spec(train_params("icarl", True, start=0, end=2))
    c["lucir_t0"] = spec(train_params("lucir", False, start=0, end=2))
    c["podnet_t0"] = spec(train_params("podnet", False, start=0, end=2))
    c["podnet_t0_bsce"] = spec(train_params("podnet", True, start=0, end=2))
    # BSCE choices.
    c["icarl_t1_bsce_sigmoid"] = spec(
        train_params("icarl", True, icarl_distillation={"kind": "sigmoid_bce", "weight": 1.0})
    )
    c["icarl_t1_bsce_kd_t3"] = spec(
        train_params("icarl", True, icarl_distillation={"kind": "softmax_kd", "temperature": 3.0, "weight": 0.5})
    )
    c["lucir_t1_bsce_no_mr"] = spec(train_params("lucir", True, margin_ranking=False))
    c["podnet_t1_bsce_before"] = spec(train_params("podnet", True, nca_prior="before_scale"))
    c["podnet_t1_bsce_softmax"] = spec(train_params("podnet", True, nca_prior="balanced_softmax"))
    # PODNet's NME configuration (scaling 3, no learned eta, POD-spatial 5)
    # and a clamp small enough to bite.
    c["podnet_t1_nme"] = spec(
        train_params("podnet", False, hyper={"classifier_scaling": 3.0, "learned_scale": False, "pod_spatial": 5.0})
    )
    c["podnet_t1_clamp"] = spec(train_params("podnet", False, hyper={"gradient_clamp": 0.01}))
    # Class-balanced fine-tuning.
    c["lucir_t1_finetune"] = spec(train_params("lucir", False, finetune=True), phase="finetune")
    c["lucir_t1_finetune_bsce"] = spec(train_params("lucir", True, finetune=True), phase="finetune")
    c["podnet_t1_finetune"] = spec(train_params("podnet", False, finetune=True), phase="finetune")
    c["podnet_t1_finetune_bsce"] = spec(train_params("podnet", True, finetune=True), phase="finetune")
    # Later task, several old blocks.
    c["lucir_t2"] = spec(train_params("lucir", False, start=4, end=6, task=2))
    c["podnet_t2"] = spec(train_params("podnet", False, start=4, end=6, task=2))
    # One new class (LUCIR's K capped at 1), later iCaRL and fine-tuning
    # tasks, the clamp in PODNet's fine-tuning, LUCIR+BSCE's CBF without MR.
    c["lucir_t1_one_new"] = spec(train_params("lucir", False, start=2, end=3))
    c["podnet_t1_one_new"] = spec(train_params("podnet", False, start=2, end=3))
    c["icarl_t2"] = spec(train_params("icarl", False, start=4, end=6, task=2))
    c["icarl_t2_bsce"] = spec(train_params("icarl", True, start=4, end=6, task=2))
    c["finetune_t2_bsce"] = spec(train_params("finetune", True, start=4, end=6, task=2))
    c["podnet_t1_finetune_clamp"] = spec(
        train_params("podnet", False, finetune=True, hyper={"gradient_clamp": 0.01}), phase="finetune"
    )
    c["lucir_t1_finetune_bsce_no_mr"] = spec(
        train_params("lucir", True, finetune=True, margin_ranking=False), phase="finetune"
    )
    c["podnet_t0_bsce_before"] = spec(train_params("podnet", True, start=0, end=2, nca_prior="before_scale"))
    # The real networks.
    c["lucir_t1_resnet32_lucir"] = spec(train_params("lucir", False, network="resnet32_lucir"))
    c["podnet_t1_resnet32"] = spec(train_params("podnet", False, network="resnet32"))
    c["icarl_t1_small"] = spec(train_params("icarl", False, network="small"))
    # 64 px: at 32 px torchvision's ResNet-18 ends at 1x1, where train-mode
    # BatchNorm over 8 values makes float32 gradients too noisy for 1e-5.
    c["lucir_t1_resnet18"] = spec(train_params("lucir", False, network="resnet18"), image_size=64)
    # PODNet's stride-1 stem already ends at 2x2 from 32 px.
    c["podnet_t1_resnet18_podnet"] = spec(train_params("podnet", False, network="resnet18_podnet"))
    return c


CASES = _cases()


def main(argv):
    if argv[:1] == ["--list"]:
        print("\n".join(CASES))
        return 0
    if len(argv) == 2 and argv[0] == "--write":
        os.makedirs(argv[1], exist_ok=True)
        for name, s in CASES.items():
            with open(os.path.join(argv[1], name + ".json"), "w") as f:
                json.dump(s, f, indent=2)
                f.write("\n")
        print(f"wrote {len(CASES)} specs to {argv[1]}")
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
