"""Offline step-count diagnostics of one or more checkpoints on held-out demonstration windows.

    python scripts/diagnose.py --checkpoints runs/L-shortcut/checkpoints/latest.pt runs/L-flow/checkpoints/latest.pt \\
        --names shortcut flow --out docs/results/pusht_lowdim-diagnostics.json

Per step count: distance to the finest (max_steps, e.g. 128-step) sample of the same noise (how well N steps reproduce many),
spread over noise draws, and distance to the demonstrated chunk (mean and best of K), in action
units. No simulator; see shortcut_policy/eval/consistency.py.

``--target-range 4`` also counts, per consistency level, how often each checkpoint's own
two-half-jump targets leave [-4, 4] (what ``objective.clip=4`` would touch).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from shortcut_policy.eval.consistency import by_step_count, format_diagnostics, pick_windows, step_diagnostics, target_range
from shortcut_policy.policy import ShortcutPolicy
from shortcut_policy.task import TaskConfig, make_dataset
from shortcut_policy.utils import provenance


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoints", nargs="+", required=True)
    ap.add_argument("--names", nargs="+", default=None)
    ap.add_argument("--steps", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    ap.add_argument("--ref-steps", type=int, default=None,
                    help="reference step count (default: each checkpoint's max_steps, its finest sampling)")
    ap.add_argument("--windows", type=int, default=64, help="held-out windows (validation episodes)")
    ap.add_argument("--noise", type=int, default=8, help="noise draws per window")
    ap.add_argument("--split", choices=["val", "train"], default="val")
    ap.add_argument("--target-range", type=float, default=None, metavar="C",
                    help="also measure how often consistency targets leave [-C, C] (what objective.clip=C touches)")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.names and len(args.names) != len(args.checkpoints):
        raise SystemExit(f"--names has {len(args.names)} entries for {len(args.checkpoints)} checkpoints")
    if args.threads:
        torch.set_num_threads(args.threads)

    results, ranges, windows, task = {}, {}, None, None
    for i, ckpt in enumerate(args.checkpoints):
        policy, run = ShortcutPolicy.from_checkpoint(ckpt)
        name = args.names[i] if args.names else f"{policy.cfg.objective.kind}:{ckpt}"
        if policy.cfg.objective.kind not in ("shortcut", "flow"):
            raise SystemExit(f"{ckpt}: diagnostics apply to flow/shortcut checkpoints, not {policy.cfg.objective.kind!r}")
        this_task = run["task"]
        if windows is None:
            task = this_task
            ds = make_dataset(TaskConfig.from_dict(task))
            windows = pick_windows(ds.get_validation_dataset() if args.split == "val" else ds, args.windows)
        elif this_task.get("name") != task.get("name"):
            raise SystemExit(f"{ckpt} is a {this_task.get('name')!r} policy; the first was {task.get('name')!r}")
        ref_steps = args.ref_steps or policy.cfg.objective.max_steps
        results[name] = step_diagnostics(policy, windows, [s for s in args.steps if s <= ref_steps], ref_steps,
                                         args.noise)
        results[name]["checkpoint"] = str(ckpt)
        if args.target_range is not None:
            ranges[name] = target_range(policy, windows, args.target_range, args.noise)
        print(f"{name}: done", flush=True)
    print(format_diagnostics(results))
    for name, r in ranges.items():
        print(f"{name}: flow targets beyond {r['threshold']:g}: {r['flow_target_beyond']:.2e}; consistency targets / "
              "midpoints beyond, per level 2d: " + ", ".join(
                  f"{lv} {v['target_beyond']:.2e}/{v['mid_beyond']:.2e} (max {v['target_max']:.2f})"
                  for lv, v in r["levels"].items()))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        # results format (docs/results): step counts as keys, one entry per checkpoint under each
        Path(args.out).write_text(json.dumps({
            "task": task.get("name"), "method": "diagnostics", **provenance(), "split": args.split,
            "windows": args.windows, "n_noise": args.noise,
            "ref_steps": {name: r["ref_steps"] for name, r in results.items()},
            "checkpoints": {name: r["checkpoint"] for name, r in results.items()},
            "demo_roughness": {name: r["demo_roughness"] for name, r in results.items()},
            "steps": by_step_count(results),
            **({"target_range": ranges} if ranges else {})}, indent=1))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
