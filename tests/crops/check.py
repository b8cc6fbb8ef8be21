#!/usr/bin/env python3
"""Checks bsce-pipe's ImageNet data path against torchvision on the original
images (what PODNet's and LUCIR's loaders do).

Usage: check.py MANIFEST.json EVAL_DIR TRAIN_DIR

MANIFEST.json: {"test": [path, ...], "train": [path, ...]}, the original
image of each index of the prepared dataset's splits. EVAL_DIR and
TRAIN_DIR: `bsce-torch crops` outputs (crops.safetensors, draws.json), the
first for evaluation (Resize(256) + CenterCrop(224) expected), the second
for many training draws (RandomResizedCrop's window expected).

1. Evaluation: every pixel of our crop is within one grey level of
   torchvision's Resize(256) + CenterCrop(224) applied with PIL to the
   original (PNG sources: both sides decode the same bytes).
2. Training: the stored image is the whole original at torchvision's
   Resize(256) size; our windows, relative to it, follow torchvision's
   RandomResizedCrop.get_params on the original: the distributions of area
   fraction, aspect ratio and horizontal and vertical window centre agree
   (two-sample Kolmogorov-Smirnov statistic below 0.08 for each image), and
   the windows reach every column and row. The first 50 crops of each
   image equal torchvision's resized_crop of the same window (then the
   flip) on Resize(256) of the original within two grey levels (one from
   the stored image, one from the crop's own resize).
Prints one line per check; exits 1 if any fails.
"""
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision import transforms
from torchvision.transforms import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "parity"))
import st  # noqa: E402  (tests/parity/st.py: the safetensors reader)

KS_LIMIT = 0.08


def ks(a, b):
    """Two-sample Kolmogorov-Smirnov statistic."""
    a, b = np.sort(a), np.sort(b)
    grid = np.concatenate([a, b])
    fa = np.searchsorted(a, grid, side="right") / len(a)
    fb = np.searchsorted(b, grid, side="right") / len(b)
    return float(np.max(np.abs(fa - fb)))


def main():
    manifest = json.loads(Path(sys.argv[1]).read_text())
    eval_dir, train_dir = Path(sys.argv[2]), Path(sys.argv[3])
    failed = []

    pixels = st.load(eval_dir / "crops.safetensors")["pixels"].double().numpy()
    draws = json.loads((eval_dir / "draws.json").read_text())["samples"]
    reference = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224)])
    for k, sample in enumerate(draws):
        original = Image.open(manifest["test"][sample["index"]]).convert("RGB")
        want = np.asarray(reference(original), dtype=np.float64).transpose(2, 0, 1)
        ours = pixels[k]
        if ours.shape != want.shape:
            failed.append(f"eval {original.size}: shape {ours.shape} vs {want.shape}")
            continue
        diff = np.abs(ours - want)
        worst = float(diff.max())
        off = float((np.round(diff) >= 1).mean())
        line = (f"eval  {original.size[0]}x{original.size[1]}: max |ours - torchvision| "
                f"{worst:.3f} grey levels, {100 * off:.2f}% of values off by one")
        print(line)
        if worst > 1.0 + 1e-3:
            failed.append(line)

    crops = st.load(train_dir / "crops.safetensors")["pixels"].double().numpy()
    draws = json.loads((train_dir / "draws.json").read_text())["samples"]
    by_image = {}
    for k, s in enumerate(draws):
        s["k"] = k
        by_image.setdefault(s["index"], []).append(s)
    torch.manual_seed(0)
    for index, samples in sorted(by_image.items()):
        original = Image.open(manifest["train"][index]).convert("RGB")
        W, H = original.size
        h, w = samples[0]["height"], samples[0]["width"]
        resized = transforms.Resize(256)(original)
        if resized.size != (w, h):
            failed.append(f"train {W}x{H}: stored {w}x{h}, torchvision's Resize(256) gives "
                          f"{resized.size[0]}x{resized.size[1]}: not the whole image")
            continue
        side = crops.shape[-1]
        worst_px = 0.0
        for s in samples[:50]:
            d = s["draw"]
            want = F.resized_crop(resized, d["top"], d["left"], d["height"], d["width"], [side, side])
            if d["flip"]:
                want = F.hflip(want)
            want = np.asarray(want, dtype=np.float64).transpose(2, 0, 1)
            worst_px = max(worst_px, float(np.abs(crops[s["k"]] - want).max()))
        line = f"train {W}x{H}: 50 crops, max |ours - torchvision resized_crop| {worst_px:.3f} grey levels"
        print(line)
        if worst_px > 2.0 + 1e-3:
            failed.append(line)

        def stats(windows, H, W):
            t, l, hh, ww = (np.array(v, dtype=np.float64) for v in zip(*windows))
            return {
                "area": hh * ww / (H * W),
                "log_ratio": np.log(ww / hh),
                "x_centre": (l + ww / 2) / W,
                "y_centre": (t + hh / 2) / H,
            }

        ours_w = [(s["draw"]["top"], s["draw"]["left"], s["draw"]["height"], s["draw"]["width"])
                  for s in samples]
        theirs_w = [transforms.RandomResizedCrop.get_params(original, (0.08, 1.0), (3 / 4, 4 / 3))
                    for _ in range(len(samples))]
        ours, theirs = stats(ours_w, h, w), stats(theirs_w, H, W)
        worst = max((ks(ours[key], theirs[key]), key) for key in ours)
        cols = np.zeros(w, bool)
        rows = np.zeros(h, bool)
        for t, l, hh, ww in ours_w:
            cols[l:l + ww] = True
            rows[t:t + hh] = True
        line = (f"train {W}x{H} (stored {w}x{h}), {len(samples)} draws: largest KS statistic "
                f"{worst[0]:.3f} ({worst[1]}); columns reached {cols.mean():.0%}, rows {rows.mean():.0%}")
        print(line)
        if worst[0] > KS_LIMIT or not cols.all() or not rows.all():
            failed.append(line)

    if failed:
        print("crops check FAILED:\n  " + "\n  ".join(failed))
        sys.exit(1)
    print("crops check passed")


if __name__ == "__main__":
    main()
