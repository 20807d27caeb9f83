"""Deployment latency in one process: bare forward, eager chunk, TorchScript and ONNX Runtime exports
at 1..128 steps, plus DDPM-100 / DDIM-10 on a DDPM checkpoint, batch 1, warm, median and p99.

    python scripts/deploy_latency.py --checkpoint runs/r2-shortcut/checkpoints/latest.pt \\
        --ddpm-checkpoint runs/r2-ddpm/checkpoints/latest.pt --threads 1 \\
        --out docs/results/pusht_lowdim-deploy_latency.json

Every row is measured with ``--threads`` intra-op threads (torch and ONNX Runtime alike). The
exported files are written to ``--export-dir`` (a temporary folder by default) and each one is
checked against eager before it is timed. Summary keys:

- ``overhead_ratio``: whole 1-step ``predict_action_chunk`` / bare network forward (p50);
- ``export_speedup``: eager 1-step chunk / TorchScript 1-step chunk (p50);
- ``onnx_speedup``: eager 1-step chunk / ONNX Runtime 1-step chunk (p50);
- ``control_rate_hz``: n_action_steps / chunk latency, for the policy at 1, 16, 100 steps and
  DDPM-100 / DDIM-10 (p50 and p99 latency).

With ``--cuda`` on a CUDA machine the eager rows run on the GPU and a ``compiled`` backend
(torch.compile, mode "reduce-overhead", i.e. CUDA graphs) is added; exports stay on the CPU.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from shortcut_policy.deploy.export import ChunkGraph, example_inputs, export_policy, verify_export
from shortcut_policy.deploy.runtime import ExportedPolicy
from shortcut_policy.eval.latency import measure_latency
from shortcut_policy.policy import ShortcutPolicy
from shortcut_policy.utils import provenance, write_result


def timed(fn: Callable[[], object], args: argparse.Namespace, n_action_steps: int) -> dict[str, Any]:
    row = measure_latency(fn, iters=args.iters, warmup=args.warmup, max_seconds=args.max_seconds)
    row["control_rate_hz_p50"] = n_action_steps / (row["p50_ms"] / 1e3)
    row["control_rate_hz_p99"] = n_action_steps / (row["p99_ms"] / 1e3)
    return row


def obs_in_range(policy, seed: int = 0) -> dict[str, torch.Tensor]:
    """{key: (1, To, *shape)} inside the fitted data range (timing does not depend on it, but a
    realistic input keeps every branch, e.g. clipping, on its usual path)."""
    return example_inputs(policy, batch=1, seed=seed)[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="shortcut (or flow) checkpoint")
    ap.add_argument("--ddpm-checkpoint", default=None, help="DDPM-trained checkpoint for DDPM-100 / DDIM-10")
    ap.add_argument("--steps", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64, 100, 128])
    ap.add_argument("--backends", nargs="+", default=["eager", "torchscript", "onnx"],
                    choices=["eager", "torchscript", "onnx"])
    ap.add_argument("--export-steps", type=int, nargs="*", default=None,
                    help="step counts to export and time (default: all of --steps)")
    ap.add_argument("--export-dir", default=None, help="keep the exported files here (default: a temp dir)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--iters", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--max-seconds", type=float, default=15.0, help="cap per row (slow step counts get fewer calls)")
    ap.add_argument("--cuda", action="store_true", help="eager + torch.compile rows on the GPU (if present)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    device = "cuda" if args.cuda and torch.cuda.is_available() else "cpu"
    if args.cuda and device == "cpu":
        print("--cuda given but no CUDA device: measuring on the CPU only")

    policy, run = ShortcutPolicy.from_checkpoint(args.checkpoint, device=device)
    cfg = policy.cfg
    n_act = cfg.n_action_steps
    obs = {k: v.to(device) for k, v in obs_in_range(policy).items()}  # {key: (1, To, *shape)}
    steps_list = [s for s in args.steps if s <= cfg.objective.max_steps]
    export_steps = steps_list if args.export_steps is None else [s for s in args.export_steps if s in steps_list]
    out: dict[str, Any] = {
        "task": run["task"]["name"], "method": "deploy_latency", **provenance(),
        "checkpoint": args.checkpoint, "train_step": run["checkpoint"]["step"], "objective": cfg.objective.kind,
        "threads": args.threads, "batch": 1, "device": device, "torch_version": torch.__version__,
        "n_action_steps": n_act, "iters": args.iters, "warmup": args.warmup,
    }
    try:
        import onnxruntime

        out["onnxruntime_version"] = onnxruntime.__version__
    except ImportError:
        if "onnx" in args.backends:
            raise SystemExit("the onnx backend needs onnxruntime: pip install 'shortcut-policy[deploy]' "
                             "(or drop it: --backends eager torchscript)")

    # the floor: one bare network forward on a precomputed condition
    H, A = cfg.horizon, cfg.action_dim
    x, t, d = torch.zeros(1, H, A, device=device), torch.zeros(1, device=device), torch.ones(1, device=device)
    with torch.no_grad():
        cond = policy.encode_obs(obs)
        out["forward"] = timed(lambda: policy.net(x, t, d, cond), args, n_act)
    print(f"bare forward p50 {out['forward']['p50_ms']:.2f} ms")

    tables: dict[str, dict[str, Any]] = {}
    if "eager" in args.backends:
        tables["eager"] = {}
        for s in steps_list:
            tables["eager"][str(s)] = timed(lambda: policy.predict_action_chunk(obs, steps=s), args, n_act)
            print(f"eager {s:4d} steps p50 {tables['eager'][str(s)]['p50_ms']:9.2f} ms")

    if device == "cuda":  # guarded: compiled graphs with CUDA graphs (never run on the CPU machine)
        tables["compiled"] = {}
        noise = torch.randn(1, H, A, device=device)
        for s in steps_list:
            graph = torch.compile(ChunkGraph(policy, s).eval(), mode="reduce-overhead")
            with torch.no_grad():
                tables["compiled"][str(s)] = timed(lambda: graph(*[obs[k] for k in graph.obs_keys], noise), args, n_act)
            print(f"compiled {s:4d} steps p50 {tables['compiled'][str(s)]['p50_ms']:9.2f} ms")

    cpu_policy = policy if device == "cpu" else ShortcutPolicy.from_checkpoint(args.checkpoint)[0]
    export_dir = Path(args.export_dir) if args.export_dir else Path(tempfile.mkdtemp(prefix="deploy_latency_"))
    obs_np = {k: v.cpu().numpy() for k, v in obs.items()}
    noise_np = np.random.default_rng(0).standard_normal((1, H, A), dtype=np.float32)
    out["verification"] = {}
    for backend, suffix in (("torchscript", ".pt"), ("onnx", ".onnx")):
        if backend not in args.backends:
            continue
        tables[backend] = {}
        for s in export_steps:
            path = export_dir / f"{cfg.objective.kind}_{s}step{suffix}"
            t_export = time.perf_counter()
            export_policy(cpu_policy, path, s, checkpoint=args.checkpoint, run=run)
            exported = ExportedPolicy.load(path, threads=args.threads)  # ONNX: the session build grows with s
            t_export = time.perf_counter() - t_export
            rep = verify_export(cpu_policy, path, batch_sizes=(1,), trials=2, loaded=exported)
            out["verification"][f"{backend}@{s}"] = rep["max_abs_err_normalized"]
            out.setdefault("export_and_load_s", {})[f"{backend}@{s}"] = t_export
            tables[backend][str(s)] = timed(lambda: exported.predict_action_chunk(obs_np, noise_np), args, n_act)
            print(f"{backend} {s:4d} steps p50 {tables[backend][str(s)]['p50_ms']:9.2f} ms "
                  f"(export vs eager {rep['max_abs_err_normalized']:.1e})")
    out["steps"] = tables

    baselines: dict[str, Any] = {}
    if args.ddpm_checkpoint:
        dp = ShortcutPolicy.from_checkpoint(args.ddpm_checkpoint, device=device)[0]
        if dp.cfg.objective.kind not in ("ddpm", "ddim"):
            raise SystemExit(f"--ddpm-checkpoint {args.ddpm_checkpoint} holds a {dp.cfg.objective.kind!r} policy")
        dobs = {k: v.to(device) for k, v in obs_in_range(dp).items()}
        for name, sampler, s in (("ddpm", "ddpm", dp.cfg.objective.num_train_timesteps), ("ddim", "ddim", 10)):
            dp.objective.sampler = sampler  # one trained network, two samplers
            baselines[f"{name}@{s}"] = timed(lambda: dp.predict_action_chunk(dobs, steps=s), args, dp.cfg.n_action_steps)
            print(f"{name} {s} steps p50 {baselines[f'{name}@{s}']['p50_ms']:.2f} ms")
    out["baselines"] = baselines

    def p50(backend: str, s: int) -> float | None:
        row = tables.get(backend, {}).get(str(s))
        return None if row is None else row["p50_ms"]

    def ratio(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else a / b

    out["overhead_ratio"] = ratio(p50("eager", 1), out["forward"]["p50_ms"])
    out["export_speedup"] = ratio(p50("eager", 1), p50("torchscript", 1))
    out["onnx_speedup"] = ratio(p50("eager", 1), p50("onnx", 1))
    rates: dict[str, Any] = {}
    keep = ("p50_ms", "p99_ms", "control_rate_hz_p50", "control_rate_hz_p99")
    for s in (1, 16, 100):
        row = tables.get("eager", {}).get(str(s))
        if row is not None:
            rates[f"{cfg.objective.kind}@{s}"] = {k: row[k] for k in keep}
    for key, row in baselines.items():
        rates[key] = {k: row[k] for k in keep}
    out["control_rate_hz"] = rates
    print(json.dumps({k: out[k] for k in ("overhead_ratio", "export_speedup", "onnx_speedup")}, indent=1))
    if args.out:
        write_result(args.out, out)


if __name__ == "__main__":
    main()
