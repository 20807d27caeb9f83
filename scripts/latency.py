"""Chunk latency of trained policies in one process (so the numbers compare): the bare network
forward (the floor of any generative policy with this network) and the whole predict_action_chunk
at each step count, batch 1, warm, median and p99.

    python scripts/latency.py --checkpoints runs/a/checkpoints/latest.pt runs/b/checkpoints/latest.pt \\
        --steps 1 2 4 8 16 32 64 128 --threads 1 --out docs/results/pusht_lowdim-latency.json
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from shortcut_policy.eval.latency import measure_latency
from shortcut_policy.policy import ShortcutPolicy
from shortcut_policy.utils import provenance


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoints", nargs="+", required=True)
    ap.add_argument("--names", nargs="*", default=None, help="one name per checkpoint (default: objective kind)")
    ap.add_argument("--steps", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64, 128])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--iters", type=int, default=100)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = {"task": None, "method": "latency", **provenance(), "threads": args.threads, "batch": 1,
           "forward": {}, "overhead_ratio_1step": {}, "steps": {}}
    for i, ck in enumerate(args.checkpoints):
        p, run = ShortcutPolicy.from_checkpoint(ck)
        task = run["task"]["name"]
        if out["task"] not in (None, task):
            raise SystemExit(f"{ck} is a {task!r} policy; the others are {out['task']!r}: compare one task per file")
        out["task"] = task
        name = args.names[i] if args.names else p.cfg.objective.kind
        if p.cfg.objective.kind in ("ddpm", "ddim") and name in ("ddpm", "ddim"):
            p.objective.sampler = name  # one trained diffusion network, two samplers
        obs = p.example_obs(batch=1)  # {key: (1, To, *shape)}
        H, A = p.cfg.horizon, p.cfg.action_dim
        x, t, d = torch.zeros(1, H, A), torch.zeros(1), torch.ones(1)
        cond = p.encode_obs(obs)
        with torch.no_grad():
            floor = measure_latency(lambda: p.net(x, t, d, cond), iters=args.iters * 2, warmup=20)
        rows = {"forward": floor}
        K = p.cfg.objective.num_train_timesteps
        if p.cfg.objective.kind in ("ddpm", "ddim"):
            steps = [s for s in args.steps if s <= K and not (name == "ddpm" and K % s)]
        else:
            steps = [s for s in args.steps if s <= p.cfg.objective.max_steps]
        for s in steps:
            rows[str(s)] = measure_latency(lambda: p.predict_action_chunk(obs, steps=s), iters=args.iters,
                                           warmup=3, max_seconds=15)
            rows[str(s)]["control_rate_hz"] = p.cfg.n_action_steps / (rows[str(s)]["p50_ms"] / 1e3)
        out["forward"][name] = floor
        if "1" in rows:
            out["overhead_ratio_1step"][name] = rows["1"]["p50_ms"] / floor["p50_ms"]
        for s in steps:
            out["steps"].setdefault(str(s), {})[name] = rows[str(s)]
        print(name, {k: round(v["p50_ms"], 2) for k, v in rows.items()})
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
