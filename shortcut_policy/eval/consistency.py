"""Offline diagnostics of a trained policy's step-count behaviour, without a simulator.

For a set of dataset windows (observation history + demonstrated action chunk) and K noise draws per
window, sample the action sequence at each step count from the *same* noise and measure, in action
units (pixels for PushT):

- ``to_ref``: RMS distance from the N-step sample to the ``ref_steps``-step sample of the same noise.
  A shortcut model trained to self-consistency should make this small at N = 1; a flow-matching model
  sampled with one Euler step cannot (its one step lands near the conditional mean).
- ``to_ref_by_index``: the same distance at each position of the chunk (a list over the horizon; the
  executed actions are positions n_obs_steps - 1 .. n_obs_steps - 2 + n_action_steps): where in the
  chunk an N-step sample departs from the reference.
- ``spread``: RMS standard deviation over the K samples of one window: how much of the action
  distribution's width a step count keeps (0 = every noise gives the same chunk).
- ``to_demo`` / ``to_demo_best``: RMS distance to the demonstrated chunk, averaged over the K samples
  and for the best of them (a multi-modal policy can be far on average yet close at best).
- ``roughness``: RMS second difference of the sampled action sequence over time (jitter; a
  demonstration's own value is reported as ``demo_roughness``).
- ``noise_leak``: the least-squares coefficient of the initial noise x0 in the N-step error against
  the reference sample, in normalized action units: the share of x0 the N-step map fails to cancel
  (0 when the error is unrelated to the noise it started from).

A few hundred batched forward passes: seconds to a minute on a CPU, so a checkpoint can be read
before (or instead of) spending a closed-loop evaluation on it.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from ..core.schedule import step_schedule


@torch.no_grad()
def step_diagnostics(policy, windows: Sequence[dict[str, torch.Tensor]], steps_list: Sequence[int] = (1, 2, 4, 8, 16),
                     ref_steps: int = 128, n_noise: int = 8, seed: int = 0) -> dict[str, Any]:
    """Diagnostics per step count (see module doc) over ``windows`` x ``n_noise`` samples.

    ``windows``: dataset items {"obs": {key: (n_obs_steps, *shape)}, "action": (horizon, action_dim)};
    the observations condition the policy, the actions are the demonstration.
    """
    if not windows:
        raise ValueError("step_diagnostics needs at least one dataset window")
    if n_noise < 2:
        raise ValueError(f"n_noise must be >= 2 to measure spread, got {n_noise}")
    cfg = policy.cfg
    obs, demo = stack_windows(windows)  # {key: (B, To, ...)}, (B, H, A)
    B = demo.shape[0]
    obs_rep = {k: v.repeat_interleave(n_noise, dim=0) for k, v in obs.items()}  # {key: (B*K, To, ...)}
    policy.eval()

    def sample(n: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)  # the same noise for every step count
        return policy.predict_action_sequence(obs_rep, n, generator=g).reshape(B, n_noise, *demo.shape[1:])

    def roughness(x: torch.Tensor) -> float:  # (..., H, A) -> RMS of the second difference over H
        return float((x[..., 2:, :] - 2 * x[..., 1:-1, :] + x[..., :-2, :]).pow(2).mean().sqrt())

    # the initial noise predict_action_sequence draws first from the same generator (normalized units)
    x0 = torch.randn((B * n_noise, cfg.horizon, cfg.action_dim), generator=torch.Generator().manual_seed(seed))
    x0 = x0.reshape(B, n_noise, cfg.horizon, cfg.action_dim)
    x0_energy = float(x0.pow(2).sum())
    ref = sample(ref_steps)
    nref = policy.normalizer.normalize("action", ref)
    out: dict[str, Any] = {"windows": B, "n_noise": n_noise, "ref_steps": ref_steps,
                           "demo_roughness": roughness(demo), "steps": {}}
    for n in list(steps_list) + ([ref_steps] if ref_steps not in steps_list else []):
        x = ref if n == ref_steps else sample(n)
        if not torch.isfinite(x).all():
            raise FloatingPointError(f"non-finite actions sampled at {n} steps")
        per_sample_demo = ((x - demo[:, None]) ** 2).mean(dim=(2, 3))  # (B, K)
        out["steps"][str(n)] = {
            "to_ref": float(((x - ref) ** 2).mean().sqrt()),
            "to_ref_by_index": [round(float(v), 4) for v in ((x - ref) ** 2).mean(dim=(0, 1, 3)).sqrt()],
            "spread": float(x.var(dim=1, unbiased=True).mean().sqrt()),
            "to_demo": float(per_sample_demo.mean().sqrt()),
            "to_demo_best": float(per_sample_demo.min(dim=1).values.mean().sqrt()),
            "roughness": roughness(x),
            "noise_leak": (float(((policy.normalizer.normalize("action", x) - nref) * x0).sum()) / x0_energy
                           if x0_energy > 0 else float("nan")),
        }
    return out


@torch.no_grad()
def target_range(policy, windows: Sequence[dict[str, torch.Tensor]], threshold: float = 4.0, n_noise: int = 8,
                 seed: int = 0) -> dict[str, Any]:
    """How often the consistency targets (and the teacher's midpoint) leave [-threshold, threshold].

    What target clipping (``objective.clip``) would touch, measured instead of trained: for every
    target level (2d = 2^-j) the policy's own network, as the online teacher, builds the two-half-jump
    target from x_t on the training grid (windows x ``n_noise`` noise draws, normalized units) with
    the objective's own code, so a policy trained with ``clip`` set reports its clipped targets. The
    flow target x1 - x0 is reported for scale; clipping never touches it.
    """
    if not windows:
        raise ValueError("target_range needs at least one dataset window")
    if threshold <= 0:
        raise ValueError(f"threshold must be positive, got {threshold}")
    if not hasattr(policy.objective, "two_half_jumps"):
        raise ValueError(f"target_range applies to flow/shortcut policies, not {policy.cfg.objective.kind!r}")
    M = policy.objective.max_steps
    cond, x1 = conditioned_chunks(policy, windows, n_noise)  # (B*K, C), (B*K, H, A)
    n = x1.shape[0]
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(x1.shape, generator=g).to(x1)
    out: dict[str, Any] = {"threshold": threshold, "samples": n,
                           "flow_target_beyond": float(((x1 - x0).abs() > threshold).float().mean()), "levels": {}}
    j = 0
    while 2 ** j < M:  # target step 2d = 2^-j, half jump d = 2^-(j+1)
        cells = 2 ** j
        t = torch.randint(0, cells, (n,), generator=g).to(x1) / cells  # (n,)
        dh = torch.full((n,), 0.5 / cells).to(x1)  # (n,)
        x_t = (1 - t.view(-1, 1, 1)) * x0 + t.view(-1, 1, 1) * x1
        x_mid, target = policy.objective.two_half_jumps(policy.objective.velocity_fn(policy.net), x_t, t, dh, cond)
        if not torch.isfinite(target).all():
            raise FloatingPointError(f"non-finite consistency target at level 2d = 1/{cells}")
        out["levels"][f"1/{cells}"] = {
            "target_beyond": float((target.abs() > threshold).float().mean()),
            "mid_beyond": float((x_mid.abs() > threshold).float().mean()),
            "target_max": float(target.abs().max())}
        j += 1
    return out


def meanflow_terms(policy, windows: Sequence[dict[str, torch.Tensor]], n_noise: int = 8, seed: int = 0
                   ) -> dict[str, Any]:
    """How steep a MeanFlow network is in each input of its identity (``core.meanflow.identity_terms``).

    RMS in normalized action units of v.du/dx, du/dt, du/dd, the bracket times d (the part of the
    target that is not v), the target and the prediction u, on the training windows' interval rows as
    the objective draws them (``times``), and at the one-step cell (t = 0, d = 1), which the default
    logit-normal draws never reach. A d term far above the others marks targets the network feeds
    itself through its own steepness in d."""
    from ..core.meanflow import identity_terms

    if policy.objective.kind != "meanflow":
        raise ValueError(f"meanflow_terms applies to MeanFlow policies, not {policy.objective.kind!r}")
    cond, x1 = conditioned_chunks(policy, windows, n_noise)  # (n, C), (n, H, A)
    n = x1.shape[0]
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(x1.shape, generator=g).to(x1)
    t, d = policy.objective.times(n, g)
    interval = d > 0
    draws = {"interval_rows": (t.to(x1), d.to(x1), interval),
             "one_step": (torch.zeros(n).to(x1), torch.ones(n).to(x1), torch.ones(n, dtype=torch.bool))}
    rms = lambda a: float(a.pow(2).mean().sqrt())  # noqa: E731
    out: dict[str, Any] = {}
    for name, (tt, dd, rows) in draws.items():
        tt, dd, xa, xb, c = tt[rows], dd[rows], x0[rows], x1[rows], cond[rows]
        x_t = (1 - tt.view(-1, 1, 1)) * xa + tt.view(-1, 1, 1) * xb
        v = xb - xa
        fn = lambda x, t_, d_: policy.net(x, t_, d_, c)  # noqa: E731
        u, parts = identity_terms(fn, x_t, tt, dd, v)
        extra = dd.view(-1, 1, 1) * (parts["v.du/dx"] + parts["du/dt"] - parts["du/dd"])
        out[name] = {**{k: rms(a) for k, a in parts.items()}, "d*bracket": rms(extra), "target": rms(v + extra),
                     "u": rms(u), "v": rms(v), "rows": int(rows.sum())}
    return out


@torch.no_grad()
def velocity_error_by_step(policy, windows: Sequence[dict[str, torch.Tensor]], steps: int | None = None,
                           n_noise: int = 8, seed: int = 0) -> list[dict[str, float]]:
    """The error of the velocity each step of the ``steps``-call sampler uses, on the demonstrations'
    own noise path: where along the path a network is least accurate.

    At each of the sampler's steps (t, d) (``core.schedule.step_schedule``: t = k / steps, d = 1 / steps
    for a power of two) it is fed (x_t, t, d), x_t on the straight
    path from fresh noise x0 to the demonstrated chunk x1, and compared with the flow-matching target
    x1 - x0 (the objective's per-example squared error, the mean over the chunk in normalized action
    units; every step gets the same windows x ``n_noise`` rows). That is the query a flow-matching or
    shortcut model's flow rows train on (MeanFlow's is d = 0; at d > 0 it answers with the
    average over the step, which the sampler uses). ``steps`` defaults to the objective's
    ``max_steps``. The last steps run near t = 1 (data)."""
    if not windows:
        raise ValueError("velocity_error_by_step needs at least one dataset window")
    M = policy.objective.max_steps
    jumps = step_schedule(steps or M, M)  # the sampler's own (t, d) sequence, validated there
    cond, x1 = conditioned_chunks(policy, windows, n_noise)  # (n, C), (n, H, A)
    n = x1.shape[0]
    g = torch.Generator().manual_seed(seed)
    velocity = policy.objective.velocity_fn(policy.net)
    out, start = [], 0
    for k, jump in enumerate(jumps):
        t0, d0 = start / M, jump / M
        start += jump
        x0 = torch.randn(x1.shape, generator=g).to(x1)
        t = torch.full((n,), t0).to(x1)
        x_t = (1 - t.view(-1, 1, 1)) * x0 + t.view(-1, 1, 1) * x1
        u = velocity(x_t, t, torch.full_like(t, d0), cond)
        err = (u - (x1 - x0)).pow(2).flatten(1).mean(1)
        if not torch.isfinite(err).all():
            raise FloatingPointError(f"non-finite velocity at step {k} of {len(jumps)} (t = {t0:g})")
        out.append({"t": t0, "d": d0, "error": float(err.mean()), "rows": n})
    return out


def plot_velocity_error_by_step(by_step: dict[str, list[dict[str, float]]], path: str, title: str = "") -> None:
    """Each step's velocity error against its t, one line per checkpoint (log scale); runs named
    ``<method>-s<seed>`` share their method's colour."""
    import re
    import textwrap

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..utils import save_figure

    methods = list(dict.fromkeys(re.sub(r"-s\d+$", "", n) for n in by_step))
    colors = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(methods)}
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    labelled = set()
    for name, rows in by_step.items():
        m = re.sub(r"-s\d+$", "", name)
        ax.plot([r["t"] for r in rows], [r["error"] for r in rows], "o-", ms=3, lw=1.2, color=colors[m],
                label=None if m in labelled else m)
        labelled.add(m)
    ax.set_yscale("log")
    ax.set_xlabel("the step's t (0: noise, 1: data)")
    ax.set_ylabel("squared error vs x1 - x0")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    ax.set_title("\n".join(textwrap.wrap(title, 90)), fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


@torch.no_grad()
def conditioned_chunks(policy, windows: Sequence[dict[str, Any]], n_noise: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The policy's condition and the demonstrated chunk in normalized units, each window repeated
    ``n_noise`` times (eval mode): the (cond, x1) pairs the objective trains on."""
    obs, demo = stack_windows(windows)
    policy.eval()
    cond = policy.encode_obs(policy.prepare_obs(obs)).repeat_interleave(n_noise, dim=0)  # (B*K, C)
    x1 = policy.normalizer.normalize("action", demo).repeat_interleave(n_noise, dim=0)  # (B*K, H, A)
    return cond, x1


def stack_windows(windows: Sequence[dict[str, Any]]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Dataset items -> ({key: (B, To, ...)}, actions (B, H, A) float32)."""
    obs = {k: torch.stack([w["obs"][k] for w in windows]) for k in windows[0]["obs"]}
    return obs, torch.stack([w["action"] for w in windows]).float()


def pick_windows(dataset, n: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """``n`` windows drawn without replacement (all if the dataset is smaller), reproducibly."""
    if len(dataset) == 0:
        raise ValueError("the dataset has no windows")
    idx = np.random.default_rng(seed).permutation(len(dataset))[:n]
    return [dataset[int(i)] for i in np.sort(idx)]


def by_step_count(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Regroup per-checkpoint results as {step count: {checkpoint: entry}} (the results-file layout).
    Checkpoints with different ``max_inference_steps`` share a file: a count appears under the checkpoints that
    were sampled at it (one with max_inference_steps 8 has no 16-call entry)."""
    counts = sorted({int(n) for r in results.values() for n in r["steps"]})
    return {str(n): {name: r["steps"][str(n)] for name, r in results.items() if str(n) in r["steps"]}
            for n in counts}


def format_diagnostics(results: dict[str, dict[str, Any]]) -> str:
    """Markdown table, one row per (method, step count)."""
    lines = ["| method | steps | to ref (RMS) | spread | to demo | best of K to demo | roughness (demo) | noise leak |",
             "|---|---|---|---|---|---|---|---|"]
    for name, res in results.items():
        for n, r in res["steps"].items():
            lines.append(f"| {name} | {n} | {r['to_ref']:.2f} | {r['spread']:.2f} | {r['to_demo']:.2f} | "
                         f"{r['to_demo_best']:.2f} | {r['roughness']:.2f} ({res['demo_roughness']:.2f}) | "
                         f"{r['noise_leak']:+.3f} |")
    return "\n".join(lines)
