"""Writes a CIFAR-100-size python-format archive (50,000 + 10,000 random
images, real member layout) to argv[1], or with argv[1] == "--load PATH"
loads one the way torchvision does (pickle + numpy reshape/transpose to
NHWC) and prints the elapsed seconds: the peer of bsce-pipe's prepare stage."""
import io, pickle, sys, tarfile, time
import numpy as np

if sys.argv[1] == "--load":
    t = time.perf_counter()
    with tarfile.open(sys.argv[2], "r:gz") as tar:
        for member in ("cifar-100-python/train", "cifar-100-python/test"):
            d = pickle.load(tar.extractfile(member), encoding="bytes")
            imgs = np.ascontiguousarray(d[b"data"].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            labels = np.asarray(d[b"fine_labels"], dtype=np.uint16)
            assert imgs.shape[0] == labels.shape[0]
        meta = pickle.load(tar.extractfile("cifar-100-python/meta"), encoding="bytes")
        assert len(meta[b"fine_label_names"]) == 100
    print(f"{time.perf_counter() - t:.3f}")
    sys.exit(0)

rng = np.random.default_rng(0)
def split(n, name):
    return {b"filenames": [b"img_%d.png" % i for i in range(n)], b"batch_label": name,
            b"fine_labels": [int(x) for x in rng.integers(0, 100, n)],
            b"coarse_labels": [int(x) for x in rng.integers(0, 20, n)],
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8)}
with tarfile.open(sys.argv[1], "w:gz", compresslevel=1) as tar:
    for name, obj in (("train", split(50000, b"training batch 1 of 1")), ("test", split(10000, b"testing batch 1 of 1")),
                      ("meta", {b"fine_label_names": [b"c%d" % i for i in range(100)], b"coarse_label_names": [b"s%d" % i for i in range(20)]})):
        data = pickle.dumps(obj, protocol=2)
        info = tarfile.TarInfo("cifar-100-python/" + name); info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
