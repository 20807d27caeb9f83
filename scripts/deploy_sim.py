"""Simulated deployment: the real-time controller drives a task's simulator (PushT) in wall-clock time.

    python scripts/deploy_sim.py --checkpoint runs/r2-shortcut/checkpoints/latest.pt \\
        --ddpm-checkpoint runs/r2-ddpm/checkpoints/latest.pt --steps 1 4 16 64 \\
        --episodes 20 --control-hz 10 --threads 1 --out docs/results/pusht_lowdim-deploy_sim.json

Unlike ``scripts/eval.py`` (the simulator waits for the policy), here the simulator does not
wait: ``RealTimeController`` ticks at ``--control-hz``, each tick reads the observation and steps
gym-pusht once with the action due, while the policy runs in the controller's inference
thread. A policy slower than the control period misses deadlines; its stale actions are dropped
and the previous chunk or a held action fills in (see ``shortcut_policy/deploy/control.py``).

gym-pusht advances 0.1 s of physics per step (10 Hz). At ``--control-hz 10`` the simulation runs
in real time. A faster rate runs the same simulation faster than real time (at 50 Hz, 5x), which
is equivalent to a computer that many times slower at 10 Hz: a stress test, not a faster robot.

Rows: the shortcut checkpoint at each ``--steps`` entry (``auto`` = the largest dyadic step count
whose p99 latency fits the deadline minus ``--margin-ms``), and with ``--ddpm-checkpoint`` the
DDPM network at DDPM-100 and DDIM-10. Episodes use seeds ``--seed-start``.. (100000.. as in every
PushT evaluation here); score = mean best reward, success = coverage > 0.95 reached.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

import gymnasium as gym

from shortcut_policy.core.schedule import dyadic_counts
from shortcut_policy.deploy.control import ControllerConfig, ControlStats, RealTimeController, auto_steps
from shortcut_policy.policy import ShortcutPolicy
from shortcut_policy.task import TaskConfig, make_runner
from shortcut_policy.utils import provenance, write_result


def run_episode(env: gym.Env, infer: Callable[[np.ndarray], np.ndarray], policy_cfg, seed: int,
                config: ControllerConfig, max_steps: int) -> tuple[dict[str, Any], ControlStats]:
    """One seeded episode under the controller; returns (episode result, controller stats)."""
    obs, _ = env.reset(seed=seed)
    ep = {"obs": obs, "best": 0.0, "success": False, "done": False, "steps": 0}

    def send_action(action: np.ndarray) -> None:
        o, reward, terminated, truncated, info = env.step(np.asarray(action, dtype=np.float64))
        ep["obs"] = o
        ep["best"] = max(ep["best"], float(reward))
        ep["success"] |= bool(info.get("is_success", False))
        ep["steps"] += 1
        ep["done"] = bool(terminated or truncated) or ep["steps"] >= max_steps

    ctrl = RealTimeController(infer, policy_cfg.shape_meta, policy_cfg.n_obs_steps, policy_cfg.n_action_steps, config)
    stats = ctrl.run(lambda: ep["obs"], send_action, max_ticks=max_steps, should_stop=lambda: ep["done"])
    return {"seed": seed, "score": ep["best"], "success": ep["success"], "length": ep["steps"]}, stats


def merge_stats(all_stats: list[ControlStats]) -> ControlStats:
    """Counts summed, per-tick and per-chunk samples pooled (achieved rate is computed per episode)."""
    m = ControlStats()
    for s in all_stats:
        for name in ("ticks", "overrun_ticks", "requests", "chunks_received", "deadline_misses", "stale_dropped",
                     "chunks_dropped_whole", "fallback_previous", "fallback_hold", "hold_actions",
                     "ensembled_actions"):
            setattr(m, name, getattr(m, name) + getattr(s, name))
        m.wake_lateness += s.wake_lateness
        m.inference_latency += s.inference_latency
    return m


def evaluate_row(name: str, make_infer: Callable[[int], Callable], policy_cfg, args: argparse.Namespace,
                 config: ControllerConfig, env: gym.Env) -> dict[str, Any]:
    seeds = list(range(args.seed_start, args.seed_start + args.episodes))
    episodes, stats, rates, jitters = [], [], [], []
    for seed in seeds:
        ep, st = run_episode(env, make_infer(seed), policy_cfg, seed, config, args.max_steps)
        summ = st.summary(config.dt)
        episodes.append(ep)
        stats.append(st)
        if summ["achieved_hz"] is not None:
            rates.append(summ["achieved_hz"])
            jitters.append(summ["period_jitter_ms_std"])
        print(f"  {name} seed {seed}: score {ep['score']:.3f} success {ep['success']} ticks {st.ticks} "
              f"misses {st.deadline_misses} stale {st.stale_dropped} fallback {st.fallback_previous}+{st.fallback_hold} "
              f"rate {summ['achieved_hz'] or float('nan'):.2f} Hz", flush=True)
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
        "seeds": seeds, "scores": scores.tolist(), "successes": [e["success"] for e in episodes],
        "lengths": [e["length"] for e in episodes], "control": merged,
    }


def steps_table(rows: dict[str, dict], sampler: str) -> dict[str, dict]:
    """The benchmarks-format ``steps`` view of the ``sampler`` rows: network calls per chunk ->
    score, success, inference latency in the loop and the deadline figures (an explicit step count
    wins over an ``auto`` row that chose the same count)."""
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="shortcut checkpoint")
    ap.add_argument("--steps", nargs="+", default=["1", "4", "16", "64"], help="step counts, or 'auto'")
    ap.add_argument("--ddpm-checkpoint", default=None, help="adds DDPM-100 and DDIM-10 rows")
    ap.add_argument("--backend", choices=["eager", "torchscript", "onnx"], default="eager",
                    help="how the shortcut rows run (exported on the fly); baselines always run eager")
    ap.add_argument("--episodes", type=int, default=20)
    ap.add_argument("--seed-start", type=int, default=100000)
    ap.add_argument("--max-steps", type=int, default=300, help="env steps (ticks) per episode")
    ap.add_argument("--control-hz", type=float, default=10.0)
    ap.add_argument("--replan-every", type=int, default=None, help="ticks between requests (default n_action_steps // 2)")
    ap.add_argument("--deadline-ms", type=float, default=None, help="per-chunk deadline (default one period)")
    ap.add_argument("--margin-ms", type=float, default=10.0, help="safety margin of --steps auto")
    ap.add_argument("--ensemble-k", type=float, default=None, help="ACT temporal ensembling (off by default)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--switch-interval-ms", type=float, default=1.0,
                    help="Python's GIL switch interval: a waking control thread waits up to this long for the "
                         "inference thread to release the GIL (Python's default is 5 ms)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    sys.setswitchinterval(args.switch_interval_ms / 1e3)
    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)

    config = ControllerConfig(control_hz=args.control_hz, replan_every=args.replan_every,
                              deadline_s=None if args.deadline_ms is None else args.deadline_ms / 1e3,
                              ensemble_k=args.ensemble_k)
    policy, run = ShortcutPolicy.from_checkpoint(args.checkpoint)
    cfg = policy.cfg
    env = make_runner(TaskConfig.from_dict(run["task"]), policy.shape_meta, n_episodes=1).make_env()  # one-step env
    out: dict[str, Any] = {
        "task": run["task"]["name"], "method": "deploy_sim", **provenance(),
        "checkpoint": args.checkpoint, "ddpm_checkpoint": args.ddpm_checkpoint, "backend": args.backend,
        "threads": args.threads, "switch_interval_ms": args.switch_interval_ms,
        "control_hz": args.control_hz, "sim_hz": 10.0, "time_scale": args.control_hz / 10.0,
        "replan_every": args.replan_every or max(1, cfg.n_action_steps // 2), "deadline_ms": config.deadline * 1e3,
        "ensemble_k": args.ensemble_k, "episodes": args.episodes, "max_steps": args.max_steps,
        "n_action_steps": cfg.n_action_steps, "rows": {},
    }

    def eager_infer(p, steps: int) -> Callable[[int], Callable]:
        return lambda seed: p.act_fn(steps=steps, generator=torch.Generator().manual_seed(seed))

    def shortcut_infer(steps: int) -> Callable[[int], Callable]:
        if args.backend == "eager":
            return eager_infer(policy, steps)
        import tempfile

        from shortcut_policy.deploy.export import export_policy, verify_export
        from shortcut_policy.deploy.runtime import ExportedPolicy

        suffix = ".pt" if args.backend == "torchscript" else ".onnx"
        path = Path(tempfile.mkdtemp(prefix="deploy_sim_")) / f"p{steps}{suffix}"
        export_policy(policy, path, steps, checkpoint=args.checkpoint, run=run)
        exported = ExportedPolicy.load(path, threads=args.threads)  # once: building a session takes seconds
        verify_export(policy, path, batch_sizes=(1,), trials=1, loaded=exported)

        def for_episode(seed: int) -> Callable:
            exported.reseed(seed)
            return exported
        return for_episode

    obs_example = {k: v.numpy() for k, v in policy.example_obs(batch=1).items()}  # at the data mean
    for entry in args.steps:
        if entry == "auto":
            make = lambda s: shortcut_infer(s)(0)  # noqa: E731
            steps, table = auto_steps(make, obs_example, config.deadline, args.margin_ms / 1e3,
                                      steps=dyadic_counts(cfg.objective.max_steps))
            out["auto"] = {"chosen_steps": steps, "deadline_ms": config.deadline * 1e3, "margin_ms": args.margin_ms,
                           "latency_ms": {str(s): {"p50": r["p50_s"] * 1e3, "p99": r["q_s"] * 1e3}
                                          for s, r in table.items()}}
            print(f"auto: {steps} steps fit the {config.deadline * 1e3:.0f} ms deadline - {args.margin_ms:.0f} ms margin")
            name = f"{cfg.objective.kind}@auto({steps})"
        else:
            steps = int(entry)
            name = f"{cfg.objective.kind}@{steps}"
        print(f"{name}:", flush=True)
        out["rows"][name] = {"steps": steps, "sampler": cfg.objective.kind, "backend": args.backend,
                             **evaluate_row(name, shortcut_infer(steps), cfg, args, config, env)}
    if args.ddpm_checkpoint:
        dp = ShortcutPolicy.from_checkpoint(args.ddpm_checkpoint)[0]
        for name, sampler, steps in (("ddpm@100", "ddpm", dp.cfg.objective.num_train_timesteps), ("ddim@10", "ddim", 10)):
            dp.objective.sampler = sampler
            print(f"{name}:", flush=True)
            out["rows"][name] = {"steps": steps, "sampler": sampler, "backend": "eager",
                                 **evaluate_row(name, eager_infer(dp, steps), dp.cfg, args, config, env)}
    env.close()
    out["steps"] = steps_table(out["rows"], cfg.objective.kind)
    print(f"{'row':>18} {'score':>6} {'succ':>5} {'misses':>6} {'stale':>6} {'fallback':>8} {'hold%':>6} {'Hz':>6}")
    for name, r in out["rows"].items():
        c = r["control"]
        print(f"{name:>18} {r['score']:6.3f} {r['success']:5.2f} {c['deadline_misses']:6d} {c['stale_dropped']:6d} "
              f"{c['fallback_previous'] + c['fallback_hold']:8d} {100 * c['hold_share']:6.1f} "
              f"{c['achieved_hz_mean'] or float('nan'):6.2f}")
    if args.out:
        write_result(args.out, out)


if __name__ == "__main__":
    main()
