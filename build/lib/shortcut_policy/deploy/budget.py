"""The step budget of a deployment: measure the chunk latency at each number of network calls and pick
the largest that fits a deadline (``--steps auto``)."""
from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np

from ..latency import measure_latency
from .clocks import Clock, RealClock
from .workers import ActFn

DYADIC_STEPS = (1, 2, 4, 8, 16, 32, 64, 128)  # core.schedule.DYADIC_COUNTS; kept here so deployment needs no torch


def measure_step_latencies(make_infer: Callable[[int], ActFn], obs: dict[str, np.ndarray],
                           steps: Sequence[int] = DYADIC_STEPS, iters: int = 20, warmup: int = 2,
                           quantile: float = 99.0, budget_s: float | None = None,
                           clock: Clock | None = None) -> dict[int, dict[str, float]]:
    """Chunk latency of ``make_infer(s)(obs)`` for each step count s (ascending), batch 1.

    Returns {s: {"p50_s", "q_s" (the ``quantile``), "n"}}. With ``budget_s``, stops after the
    first step count whose quantile exceeds it: latency grows with the step count, so larger
    counts cannot fit either (saves the slowest measurements).
    """
    clock = clock or RealClock(spin_s=0.0)
    out: dict[int, dict[str, float]] = {}
    for s in sorted(steps):
        infer = make_infer(s)
        row = measure_latency(lambda: infer(obs), iters=iters, warmup=warmup, clock=clock, quantile=quantile)
        out[s] = {"p50_s": row["p50_ms"] / 1e3, "q_s": row["p99_ms"] / 1e3, "n": row["n"], "quantile": quantile}
        if budget_s is not None and out[s]["q_s"] > budget_s:
            break
    return out


def choose_steps(latency_s: Mapping[int, float], budget_s: float, margin_s: float = 0.0) -> int:
    """The largest step count whose latency fits ``budget_s - margin_s``.

    ``latency_s``: {steps: seconds} (a high quantile, e.g. p99). Raises when none fits, naming
    the fastest option, rather than silently running a controller that misses every deadline.
    """
    if not latency_s:
        raise ValueError("no latencies measured")
    limit = budget_s - margin_s
    fits = [s for s, t in latency_s.items() if t <= limit]
    if not fits:
        s_min = min(latency_s, key=lambda s: latency_s[s])
        raise ValueError(f"no step count fits the latency budget {budget_s * 1e3:.1f} ms - margin "
                         f"{margin_s * 1e3:.1f} ms: the fastest, {s_min} step(s), takes {latency_s[s_min] * 1e3:.1f} ms; "
                         "lower the control rate, raise the deadline or use a faster machine")
    return max(fits)


def auto_steps(make_infer: Callable[[int], ActFn], obs: dict[str, np.ndarray], deadline_s: float, margin_s: float = 0.005,
               steps: Sequence[int] = DYADIC_STEPS, quantile: float = 99.0, iters: int = 20,
               clock: Clock | None = None) -> tuple[int, dict[int, dict[str, float]]]:
    """Measure (``measure_step_latencies``) and pick (``choose_steps``) for a deadline; returns
    (steps, the latency table)."""
    budget = deadline_s - margin_s
    table = measure_step_latencies(make_infer, obs, steps, iters=iters, quantile=quantile, budget_s=budget,
                                   clock=clock)
    return choose_steps({s: r["q_s"] for s, r in table.items()}, deadline_s, margin_s), table
