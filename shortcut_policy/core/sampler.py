"""The shortcut sampler: N network calls, any tensor shape, no noise injection.

    x_{t+d} = x_t + d * s(x_t, t, d | cond)

``model(x, t, d, cond)`` is any callable with that signature (a network, or a
closure that adds guidance). Step count is a call argument, so one trained
network serves 1, 2, 4, ..., M steps and mixed dyadic budgets in between.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Callable

import numpy as np
import torch

from .schedule import step_schedule

VelocityFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, Any], torch.Tensor]

# Where sampling noise comes from: torch's global generator (None), one generator for the whole
# batch, or one generator per batch row (an evaluation's episodes, so that an episode's noise does not
# depend on which other episodes share its batch).
Noise = torch.Generator | Sequence[torch.Generator] | None


def to_device(x: torch.Tensor, device: str | torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A host tensor (a CPU generator's draw) onto ``device`` without making the host wait: on CUDA it is
    pinned and copied asynchronously (a plain copy from pageable memory waits until the GPU's queue is
    empty); elsewhere a plain ``.to``. The dtype is cast on the host first, so the values do not depend
    on the device."""
    x = x if dtype is None else x.to(dtype)
    device = torch.device(device)
    if device.type == "cuda" and x.device.type == "cpu":
        return x.pin_memory().to(device, non_blocking=True)
    return x.to(device)


def randn(shape: Sequence[int], generator: Noise = None, dtype: torch.dtype = torch.float32,
          device: str | torch.device = "cpu") -> torch.Tensor:
    """Standard normal noise of ``shape`` on ``device``, drawn on the generator's device (a CPU
    generator then works for CUDA data, and the draw does not depend on the data's device). With one
    generator per row, row i is drawn from ``generator[i]`` alone."""
    shape = tuple(shape)
    if generator is None:
        return torch.randn(shape, dtype=dtype, device=device)
    if isinstance(generator, torch.Generator):
        return to_device(torch.randn(shape, generator=generator, dtype=dtype, device=generator.device), device)
    if len(generator) != shape[0]:
        raise ValueError(f"{len(generator)} row generators for a batch of {shape[0]} rows")
    rows = [torch.randn(shape[1:], generator=g, dtype=dtype, device=g.device) for g in generator]
    return to_device(torch.stack(rows), device) if rows else torch.empty(shape, dtype=dtype, device=device)


def row_generators(seed: int, keys: np.ndarray) -> list[torch.Generator]:
    """One CPU generator per row, seeded from ``seed`` and the row's integer key (e.g. its episode seed
    and chunk index, (B, k) int): the same (seed, key) always gives the same noise."""
    keys = np.asarray(keys, dtype=np.int64).reshape(len(keys), -1)
    return [torch.Generator().manual_seed(int(np.random.SeedSequence([int(seed) & (2**63 - 1), *map(int, k)])
                                              .generate_state(2, dtype=np.uint64)[0] >> np.uint64(1)))
            for k in keys]


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
