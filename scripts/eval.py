"""Evaluate a checkpoint at several step counts (network calls per action chunk): in closed loop when
its task has a simulator, offline on the validation episodes (action error against the
demonstrations) when it has none.

    python scripts/eval.py --checkpoint runs/X/checkpoints/latest.pt
    python scripts/eval.py --checkpoint runs/X/checkpoints/latest.pt --steps 1 2 4 8 16 32 64 128 \\
        --episodes 50 --out docs/results/pusht_lowdim-shortcut.json
    python scripts/eval.py --checkpoint runs/ddpm/checkpoints/latest.pt --sampler ddim --steps 1 2 4 8 10 16

Writes JSON in the results format (task, method, command, machine, date, steps) and a plot beside it.
Flow-matching checkpoints are sampled with d fixed at 1/M (their training level); DDPM checkpoints
take --sampler ddpm (steps must divide the training timesteps) or ddim (any count).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from shortcut_policy.core.schedule import dyadic_counts
from shortcut_policy.eval.sweep import DEFAULT_STEPS, format_table, plot_sweeps, sweep
from shortcut_policy.eval.offline import format_offline_table, offline_eval
from shortcut_policy.policy import ShortcutPolicy
from shortcut_policy.task import TaskConfig, make_dataset, make_runner
from shortcut_policy.train.run import training_command
from shortcut_policy.utils import provenance


def merge_results(old: dict, new: dict) -> dict:
    """``old`` with ``new``'s step entries added (replacing the same step counts).

    Refuses files of another checkpoint, training step, weights or seed range: their rows would not
    be comparable. The original command stays in ``command``; each merge is listed under ``merges``.
    """
    default = {"noise_scale": 1.0}  # files written before the option sampled at scale 1
    for key in ("task", "method", "checkpoint", "train_steps", "weights", "episodes", "seeds", "noise_scale"):
        a, b = old.get(key, default.get(key)), new.get(key, default.get(key))
        if a != b:
            raise SystemExit(f"--merge: {key} differs between the existing file ({a!r}) and this "
                             f"evaluation ({b!r}); write to another --out")
    merged = dict(old)
    steps = {**old.get("steps", {}), **new["steps"]}
    merged["steps"] = {k: steps[k] for k in sorted(steps, key=int)}
    merged["merges"] = list(old.get("merges", [])) + [
        {"command": new["command"], "machine": new["machine"], "date": new["date"], "steps": sorted(map(int, new["steps"]))}]
    return merged


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--steps", type=int, nargs="+", default=None,
                    help=f"step counts (default {list(DEFAULT_STEPS)} up to the checkpoint's max_steps; DDPM: 1 2 4 5 10 20 25 50 100)")
    ap.add_argument("--episodes", type=int, default=50, help="closed-loop episodes (offline: validation windows x 5)")
    ap.add_argument("--seed-start", type=int, default=100000)
    ap.add_argument("--weights", choices=["ema", "online"], default="ema")
    ap.add_argument("--sampler", choices=["ddpm", "ddim"], default=None, help="diffusion checkpoints only")
    ap.add_argument("--noise-scale", type=float, default=1.0,
                    help="initial-noise scale at inference (sampling temperature; 1 = as trained)")
    ap.add_argument("--method", default=None, help="name in the results file (default: the objective kind)")
    ap.add_argument("--out", default=None, help="results JSON path (plot written beside it)")
    ap.add_argument("--latency-iters", type=int, default=50)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    ap.add_argument("--videos", type=int, default=0, help="record this many episodes per step count")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--merge", action="store_true",
                    help="add these step counts to an existing --out file of the same checkpoint and seeds "
                         "(entries for the same step count are replaced)")
    args = ap.parse_args()
    if args.merge and not args.out:
        raise SystemExit("--merge needs --out (the results file to add to)")

    if args.threads:
        torch.set_num_threads(args.threads)
    policy, state_cfg = ShortcutPolicy.from_checkpoint(args.checkpoint, weights=args.weights)
    try:
        policy.set_noise_scale(args.noise_scale)
    except ValueError as e:
        raise SystemExit(f"--noise-scale: {e}")
    ocfg = policy.cfg.objective
    if args.sampler:
        if ocfg.kind not in ("ddpm", "ddim"):
            raise SystemExit(f"--sampler applies to diffusion checkpoints; this one is {ocfg.kind!r}")
        policy.objective.sampler = args.sampler
    kind = args.sampler or ocfg.kind
    # default counts: the dyadic ones the checkpoint can take (up to its max_steps, or DDIM's timesteps)
    most = ocfg.num_train_timesteps if kind == "ddim" else ocfg.max_steps
    steps = args.steps or ([1, 2, 4, 5, 10, 20, 25, 50, 100] if kind == "ddpm" else dyadic_counts(most))
    task = TaskConfig.from_dict(state_cfg["task"])
    train_step = state_cfg["checkpoint"]["step"]
    if task.simulated:
        runner = make_runner(task, policy.shape_meta, n_episodes=args.episodes, seed_start=args.seed_start)
        print(f"evaluating {args.checkpoint} ({kind}, trained {train_step} steps) on {task.name}, "
              f"{args.episodes} episodes from seed {args.seed_start}")
        video_dir = str(Path(args.out).with_suffix("")) + "-videos" if (args.videos and args.out) else None
        res = sweep(policy, runner, steps, latency_iters=args.latency_iters, progress=not args.no_progress,
                    video_dir=video_dir, n_videos=args.videos)
    else:
        val = make_dataset(task).get_validation_dataset()
        print(f"evaluating {args.checkpoint} ({kind}, trained {train_step} steps) offline on {task.name}'s "
              f"validation episodes ({task.name} has no simulator)")
        res = {"evaluation": "offline", **offline_eval(policy, val, steps, n_windows=5 * args.episodes)}
    result = {"task": task.name, "method": args.method or kind, **provenance(),
              "train_steps": train_step, "train_command": training_command(args.checkpoint, state_cfg),
              "checkpoint": str(args.checkpoint), "weights": args.weights, "noise_scale": args.noise_scale,
              "objective": state_cfg["policy_config"]["objective"], "net": state_cfg["policy_config"]["net"],
              "torch_threads": torch.get_num_threads(), **res}
    if args.merge and Path(args.out).exists():
        result = merge_results(json.loads(Path(args.out).read_text()), result)
    print(format_table(result) if task.simulated else format_offline_table(result))
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1))
        if task.simulated:
            plot_sweeps({result["method"]: result}, str(out.with_suffix(".png")),
                        title=f"{result['task']} {result['method']}: {result['command']} ({result['machine']}, "
                              f"{result['date']})")
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
