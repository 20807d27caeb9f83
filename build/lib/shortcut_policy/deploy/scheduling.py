"""Which action to send at a tick: timed chunks, stale actions, ACT temporal ensembling, and the
observation history a policy sees. Pure bookkeeping in integer ticks (no clock), so its decisions
are exact and testable (see ``controller`` for the timing model)."""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from ..shape_meta import ShapeMeta, ShapeMetaError


def ensemble_weights(n: int, k: float) -> np.ndarray:
    """ACT's temporal-ensembling weights for ``n`` predictions of one action, OLDEST FIRST.

    w_i = exp(-k i) / sum_j exp(-k j), i = 0 the oldest chunk's prediction. k > 0 weights old
    predictions more (smoother, slower to react), k = 0 is the plain mean, k < 0 favours the newest.
    """
    if n < 1:
        raise ValueError(f"need at least one prediction to ensemble, got n={n}")
    if not math.isfinite(k):
        raise ValueError(f"ensemble k must be finite, got {k}")
    i = np.arange(n, dtype=np.float64)
    logw = -k * i
    w = np.exp(logw - logw.max())  # shifted so a large |k| cannot overflow
    return w / w.sum()


@dataclass
class TimedChunk:
    """Actions (n, A) of one chunk; ``actions[i]`` is due at tick ``first_tick + i``."""

    actions: np.ndarray
    first_tick: int
    seq: int

    @property
    def end_tick(self) -> int:
        """First tick after the chunk."""
        return self.first_tick + len(self.actions)

    def due_times(self, t0: float, dt: float) -> np.ndarray:
        """Wall-clock due time of every action, (n,)."""
        return t0 + (self.first_tick + np.arange(len(self.actions))) * dt


class ActionScheduler:
    """Which action to send at a tick, given the chunks received so far. Pure bookkeeping in
    integer ticks (no floats compared, no clock), so its decisions are exact and testable."""

    def __init__(self, action_dim: int, ensemble_k: float | None = None):
        self.action_dim = int(action_dim)
        self.ensemble_k = ensemble_k
        self.chunks: list[TimedChunk] = []  # oldest (lowest seq) first
        self.last_action: np.ndarray | None = None

    def add_chunk(self, actions: np.ndarray, obs_tick: int, current_tick: int, seq: int) -> int:
        """Store a chunk computed from the observation of ``obs_tick``, arriving at ``current_tick``.

        Actions due before ``current_tick`` are stale and dropped; returns how many were dropped
        (the whole chunk when it is entirely in the past).
        """
        actions = np.asarray(actions, dtype=np.float64)
        if actions.ndim != 2 or actions.shape[1] != self.action_dim:
            raise ValueError(f"a chunk must have shape (n_action_steps, {self.action_dim}), got {actions.shape}")
        if current_tick < obs_tick:
            raise ValueError(f"a chunk cannot arrive (tick {current_tick}) before its observation (tick {obs_tick})")
        stale = min(current_tick - obs_tick, len(actions))
        if stale < len(actions):
            self.chunks.append(TimedChunk(actions[stale:], obs_tick + stale, seq))
            self.chunks.sort(key=lambda c: c.seq)
        self._prune(current_tick)
        return stale

    def _prune(self, tick: int) -> None:
        self.chunks = [c for c in self.chunks if c.end_tick > tick]

    def action_at(self, tick: int) -> tuple[np.ndarray | None, str, int | None]:
        """(action, source, seq of the newest chunk used) for ``tick``.

        source: "chunk" (newest covering chunk), "ensemble" (several chunks weighted), "hold"
        (no chunk covers the tick: the last action sent, None before any).
        """
        self._prune(tick)
        covering = [c for c in self.chunks if c.first_tick <= tick < c.end_tick]  # oldest first
        if not covering:
            return (None if self.last_action is None else self.last_action.copy()), "hold", None
        newest = covering[-1]
        if self.ensemble_k is None or len(covering) == 1:
            action, source = newest.actions[tick - newest.first_tick], "chunk"
        else:
            w = ensemble_weights(len(covering), self.ensemble_k)
            preds = np.stack([c.actions[tick - c.first_tick] for c in covering])  # (n, A), oldest first
            action, source = w @ preds, "ensemble"
        self.last_action = np.array(action, dtype=np.float64)
        return self.last_action.copy(), source, newest.seq


class ObservationHistory:
    """The last ``n_obs_steps`` observations ({key: per-step array} as ``shape_meta`` describes them);
    the first one is repeated after a reset (as the training windows pad an episode start). Rejects
    missing or unknown keys, wrong shapes or dtypes and NaN with a clear error."""

    def __init__(self, n_obs_steps: int, shape_meta: ShapeMeta):
        self.n_obs_steps, self.shape_meta = int(n_obs_steps), shape_meta
        self._buf: deque[dict[str, np.ndarray]] = deque(maxlen=self.n_obs_steps)

    def check(self, obs: Any) -> dict[str, np.ndarray]:
        if isinstance(obs, Mapping):
            obs = {k: np.asarray(v) for k, v in obs.items()}
        try:
            obs = self.shape_meta.check_obs(obs, n_lead=0, lead_names=(), where="get_observation()")
        except ShapeMetaError as e:
            raise ValueError(str(e)) from None
        out = {}
        for key, arr in obs.items():
            spec = self.shape_meta.obs[key]
            arr = np.array(arr, dtype=spec.dtype, copy=True)
            if spec.type == "low_dim" and not np.isfinite(arr).all():
                bad = np.flatnonzero(~np.isfinite(arr.reshape(-1))).tolist()
                raise ValueError(f"observation {key!r} contains NaN or inf at flat indices {bad}; refusing to act on it")
            out[key] = arr
        return out

    def reset(self, obs: Any) -> None:
        arr = self.check(obs)
        self._buf.clear()
        self._buf.extend([arr] * self.n_obs_steps)

    def push(self, obs: Any) -> None:
        if not self._buf:
            self.reset(obs)
        else:
            self._buf.append(self.check(obs))

    def array(self) -> dict[str, np.ndarray]:
        """{key: (1, n_obs_steps, *shape)}, oldest first."""
        return {k: np.stack([o[k] for o in self._buf])[None] for k in self.shape_meta.keys}
