"""Make the compact low-dim PushT store shipped in datasets/ from Diffusion Policy's original.

    python datasets/make_pusht_lowdim.py --src <dir>/pusht_cchi_v7_replay.zarr \
        --out datasets/pusht_lowdim.zarr

Keeps data/state, data/keypoint, data/action (float32) and meta/episode_ends (int64),
drops the images and contact counts, writes zarr format 2 with one compressed chunk per
array, then reads the copy back and checks it equals the source bit for bit.
Needs the package importable (``pip install -e .`` or ``PYTHONPATH=.`` from the repo root).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from shortcut_policy.data.replay_buffer import ReplayBuffer

KEYS = ("state", "keypoint", "action")


def make_copy(src: Path, out: Path, overwrite: bool = False) -> ReplayBuffer:
    """Copy the low-dim keys of ``src`` to ``out`` and verify; returns the written buffer."""
    source = ReplayBuffer.from_path(src, keys=KEYS, warn_unverified=False)  # this copy is verified against it
    compact = ReplayBuffer(
        {k: source[k].astype(np.float32) for k in KEYS},
        source.episode_ends.astype(np.int64),
    )
    compact.save(out, zarr_format=2, overwrite=overwrite)

    check = ReplayBuffer.from_path(out)
    if sorted(check.keys()) != sorted(KEYS):
        raise RuntimeError(f"copy holds keys {check.keys()}, expected {list(KEYS)}")
    if not np.array_equal(check.episode_ends, source.episode_ends) or check.episode_ends.dtype != np.int64:
        raise RuntimeError("copy's meta/episode_ends differ from the source")
    for k in KEYS:
        if check[k].dtype != np.float32 or not np.array_equal(check[k], source[k]):
            raise RuntimeError(f"copy's data/{k} differs from the source")
    return check


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--src", type=Path, required=True, help="path to pusht_cchi_v7_replay.zarr")
    parser.add_argument("--out", type=Path, default=Path("datasets/pusht_lowdim.zarr"))
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    args = parser.parse_args(argv)

    buf = make_copy(args.src, args.out, overwrite=args.overwrite)
    files = [p for p in args.out.rglob("*") if p.is_file()]
    size = sum(p.stat().st_size for p in files)
    print(f"wrote {args.out}: {buf.n_episodes} episodes, {buf.n_steps} steps, "
          f"keys {buf.keys()}, {size / 1e6:.2f} MB in {len(files)} files; verified equal to {args.src}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
