"""Dyadic step sizes and step schedules shared by the objective and the sampler.

Everything is counted in units of the smallest step 1/M (M = ``max_inference_steps``, a
power of two: the most network calls per chunk), so grids stay exact in any float dtype: a jump
of size d = 2^-k is ``M >> k`` units, and t = units / M.
"""
from __future__ import annotations

import math


def check_max_steps(max_steps: int) -> int:
    """Validate M (``max_inference_steps``) and return log2(M)."""
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 2 or max_steps & (max_steps - 1):
        raise ValueError(f"max_inference_steps (M) must be a power of two >= 2, got {max_steps!r}")
    return int(math.log2(max_steps))


def check_grid_max_steps(grid_max_steps: int | None, max_steps: int) -> int:
    """Validate MeanFlow's ``grid_max_steps`` (a power of two in [1, M]; None: M) and return it."""
    g = max_steps if grid_max_steps is None else grid_max_steps
    if isinstance(g, bool) or not isinstance(g, int) or g < 1 or g & (g - 1) or g > max_steps:
        raise ValueError(f"grid_max_steps must be null or a power of two in [1, {max_steps}], got {grid_max_steps!r}")
    return g


DYADIC_COUNTS = (1, 2, 4, 8, 16, 32, 64, 128)  # the step counts swept, timed and deployed by default


def dyadic_counts(up_to: int) -> list[int]:
    """The default numbers of network calls a sampler with at most ``up_to`` can take (a checkpoint's
    max_inference_steps, or DDIM's training timesteps)."""
    return [n for n in DYADIC_COUNTS if n <= up_to]


def dyadic_step_sizes(max_steps: int) -> list[float]:
    """All step sizes d = 1, 1/2, ..., 1/M (largest first)."""
    n_levels = check_max_steps(max_steps)
    return [2.0 ** -k for k in range(n_levels + 1)]


def step_schedule(steps: int, max_steps: int) -> list[int]:
    """Jumps (in units of 1/M) of a sampler with N = ``steps`` network calls; they sum to M.

    A power of two N gives N equal jumps of M/N units. Any other budget 1 <= N <= M
    is served by a mixed dyadic schedule: start from one jump of the whole interval
    and halve the largest jump until there are N, so every jump is a step size the
    network was trained on (e.g. N=3 -> 1/2, 1/4, 1/4). Larger jumps come first
    (the noisy end, where the flow is straightest).
    """
    check_max_steps(max_steps)
    if not isinstance(steps, int) or isinstance(steps, bool):
        raise TypeError(f"num_inference_steps must be an int, got {steps!r} ({type(steps).__name__})")
    if not 1 <= steps <= max_steps:
        raise ValueError(f"num_inference_steps must be in 1..{max_steps} (the smallest trained step is "
                         f"1/{max_steps}), got {steps}")
    jumps = [max_steps]
    while len(jumps) < steps:
        # halve the largest jump (the first one of the largest size keeps the order big -> small)
        i = max(range(len(jumps)), key=lambda j: (jumps[j], -j))
        half = jumps[i] // 2
        jumps[i:i + 1] = [half, half]
    jumps.sort(reverse=True)
    return jumps
