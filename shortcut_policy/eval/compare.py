"""Compare two policies (or two groups of training seeds) evaluated on the same episode seeds.

Two means of 50 closed-loop episodes each carry a standard error of about 0.02-0.03, so a gap of
0.03 between two separately quoted means says little. Evaluated on the *same* seeds, the difficulty
an episode's start shares between both policies cancels in the per-episode difference; how much
that helps depends on how much of the noise is the start rather than the policies' own sampling
(on PushT at one call, little). This module computes that paired difference from the ``episode_scores`` stored
by :func:`shortcut_policy.eval.sweep.sweep`, and, when each side has several training seeds, the
spread between training seeds as well (the noise a single training run cannot show), with a
Welch t interval and two-sided p-value over the training seeds: with two to four seeds per side a
normal "two standard errors" overstates the evidence (the t quantile at 2-4 degrees of freedom is
2.8-4.3, not 1.96).
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from ..results import seed_range


def episode_scores(result: dict[str, Any], steps: int) -> np.ndarray:
    """Per-episode scores of one results file at one step count, with a clear error if absent."""
    entry = result.get("steps", {}).get(str(steps))
    name = result.get("method", "?")
    if entry is None:
        raise KeyError(f"{name}: no entry for {steps} steps (has {sorted(map(int, result.get('steps', {})))})")
    if "episode_scores" not in entry:
        raise KeyError(f"{name}: the {steps}-step entry has no episode_scores (evaluated before they were "
                       f"recorded); re-evaluate with scripts/eval.py --steps {steps} --merge --out <file>")
    scores = np.asarray(entry["episode_scores"], dtype=np.float64)
    if not np.all(np.isfinite(scores)):
        raise ValueError(f"{name}: non-finite episode score at {steps} steps")
    return scores


def _betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b) by its continued fraction (modified Lentz)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    if x > (a + 1.0) / (a + b + 2.0):  # the fraction converges fast only below this point
        return 1.0 - _betainc(b, a, 1.0 - x)
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= c * d
        if abs(c * d - 1.0) < 1e-14:
            break
    return math.exp(log_front) * h / a


def t_sf(t: float, df: float) -> float:
    """Two-sided tail probability P(|T| > |t|) of Student's t with ``df`` (> 0, may be fractional)."""
    if not df > 0:
        raise ValueError(f"degrees of freedom must be positive, got {df}")
    return _betainc(df / 2.0, 0.5, df / (df + t * t))


def t_quantile(q: float, df: float) -> float:
    """The ``q`` quantile (0.5 < q < 1) of Student's t with ``df`` degrees of freedom, by bisection."""
    if not 0.5 < q < 1.0:
        raise ValueError(f"t_quantile takes 0.5 < q < 1, got {q}")
    tail = 2.0 * (1.0 - q)
    lo, hi = 0.0, 1.0
    while t_sf(hi, df) > tail:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if t_sf(mid, df) > tail else (lo, mid)
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


def welch(ma: np.ndarray, mb: np.ndarray) -> dict[str, float]:
    """Welch's unequal-variance comparison of two groups of training-seed means: the standard error
    of mean(ma) - mean(mb), its Welch-Satterthwaite degrees of freedom, a 95% interval and the
    two-sided p-value. Needs two or more means per group."""
    if len(ma) < 2 or len(mb) < 2:
        raise ValueError("welch needs at least two training seeds per side")
    va, vb = ma.var(ddof=1) / len(ma), mb.var(ddof=1) / len(mb)
    diff, se = float(ma.mean() - mb.mean()), math.sqrt(va + vb)
    if se == 0.0:  # identical seeds on both sides: no spread to test against
        return {"sem_seeds": 0.0, "df_seeds": float("nan"), "ci95_seeds": [diff, diff],
                "p_seeds": 0.0 if diff != 0 else 1.0}
    df = (va + vb) ** 2 / (va ** 2 / (len(ma) - 1) + vb ** 2 / (len(mb) - 1))
    half = t_quantile(0.975, df) * se
    return {"sem_seeds": se, "df_seeds": df, "ci95_seeds": [diff - half, diff + half],
            "p_seeds": t_sf(diff / se, df)}


def paired_difference(a: Sequence[dict[str, Any]], b: Sequence[dict[str, Any]], steps: int,
                      b_steps: int | None = None) -> dict[str, Any]:
    """Score difference (a - b) at ``steps`` calls, paired by episode seed (on the seeds every file
    was evaluated on, when their blocks differ in length).

    ``b_steps`` evaluates side b at a fixed other count (one shortcut call against 100 DDPM steps,
    say); by default both sides use ``steps``.

    ``a`` and ``b`` are lists of results files (one per training seed); each side is first averaged
    over its training seeds episode by episode. Returns the mean difference with its standard error
    over episodes (``sem_episodes``: evaluation noise), the per-training-seed means of each side, and,
    when both sides have two or more training seeds, ``sem_seeds``: the standard error of the
    difference of the two seed means (training noise, which includes evaluation noise), with its
    Welch degrees of freedom ``df_seeds``, 95% interval ``ci95_seeds`` and p-value ``p_seeds``
    (training seeds of the two sides are independent runs, so they are not paired).
    """
    if not a or not b:
        raise ValueError("paired_difference needs at least one results file on each side")
    ranges = [seed_range(r) for r in [*a, *b]]
    lo, hi = max(r[0] for r in ranges), min(r[1] for r in ranges)
    if lo > hi:
        raise ValueError(f"results were evaluated on different episode seeds ({sorted(set(ranges))}) with none in "
                         "common; a paired comparison needs the same ones")

    def common(r: dict[str, Any], n: int) -> np.ndarray:  # the episodes every file has, in seed order
        first = int(r["seeds"][0])
        return episode_scores(r, n)[lo - first: hi - first + 1]

    sa = np.stack([common(r, steps) for r in a])
    sb = np.stack([common(r, steps if b_steps is None else b_steps) for r in b])
    diff = sa.mean(0) - sb.mean(0)
    n = diff.shape[0]
    out: dict[str, Any] = {
        "steps": steps, "b_steps": steps if b_steps is None else b_steps, "episodes": n, "episode_seeds": [lo, hi],
        "a_mean": float(sa.mean()), "b_mean": float(sb.mean()),
        "a_seed_means": [float(x) for x in sa.mean(1)], "b_seed_means": [float(x) for x in sb.mean(1)],
        "diff": float(diff.mean()),
        "sem_episodes": float(diff.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan"),
        "wins": int((diff > 0).sum()), "losses": int((diff < 0).sum()),
    }
    if sa.shape[0] > 1 and sb.shape[0] > 1:
        out.update(welch(sa.mean(1), sb.mean(1)))
    return out


def format_comparison(rows: Sequence[dict[str, Any]], a_name: str, b_name: str) -> str:
    """Markdown table of :func:`paired_difference` rows (one per step count)."""
    lines = [f"| steps | {a_name} | {b_name} | difference (paired SE) | SE over training seeds | "
             f"95% interval over training seeds (p) | episodes better / worse |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        seeds = f"{r['sem_seeds']:.3f}" if "sem_seeds" in r else "-"
        ci = (f"{r['ci95_seeds'][0]:+.3f} to {r['ci95_seeds'][1]:+.3f} (p {r['p_seeds']:.2f})"
              if "ci95_seeds" in r else "-")
        calls = r["steps"] if r.get("b_steps", r["steps"]) == r["steps"] else f"{r['steps']} vs {r['b_steps']}"
        lines.append(f"| {calls} | {r['a_mean']:.3f} | {r['b_mean']:.3f} | {r['diff']:+.3f} "
                     f"({r['sem_episodes']:.3f}) | {seeds} | {ci} | {r['wins']} / {r['losses']} |")
    return "\n".join(lines)


def plot_comparison(rows: Sequence[dict[str, Any]], a_name: str, b_name: str, path: str, title: str = "") -> None:
    """Score vs network calls for both sides of a comparison: every training seed's mean as a dot,
    the mean over seeds as a line, and (right panel) the difference a - b with its 95% interval over
    training seeds where there are two or more per side, else +-2 paired standard errors."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .sweep import save_calls_figure

    ns = [r["steps"] for r in rows]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.8))
    for i, (name, key) in enumerate(((a_name, "a"), (b_name, "b"))):
        for n, r in zip(ns, rows):
            seeds = r[f"{key}_seed_means"]
            a1.plot([n * (1 + 0.04 * (2 * i - 1))] * len(seeds), seeds, "o", color=f"C{i}", alpha=0.45, ms=4)
        a1.plot(ns, [r[f"{key}_mean"] for r in rows], "-", color=f"C{i}", lw=2,
                label=f"{name} ({len(rows[0][f'{key}_seed_means'])} training seeds)")
    a1.set_ylabel("score (dots: one training seed)")
    d = [r["diff"] for r in rows]
    if all("ci95_seeds" in r for r in rows):
        lo, hi = [r["ci95_seeds"][0] for r in rows], [r["ci95_seeds"][1] for r in rows]
        band = "95% interval over training seeds (Welch t)"
    else:
        lo = [r["diff"] - 2 * r["sem_episodes"] for r in rows]
        hi = [r["diff"] + 2 * r["sem_episodes"] for r in rows]
        band = "+-2 paired standard errors over episodes"
    a2.fill_between(ns, lo, hi, color="C2", alpha=0.25, label=band)
    a2.plot(ns, d, "o-", color="C2", label=f"{a_name} - {b_name}")
    a2.axhline(0.0, color="k", lw=0.8)
    a2.set_ylabel("score difference")
    save_calls_figure(fig, (a1, a2), path, title, ticks=ns)
