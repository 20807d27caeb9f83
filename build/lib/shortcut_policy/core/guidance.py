"""Classifier-free guidance as a velocity-function wrapper, shared by the teacher and the sampler.

    v_guided = v(x, t, d | null) + scale * (v(x, t, d | cond) - v(x, t, d | null))

scale = 1 is the plain conditional velocity, scale = 0 the unconditional one.

Shortcut models apply guidance only at the flow level (the smallest step d = 1/M): inside the
consistency targets whose half jumps are flow-level teacher calls, so the guided field is distilled
into every larger jump, and at inference only when sampling with the smallest step. A larger jump
has the guidance already baked in; guiding it again would apply it twice. ``only_at_d`` selects
those examples per call, so one closure serves the objective's teacher (mixed levels in one
batch) and the sampler (one level per call) alike.
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from .objective import index_cond
from .sampler import VelocityFn

NullCond = Callable[[Any], Any]


def _cat_cond(a: Any, b: Any) -> Any:
    """Concatenate two conditions of the same structure on dim 0."""
    if isinstance(a, torch.Tensor):
        return torch.cat([a, b], dim=0)
    if isinstance(a, dict):
        return {k: _cat_cond(a[k], b[k]) for k in a}
    if isinstance(a, (list, tuple)):
        return type(a)(_cat_cond(x, y) for x, y in zip(a, b))
    raise TypeError(f"cannot concatenate a condition of type {type(a).__name__}")


def guided_velocity(model: VelocityFn, scale: float, null_cond: NullCond,
                    only_at_d: float | None = None, rtol: float = 1e-4) -> VelocityFn:
    """Wrap ``model`` so that it returns the classifier-free guided velocity.

    Args:
        model: (x (B, ...), t (B,), d (B,), cond) -> velocity (B, ...).
        scale: guidance scale w; 1 returns ``model`` unchanged (no extra network call).
        null_cond: maps a batch condition to the "no condition" one of the same batch
            (e.g. labels -> the null class index everywhere).
        only_at_d: guide only the examples whose step size d equals this value (the flow level
            1/M for shortcut models); the others get the plain conditional velocity. None guides
            every example (a flow-matching model, which only ever sees the flow level).
        rtol: relative tolerance of the d comparison (d arrives in the data's float dtype).
    Returns:
        A VelocityFn with the same signature. Guided examples cost one extra forward, batched
        with the conditional call.
    """
    scale = float(scale)
    if scale == 1.0:
        return model

    def velocity(x: torch.Tensor, t: torch.Tensor, d: torch.Tensor, cond: Any) -> torch.Tensor:
        B = x.shape[0]
        if only_at_d is None:
            mask = torch.ones(B, dtype=torch.bool, device=x.device)
        else:
            mask = torch.isclose(d, torch.full_like(d, only_at_d), rtol=rtol, atol=0.0)  # (B,)
        idx = mask.nonzero(as_tuple=True)[0]  # (n,)
        n = idx.numel()
        if n == 0:
            return model(x, t, d, cond)
        # one batched call: all examples conditional, then the guided ones unconditional
        x_all = torch.cat([x, x[idx]], dim=0)  # (B + n, ...)
        t_all = torch.cat([t, t[idx]], dim=0)  # (B + n,)
        d_all = torch.cat([d, d[idx]], dim=0)  # (B + n,)
        c_all = _cat_cond(cond, null_cond(index_cond(cond, idx)))
        v_all = model(x_all, t_all, d_all, c_all)  # (B + n, ...)
        v_cond, v_null = v_all[:B], v_all[B:]
        v = v_cond.clone()
        v[idx] = v_null + scale * (v_cond[idx] - v_null)
        return v

    return velocity
