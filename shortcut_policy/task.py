"""A task: a dataset described by key names, the policy's chunking, and optionally a simulator.

``configs/task/<name>.yaml`` is one :class:`TaskConfig`; a new task is one such file and no
library edit. ``env`` names a runner registered in ``envs`` (closed-loop evaluation); a task
without one (a robot we cannot simulate) trains and is evaluated offline on its validation
episodes.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .data.dataset import SequenceDataset
from .shape_meta import ShapeMeta

PROTOCOL_KEYS = ("runner", "max_episode_steps", "seed_start", "n_episodes")


@dataclass
class TaskConfig:
    """name; dataset (``SequenceDataset`` arguments: path, obs, action, val_ratio, split_seed,
    max_train_episodes, episode_filter, val_filter); chunking; optional shape_meta to check the data
    against; env: {runner, max_episode_steps, seed_start, n_episodes, **runner options} or None (offline)."""

    name: str
    dataset: dict[str, Any]
    horizon: int = 16
    n_obs_steps: int = 2
    n_action_steps: int = 8
    shape_meta: dict[str, Any] | None = None
    env: dict[str, Any] | None = field(default=None)

    def __post_init__(self):
        if not isinstance(self.dataset, dict) or "path" not in self.dataset or "obs" not in self.dataset:
            raise ValueError(f"task {self.name!r}: task.dataset needs at least 'path' and 'obs' (the observation "
                             f"keys), got {self.dataset!r}")
        known = {"path", "obs", "action", "val_ratio", "split_seed", "max_train_episodes", "episode_filter",
                 "val_filter"}
        unknown = set(self.dataset) - known
        if unknown:
            raise ValueError(f"task {self.name!r}: unknown task.dataset keys {sorted(unknown)}; known: {sorted(known)}")
        if self.dataset["path"] in (None, ""):
            raise ValueError(f"task {self.name!r} has no data: set task.dataset.path=<zarr store>")
        if self.env is not None:
            if not isinstance(self.env, dict) or not self.env.get("runner"):
                raise ValueError(f"task {self.name!r}: task.env must name a runner (task.env.runner=...) or be null "
                                 f"for offline evaluation, got {self.env!r}")
        if self.shape_meta is not None:
            ShapeMeta.from_dict(self.shape_meta)  # validate now, with shape_meta's own messages

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TaskConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            old = {"zarr_path": "dataset.path", "obs_dim": "shape_meta (derived from the data)",
                   "max_train_episodes": "dataset.max_train_episodes"}
            hint = "; ".join(f"{k} is now {old[k]}" for k in sorted(unknown) if k in old)
            raise ValueError(f"unknown task config keys {sorted(unknown)}; known: {sorted(known)}"
                             + (f" ({hint})" if hint else ""))
        return cls(**d)

    @property
    def simulated(self) -> bool:
        return self.env is not None


def make_dataset(task: TaskConfig) -> SequenceDataset:
    """The training dataset of ``task`` (validation episodes: ``.get_validation_dataset()``)."""
    return SequenceDataset(**task.dataset, horizon=task.horizon, n_obs_steps=task.n_obs_steps,
                           n_action_steps=task.n_action_steps, shape_meta=task.shape_meta)


def make_runner(task: TaskConfig, shape_meta: ShapeMeta | None = None, n_episodes: int | None = None,
                seed_start: int | None = None, max_envs: int | None = None):
    """The task's closed-loop runner (``envs.make_runner`` of ``task.env.runner``) on seeds
    ``seed_start .. seed_start + n_episodes - 1``, at most ``max_envs`` envs at once (default: the
    task's ``env.max_envs``, else all); its observations are checked against ``shape_meta`` (the
    policy's) when given. Raises for a task without a simulator."""
    if task.env is None:
        raise ValueError(f"task {task.name!r} has no simulator (task.env is null): evaluate it offline")
    from . import envs

    env = dict(task.env)
    n = env.get("n_episodes", 50) if n_episodes is None else n_episodes
    s0 = env.get("seed_start", 100000) if seed_start is None else seed_start
    options = {k: v for k, v in env.items() if k not in PROTOCOL_KEYS}
    if max_envs is not None:
        options["max_envs"] = max_envs
    runner = envs.make_runner(env["runner"], n_obs_steps=task.n_obs_steps, n_action_steps=task.n_action_steps,
                              max_episode_steps=env.get("max_episode_steps", 300), seeds=range(s0, s0 + n),
                              **options)
    if shape_meta is not None:
        runner.observe([k for k, m in shape_meta.obs.items() if m.type == "low_dim"])
        check_runner(runner, shape_meta, env["runner"])
    return runner


def check_runner(runner, shape_meta: ShapeMeta, name: str) -> None:
    """The runner's observations must be exactly the policy's keys, shapes and dtypes."""
    got = runner.observation_shapes()
    want = {k: (v.shape, v.dtype) for k, v in shape_meta.obs.items()}
    if set(got) != set(want) or any(tuple(got[k][0]) != want[k][0] for k in want):
        raise ValueError(f"runner {name!r} observes {{{', '.join(f'{k}: {list(s)}' for k, (s, _) in got.items())}}} "
                         f"but the policy takes {shape_meta.describe()}")
    if runner.action_dim != shape_meta.action_dim:
        raise ValueError(f"runner {name!r} takes {runner.action_dim}-D actions, the policy returns "
                         f"{shape_meta.action_dim}-D ones")
