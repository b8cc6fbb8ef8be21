#!/usr/bin/env python3
"""Runs `bsce-torch probe` on the parity cases and checks each output.

    run_probe.py [--bin PATH] [--dir DIR] [--seed N] [--verbose] [CASE ...]

CASE: names from `specs.py --list` (default: all). The binary defaults to
$CARGO_TARGET_DIR/release/bsce-torch, or ~/.cache/bsce-pipe/target/release/
bsce-torch; it runs under scripts/env.sh (libtorch's library path). Each
case writes DIR/<case>.json (the SPEC) and DIR/<case>/ (the probe's
output); DIR defaults to a fresh temporary folder, kept. Exit 0 when every
case passes.
"""

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import check  # noqa: E402
import specs  # noqa: E402

ENV_SH = os.path.normpath(os.path.join(HERE, "..", "..", "scripts", "env.sh"))


def default_bin():
    target = os.environ.get("CARGO_TARGET_DIR") or os.path.expanduser("~/.cache/bsce-pipe/target")
    return os.path.join(target, "release", "bsce-torch")


def main(argv):
    args = list(argv)

    def opt(name, default=None):
        if name in args:
            i = args.index(name)
            value = args[i + 1]
            del args[i : i + 2]
            return value
        return default

    binary = opt("--bin", default_bin())
    root = opt("--dir") or tempfile.mkdtemp(prefix="bsce-parity-")
    seed = opt("--seed")
    verbose = "--verbose" in args
    args = [a for a in args if a != "--verbose"]
    names = args or list(specs.CASES)
    unknown = [n for n in names if n not in specs.CASES]
    if unknown:
        print(f"unknown cases {unknown}; see specs.py --list", file=sys.stderr)
        return 2
    os.makedirs(root, exist_ok=True)
    results = {}
    for name in names:
        sp = json.loads(json.dumps(specs.CASES[name]))
        if seed is not None:
            sp["seed"] = int(seed)
            sp["params"]["seed"] = int(seed)
        spec_path = os.path.join(root, name + ".json")
        out = os.path.join(root, name)
        with open(spec_path, "w") as f:
            json.dump(sp, f, indent=2)
        shutil.rmtree(out, ignore_errors=True)
        cmd = ["bash", "-c", f'source "{ENV_SH}" && exec "$0" probe "$1" "$2"', binary, spec_path, out]
        run = subprocess.run(cmd, capture_output=True, text=True)
        if run.returncode != 0:
            results[name] = f"probe exit {run.returncode}: {(run.stderr or run.stdout).strip()[-400:]}"
            print(f"ERROR {name}: {results[name]}")
            continue
        buf = io.StringIO()
        try:
            with contextlib.redirect_stdout(buf):
                rep = check.compare(out, verbose=verbose)
            text = buf.getvalue()
            results[name] = "ok" if not rep.fail else f"{len(rep.fail)} failures"
        except Exception as e:  # noqa: BLE001 - report and go on with the next case
            text = buf.getvalue() + f"check.py raised {type(e).__name__}: {e}\n"
            results[name] = "check error"
        lines = text.strip().splitlines()
        print(f"== {name}: {lines[-1] if lines else '(no output)'}")
        if results[name] != "ok" or verbose:
            for line in lines[:-1]:
                print("   " + line)
    ok = sum(1 for r in results.values() if r == "ok")
    print(f"{ok} of {len(names)} cases pass; outputs in {root}")
    return 0 if ok == len(names) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
