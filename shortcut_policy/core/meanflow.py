"""MeanFlow (Geng et al. 2025) in this package's convention: the network is the average velocity.

Convention: noise x0 at t = 0, data x1 at t = 1, x_t = (1 - t) x0 + t x1, v = x1 - x0. The network
s(x_t, t, d) is read as the *average* velocity over the interval [t, t + d] along the flow,

    u(x_t, t, d) = (1/d) * integral_t^{t+d} v(x_tau, tau) dtau,

which is what a shortcut network already means, so the sampler (x_{t+d} = x_t + d s), export and
deployment are the shortcut model's. The training target comes from differentiating
d * u(x_t, t, d) = integral_t^{t+d} v with respect to t while the interval's far end r = t + d is
held fixed (so d changes as -1 per unit of t) and x_t moves with the flow (dx/dt = v):

    -u + d * du/dt = -v     =>     u = v + d * (v . du/dx + du/dt - du/dd),

the bracket being one Jacobian-vector product of the network with tangent (v, 1, -1)
(``torch.func.jvp``), under stop-gradient; no teacher network. Check: for v(x, t) = t the average over
[t, t + d] is t + d/2, and the identity gives t + d (1 - 1/2). At d = 0 the target is v: plain flow
matching, which MeanFlow keeps for most of each batch.

Times: t and the far end are drawn from a logit-normal (mean ``time_mu``, std ``time_sigma``; the
paper's (-0.4, 1.0) in its reversed time is (+0.4, 1.0) here); a share ``interval_fraction`` of the
batch gets an interval (t, r sorted), the rest d = 0. These draws never reach the one-step interval
(t = 0, d = 1); ``grid_fraction`` draws a share of the interval rows on the sampler's dyadic grid
instead, ``grid_target`` says what those rows learn: ``"identity"`` (the JVP target above; 0.5 of it
wrecked a PushT run at every step count, docs/pusht.md) or ``"consistency"`` (the shortcut model's:
the average velocity of two half jumps of the teacher, no gradient), a target that holds the
network's outputs but not its slope in d, so it cannot feed on its own steepness the way the
identity's does on large intervals (docs/objectives.md), and ``grid_max_steps`` keeps the grid rows
on the jumps of the 1, 2, ..., grid_max_steps-step samplers. On every level the two half jumps gave
one step its first Adroit door successes and cost two to eight steps (docs/suites.md); on the
one-step jump alone (grid_max_steps 1), the one interval the identity cannot learn, they lift one
step and leave the finer cells, and the few-step policies, to the identity. That is the default
(half the interval rows, two half jumps, the one-step jump); grid_fraction 0 is the paper's MeanFlow. The
primal output of the JVP is the prediction (its gradient reaches the weights); only the interval
rows take the forward pass with tangents, the d = 0 rows (flow matching, target v) a plain one.
Each example's squared error is weighted by 1 / (its own error + 1e-3), held fixed (the paper's
adaptive loss, power 1): without it the JVP's early, very large targets wrecked a TwoCubeLift run
at lr 1e-3 (docs/objectives.md). The two-half-jump rows are the exception: weighted as the shortcut
objective weights them, 4x over the flow rows' mean error. ``flow_weight`` "mean" weights the flow rows
(d = 0) by their batch mean error instead of each by its own: flow matching's squared error.
"""
from __future__ import annotations

from typing import Any

import torch

from .config import FLOW_WEIGHTS, GRID_TARGETS, MeanFlowConfig, ShortcutConfig
from .embeddings import SMOOTH_D_EMBEDDINGS
from .objective import ShortcutObjective, dyadic_cells, index_cond, teacher_condition
from .sampler import VelocityFn, randn, to_device
from .schedule import check_grid_max_steps


def meanflow_target(fn, x: torch.Tensor, t: torch.Tensor, d: torch.Tensor, v: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """(u, target): the average-velocity function ``fn(x, t, d)`` at the batch, with gradient, and its
    MeanFlow target v + d (v . du/dx + du/dt - du/dd), without gradient."""
    from torch.func import jvp
    from torch.nn.attention import SDPBackend, sdpa_kernel

    # the fused attention kernels have no forward-mode derivative; the math one is plain ops
    with sdpa_kernel([SDPBackend.MATH]):
        u, du = jvp(fn, (x, t, d), (v, torch.ones_like(t), -torch.ones_like(d)))
    shape = (-1,) + (1,) * (x.ndim - 1)
    return u, (v + d.view(shape) * du).detach()


def identity_terms(fn, x: torch.Tensor, t: torch.Tensor, d: torch.Tensor, v: torch.Tensor
                   ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(u, parts): the network's output at the batch and the three parts of the MeanFlow bracket,
    each its own JVP (no gradient): ``v.du/dx``, ``du/dt`` and ``du/dd``; the target is
    v + d (v.du/dx + du/dt - du/dd). A diagnostic: which input the network's average velocity is
    steep in when the interval targets grow."""
    from torch.func import jvp
    from torch.nn.attention import SDPBackend, sdpa_kernel

    z, one = torch.zeros_like, torch.ones_like
    tangents = {"v.du/dx": (v, z(t), z(d)), "du/dt": (z(x), one(t), z(d)), "du/dd": (z(x), z(t), one(d))}
    with torch.no_grad(), sdpa_kernel([SDPBackend.MATH]):
        out = {k: jvp(fn, (x, t, d), tan) for k, tan in tangents.items()}
    return out["du/dd"][0], {k: du for k, (_, du) in out.items()}


ADAPTIVE_C = 1e-3  # the paper's constant in w = 1 / (err + c)


class MeanFlowObjective(ShortcutObjective):
    """Loss and sampler of a MeanFlow model; sampling, step counts and export as a shortcut model's
    (``max_steps`` = M: the sampler's finest step is 1/M; training covers every d in [0, 1 - t])."""

    def __init__(self, max_steps: int = MeanFlowConfig.max_inference_steps,
                 interval_fraction: float = MeanFlowConfig.interval_fraction, time_mu: float = MeanFlowConfig.time_mu,
                 time_sigma: float = MeanFlowConfig.time_sigma, grid_fraction: float = MeanFlowConfig.grid_fraction,
                 d_embedding: str = MeanFlowConfig.d_embedding, grid_target: str = MeanFlowConfig.grid_target,
                 grid_max_steps: int | None = MeanFlowConfig.grid_max_steps,
                 flow_weight: str = MeanFlowConfig.flow_weight):  # the defaults live in MeanFlowConfig
        # the two-half-jump rows (grid_target "consistency") take the shortcut objective's default weight
        super().__init__(max_steps, consistency_fraction=0.0, consistency_weight=ShortcutConfig.consistency_weight)
        if not 0.0 < interval_fraction <= 1.0:
            raise ValueError(f"interval_fraction must be in (0, 1], got {interval_fraction}")
        if not 0.0 <= grid_fraction <= 1.0:
            raise ValueError(f"grid_fraction must be in [0, 1], got {grid_fraction}")
        self.grid_fraction = float(grid_fraction)
        if grid_target not in GRID_TARGETS:
            raise ValueError(f"grid_target must be one of {GRID_TARGETS}, got {grid_target!r}")
        self.grid_target = grid_target
        self.grid_max_steps = check_grid_max_steps(grid_max_steps, max_steps)
        if flow_weight not in FLOW_WEIGHTS:
            raise ValueError(f"flow_weight must be one of {FLOW_WEIGHTS}, got {flow_weight!r}")
        self.flow_weight = flow_weight
        if d_embedding not in SMOOTH_D_EMBEDDINGS:
            raise ValueError(f"d_embedding must be one of {SMOOTH_D_EMBEDDINGS}, got {d_embedding!r}")
        self.d_embedding = d_embedding
        if not time_sigma > 0:
            raise ValueError(f"time_sigma must be positive, got {time_sigma}")
        self.interval_fraction, self.time_mu, self.time_sigma = float(interval_fraction), float(time_mu), float(time_sigma)

    @property
    def flow_only(self) -> bool:
        return False  # the sampler feeds the true jump d, as for a shortcut model

    @property
    def kind(self) -> str:
        return "meanflow"

    @property
    def net_d_embedding(self) -> str:
        return self.d_embedding  # smooth in d, defined at d = 0: the JVP differentiates it

    @property
    def default_inference_steps(self) -> int:
        return 1

    def times(self, B: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(t, d), (B,) each in float64: logit-normal times, an interval for ``interval_fraction`` of them
        (the first rows); the first ``grid_fraction`` of those sit on the sampler's grid instead (d = 2^-j,
        j uniform in 0..log2(``grid_max_steps``), t a multiple of d: the jumps a 1, 2, ..., grid_max_steps-step
        sampler takes)."""
        z = torch.randn(2, B, generator=generator, dtype=torch.float64) * self.time_sigma + self.time_mu
        a, b = torch.sigmoid(z)
        t, r = torch.minimum(a, b), torch.maximum(a, b)
        n = int(round(self.interval_fraction * B))
        d = torch.zeros(B, dtype=torch.float64)
        d[:n] = (r - t)[:n]
        ng = int(round(self.grid_fraction * n))
        if ng:
            levels = torch.randint(0, self.grid_max_steps.bit_length(), (ng,), generator=generator)
            t[:ng], d[:ng] = dyadic_cells(levels, generator)
        return t, d

    def loss(self, model: VelocityFn, x1: torch.Tensor, cond: Any = None, teacher: VelocityFn | None = None,
             teacher_cond: Any = None, generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
        """MeanFlow loss. ``teacher`` (None: the online ``model``) builds the two-half-jump targets of the grid
        rows when ``grid_target`` is "consistency"; the identity's target needs none."""
        B = x1.shape[0]
        dev, dt = x1.device, x1.dtype
        shape = (B,) + (1,) * (x1.ndim - 1)
        x0 = randn(x1.shape, generator, dt, dev)
        t, d = (to_device(a, dev, dt) for a in self.times(B, generator))
        x_t = (1 - t.view(shape)) * x0 + t.view(shape) * x1
        v = x1 - x0
        # rows, as in times(): [0, nc) grid rows on two-half-jump targets (grid_target "consistency"), [nc, n)
        # interval rows on the identity's JVP target, [n, B) flow matching (d = 0, target v)
        n = int(round(self.interval_fraction * B))
        nc = int(round(self.grid_fraction * n)) if self.grid_target == "consistency" else 0
        rows = lambda lo, hi: torch.arange(lo, hi, device=dev)  # noqa: E731
        parts_u, parts_target = [], []
        if nc:
            tc = teacher_condition(cond, teacher_cond, rows(0, nc))
            parts_target.append(self.consistency_target(teacher or model, x_t[:nc], t[:nc], d[:nc] / 2, tc))
            parts_u.append(model(x_t[:nc], t[:nc], d[:nc], index_cond(cond, rows(0, nc))))
        if nc < n:
            cond_a = index_cond(cond, rows(nc, n))
            u, target = meanflow_target(lambda x, tt, dd: model(x, tt, dd, cond_a), x_t[nc:n], t[nc:n], d[nc:n], v[nc:n])
            parts_u.append(u)
            parts_target.append(target)
        if n < B:
            parts_u.append(model(x_t[n:], t[n:], d[n:], index_cond(cond, rows(n, B))))
            parts_target.append(v[n:])
        u, target = torch.cat(parts_u), torch.cat(parts_target)
        if u.shape != x1.shape:
            raise ValueError(f"network output {tuple(u.shape)} does not match data {tuple(x1.shape)}")
        err = (u - target).pow(2).flatten(1).mean(1)  # (B,)
        # the paper's adaptive weight (power 1): each example's error divided by its own size, held fixed, so
        # the rare huge targets of an early JVP do not run away with the step. The two-half-jump rows are weighted
        # against the flow rows as the shortcut objective weights them (consistency_weight / the flow rows' mean
        # error): their own error is tiny where the flow is nearly straight, and 1 / (own error) held a door run
        # at a constant output, which meets every such target (docs/objectives.md)
        held = err.detach()
        scale = held + ADAPTIVE_C
        if nc and nc < B:
            scale[:nc] = ((held[n:] if n < B else held[nc:]).mean() + ADAPTIVE_C) / self.consistency_weight
        if self.flow_weight == "mean" and n < B:  # flow matching's squared error, at the adaptive rows' scale
            scale[n:] = held[n:].mean() + ADAPTIVE_C
        loss = (err / scale).mean()
        err = held  # logged on the device (the shortcut objective's info)
        info = {"loss": loss.detach(), "loss_flow": err[n:].mean() if n < B else 0.0,
                "loss_interval": err[nc:n].mean() if nc < n else 0.0, "interval_share": n / B}
        if nc:
            info["loss_consistency"] = err[:nc].mean()
        return loss, info

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "max_inference_steps": self.max_steps, "interval_fraction": self.interval_fraction,
                "time_mu": self.time_mu, "time_sigma": self.time_sigma, "grid_fraction": self.grid_fraction,
                "d_embedding": self.d_embedding, "grid_target": self.grid_target, "grid_max_steps": self.grid_max_steps,
                "flow_weight": self.flow_weight}
