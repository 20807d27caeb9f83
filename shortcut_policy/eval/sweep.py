"""Step-count sweep of a trained policy: closed-loop score / success and chunk latency per number of
network calls, in the results format of docs (``docs/results/<task>-<method>.json``)."""
from __future__ import annotations

import textwrap
from typing import Any, Sequence

import numpy as np
import torch

from ..core.schedule import DYADIC_COUNTS
from ..latency import measure_latency, torch_sync
from ..utils import save_figure

DEFAULT_STEPS = DYADIC_COUNTS


def sweep(policy, runner, steps_list: Sequence[int] = DEFAULT_STEPS, latency_iters: int = 50,
          progress: bool = True, seed: int = 0, video_dir: str | None = None, n_videos: int = 0,
          sampler: str | None = None) -> dict[str, Any]:
    """Evaluate ``policy`` at each number of network calls on the runner's fixed seeds (``sampler``: one
    of ``policy.objective.samplers``, default the objective's own).

    Returns {"steps": {"N": {score, success, latency_ms_p50, latency_ms_p99, control_rate_hz, ...}}}.
    The control rate is n_action_steps / chunk latency: the fastest loop a chunk of that cost allows.
    """
    policy.eval()
    out: dict[str, Any] = {}
    seeds: list[int] = []
    for n in steps_list:
        g = torch.Generator().manual_seed(seed)
        vd = f"{video_dir}/steps{n}" if video_dir and n_videos else None
        # latency first: a probe that fails does so before the episodes' minutes are spent
        obs1 = policy.example_obs(batch=1)  # {key: (1, To, *shape)}
        lat = measure_latency(lambda: policy.predict_action_chunk(obs1, n, sampler=sampler), iters=latency_iters,
                              warmup=3, max_seconds=20.0, sync=torch_sync(policy.device))
        res = runner.run(policy.act_fn(n, g, sampler), progress=progress, video_dir=vd, n_videos=n_videos)
        seeds = [int(x) for x in res.seeds]
        out[str(n)] = {
            "score": round(res.score, 4), "success": round(res.success, 4),
            "score_sem": round(float(np.std(res.scores) / np.sqrt(max(1, res.n_episodes))), 4),
            "latency_ms_p50": round(lat["p50_ms"], 3), "latency_ms_p99": round(lat["p99_ms"], 3),
            "control_rate_hz": round(policy.cfg.n_action_steps / (lat["p50_ms"] / 1e3), 1),
            # per-episode scores in seed order: lets two policies evaluated on the same seeds be
            # compared pair by pair (scripts/compare.py), with the standard error of the difference
            "episode_scores": [round(float(x), 4) for x in res.scores],
        }
        if res.finals is not None:  # where each episode left the task (PushT: the block's pose error)
            out[str(n)]["episode_finals"] = {k: [round(f[k], 4) for f in res.finals] for k in res.finals[0]}
        if res.outcomes is not None:  # several ways to succeed: which one each episode took
            out[str(n)].update(outcome_shares=res.outcome_shares(), outcome_success=res.outcome_success(),
                               episode_outcomes=res.outcomes)
        if progress:
            r = out[str(n)]
            print(f"  steps {n:>3}: score {r['score']:.3f}  success {r['success']:.2f}  "
                  f"latency p50 {r['latency_ms_p50']:.2f} ms  p99 {r['latency_ms_p99']:.2f} ms"
                  + (f"  outcomes {r['outcome_shares']}" if "outcome_shares" in r else ""))
    return {"episodes": len(seeds), "seeds": [min(seeds), max(seeds)] if seeds else [], "steps": out}


def format_table(results: dict[str, Any]) -> str:
    """Markdown table of a sweep's "steps" entry."""
    rows = ["| steps | score | success | latency p50 (ms) | p99 (ms) | control rate (Hz) |",
            "|---|---|---|---|---|---|"]
    for n, r in results["steps"].items():
        rows.append(f"| {n} | {r['score']:.3f} | {r['success']:.2f} | {r['latency_ms_p50']:.2f} | "
                    f"{r['latency_ms_p99']:.2f} | {r['control_rate_hz']:.0f} |")
    return "\n".join(rows)


def plot_sweeps(results: dict[str, dict[str, Any]], path: str, title: str = "") -> None:
    """Score / success and latency vs step count for one or more methods ({method: results})."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.2))
    for i, (method, res) in enumerate(results.items()):
        ns = [int(k) for k in res["steps"]]
        rs = list(res["steps"].values())
        color = plt.cm.tab20(i % 20) if len(results) > 10 else f"C{i}"
        a1.plot(ns, [r["score"] for r in rs], "o-", color=color, label=method)
        a1.plot(ns, [r["success"] for r in rs], "s--", color=color, alpha=0.5)
        a2.plot(ns, [r["latency_ms_p50"] for r in rs], "o-", color=color)
    a1.set_ylabel("score (solid) / success (dashed)")
    a1.set_ylim(0, 1.02)
    a2.set_ylabel("chunk latency p50, batch 1 (ms)")
    a2.set_yscale("log")
    # one legend for both panels, beside them, so that it never covers the curves
    fig.legend(*a1.get_legend_handles_labels(), loc="center right", fontsize=7)
    save_calls_figure(fig, (a1, a2), path, title, legend=False, rect=(0, 0, 0.8, 1))


def plot_outcomes(results: dict[str, dict[str, Any]], path: str, title: str = "") -> None:
    """Stacked bars per method and number of calls, for tasks whose runner reports outcomes ({method:
    results}): the share of episodes that succeeded with each outcome (which answer an episode took, or
    a multi-task run's task) and, in grey, the share that failed. Results written before the sweep
    recorded ``outcome_success`` show the outcome shares as they are (TwoCubeLift's "neither" is its
    failures)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def segments(r):
        shares, rate = r["outcome_shares"], r.get("outcome_success")
        if rate is None:
            return shares
        won = {k: v * rate.get(k, 0.0) for k, v in shares.items()}
        return {**won, "failed": max(0.0, 1.0 - sum(won.values()))}

    def label(method: str, n: str) -> str:  # long method names wrap at their hyphens
        return method.split("/")[-1].replace("-", "-\n") + f"\n{n} call{'s' if int(n) > 1 else ''}"

    bars = [(label(method, n), segments(r))
            for method, res in results.items() for n, r in res["steps"].items() if r.get("outcome_shares")]
    if not bars:
        raise ValueError("no results with outcome_shares: the task's runner reports no outcomes")
    grey = ("neither", "failed")
    names = sorted({k for _, shares in bars for k in shares}, key=lambda k: (k in grey, k))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.95 * len(bars) + 2), 4.2))
    palette = [c for j, c in enumerate(plt.cm.tab20.colors) if j not in (14, 15)]  # tab20 without its greys
    palette = palette[0::2] + palette[1::2]  # the strong shades first
    bottom = [0.0] * len(bars)
    for i, name in enumerate(names):
        vals = [shares.get(name, 0.0) for _, shares in bars]
        ax.bar(range(len(bars)), vals, bottom=bottom, label=name, color="0.8" if name in grey else palette[i % len(palette)])
        bottom = [b + v for b, v in zip(bottom, vals)]
    ax.set_xticks(range(len(bars)), [b[0] for b in bars], fontsize=7)
    ax.set_ylabel("share of episodes")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.suptitle("\n".join(textwrap.wrap(title, 120)), fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


def save_calls_figure(fig, axes, path: str, title: str = "", ticks: list[int] | None = None, legend: bool = True,
                      rect: tuple[float, float, float, float] = (0, 0, 1, 1)) -> None:
    """Finish and write a figure whose x axes are network calls per chunk (log2 scale): grid, legends
    (one per axis unless ``legend`` is False), a wrapped title, the axes laid out inside ``rect``,
    then close it."""
    for a in axes:
        a.set_xscale("log", base=2)
        if ticks is not None:
            a.set_xticks(ticks, [str(n) for n in ticks])
        a.set_xlabel("network calls per chunk")
        a.grid(alpha=0.3)
        if legend:
            a.legend(fontsize=7)
    fig.suptitle("\n".join(textwrap.wrap(title, 160)), fontsize=7)
    fig.tight_layout(rect=rect)
    save_figure(fig, path)
