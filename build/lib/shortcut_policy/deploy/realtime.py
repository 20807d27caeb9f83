"""Real-time evaluation: the controller drives a task's simulator in wall-clock time.

Unlike the step sweep (``eval.sweep``: the simulator waits for the policy), here the simulator does
not wait: ``RealTimeController`` ticks at ``control_hz``, each tick reads the observation and steps
the environment once with the action due, while the policy runs in the controller's inference
thread. A policy slower than the control period misses deadlines; its stale actions are dropped and
the previous chunk or a held action fills in (``controller``). Any runner registered in ``envs``
works: its ``make_env()`` gives the one-step environment and ``episode_success`` its success rule.

A simulator stepped faster than its own rate (PushT advances 0.1 s of physics per step) runs faster
than real time: at 50 Hz, 5x, which is equivalent to a computer that many times slower at 10 Hz.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import fields
from typing import Any

import numpy as np

from .controller import ControllerConfig, ControlStats, RealTimeController

_COUNTS = [f.name for f in fields(ControlStats) if f.type in ("int", int)]


def run_episode(env, episode_success: Callable[[dict], bool], infer, shape_meta, n_obs_steps: int,
                n_action_steps: int, seed: int, config: ControllerConfig, max_episode_steps: int
                ) -> tuple[dict[str, Any], ControlStats]:
    """One seeded episode under the controller: (episode result, controller stats)."""
    obs, _ = env.reset(seed=seed)
    ep = {"obs": obs, "best": 0.0, "success": False, "done": False, "steps": 0}

    def send_action(action: np.ndarray) -> None:
        o, reward, terminated, truncated, info = env.step(np.asarray(action, dtype=np.float64))
        ep["obs"] = o
        ep["best"] = max(ep["best"], float(reward))
        ep["success"] |= bool(episode_success(info))
        ep["steps"] += 1
        ep["done"] = bool(terminated or truncated) or ep["steps"] >= max_episode_steps

    ctrl = RealTimeController(infer, shape_meta, n_obs_steps, n_action_steps, config)
    stats = ctrl.run(lambda: ep["obs"], send_action, max_ticks=max_episode_steps, should_stop=lambda: ep["done"])
    return {"seed": seed, "score": ep["best"], "success": ep["success"], "length": ep["steps"]}, stats


def merge_stats(all_stats: list[ControlStats]) -> ControlStats:
    """Counts summed, per-tick and per-chunk samples pooled (achieved rate is computed per episode)."""
    m = ControlStats()
    for s in all_stats:
        for name in _COUNTS:
            setattr(m, name, getattr(m, name) + getattr(s, name))
        m.wake_lateness += s.wake_lateness
        m.inference_latency += s.inference_latency
    return m


def evaluate(runner, make_infer: Callable[[int], Callable], shape_meta, n_obs_steps: int, n_action_steps: int,
             seeds: list[int], config: ControllerConfig, max_episode_steps: int, name: str = "",
             progress: bool = True) -> dict[str, Any]:
    """Episodes on ``seeds`` with ``make_infer(seed)`` as the policy: score, success and the controller's
    figures (misses, stale actions, fallbacks, achieved rate, jitter, inference latency)."""
    env = runner.make_env()
    try:
        episodes, stats, rates, jitters = [], [], [], []
        for seed in seeds:
            ep, st = run_episode(env, runner.episode_success, make_infer(seed), shape_meta, n_obs_steps,
                                 n_action_steps, seed, config, max_episode_steps)
            summ = st.summary(config.dt)
            episodes.append(ep)
            stats.append(st)
            if summ["achieved_hz"] is not None:
                rates.append(summ["achieved_hz"])
                jitters.append(summ["period_jitter_ms_std"])
            if progress:
                print(f"  {name} seed {seed}: score {ep['score']:.3f} success {ep['success']} ticks {st.ticks} "
                      f"misses {st.deadline_misses} stale {st.stale_dropped} fallback {st.fallback_previous}+"
                      f"{st.fallback_hold} rate {summ['achieved_hz'] or float('nan'):.2f} Hz", flush=True)
    finally:
        env.close()
    scores = np.array([e["score"] for e in episodes])
    merged = merge_stats(stats).summary(config.dt)
    for key in ("achieved_hz", "period_jitter_ms_std", "period_ms_max"):
        merged.pop(key, None)
    merged["achieved_hz_mean"] = float(np.mean(rates)) if rates else None
    merged["achieved_hz_min"] = float(np.min(rates)) if rates else None
    merged["period_jitter_ms_std_mean"] = float(np.mean(jitters)) if jitters else None
    merged["period_ms_max"] = float(max(max(np.diff(s.sent_times), default=0.0) for s in stats) * 1e3)
    ticks = max(merged["ticks"], 1)
    merged["fallback_share"] = (merged["fallback_previous"] + merged["fallback_hold"]) / ticks
    merged["hold_share"] = merged["hold_actions"] / ticks
    return {
        "score": float(scores.mean()), "success": float(np.mean([e["success"] for e in episodes])),
        "score_sem": float(scores.std(ddof=1) / math.sqrt(len(scores))) if len(scores) > 1 else None,
        "seeds": list(seeds), "scores": scores.tolist(), "successes": [e["success"] for e in episodes],
        "lengths": [e["length"] for e in episodes], "control": merged,
    }


def steps_table(rows: dict[str, dict], sampler: str) -> dict[str, dict]:
    """The results ``steps`` view of the ``sampler`` rows: network calls per chunk -> score, success,
    inference latency in the loop and the deadline figures (an explicit step count wins over an
    ``auto`` row that chose the same count)."""
    out: dict[str, dict] = {}
    for name, r in sorted(rows.items(), key=lambda kv: "auto" in kv[0], reverse=True):
        if r["sampler"] != sampler:
            continue
        c = r["control"]
        out[str(r["steps"])] = {
            "score": r["score"], "success": r["success"], "score_sem": r["score_sem"],
            "latency_ms_p50": c["inference_ms_p50"], "latency_ms_p99": c["inference_ms_p99"],
            "deadline_misses": c["deadline_misses"], "requests": c["requests"],
            "fallback_share": c["fallback_share"], "hold_share": c["hold_share"], "row": name}
    return dict(sorted(out.items(), key=lambda kv: int(kv[0])))


def format_rows(rows: dict[str, dict]) -> str:
    lines = [f"{'row':>18} {'score':>6} {'succ':>5} {'misses':>6} {'stale':>6} {'fallback':>8} {'hold%':>6} {'Hz':>6}"]
    for name, r in rows.items():
        c = r["control"]
        lines.append(f"{name:>18} {r['score']:6.3f} {r['success']:5.2f} {c['deadline_misses']:6d} "
                     f"{c['stale_dropped']:6d} {c['fallback_previous'] + c['fallback_hold']:8d} "
                     f"{100 * c['hold_share']:6.1f} {c['achieved_hz_mean'] or float('nan'):6.2f}")
    return "\n".join(lines)
