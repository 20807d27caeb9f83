"""The one interface between policies and simulated tasks: ``runner.run(act_fn) -> RolloutResult``.

A policy reaches a runner only as an ``ActFn``, so evaluators never import a simulator and a
new suite (Adroit, Meta-World, robosuite) only adds an ``EnvRunner`` subclass:

    act_fn(obs: {key: (B, n_obs_steps, *shape)}, rows: (B, 2) int64) -> actions: (B, n_action_steps, action_dim)

with the observation keys, shapes and dtypes of the env (``observation_shapes``), which must be
those of the policy's ``shape_meta``. B is the number of episodes still running, so it shrinks
as episodes finish. ``rows`` names each row: its episode seed and the index of this chunk in the
episode. A policy that samples draws row i's noise from rows[i] alone, so an episode's actions do
not depend on which other episodes share the batch.
Numpy only: nothing here imports torch or a simulator.
"""
from __future__ import annotations

import abc
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

ActFn = Callable[[dict[str, np.ndarray], np.ndarray], np.ndarray]


@dataclass
class RolloutResult:
    """Outcome of one ``EnvRunner.run``: one entry per episode, in the order of ``seeds``.

    seeds (N,) int64, scores (N,) float64 (best reward of the episode), successes (N,) bool,
    lengths (N,) int64 (env steps executed), act_times: wall time in s of every act_fn call;
    outcomes: for tasks with several ways to succeed, which one each episode took (a name per episode,
    e.g. TwoCubeLift's "left" / "right" / "neither"), else None. finals: for tasks that describe
    where an episode ended (PushT: the block's position and angle error to the goal, the coverage),
    one dict of numbers per episode, else None.
    """

    seeds: np.ndarray
    scores: np.ndarray
    successes: np.ndarray
    lengths: np.ndarray
    act_times: list[float] = field(default_factory=list)
    outcomes: list[str] | None = None
    finals: list[dict[str, float]] | None = None

    def __post_init__(self):
        self.seeds = np.asarray(self.seeds, dtype=np.int64).reshape(-1)
        self.scores = np.asarray(self.scores, dtype=np.float64).reshape(-1)
        self.successes = np.asarray(self.successes, dtype=bool).reshape(-1)
        self.lengths = np.asarray(self.lengths, dtype=np.int64).reshape(-1)
        self.act_times = [float(t) for t in self.act_times]
        n = len(self.seeds)
        if n == 0:
            raise ValueError("RolloutResult needs at least one episode")
        for name in ("scores", "successes", "lengths"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"RolloutResult.{name} has {len(getattr(self, name))} entries, seeds has {n}")
        if not np.all(np.isfinite(self.scores)):
            raise ValueError(f"RolloutResult.scores must be finite, got {self.scores}")
        if self.outcomes is not None:
            self.outcomes = [str(o) for o in self.outcomes]
            if len(self.outcomes) != n:
                raise ValueError(f"RolloutResult.outcomes has {len(self.outcomes)} entries, seeds has {n}")
        if self.finals is not None:
            self.finals = [{str(k): float(v) for k, v in f.items()} for f in self.finals]
            if len(self.finals) != n:
                raise ValueError(f"RolloutResult.finals has {len(self.finals)} entries, seeds has {n}")

    def outcome_shares(self) -> dict[str, float] | None:
        """Share of episodes per outcome (None when the task names none)."""
        if self.outcomes is None:
            return None
        names, counts = np.unique(np.asarray(self.outcomes), return_counts=True)
        return {str(k): float(c) / self.n_episodes for k, c in zip(names, counts)}

    def outcome_success(self) -> dict[str, float] | None:
        """Success rate of the episodes of each outcome (a multi-task run's per-task success)."""
        if self.outcomes is None:
            return None
        names = np.asarray(self.outcomes)
        return {str(k): float(self.successes[names == k].mean()) for k in np.unique(names)}

    @property
    def n_episodes(self) -> int:
        return len(self.seeds)

    @property
    def score(self) -> float:
        """Mean over episodes of the best reward (Diffusion Policy's test score)."""
        return float(self.scores.mean())

    @property
    def success(self) -> float:
        """Fraction of successful episodes."""
        return float(self.successes.mean())

    @property
    def n_calls(self) -> int:
        return len(self.act_times)

    def act_time_ms(self, q: float) -> float:
        """Percentile ``q`` (0..100) of the act_fn wall time in ms; NaN when act_fn was never called."""
        if not self.act_times:
            return math.nan
        return float(np.percentile(np.asarray(self.act_times), q) * 1e3)

    def to_dict(self) -> dict:
        """JSON-safe summary (plain Python types; a missing percentile is None, not NaN)."""

        def ms(q: float):
            v = self.act_time_ms(q)
            return None if math.isnan(v) else v

        return {
            "n_episodes": self.n_episodes,
            "score": self.score,
            "success": self.success,
            "seeds": self.seeds.tolist(),
            "scores": self.scores.tolist(),
            "successes": self.successes.tolist(),
            "lengths": self.lengths.tolist(),
            "n_calls": self.n_calls,
            "act_time_ms_p50": ms(50),
            "act_time_ms_p99": ms(99),
            "act_times_s": list(self.act_times),
            **({"outcomes": self.outcomes, "outcome_shares": self.outcome_shares()} if self.outcomes is not None else {}),
            **({"finals": self.finals} if self.finals is not None else {}),
        }


class EnvRunner(abc.ABC):
    """Runs a policy, seen only as an ``ActFn``, on a fixed set of seeded episodes.

    Subclasses set ``action_dim, n_obs_steps, n_action_steps`` and implement ``run`` and
    ``observation_shapes``.
    """

    action_dim: int
    n_obs_steps: int
    n_action_steps: int

    @abc.abstractmethod
    def observation_shapes(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        """{key: (per-step shape, dtype)} of the observations act_fn receives."""

    def observe(self, low_dim_keys: list[str]) -> None:
        """Offered the policy's low-dim keys before the first episode: a runner that can observe a chosen
        subset of its keys and was given none takes these; others observe a fixed set and ignore them."""

    @abc.abstractmethod
    def run(
        self,
        act_fn: ActFn,
        seeds: Iterable[int] | None = None,
        progress: bool = True,
        video_dir: str | Path | None = None,
        n_videos: int = 0,
    ) -> RolloutResult:
        """Roll out one episode per seed (default: the runner's own seeds).

        Videos of the first ``n_videos`` episodes go to ``video_dir`` when given.
        """

    def check_actions(self, actions, batch: int) -> np.ndarray:
        """Validate what act_fn returned: (batch, n_action_steps, action_dim) finite -> float64 array."""
        try:
            arr = np.asarray(actions, dtype=np.float64)
        except (TypeError, ValueError) as e:
            raise TypeError(f"act_fn must return an array-like, got {type(actions).__name__}: {e}") from e
        want = (batch, self.n_action_steps, self.action_dim)
        if arr.shape != want:
            raise ValueError(
                f"act_fn returned actions of shape {arr.shape}, expected (B, n_action_steps, action_dim) = {want}"
            )
        if not np.all(np.isfinite(arr)):
            raise ValueError("act_fn returned NaN or inf actions")
        return arr


def normalize_seeds(seeds: Iterable[int]) -> list[int]:
    """Seeds as a non-empty list of Python ints; rejects floats and other types by name."""
    out: list[int] = []
    for s in seeds:
        if isinstance(s, (bool, np.bool_)) or not isinstance(s, (int, np.integer)):
            raise TypeError(f"seeds must be integers, got {s!r} ({type(s).__name__})")
        out.append(int(s))
    if not out:
        raise ValueError("seeds is empty: give at least one episode seed")
    return out


def check_n_videos(n_videos: int, video_dir, seeds: Sequence[int]) -> int:
    """Number of episodes to record (0 when no video_dir); errors on a negative count."""
    if n_videos < 0:
        raise ValueError(f"n_videos must be >= 0, got {n_videos}")
    if video_dir is None:
        return 0
    return min(int(n_videos), len(seeds))
