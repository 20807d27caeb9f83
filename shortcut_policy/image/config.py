"""Typed config of the image model; a checkpoint stores ``asdict`` of it and is rebuilt from that alone."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..nets.dit import DIT_MODELS
from ..core.config import FlowConfig, MeanFlowConfig, ShortcutConfig, objective_config


@dataclass
class ImageModelConfig:
    """Shape, classes, network and objective of a shortcut (or flow-matching) image model.

    num_classes: K real classes; the null class is K. 0 = unconditional (no labels, no guidance).
    class_dropout: share of training labels replaced by the null class, so one network learns the
        conditional and the unconditional field that classifier-free guidance mixes.
    cfg_scale: guidance scale baked into the flow-level teacher calls of the consistency targets
        and the default at inference (where it is applied only at the flow level). 1 = no guidance.
    """
    channels: int = 1
    height: int = 28
    width: int = 28
    num_classes: int = 10
    net: str = "dit_tiny"
    net_kwargs: dict[str, Any] = field(default_factory=dict)
    objective: ShortcutConfig | FlowConfig | MeanFlowConfig = field(default_factory=ShortcutConfig)
    class_dropout: float = 0.1
    cfg_scale: float = 1.5

    def __post_init__(self):
        self.objective = objective_config(self.objective)
        if self.objective.kind not in ("shortcut", "flow", "meanflow"):
            raise ValueError(f"the image model trains with objective.kind 'shortcut', 'flow' or 'meanflow', "
                             f"got {self.objective.kind!r}")
        for name in ("channels", "height", "width"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"image_model.{name} must be >= 1, got {getattr(self, name)}")
        if self.num_classes < 0:
            raise ValueError(f"image_model.num_classes must be >= 0 (0 = unconditional), got {self.num_classes}")
        if not 0.0 <= self.class_dropout <= 1.0:
            raise ValueError(f"image_model.class_dropout must be in [0, 1], got {self.class_dropout}")
        if self.cfg_scale < 0:
            raise ValueError(f"image_model.cfg_scale must be >= 0, got {self.cfg_scale}")
        if self.net not in DIT_MODELS:
            raise ValueError(f"image_model.net must be one of {sorted(DIT_MODELS)}, got {self.net!r}")
        self.net_kwargs = dict(self.net_kwargs or {})

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.channels, self.height, self.width)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ImageModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown image model config keys {sorted(unknown)}; known: {sorted(known)}")
        return cls(**d)
