"""Wall-clock latency of a callable: warm-up, then median / p99 over many calls (batch 1 is the
deployment case). On CUDA, the device is synchronized around each call so the time is real."""
from __future__ import annotations

import time
from typing import Callable

import numpy as np
import torch


def measure_latency(fn: Callable[[], object], iters: int = 100, warmup: int = 10,
                    max_seconds: float | None = None) -> dict[str, float]:
    """Time ``fn()``; returns {"p50_ms", "p99_ms", "mean_ms", "n"}. ``max_seconds`` caps slow cases."""
    cuda = torch.cuda.is_available()
    for _ in range(warmup):
        fn()
    times = []
    t_start = time.perf_counter()
    for _ in range(iters):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        if max_seconds is not None and time.perf_counter() - t_start > max_seconds and len(times) >= 5:
            break
    ms = np.asarray(times) * 1e3
    return {"p50_ms": float(np.median(ms)), "p99_ms": float(np.percentile(ms, 99)),
            "mean_ms": float(ms.mean()), "n": len(ms)}
