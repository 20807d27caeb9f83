"""Compare two policies (or two groups of training seeds) evaluated on the same episode seeds.

Two means of 50 closed-loop episodes each carry a standard error of about 0.02-0.03, so a gap of
0.03 between two separately quoted means says little. Evaluated on the *same* seeds, the difficulty
an episode's start shares between both policies cancels in the per-episode difference; how much
that helps depends on how much of the noise is the start rather than the policies' own sampling
(on PushT at one call, little). This module computes that paired difference from the ``episode_scores`` stored
by :func:`shortcut_policy.eval.sweep.sweep`, and, when each side has several training seeds, the
spread between training seeds as well (the noise a single training run cannot show).
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np


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


def paired_difference(a: Sequence[dict[str, Any]], b: Sequence[dict[str, Any]], steps: int) -> dict[str, Any]:
    """Score difference (a - b) at ``steps`` calls, paired by episode seed.

    ``a`` and ``b`` are lists of results files (one per training seed); each side is first averaged
    over its training seeds episode by episode. Returns the mean difference with its standard error
    over episodes (``sem_episodes``: evaluation noise), the per-training-seed means of each side, and,
    when both sides have two or more training seeds, ``sem_seeds``: the standard error of the
    difference of the two seed means (training noise, which includes evaluation noise).
    """
    if not a or not b:
        raise ValueError("paired_difference needs at least one results file on each side")
    seeds = {tuple(r.get("seeds", [])) for r in [*a, *b]}
    episodes = {r.get("episodes") for r in [*a, *b]}
    if len(seeds) != 1 or len(episodes) != 1:
        raise ValueError(f"results were evaluated on different episode seeds ({sorted(seeds)}, "
                         f"episodes {sorted(episodes, key=str)}); a paired comparison needs the same ones")
    sa = np.stack([episode_scores(r, steps) for r in a])
    sb = np.stack([episode_scores(r, steps) for r in b])
    if sa.shape[1] != sb.shape[1]:
        raise ValueError(f"episode counts differ: {sa.shape[1]} vs {sb.shape[1]}")
    diff = sa.mean(0) - sb.mean(0)
    n = diff.shape[0]
    out: dict[str, Any] = {
        "steps": steps, "episodes": n,
        "a_mean": float(sa.mean()), "b_mean": float(sb.mean()),
        "a_seed_means": [float(x) for x in sa.mean(1)], "b_seed_means": [float(x) for x in sb.mean(1)],
        "diff": float(diff.mean()),
        "sem_episodes": float(diff.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan"),
        "wins": int((diff > 0).sum()), "losses": int((diff < 0).sum()),
    }
    if sa.shape[0] > 1 and sb.shape[0] > 1:
        ma, mb = sa.mean(1), sb.mean(1)
        out["sem_seeds"] = float(math.sqrt(ma.var(ddof=1) / len(ma) + mb.var(ddof=1) / len(mb)))
    return out


def format_comparison(rows: Sequence[dict[str, Any]], a_name: str, b_name: str) -> str:
    """Markdown table of :func:`paired_difference` rows (one per step count)."""
    lines = [f"| steps | {a_name} | {b_name} | difference (paired SE) | SE over training seeds | "
             f"episodes better / worse |", "|---|---|---|---|---|---|"]
    for r in rows:
        seeds = f"{r['sem_seeds']:.3f}" if "sem_seeds" in r else "-"
        lines.append(f"| {r['steps']} | {r['a_mean']:.3f} | {r['b_mean']:.3f} | {r['diff']:+.3f} "
                     f"({r['sem_episodes']:.3f}) | {seeds} | {r['wins']} / {r['losses']} |")
    return "\n".join(lines)
