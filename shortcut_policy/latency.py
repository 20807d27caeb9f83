"""Wall-clock latency of a callable: warm-up, then median / p99 over many calls. The one timer of the
package: the step sweep, the latency benchmark and the controller's step budget all use it.

Numpy only (a robot computer running an ONNX export has no torch): on CUDA, pass ``sync`` (e.g.
``torch.cuda.synchronize``) so that the time of an asynchronous call is real.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .deploy.clocks import Clock, RealClock


def measure_latency(fn: Callable[[], Any], iters: int = 100, warmup: int = 10, max_seconds: float | None = None,
                    clock: Clock | None = None, sync: Callable[[], Any] | None = None,
                    quantile: float = 99.0) -> dict[str, float]:
    """Time ``fn()``: {"p50_ms", "p99_ms" (the ``quantile``), "mean_ms", "n"}.

    ``max_seconds`` caps slow cases (at least 5 calls are timed); ``clock`` replaces the wall clock
    (tests use a fake one); ``sync`` is called before and after each timed call.
    """
    clock = clock or RealClock(spin_s=0.0)
    for _ in range(warmup):
        fn()
    times = []
    t_start = clock.now()
    for _ in range(iters):
        if sync is not None:
            sync()
        t0 = clock.now()
        fn()
        if sync is not None:
            sync()
        times.append(clock.now() - t0)
        if max_seconds is not None and clock.now() - t_start > max_seconds and len(times) >= 5:
            break
    ms = np.asarray(times) * 1e3
    return {"p50_ms": float(np.median(ms)), "p99_ms": float(np.percentile(ms, quantile)),
            "mean_ms": float(ms.mean()), "n": len(ms)}


def with_control_rate(row: dict[str, float], n_action_steps: int) -> dict[str, float]:
    """``row`` plus the fastest control loop a chunk of that latency allows: n_action_steps / latency."""
    return {**row, "control_rate_hz_p50": n_action_steps / (row["p50_ms"] / 1e3),
            "control_rate_hz_p99": n_action_steps / (row["p99_ms"] / 1e3)}


def torch_sync(device: Any) -> Callable[[], Any] | None:
    """The synchronize function of a torch device, or None where calls are synchronous (CPU)."""
    import torch

    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.synchronize
    if dev.type == "mps":
        return torch.mps.synchronize
    return None
