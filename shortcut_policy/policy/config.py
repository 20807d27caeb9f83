"""Typed, validated configs for the policy and its generative objective.

Hydra composes plain dicts at the entry points; these dataclasses check them and say what to fix.
A checkpoint stores ``asdict(config)`` so the policy can be rebuilt from the file alone.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..shape_meta import ShapeMeta, ShapeMetaError

OBJECTIVES = ("shortcut", "flow", "ddpm", "ddim")


@dataclass
class ObjectiveConfig:
    """Which generative objective trains the network and how it samples.

    kind: "shortcut" (flow + self-consistency), "flow" (plain flow matching: consistency 0,
    network ignores d), "ddpm" / "ddim" (Diffusion Policy baseline; same training, two samplers).
    """
    kind: str = "shortcut"
    max_steps: int = 128
    consistency_fraction: float = 0.25
    level_weights: list[float] | None = None
    clip: float | None = None
    # loss weight of a consistency example relative to a flow example (1 = plain MSE over the batch)
    consistency_weight: float = 1.0
    # what the network returns: "velocity" (the jump's average velocity) or "endpoint" (the data
    # estimate x^ at t = 1, velocity (x^ - x_t) / (1 - t)) or "landing" (velocity, except that a jump
    # that ends at t = 1 returns its landing point); flow and shortcut kinds only
    parameterization: str = "velocity"
    # where the loss is measured: "velocity" or "endpoint" (x^, i.e. weight (1 - t)^2); None = follow
    # the parameterization
    loss_space: str | None = None
    # teacher of the consistency targets: "online" (current weights, no-grad) or "ema"
    teacher: str = "online"
    teacher_ema_decay: float = 0.999
    # EMA teacher only: ramp its decay up from 0 (power-0.75 warm-up, capped at teacher_ema_decay)
    # instead of applying the full decay from the first update
    teacher_ema_warmup: bool = False
    # diffusion baseline
    num_train_timesteps: int = 100
    beta_schedule: str = "squaredcos_cap_v2"
    prediction_type: str = "epsilon"
    # "trailing" starts every DDIM schedule at the noisiest step (fair at 1..10 steps);
    # "leading" is diffusers' default, as in Diffusion Policy
    timestep_spacing: str = "trailing"
    # how d reaches the network: "log2" | "linear"; baselines force "none"
    d_embedding: str = "log2"

    def __post_init__(self):
        if self.kind not in OBJECTIVES:
            raise ValueError(f"objective.kind must be one of {OBJECTIVES}, got {self.kind!r}")
        if self.teacher not in ("online", "ema"):
            raise ValueError(f"objective.teacher must be 'online' or 'ema', got {self.teacher!r}")
        if not 0.0 < self.teacher_ema_decay < 1.0:
            raise ValueError(f"objective.teacher_ema_decay must be in (0, 1), got {self.teacher_ema_decay}")
        if self.kind == "shortcut" and not 0.0 < self.consistency_fraction < 1.0:
            raise ValueError("objective.consistency_fraction must be in (0, 1) for kind=shortcut "
                             f"(use kind=flow for 0), got {self.consistency_fraction}")
        if not self.consistency_weight > 0:
            raise ValueError(f"objective.consistency_weight must be positive, got {self.consistency_weight}")
        if self.parameterization not in ("velocity", "endpoint", "landing"):
            raise ValueError("objective.parameterization must be 'velocity', 'endpoint' or 'landing', "
                             f"got {self.parameterization!r}")
        if self.parameterization != "velocity" and self.kind not in ("shortcut", "flow"):
            raise ValueError(f"objective.parameterization={self.parameterization!r} applies to kind shortcut or flow; "
                             f"kind {self.kind!r} sets its output with prediction_type")
        if self.loss_space not in (None, "velocity", "endpoint"):
            raise ValueError(f"objective.loss_space must be 'velocity', 'endpoint' or null, got {self.loss_space!r}")
        if self.loss_space is not None and self.kind not in ("shortcut", "flow"):
            raise ValueError(f"objective.loss_space={self.loss_space!r} applies to kind shortcut or flow; "
                             f"kind {self.kind!r} has its own loss")
        if self.d_embedding not in ("log2", "linear"):
            raise ValueError(f"objective.d_embedding must be 'log2' or 'linear', got {self.d_embedding!r}")

    @property
    def net_d_embedding(self) -> str:
        return self.d_embedding if self.kind == "shortcut" else "none"

    @property
    def default_steps(self) -> int:
        """Network calls per chunk when the caller does not say: 1 for shortcut, the usual for the rest."""
        return {"shortcut": 1, "flow": 16, "ddpm": self.num_train_timesteps, "ddim": 10}[self.kind]


@dataclass
class PolicyConfig:
    """Shapes, chunking and parts of a policy.

    ``shape_meta`` (a dict as :class:`~shortcut_policy.shape_meta.ShapeMeta` reads it) names the
    observation keys, their shapes and types, and the action; it comes from the task (derived from
    the dataset when the task config does not give it).
    """
    shape_meta: dict[str, Any] = field(default_factory=dict)
    horizon: int = 16
    n_obs_steps: int = 2
    n_action_steps: int = 8
    obs_encoder: str = "lowdim"
    net: str = "unet1d"
    net_kwargs: dict[str, Any] = field(default_factory=dict)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    normalizer_mode: str = "limits"

    def __post_init__(self):
        if isinstance(self.objective, dict):
            self.objective = ObjectiveConfig(**self.objective)
        try:
            self.shape_meta = ShapeMeta.from_dict(self.shape_meta).to_dict()
        except ShapeMetaError as e:
            raise ValueError(f"policy.shape_meta: {e}") from None
        for name in ("horizon", "n_obs_steps", "n_action_steps"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"policy.{name} must be >= 1, got {getattr(self, name)}")
        if self.n_obs_steps - 1 + self.n_action_steps > self.horizon:
            raise ValueError(
                f"policy.horizon ({self.horizon}) must cover n_obs_steps - 1 + n_action_steps "
                f"({self.n_obs_steps - 1 + self.n_action_steps}): the executed actions start at the last "
                "observed step")
        self.net_kwargs = dict(self.net_kwargs or {})

    @property
    def meta(self) -> ShapeMeta:
        """``shape_meta`` as a :class:`ShapeMeta`."""
        return ShapeMeta.from_dict(self.shape_meta)

    @property
    def action_dim(self) -> int:
        return self.meta.action_dim

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PolicyConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            hint = (" (obs_dim / action_dim: a checkpoint or config from before shape_meta; retrain, or give "
                    "policy.shape_meta)" if {"obs_dim", "action_dim"} & unknown else "")
            raise ValueError(f"unknown policy config keys {sorted(unknown)}; known: {sorted(known)}{hint}")
        d = dict(d)
        if isinstance(d.get("objective"), dict):
            okeys = {f.name for f in dataclasses.fields(ObjectiveConfig)}
            bad = set(d["objective"]) - okeys
            if bad:
                raise ValueError(f"unknown objective config keys {sorted(bad)}; known: {sorted(okeys)}")
            d["objective"] = ObjectiveConfig(**d["objective"])
        return cls(**d)
