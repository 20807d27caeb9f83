"""The shortcut sampler: N network calls, any tensor shape, no noise injection.

    x_{t+d} = x_t + d * s(x_t, t, d | cond)

``model(x, t, d, cond)`` is any callable with that signature (a network, or a
closure that adds guidance). Step count is a call argument, so one trained
network serves 1, 2, 4, ..., M steps and mixed dyadic budgets in between.
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from .schedule import step_schedule

VelocityFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, Any], torch.Tensor]


@torch.no_grad()
def sample(model: VelocityFn, x0: torch.Tensor, steps: int, cond: Any = None, max_steps: int = 128,
           fixed_d: float | None = None) -> torch.Tensor:
    """Integrate from noise x0 (t=0) to data (t=1) in ``steps`` network calls.

    Args:
        model: (x (B,...), t (B,), d (B,), cond) -> velocity with x's shape.
        x0: initial Gaussian noise (B, ...).
        steps: number of network calls, 1..max_steps (M; powers of two are uniform).
        fixed_d: feed this d to the network at every step instead of the jump size.
            A flow-matching baseline never saw large d, so it is sampled with d fixed
            at its training level 1/M (a fair baseline).
    Returns:
        x1 with x0's shape.
    """
    B = x0.shape[0]
    x = x0
    pos = 0  # position on the 1/M grid
    for jump in step_schedule(steps, max_steps):
        d = jump / max_steps
        t = torch.full((B,), pos / max_steps, dtype=x0.dtype, device=x0.device)  # (B,)
        dd = torch.full((B,), d if fixed_d is None else fixed_d, dtype=x0.dtype, device=x0.device)  # (B,)
        v = model(x, t, dd, cond)  # (B, ...)
        if v.shape != x.shape:
            raise ValueError(f"model returned shape {tuple(v.shape)} for input {tuple(x.shape)}")
        x = x + d * v
        pos += jump
    return x
