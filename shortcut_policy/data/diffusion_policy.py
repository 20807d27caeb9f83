"""Diffusion Policy's zarr replay buffers (``pusht_cchi_v7_replay.zarr`` and its kin) as they are.

The layout is already this package's (``data/<key>``, ``meta/episode_ends``), so training reads such a
store directly. Importing copies it into a store of this package's own: images stored as float
0..255 (PushT's ``data/img`` is float32) become uint8 when every value is an integer in range
(lossless, 4x smaller), image arrays are chunked for random access, and checksums are recorded.
"""
from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from .replay_buffer import DatasetError, ReplayBuffer


def as_uint8_images(key: str, arr: np.ndarray) -> np.ndarray:
    """(T, H, W, 3) float images holding integers 0..255 -> uint8; other arrays unchanged."""
    if arr.ndim != 4 or arr.shape[-1] != 3 or not np.issubdtype(arr.dtype, np.floating):
        return arr
    if arr.size and (arr.min() < 0 or arr.max() > 255 or not np.array_equal(arr, np.round(arr))):
        raise DatasetError(f"data/{key} looks like images (T, H, W, 3) but holds values that are not integers "
                           "in 0..255; rescale them to uint8 before importing")
    return arr.astype(np.uint8)


def import_dp_zarr(src: str | os.PathLike, out: str | os.PathLike | None = None, keys: Sequence[str] | None = None,
                   overwrite: bool = False) -> ReplayBuffer:
    """Copy a Diffusion Policy zarr store (``keys``, default all) into this package's format."""
    raw = ReplayBuffer.from_path(src, keys=keys, warn_unverified=False)  # this call makes the verified copy
    buf = ReplayBuffer({k: as_uint8_images(k, v) for k, v in raw.data.items()}, raw.episode_ends, meta=raw.meta,
                       attrs={**raw.attrs, "source": {"format": "diffusion_policy_zarr", "path": str(src)}})
    if out is not None:
        buf.save(out, overwrite=overwrite)
    return buf
