"""Pickles for the CIFAR-100 reader's tests, written and read by real numpy.

    pickle_fixtures.py write STYLE PROTOCOL DEFECT RAW OUT
    pickle_fixtures.py check RAW PICKLES

RAW holds, for each split s in (train, test), s.chw (N x 3072 uint8, CHW
rows), s.fine and s.coarse (N uint8 each), plus fine_label_names.txt and
coarse_label_names.txt. `write` pickles them into OUT/{train,test,meta} with
the official dict layout; `check` loads PICKLES/{train,test,meta} the way
the official files are loaded and exits non-zero unless they match RAW.

STYLE py2 reproduces what Python 2's cPickle wrote for the official archive
(str as STRING/BINSTRING, numpy.core.multiarray, dtype('u1', 0, 1)); py3 is
what pickle.dump writes today. DEFECT (none, shape, width, dtype, count,
range) breaks the train split in one way.
"""

import pickle
import struct
import sys
from pathlib import Path

import numpy as np


class Py2Pickler(pickle._Pickler):
    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2_str(self, obj):
        if self.proto == 0:
            self.write(pickle.STRING + repr(obj)[1:].encode("ascii") + b"\n")
        elif len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str

    def reducer_override(self, obj):
        if type(obj) is np.ndarray:
            reconstruct = obj.__reduce__()[0]
            state = (1, obj.shape, obj.dtype, False, obj.tobytes())
            return (reconstruct, (np.ndarray, (0,), b"b"), state)
        if isinstance(obj, np.dtype):
            order, code = obj.str[:1].encode(), obj.str[1:].encode()
            return (np.dtype, (code, 0, 1), (3, order, None, None, None, -1, -1, 0))
        return NotImplemented

    def save_global(self, obj, name=None):
        module = obj.__module__.replace("numpy._core", "numpy.core")
        name = name or obj.__qualname__
        self.write(pickle.GLOBAL + f"{module}\n{name}\n".encode())
        self.memoize(obj)


def raw(raw_dir, split):
    chw = np.frombuffer((raw_dir / f"{split}.chw").read_bytes(), dtype=np.uint8)
    fine = list((raw_dir / f"{split}.fine").read_bytes())
    coarse = list((raw_dir / f"{split}.coarse").read_bytes())
    return chw.reshape(len(fine), 3072), fine, coarse


def names(raw_dir, kind):
    return (raw_dir / f"{kind}_label_names.txt").read_bytes().split()


def split_dict(raw_dir, split):
    data, fine, coarse = raw(raw_dir, split)
    fine_names = names(raw_dir, "fine")
    batch = b"training batch 1 of 1" if split == "train" else b"testing batch 1 of 1"
    return {
        b"filenames": [
            (fine_names[f] if f < 100 else b"image") + b"_s_%06d.png" % i
            for i, f in enumerate(fine)
        ],
        b"batch_label": batch,
        b"fine_labels": fine,
        b"coarse_labels": coarse,
        b"data": data,
    }


def meta_dict(raw_dir):
    return {
        b"fine_label_names": names(raw_dir, "fine"),
        b"coarse_label_names": names(raw_dir, "coarse"),
    }


def break_split(d, defect):
    data = d[b"data"]
    if defect == "shape":
        d[b"data"] = data.reshape(len(data), 3, 1024)
    elif defect == "width":
        d[b"data"] = np.ascontiguousarray(data[:, :3071])
    elif defect == "dtype":
        d[b"data"] = data.astype(np.int16)
    elif defect == "count":
        d[b"fine_labels"] = d[b"fine_labels"][:-1]
    elif defect == "range":
        d[b"fine_labels"][0] = 100
    elif defect != "none":
        sys.exit(f"unknown defect {defect}")


def write(style, protocol, defect, raw_dir, out):
    out.mkdir(parents=True, exist_ok=True)
    dicts = {
        "train": split_dict(raw_dir, "train"),
        "test": split_dict(raw_dir, "test"),
        "meta": meta_dict(raw_dir),
    }
    break_split(dicts["train"], defect)
    for member, d in dicts.items():
        with open(out / member, "wb") as f:
            if style == "py2":
                Py2Pickler(f, protocol=protocol).dump(d)
            elif style == "py3":
                pickle.dump(d, f, protocol=protocol)
            else:
                sys.exit(f"unknown style {style}")


def check(raw_dir, pickles):
    def load(member):
        with open(pickles / member, "rb") as f:
            return pickle.load(f, encoding="bytes")

    for split in ("train", "test"):
        got, want = load(split), split_dict(raw_dir, split)
        assert list(got) == list(want), (split, list(got))
        data = got.pop(b"data")
        assert data.dtype == np.uint8 and data.flags.c_contiguous, (split, data.dtype)
        assert np.array_equal(data, want.pop(b"data")), split
        assert got == want, (split, got)
    assert load("meta") == meta_dict(raw_dir)
    print("numpy reads the pickles as the official ones")


if __name__ == "__main__":
    if sys.argv[1] == "write":
        style, protocol, defect, raw_dir, out = sys.argv[2:]
        write(style, int(protocol), defect, Path(raw_dir), Path(out))
    else:
        check(Path(sys.argv[2]), Path(sys.argv[3]))
