"""Reads TensorBoard event files back with the tensorboard package's own
reader (EventAccumulator, as TensorBoard's scalar dashboard does) and prints
every scalar as JSON: {run folder relative to LOGDIR: {tag: [[step, value],
...]}}, a NaN value as null. Used by the e2e tests (tests/e2e/curves.rs).
Usage: python dump.py LOGDIR"""
import json
import math
import os
import sys

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def main(logdir):
    out = {}
    for root, _dirs, files in os.walk(logdir):
        if not any("tfevents" in f for f in files):
            continue
        acc = EventAccumulator(root, size_guidance={"scalars": 0})
        acc.Reload()
        run = {}
        for tag in acc.Tags()["scalars"]:
            run[tag] = [
                [e.step, None if math.isnan(e.value) else e.value]
                for e in acc.Scalars(tag)
            ]
        out[os.path.relpath(root, logdir)] = run
    json.dump(out, sys.stdout, sort_keys=True)


if __name__ == "__main__":
    main(sys.argv[1])
