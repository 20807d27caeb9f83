"""Objective configs: one typed config per kind, and ``make_objective`` to build the objective from one.

    kind        config            objective            samplers
    shortcut    ShortcutConfig    ShortcutObjective    shortcut (1 .. M network calls)
    flow        FlowConfig        ShortcutObjective    flow (Euler with d fixed at 1/M)
    meanflow    MeanFlowConfig    MeanFlowObjective    meanflow (1 .. M calls, as shortcut)
    ddpm, ddim  DiffusionConfig   DiffusionObjective   ddpm, ddim (the same trained network)

Hydra composes them from ``configs/objective/*.yaml``; ``objective_config(d)`` checks a plain dict and
names what to fix (an unknown field, a field of another kind). Every option here has a measurement
behind it (docs/pusht.md); options whose results lost were removed, and the docs keep the numbers.
M, the number of smallest steps (d = 1/M), is ``max_inference_steps``: the most network calls per
chunk the model is trained for.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Optional, Union

from .embeddings import SMOOTH_D_EMBEDDINGS
from .schedule import check_grid_max_steps, check_max_steps

GRID_TARGETS = ("identity", "consistency")  # what MeanFlow's grid rows learn (core.meanflow)
FLOW_WEIGHTS = ("adaptive", "mean")  # how MeanFlow weights its flow rows (core.meanflow)

KINDS = ("shortcut", "flow", "meanflow", "ddpm", "ddim")
PARAMETERIZATIONS = ("velocity", "endpoint")


@dataclass
class FlowConfig:
    """Plain flow matching: t on the grid {0, 1/M, ..., (M-1)/M}, the network ignores d.

    parameterization: what the network returns: "velocity" (x1 - x0) or "endpoint" (the data
    estimate x^ at t = 1; velocity (x^ - x_t) / (1 - t), loss on x^).
    """
    KINDS: ClassVar[tuple[str, ...]] = ("flow",)
    kind: str = "flow"
    max_inference_steps: int = 128
    parameterization: str = "velocity"

    def __post_init__(self):
        _check_kind(self, self.KINDS)
        try:
            check_max_steps(self.max_inference_steps)
        except ValueError as e:
            raise ValueError(f"objective.max_inference_steps: {e}") from None
        if self.parameterization not in PARAMETERIZATIONS:
            raise ValueError(f"objective.parameterization must be one of {PARAMETERIZATIONS}, "
                             f"got {self.parameterization!r}")


@dataclass
class ShortcutConfig(FlowConfig):
    """Flow matching plus self-consistency (Frans et al. 2025): the network sees d too.

    consistency_fraction: share of each batch trained on two-half-jump targets (the paper's 1/4).
    consistency_weight: loss weight of a consistency example relative to a flow example (PushT:
        4 beats 1 at one call, docs/pusht.md).
    teacher: who builds the consistency targets: "online" (current weights, no-grad) or "ema" (an
        exponential moving average with ``teacher_ema_decay``, the reference's choice; it collapsed
        on PushT at every budget measured, kept for the teacher measurements still to come).
    """
    KINDS: ClassVar[tuple[str, ...]] = ("shortcut",)
    kind: str = "shortcut"
    max_inference_steps: int = 16
    consistency_fraction: float = 0.25
    consistency_weight: float = 4.0
    teacher: str = "online"
    teacher_ema_decay: float = 0.999

    def __post_init__(self):
        super().__post_init__()
        if not 0.0 < self.consistency_fraction < 1.0:
            raise ValueError("objective.consistency_fraction must be in (0, 1) for kind=shortcut "
                             f"(use objective=flow for 0), got {self.consistency_fraction}")
        if not self.consistency_weight > 0:
            raise ValueError(f"objective.consistency_weight must be positive, got {self.consistency_weight}")
        if self.teacher not in ("online", "ema"):
            raise ValueError(f"objective.teacher must be 'online' or 'ema', got {self.teacher!r}")
        if not 0.0 < self.teacher_ema_decay < 1.0:
            raise ValueError(f"objective.teacher_ema_decay must be in (0, 1), got {self.teacher_ema_decay}")


@dataclass
class MeanFlowConfig:
    """MeanFlow (Geng et al. 2025): the network is the average velocity over [t, t + d], trained on the
    MeanFlow identity (one JVP, no teacher); see ``core.meanflow``.

    max_inference_steps: the sampler's finest step 1/M (training covers every d).
    interval_fraction: share of each batch with an interval (d > 0); the rest is flow matching (the paper's 1/4).
    time_mu, time_sigma: logit-normal times (the paper's, in this package's time direction).
    grid_fraction: share of the interval rows drawn on the sampler's dyadic grid instead (0: the paper's).
        The default (half, two half jumps, the one-step jump only) is the recipe that won on Adroit door's
        held-out block and PushT (docs/objectives.md); grid_fraction 0 is the paper's MeanFlow.
    d_embedding: how the network sees d, "unit" (unscaled) or "linear" (on the t scale); see core.embeddings.
    grid_target: what the grid rows learn, "identity" (the JVP target) or "consistency" (two half jumps).
    grid_max_steps: the grid rows draw the jumps of 1, 2, ..., grid_max_steps-step samplers (None: up to M).
    flow_weight: how the flow rows (d = 0) are weighted: "adaptive" (each by its own error, the paper's) or "mean"
        (by their batch mean error: flow matching's squared error, at the adaptive rows' scale).
    PRE_OPTION_VALUES: what a checkpoint saved before each option existed was trained with (d on the t scale,
        no grid rows, grid rows on the identity's target and on every level); see ``with_pre_option_values``.
    """
    PRE_OPTION_VALUES: ClassVar[dict[str, Any]] = {
        "d_embedding": "linear", "grid_fraction": 0.0, "grid_target": "identity", "grid_max_steps": None,
        "flow_weight": "adaptive"}
    kind: str = "meanflow"
    max_inference_steps: int = 16
    interval_fraction: float = 0.25
    time_mu: float = 0.4
    time_sigma: float = 1.0
    grid_fraction: float = 0.5
    d_embedding: str = "unit"
    grid_target: str = "consistency"
    grid_max_steps: Optional[int] = 1
    flow_weight: str = "adaptive"

    def __post_init__(self):
        _check_kind(self, ("meanflow",))
        try:
            check_max_steps(self.max_inference_steps)
        except ValueError as e:
            raise ValueError(f"objective.max_inference_steps: {e}") from None
        if not 0.0 < self.interval_fraction <= 1.0:
            raise ValueError(f"objective.interval_fraction must be in (0, 1], got {self.interval_fraction}")
        if not self.time_sigma > 0:
            raise ValueError(f"objective.time_sigma must be positive, got {self.time_sigma}")
        if not 0.0 <= self.grid_fraction <= 1.0:
            raise ValueError(f"objective.grid_fraction must be in [0, 1], got {self.grid_fraction}")
        if self.d_embedding not in SMOOTH_D_EMBEDDINGS:
            raise ValueError(f"objective.d_embedding must be one of {SMOOTH_D_EMBEDDINGS}, got {self.d_embedding!r}")
        if self.grid_target not in GRID_TARGETS:
            raise ValueError(f"objective.grid_target must be one of {GRID_TARGETS}, got {self.grid_target!r}")
        try:
            check_grid_max_steps(self.grid_max_steps, self.max_inference_steps)
        except ValueError as e:
            raise ValueError(f"objective.{e}") from None
        if self.flow_weight not in FLOW_WEIGHTS:
            raise ValueError(f"objective.flow_weight must be one of {FLOW_WEIGHTS}, got {self.flow_weight!r}")


@dataclass
class DiffusionConfig:
    """Diffusion Policy's DDPM objective (epsilon prediction, squared-cosine schedule, x0 clipped to
    [-1, 1]); kind "ddpm" samples with DDPM at ``num_train_timesteps`` calls by default, "ddim" with
    deterministic DDIM (trailing spacing) at 10. The trained network serves both samplers."""
    kind: str = "ddpm"
    num_train_timesteps: int = 100

    def __post_init__(self):
        _check_kind(self, ("ddpm", "ddim"))
        K = self.num_train_timesteps
        if isinstance(K, bool) or not isinstance(K, int) or K < 1:
            raise ValueError(f"objective.num_train_timesteps must be a positive int, got {K!r}")


ObjectiveConfig = Union[ShortcutConfig, FlowConfig, MeanFlowConfig, DiffusionConfig]
_BY_KIND = {"shortcut": ShortcutConfig, "flow": FlowConfig, "meanflow": MeanFlowConfig, "ddpm": DiffusionConfig,
            "ddim": DiffusionConfig}


def _check_kind(cfg, kinds: tuple[str, ...]) -> None:
    if cfg.kind not in kinds:
        raise ValueError(f"{type(cfg).__name__} is for kind {' / '.join(kinds)}, got kind {cfg.kind!r}")


def with_pre_option_values(d: dict[str, Any] | None) -> dict[str, Any]:
    """A saved objective config with its kind named and every option it predates set to the value it was
    trained with (a kind's ``PRE_OPTION_VALUES``), not to today's default; the options it names are kept.
    A config saved without a kind, or without an objective at all (None), trained the shortcut model,
    the only objective then, whatever today's default is."""
    d = {"kind": "shortcut", **(d or {})}
    return {**getattr(_BY_KIND.get(d["kind"]), "PRE_OPTION_VALUES", {}), **d}


def objective_config(d: dict[str, Any] | ObjectiveConfig) -> ObjectiveConfig:
    """The typed config of ``d["kind"]``; a missing kind, an unknown field, or a field of another kind
    is named. A saved config without a kind gets the one it trained with from ``with_pre_option_values``."""
    if isinstance(d, (ShortcutConfig, FlowConfig, MeanFlowConfig, DiffusionConfig)):
        return d
    if not isinstance(d, dict):
        raise ValueError(f"objective must be a mapping with a 'kind', got {d!r}")
    if "kind" not in d:
        raise ValueError(f"objective must name its kind (one of {KINDS}); got the fields {sorted(d)}")
    kind = d["kind"]
    if kind not in _BY_KIND:
        raise ValueError(f"objective.kind must be one of {KINDS}, got {kind!r}")
    cls = _BY_KIND[kind]
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        others = sorted({k for k, c in _BY_KIND.items() if set(unknown) <= {f.name for f in dataclasses.fields(c)}})
        hint = f" (fields of kind {', '.join(others)})" if others else ""
        raise ValueError(f"objective fields {unknown} do not apply to kind {kind!r}{hint}; "
                         f"fields of {kind}: {sorted(known)}")
    return cls(**d)


def teacher_ema_decay(cfg: ObjectiveConfig) -> float | None:
    """The EMA decay of the consistency targets' teacher, or None for the online teacher (and for
    objectives without consistency targets)."""
    return cfg.teacher_ema_decay if getattr(cfg, "teacher", "online") == "ema" else None


def make_objective(cfg: ObjectiveConfig | dict[str, Any]):
    """The objective of a config: ``loss(model, x1, cond, teacher, teacher_cond)``, ``sample(model, x0,
    n, cond, generator, sampler)`` and what it knows of its own step counts and samplers."""
    from .diffusion import DiffusionObjective
    from .meanflow import MeanFlowObjective
    from .objective import ShortcutObjective

    cfg = objective_config(cfg)
    if isinstance(cfg, DiffusionConfig):
        return DiffusionObjective(num_train_timesteps=cfg.num_train_timesteps, sampler=cfg.kind)
    if isinstance(cfg, MeanFlowConfig):
        return MeanFlowObjective(cfg.max_inference_steps, cfg.interval_fraction, cfg.time_mu, cfg.time_sigma,
                                 cfg.grid_fraction, cfg.d_embedding, cfg.grid_target, cfg.grid_max_steps,
                                 cfg.flow_weight)
    frac = cfg.consistency_fraction if isinstance(cfg, ShortcutConfig) else 0.0
    weight = cfg.consistency_weight if isinstance(cfg, ShortcutConfig) else 1.0
    return ShortcutObjective(cfg.max_inference_steps, frac, consistency_weight=weight,
                             parameterization=cfg.parameterization)
