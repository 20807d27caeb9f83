"""Exponential moving average of a module's weights.

The rate follows Diffusion Policy / diffusers: ``power`` warm-up, decay_k = 1 - (1 + k) ** -power,
capped at ``max_decay``; early averages follow the weights closely, later ones slowly.
``warmup=False`` uses the constant max_decay from the first update (the shortcut reference's
teacher: 0.999 from step 0).
"""
from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """An exponential moving average of ``model``'s parameters (buffers are copied): ``module`` holds the
    averaged copy; ``update(model)`` after each optimizer step; ``state_dict`` / ``load_state_dict`` resume it."""

    def __init__(self, model: nn.Module, max_decay: float = 0.9999, power: float = 0.75, warmup: bool = True):
        if not 0.0 <= max_decay < 1.0:
            raise ValueError(f"max_decay must be in [0, 1), got {max_decay}")
        if warmup and power <= 0:
            raise ValueError(f"warm-up power must be positive, got {power}")
        self.max_decay, self.power, self.warmup = max_decay, power, warmup
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.step = 0

    def decay(self, step: int) -> float:
        """Decay applied at update number ``step`` (1-based)."""
        if not self.warmup:
            return self.max_decay
        return min(self.max_decay, max(0.0, 1.0 - (1.0 + step) ** -self.power))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One averaging step: a multi-tensor lerp of every parameter (one kernel per group on a GPU rather
        than one per tensor; the same values as a lerp per tensor) and a copy of every buffer."""
        self.step += 1
        beta = self.decay(self.step)
        torch._foreach_lerp_(list(self.module.parameters()), [p.detach() for p in model.parameters()], 1.0 - beta)
        buffers = list(self.module.buffers())
        if buffers:  # normalizer stats, counters: follow the live model
            torch._foreach_copy_(buffers, list(model.buffers()))

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "step": self.step}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.step = int(state["step"])
