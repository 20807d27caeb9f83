"""Typed, validated config of a policy (its objective's config lives in ``core.config``).

Hydra composes plain dicts at the entry points; these dataclasses check them and say what to fix.
A checkpoint stores ``asdict(config)`` so the policy can be rebuilt from the file alone.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..core.config import MeanFlowConfig, ObjectiveConfig, objective_config
from ..shape_meta import ShapeMeta, ShapeMetaError

@dataclass
class PolicyConfig:
    """Shapes, chunking and parts of a policy.

    ``shape_meta`` (a dict as :class:`~shortcut_policy.shape_meta.ShapeMeta` reads it) names the
    observation keys, their shapes and types, and the action; it comes from the task (derived from
    the dataset when the task config does not give it). ``obs_encoder``: the options of the
    observation encoder's vision part (``policy.obs_encoder.ObsEncoder``: out_dim, num_kp, crop_ratio,
    shared, color_jitter, pretrained, width), used when the observation has cameras.
    """
    shape_meta: dict[str, Any] = field(default_factory=dict)
    horizon: int = 16
    n_obs_steps: int = 2
    n_action_steps: int = 8
    obs_encoder: dict[str, Any] = field(default_factory=dict)
    net: str = "unet1d"
    net_kwargs: dict[str, Any] = field(default_factory=dict)
    objective: ObjectiveConfig = field(default_factory=MeanFlowConfig)  # the package default, as configs/train.yaml

    def __post_init__(self):
        self.objective = objective_config(self.objective)
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
        if not isinstance(self.obs_encoder, dict):
            raise ValueError(f"policy.obs_encoder must be a mapping of encoder options (out_dim, num_kp, crop_ratio, "
                             f"shared, color_jitter, pretrained, width), got {self.obs_encoder!r}")
        self.obs_encoder = dict(self.obs_encoder)

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
        return cls(**d)
