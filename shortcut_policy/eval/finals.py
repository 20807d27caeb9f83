"""Where closed-loop episodes ended: the final states a sweep records (``episode_finals``), summarized per
method and number of calls, and drawn.

On PushT the final state is the block's pose against the goal (``envs.pusht``: position error in px of
the 512 px arena, signed angle error in degrees, coverage). Success is coverage > 0.95 and ends the
episode, so a successful episode's final state is the pose that succeeded, and a failed one's is where
the block was when the 300 steps ran out. Reading the failures' errors against the successes' tells
which part of the alignment a policy misses: the position, the angle, or both.

    python scripts/final_poses.py --results runs/finals/shortcut.json runs/finals/flow.json \\
        --names shortcut flow --out docs/results/pusht_lowdim/diagnostics/final_poses.json
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..results import ResultError


def episode_finals(result: dict[str, Any], n: int | str, source: str = "results") -> dict[str, np.ndarray]:
    """{quantity: (episodes,) array} of one step count, with ``best_score`` (each episode's best reward)."""
    row = result.get("steps", {}).get(str(n))
    if row is None:
        raise ResultError(f"{source}: no entry for {n} calls (has {sorted(result.get('steps', {}), key=int)})")
    finals = row.get("episode_finals")
    if not finals:
        raise ResultError(f"{source}: {n} calls has no episode_finals (evaluated before the sweep recorded final "
                          "states, or on a task whose runner reports none); evaluate it again")
    out = {k: np.asarray(v, dtype=np.float64) for k, v in finals.items()}
    out["best_score"] = np.asarray(row["episode_scores"], dtype=np.float64)
    sizes = {k: len(v) for k, v in out.items()}
    if len(set(sizes.values())) != 1:
        raise ResultError(f"{source}: {n} calls has per-episode lists of different lengths {sizes}")
    return out


def summarize_finals(f: dict[str, np.ndarray], threshold: float = 0.95) -> dict[str, Any]:
    """Success share and, for successes and failures apart, the median position and |angle| errors; for
    failures also how close they came (best score >= 0.9: coverage reached 0.855 at some step) and
    how many end with the position but not the angle within the successes' 90th percentiles."""
    success = f["coverage"] > threshold
    pos, ang = f["position_error_px"], np.abs(f["angle_error_deg"])
    out: dict[str, Any] = {"episodes": int(len(success)), "success": round(float(success.mean()), 4)}
    for name, mask in (("successes", success), ("failures", ~success)):
        out[name] = {"n": int(mask.sum())}
        if mask.any():
            out[name].update(median_position_error_px=round(float(np.median(pos[mask])), 2),
                             median_angle_error_deg=round(float(np.median(ang[mask])), 2),
                             median_final_coverage=round(float(np.median(f["coverage"][mask])), 4))
    fail = ~success
    if fail.any():
        out["failures"]["came_close"] = round(float((f["best_score"][fail] >= 0.9).mean()), 4)
        if success.sum() >= 5:  # what a success needs: the successes' 90th percentiles of both errors
            p_ok, a_ok = np.percentile(pos[success], 90), np.percentile(ang[success], 90)
            out["success_p90"] = {"position_error_px": round(float(p_ok), 2), "angle_error_deg": round(float(a_ok), 2)}
            pos_in, ang_in = pos[fail] <= p_ok, ang[fail] <= a_ok
            out["failures"].update(
                position_only=round(float((pos_in & ~ang_in).mean()), 4),  # in place, turned wrong
                angle_only=round(float((~pos_in & ang_in).mean()), 4),  # turned right, off in place
                neither=round(float((~pos_in & ~ang_in).mean()), 4),
                both_within=round(float((pos_in & ang_in).mean()), 4))
    return out


def format_finals(summary: dict[str, dict[str, dict[str, Any]]]) -> str:
    """Markdown table of {method: {calls: summary}}."""
    rows = ["| method | calls | success | failures: median pos. err. (px) | median angle err. (deg) | came close | "
            "position only | angle only | neither | successes: median pos. err. | median angle err. |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for method, by_n in summary.items():
        for n, s in by_n.items():
            fl, ok = s["failures"], s["successes"]
            g = lambda d, k, fmt: format(d[k], fmt) if k in d else "-"  # noqa: E731
            rows.append(f"| {method} | {n} | {s['success']:.2f} | {g(fl, 'median_position_error_px', '.1f')} | "
                        f"{g(fl, 'median_angle_error_deg', '.1f')} | {g(fl, 'came_close', '.2f')} | "
                        f"{g(fl, 'position_only', '.2f')} | {g(fl, 'angle_only', '.2f')} | {g(fl, 'neither', '.2f')} | "
                        f"{g(ok, 'median_position_error_px', '.1f')} | {g(ok, 'median_angle_error_deg', '.1f')} |")
    return "\n".join(rows)


def plot_finals(finals: dict[str, dict[str, dict[str, np.ndarray]]], path: str, title: str = "",
                threshold: float = 0.95) -> None:
    """One panel per (method, calls): each episode's final position error against its |angle error|
    (log axes), failures coloured by their final coverage, successes as black crosses."""
    import matplotlib
    matplotlib.use("Agg")
    import textwrap

    import matplotlib.pyplot as plt

    from ..utils import save_figure

    panels = [(m, n, f) for m, by_n in finals.items() for n, f in by_n.items()]
    cols = min(4, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.3 * rows), squeeze=False, sharex=True, sharey=True)
    sc = None
    for ax, (method, n, f) in zip(axes.flat, panels):
        ok = f["coverage"] > threshold
        pos, ang = np.maximum(f["position_error_px"], 0.1), np.maximum(np.abs(f["angle_error_deg"]), 0.1)
        sc = ax.scatter(pos[~ok], ang[~ok], c=f["coverage"][~ok], cmap="viridis", vmin=0, vmax=threshold, s=9)
        ax.scatter(pos[ok], ang[ok], marker="x", color="k", s=12, linewidths=0.8)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(f"{method}, {n} call{'s' if str(n) != '1' else ''}: success {ok.mean():.2f}", fontsize=8)
        ax.grid(alpha=0.3)
    for ax in axes[-1]:
        ax.set_xlabel("final position error (px)")
    for ax in axes[:, 0]:
        ax.set_ylabel("final |angle error| (deg)")
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    if sc is not None:
        fig.colorbar(sc, ax=axes, shrink=0.8, label="final coverage (failures; x = success)")
    fig.suptitle("\n".join(textwrap.wrap(title, 140)), fontsize=7)
    save_figure(fig, path)


def collect(results: Sequence[dict[str, Any]], names: Sequence[str], counts: Sequence[int] | None = None,
            sources: Sequence[str] | None = None) -> dict[str, dict[str, dict[str, np.ndarray]]]:
    """{name: {calls: episode_finals}} of each results file, at ``counts`` (default: every count that has
    final states)."""
    out: dict[str, dict[str, dict[str, np.ndarray]]] = {}
    for i, (res, name) in enumerate(zip(results, names)):
        src = sources[i] if sources else name
        ns = [str(n) for n in counts] if counts else [n for n, r in res.get("steps", {}).items() if r.get("episode_finals")]
        if not ns:
            raise ResultError(f"{src}: no step count has episode_finals; evaluate it again with this version")
        out[name] = {n: episode_finals(res, n, src) for n in ns}
    return out
