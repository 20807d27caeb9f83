"""Fixed-length windows over the episodes of a :class:`ReplayBuffer`, with edge padding.

Same semantics as Diffusion Policy's ``common/sampler.py``: a window of
``sequence_length`` steps may start up to ``pad_before`` steps before its episode's first
step and end up to ``pad_after`` steps after its last; the missing steps repeat that
episode's first (resp. last) frame. Windows never reach into a neighbouring episode.
With ``pad_before = n_obs_steps - 1`` the first action of every episode is predicted from
an observation history padded with the initial frame, exactly as at rollout start.

The split helpers draw from ``np.random.default_rng(seed)`` in the same way as Diffusion
Policy, so a given (n_episodes, val_ratio, max_n, seed) selects the same episodes.
"""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from shortcut_policy.data.replay_buffer import ReplayBuffer


def create_indices(
    episode_ends: np.ndarray,
    sequence_length: int,
    pad_before: int = 0,
    pad_after: int = 0,
    episode_mask: np.ndarray | None = None,
) -> np.ndarray:
    """All windows of the selected episodes, as an (N, 4) int64 array.

    Columns: ``buffer_start, buffer_end`` (the real steps taken from the buffer, a
    sub-range of one episode) and ``sample_start, sample_end`` (where those steps land in
    the window; ``[0, sample_start)`` repeats the episode's first frame and
    ``[sample_end, sequence_length)`` its last). Windows are ordered by episode, then by
    start. ``pad_before``/``pad_after`` are clipped to ``sequence_length - 1`` (so every
    window holds at least one real step), as in Diffusion Policy. An episode shorter than
    ``sequence_length - pad_after`` yields no window.
    """
    episode_ends = np.asarray(episode_ends)
    if episode_ends.ndim != 1:
        raise ValueError(f"episode_ends must be 1-D, got shape {episode_ends.shape}")
    if sequence_length < 1:
        raise ValueError(f"sequence_length must be >= 1, got {sequence_length}")
    if pad_before < 0 or pad_after < 0:
        raise ValueError(f"pad_before and pad_after must be >= 0, got {pad_before}, {pad_after}")
    if episode_mask is None:
        episode_mask = np.ones(len(episode_ends), dtype=bool)
    episode_mask = np.asarray(episode_mask)
    if episode_mask.shape != episode_ends.shape or episode_mask.dtype != np.bool_:
        raise ValueError(
            f"episode_mask must be a bool array of shape {episode_ends.shape}, "
            f"got {episode_mask.dtype} {episode_mask.shape}"
        )
    pad_before = min(pad_before, sequence_length - 1)
    pad_after = min(pad_after, sequence_length - 1)

    starts_of_episodes = np.concatenate([[0], episode_ends[:-1]]).astype(np.int64)  # (E,)
    rows = []
    for i in np.flatnonzero(episode_mask):
        offset = int(starts_of_episodes[i])
        length = int(episode_ends[i]) - offset
        # window start relative to the episode's first step, may be negative (padding)
        rel = np.arange(-pad_before, length - sequence_length + pad_after + 1, dtype=np.int64)
        if len(rel) == 0:
            continue
        buffer_start = np.maximum(rel, 0)  # (n,) relative
        buffer_end = np.minimum(rel + sequence_length, length)  # (n,) relative
        sample_start = buffer_start - rel
        sample_end = sample_start + (buffer_end - buffer_start)
        rows.append(np.stack([buffer_start + offset, buffer_end + offset, sample_start, sample_end], 1))
    if not rows:
        return np.zeros((0, 4), dtype=np.int64)
    return np.concatenate(rows).astype(np.int64)


class SequenceSampler:
    """Padded windows of ``sequence_length`` steps from the episodes in ``episode_mask``.

    ``sample_sequence(i)`` returns key -> (sequence_length, ...) arrays (fresh copies,
    so callers may modify them without touching the buffer). ``key_first_k`` limits a key to the
    first k steps of each window (observations: only the n_obs_steps a policy sees are read, which
    matters for images).
    """

    def __init__(
        self,
        buffer: ReplayBuffer,
        sequence_length: int,
        pad_before: int = 0,
        pad_after: int = 0,
        keys: Iterable[str] | None = None,
        episode_mask: np.ndarray | None = None,
        key_first_k: dict[str, int] | None = None,
    ):
        keys = buffer.keys() if keys is None else list(keys)
        missing = [k for k in keys if k not in buffer]
        if missing:
            raise KeyError(f"replay buffer has no key(s) {missing}; keys: {buffer.keys()}")
        self.buffer = buffer
        self.keys = keys
        self.sequence_length = int(sequence_length)
        self.key_first_k = {k: min(int(n), self.sequence_length) for k, n in (key_first_k or {}).items()}
        bad = {k: n for k, n in self.key_first_k.items() if k not in keys or n < 1}
        if bad:
            raise ValueError(f"key_first_k entries must name sampled keys with k >= 1, got {bad}")
        self.indices = create_indices(
            buffer.episode_ends, self.sequence_length, pad_before, pad_after, episode_mask
        )  # (N, 4)

    def __len__(self) -> int:
        return len(self.indices)

    def sample_sequence(self, i: int) -> dict[str, np.ndarray]:
        """Window ``i``: key -> (sequence_length, ...) array."""
        n = len(self.indices)
        if not -n <= i < n:
            raise IndexError(f"window {i} out of range for {n} windows")
        buffer_start, buffer_end, sample_start, _ = (int(v) for v in self.indices[i])
        # Clipping the time index to the real range repeats the edge frames: that is the padding.
        t = np.arange(self.sequence_length) + (buffer_start - sample_start)  # (S,)
        t = np.clip(t, buffer_start, buffer_end - 1)
        return {k: self.buffer[k][t[:self.key_first_k.get(k, self.sequence_length)]] for k in self.keys}


    def sample_batch(self, idx: np.ndarray) -> dict[str, np.ndarray]:
        """Windows ``idx`` (B,) at once: key -> (B, sequence_length, ...) (or the key's first k steps),
        one fancy-indexing gather per key, the same values as ``sample_sequence`` row by row."""
        idx = np.asarray(idx, dtype=np.int64).reshape(-1)
        n = len(self.indices)
        if len(idx) and (idx.min() < -n or idx.max() >= n):
            raise IndexError(f"windows {idx.min()}..{idx.max()} out of range for {n} windows")
        rows = self.indices[idx]  # (B, 4)
        t = np.arange(self.sequence_length)[None] + (rows[:, :1] - rows[:, 2:3])  # (B, S)
        t = np.clip(t, rows[:, :1], rows[:, 1:2] - 1)
        return {k: self.buffer[k][t[:, :self.key_first_k.get(k, self.sequence_length)]] for k in self.keys}


def get_val_mask(n_episodes: int, val_ratio: float, seed: int = 0) -> np.ndarray:
    """(n_episodes,) bool mask of validation episodes.

    ``round(n_episodes * val_ratio)`` episodes, but at least 1 when ``val_ratio > 0`` and
    at most ``n_episodes - 1`` (training keeps one episode).
    """
    if not 0.0 <= val_ratio < 1.0:
        raise ValueError(f"val_ratio must be in [0, 1), got {val_ratio}")
    mask = np.zeros(n_episodes, dtype=bool)
    if val_ratio == 0 or n_episodes < 2:
        return mask
    n_val = min(max(1, round(n_episodes * val_ratio)), n_episodes - 1)
    rng = np.random.default_rng(seed=seed)
    mask[rng.choice(n_episodes, size=n_val, replace=False)] = True
    return mask


def downsample_mask(mask: np.ndarray, max_n: int | None, seed: int = 0) -> np.ndarray:
    """Keep at most ``max_n`` of the True entries of ``mask``, chosen at random with ``seed``.

    Returns a new mask; ``max_n=None`` (or a mask with no more than ``max_n`` True
    entries) returns a copy unchanged.
    """
    mask = np.asarray(mask)
    if mask.dtype != np.bool_:
        raise ValueError(f"mask must be a bool array, got {mask.dtype}")
    if max_n is not None and max_n < 0:
        raise ValueError(f"max_n must be >= 0 or None, got {max_n}")
    chosen = np.flatnonzero(mask)
    if max_n is None or len(chosen) <= max_n:
        return mask.copy()
    rng = np.random.default_rng(seed=seed)
    keep = chosen[rng.choice(len(chosen), size=int(max_n), replace=False)]
    out = np.zeros_like(mask)
    out[keep] = True
    return out
