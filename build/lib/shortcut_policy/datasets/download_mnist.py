"""Download MNIST and write the npz this project reads (x_train, y_train, x_test, y_test; uint8).

For machines without ../shared/data/mnist/mnist.npz. Nothing in the package or the tests downloads at
run time; run this once by hand:

    python datasets/download_mnist.py --out data/mnist.npz
    python scripts/train_image.py image_data.path=$PWD/data/mnist.npz

The four IDX files come from a public MNIST mirror (``--base-url``); their gzip payloads are parsed
directly (magic number, dimensions, uint8 data), with sizes checked.
"""
from __future__ import annotations

import argparse
import gzip
import struct
import urllib.request
from pathlib import Path

import numpy as np

BASE_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
FILES = {"x_train": "train-images-idx3-ubyte.gz", "y_train": "train-labels-idx1-ubyte.gz",
         "x_test": "t10k-images-idx3-ubyte.gz", "y_test": "t10k-labels-idx1-ubyte.gz"}
SIZES = {"x_train": (60000, 28, 28), "y_train": (60000,), "x_test": (10000, 28, 28), "y_test": (10000,)}


def parse_idx(raw: bytes, name: str) -> np.ndarray:
    """An IDX file (uint8 payload) -> array with the dimensions of its header."""
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{name}: not an unsigned-byte IDX file (header {raw[:4]!r})")
    dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{name}: {data.size} bytes of data for dimensions {dims}")
    return data.reshape(dims)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="data/mnist.npz")
    ap.add_argument("--base-url", default=BASE_URL)
    args = ap.parse_args()
    arrays = {}
    for key, fname in FILES.items():
        url = args.base_url.rstrip("/") + "/" + fname
        print(f"downloading {url}")
        with urllib.request.urlopen(url, timeout=60) as r:
            arrays[key] = parse_idx(gzip.decompress(r.read()), fname)
        if arrays[key].shape != SIZES[key]:
            raise ValueError(f"{fname}: shape {arrays[key].shape}, expected {SIZES[key]}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, **arrays)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
