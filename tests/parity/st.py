"""A minimal reader and writer for the safetensors format.

Layout: an 8-byte little-endian unsigned header length N, then N bytes of
JSON (`{name: {"dtype", "shape", "data_offsets": [begin, end]}, ...}`, plus
an optional `__metadata__` map of strings), then the raw little-endian
tensor bytes, offsets relative to the end of the header. Only the dtypes
the probe writes are supported: F32, F64, I64 (and, for reading, I32,
F16, BF16, U8, BOOL, which are cheap to allow).

Used instead of the `safetensors` package, which the project's Python
environment does not have.
"""

import json
import struct

import numpy as np
import torch

_NP = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
_NAME = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.int64: "I64",
}


def load(path):
    """`{name: torch.Tensor}` (CPU, contiguous, copied out of the file)."""
    with open(path, "rb") as f:
        raw = f.read()
    if len(raw) < 8:
        raise ValueError(f"{path}: shorter than a safetensors header")
    (n,) = struct.unpack("<Q", raw[:8])
    if 8 + n > len(raw):
        raise ValueError(f"{path}: header length {n} runs past the file ({len(raw)} bytes)")
    header = json.loads(raw[8 : 8 + n].decode("utf-8"))
    body = memoryview(raw)[8 + n :]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype, shape = info["dtype"], [int(s) for s in info["shape"]]
        begin, end = (int(o) for o in info["data_offsets"])
        if end > len(body) or begin > end:
            raise ValueError(f"{path}: {name} has offsets {begin}..{end} past the data")
        if dtype == "BF16":
            words = np.frombuffer(body[begin:end], dtype="<u2").astype(np.uint32) << 16
            arr = words.view(np.float32).reshape(shape)
            out[name] = torch.from_numpy(arr.copy()).to(torch.bfloat16)
            continue
        if dtype not in _NP:
            raise ValueError(f"{path}: {name} has unsupported dtype {dtype}")
        npd = _NP[dtype]
        count = int(np.prod(shape)) if shape else 1
        if end - begin != count * npd.itemsize:
            raise ValueError(
                f"{path}: {name} is {end - begin} bytes, {dtype}{shape} needs {count * npd.itemsize}"
            )
        arr = np.frombuffer(body[begin:end], dtype=npd).reshape(shape)
        out[name] = torch.from_numpy(arr.astype(npd.newbyteorder("="), copy=True))
    return out


def save(path, tensors, metadata=None):
    """Writes `{name: tensor}` (F32, F64 or I64), names sorted, 8-byte aligned."""
    header = {}
    chunks = []
    offset = 0
    for name in sorted(tensors):
        t = tensors[name]
        if not isinstance(t, torch.Tensor):
            t = torch.as_tensor(t)
        t = t.detach().cpu().contiguous()
        if t.dtype not in _NAME:
            raise ValueError(f"{name}: dtype {t.dtype} is not F32, F64 or I64")
        code = _NAME[t.dtype]
        data = t.numpy().astype(_NP[code], copy=False).tobytes()
        header[name] = {
            "dtype": code,
            "shape": list(t.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        chunks.append(data)
        offset += len(data)
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for c in chunks:
            f.write(c)
