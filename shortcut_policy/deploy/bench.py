"""The latency benchmark of trained policies in one process (so the numbers compare): the bare network
forward (the floor of any generative policy with that network) and the whole chunk at each number of
network calls, per backend (eager torch, torch.compile on CUDA, TorchScript and ONNX Runtime exports
checked against eager first), batch 1, warm, median and p99 (``shortcut_policy.latency``).

A DDPM-trained checkpoint is timed with each of its samplers (DDPM at its divisor counts, DDIM at any).
The observation encoder (normalization, and the vision encoder of each camera) is timed alone too.
Summary ratios per policy: ``overhead_ratio`` (1-call chunk / bare forward), ``export_speedup`` (eager
/ TorchScript at 1 call), ``onnx_speedup`` (eager / ONNX Runtime at 1 call), ``encoder_share``
(encoder / eager 1-call chunk).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..latency import measure_latency, torch_sync, with_control_rate
from .export import ChunkGraph, example_inputs, export_policy, verify_export
from .runtime import ExportedPolicy

BACKENDS = ("eager", "compiled", "torchscript", "onnx")
SUFFIX = {"torchscript": ".pt", "onnx": ".onnx"}


def latency_benchmark(policies: dict[str, tuple[Any, dict]], counts: list[int] | None, backends: list[str],
                      export_dir: Path, iters: int = 100, warmup: int = 10, max_seconds: float = 15.0,
                      progress: bool = True) -> dict[str, Any]:
    """``policies``: {name: (policy, run config)} on one device. Returns the results fields:
    forward, steps {N: {"<name>/<sampler>/<backend>": row}}, summary ratios, export checks."""
    unknown = sorted(set(backends) - set(BACKENDS))
    if unknown:
        raise ValueError(f"unknown backends {unknown}; choose from {BACKENDS}")
    out: dict[str, Any] = {"forward": {}, "encoder": {}, "steps": {}, "verification": {}, "export_and_load_s": {},
                           "overhead_ratio": {}, "export_speedup": {}, "onnx_speedup": {}, "encoder_share": {}}
    for name, (policy, run) in policies.items():
        policy.eval()
        device = policy.device
        sync = torch_sync(device)
        n_act = policy.cfg.n_action_steps

        def timed(fn):
            return with_control_rate(measure_latency(fn, iters=iters, warmup=warmup, max_seconds=max_seconds,
                                                     sync=sync), n_act)

        obs, noise = example_inputs(policy, batch=1)  # inside the fitted data range
        H, A = policy.cfg.horizon, policy.cfg.action_dim
        x, t, d = (torch.zeros(1, H, A, device=device), torch.zeros(1, device=device), torch.ones(1, device=device))
        with torch.no_grad():
            cond = policy.encode_obs(obs)
            out["forward"][name] = timed(lambda: policy.net(x, t, d, cond))
            out["encoder"][name] = timed(lambda: policy.encode_obs(obs))
        for sampler in policy.objective.samplers:
            valid = policy.objective.sweep_inference_steps(sampler)
            ns = valid if counts is None else [n for n in counts if _valid(policy, n, sampler)]
            row_name = f"{name}/{sampler}"
            for backend in backends:
                if backend == "compiled" and device.type != "cuda":
                    continue  # CUDA graphs: GPU only
                if backend in SUFFIX and not policy.objective.deterministic(sampler):
                    continue  # not exportable (fresh noise at every step)
                for n in ns:
                    key = f"{row_name}/{backend}"
                    row = _time_backend(policy, run, backend, n, sampler, obs, noise, export_dir, timed, out, key)
                    out["steps"].setdefault(str(n), {})[key] = row
                    if progress:
                        print(f"{key} {n:4d} calls: p50 {row['p50_ms']:9.2f} ms  p99 {row['p99_ms']:9.2f} ms", flush=True)
        first = f"{name}/{policy.objective.samplers[0]}"
        one = out["steps"].get("1", {})
        if f"{first}/eager" in one:
            eager = one[f"{first}/eager"]["p50_ms"]
            out["overhead_ratio"][name] = eager / out["forward"][name]["p50_ms"]
            out["encoder_share"][name] = out["encoder"][name]["p50_ms"] / eager
            for backend, key in (("torchscript", "export_speedup"), ("onnx", "onnx_speedup")):
                if f"{first}/{backend}" in one:
                    out[key][name] = eager / one[f"{first}/{backend}"]["p50_ms"]
    out["steps"] = {k: out["steps"][k] for k in sorted(out["steps"], key=int)}
    return out


def _valid(policy, n: int, sampler: str) -> bool:
    try:
        policy.objective.check_inference_steps(n, sampler)
        return True
    except (ValueError, TypeError):
        return False


def _time_backend(policy, run, backend: str, n: int, sampler: str, obs, noise, export_dir: Path, timed, out, key):
    if backend == "eager":
        return timed(lambda: policy.predict_action_chunk(obs, n, sampler=sampler))
    if backend == "compiled":  # torch.compile with CUDA graphs ("reduce-overhead")
        graph = torch.compile(ChunkGraph(policy, n, sampler).eval(), mode="reduce-overhead")
        inputs = [obs[k] for k in graph.obs_keys]
        with torch.no_grad():
            return timed(lambda: graph(*inputs, noise))
    cpu = policy if policy.device.type == "cpu" else _cpu_copy(policy)
    path = export_dir / f"{key.replace('/', '_')}_{n}{SUFFIX[backend]}"
    t0 = time.perf_counter()
    export_policy(cpu, path, n, sampler=sampler, run=run)
    exported = ExportedPolicy.load(path, threads=torch.get_num_threads())  # ONNX: the session build grows with n
    out["export_and_load_s"][f"{key}@{n}"] = time.perf_counter() - t0
    out["verification"][f"{key}@{n}"] = verify_export(cpu, path, batch_sizes=(1,), trials=2,
                                                      loaded=exported)["max_abs_err_normalized"]
    obs_np = {k: v.cpu().numpy() for k, v in obs.items()}
    noise_np = np.random.default_rng(0).standard_normal(tuple(noise.shape), dtype=np.float32)
    return timed(lambda: exported.predict_action_chunk(obs_np, noise_np))


def _cpu_copy(policy):
    import copy

    return copy.deepcopy(policy).cpu()
