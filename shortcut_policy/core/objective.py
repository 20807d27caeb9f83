"""The shortcut objective: flow matching + self-consistency in one mixed batch.

For data x1, noise x0 and x_t = (1 - t) x0 + t x1, a network s(x_t, t, d | cond)
is trained on two targets at once:

- flow part (1 - f of the batch): t on the grid {0, 1/M, ..., (M-1)/M}, d = 1/M,
  target v = x1 - x0 (the flow-matching velocity);
- consistency part (f of the batch): a jump of size 2d made of two half jumps of
  size d by a teacher under no-grad,
      v1 = teacher(x_t, t, d),  x' = x_t + d v1,  v2 = teacher(x', t + d, d),
      target for s(x_t, t, 2d) = (v1 + v2) / 2,
  with t a multiple of 2d so that t + 2d <= 1.

Plain flow matching is the same objective with ``consistency_fraction=0`` (and a
network that ignores d); the sampler then feeds d = 1/M at every step.

``parameterization="endpoint"`` reads the network output as the data estimate x^ that the
straight path from x_t would reach at t = 1, so the jump is
    s = (x^ - x_t) / (1 - t),   x_{t+d} = x_t + d / (1 - t) (x^ - x_t),
and a jump that ends at t = 1 lands on x^ itself: one call never has to reproduce (and cancel)
the initial noise through the network. The loss is then measured on x^ (the velocity error times
(1 - t)), which is the error of the state where a jump ends at t = 1.
"""
from __future__ import annotations

from typing import Any

import torch

from .sampler import Noise, VelocityFn, randn, sample, to_device
from .schedule import check_max_steps, dyadic_counts, step_schedule


def index_cond(cond: Any, idx: torch.Tensor) -> Any:
    """Select examples ``idx`` from a condition that is None, a tensor, or a dict/list of tensors."""
    if cond is None:
        return None
    if isinstance(cond, torch.Tensor):
        return cond[idx]
    if isinstance(cond, dict):
        return {k: index_cond(v, idx) for k, v in cond.items()}
    if isinstance(cond, (list, tuple)):
        return type(cond)(index_cond(v, idx) for v in cond)
    raise TypeError(f"cannot index a condition of type {type(cond).__name__}")


def teacher_condition(cond: Any, teacher_cond: Any, idx: torch.Tensor) -> Any:
    """The consistency targets' condition for examples ``idx``: the teacher's own (``teacher_cond``, an EMA
    teacher's encoding of the batch), or the batch's ``cond`` detached."""
    return index_cond(_detach(cond) if teacher_cond is None else teacher_cond, idx)


def _detach(cond: Any) -> Any:
    if isinstance(cond, torch.Tensor):
        return cond.detach()
    if isinstance(cond, dict):
        return {k: _detach(v) for k, v in cond.items()}
    if isinstance(cond, (list, tuple)):
        return type(cond)(_detach(v) for v in cond)
    return cond


PARAMETERIZATIONS = ("velocity", "endpoint")


def dyadic_cells(levels: torch.Tensor, generator: torch.Generator | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """The sampler's grid at per-example levels j (n,): (t, size) in float64, size = 2^-j and t a
    uniformly drawn multiple of it in [0, 1 - size]; the cells a j-level sampler steps through."""
    n_cells = (2 ** levels).to(torch.float64)
    cell = torch.floor(torch.rand(levels.shape[0], generator=generator, dtype=torch.float64) * n_cells)
    return cell / n_cells, 1.0 / n_cells


def endpoint_velocity(model: VelocityFn) -> VelocityFn:
    """A network that returns the endpoint estimate x^ as a velocity function: (x^ - x_t) / (1 - t).

    Defined for t < 1, which is every t the objective trains and the sampler queries.
    """
    def velocity(x: torch.Tensor, t: torch.Tensor, d: torch.Tensor, cond: Any) -> torch.Tensor:
        x_hat = model(x, t, d, cond)  # (B, ...)
        return (x_hat - x) / (1 - t).view((-1,) + (1,) * (x.ndim - 1))
    return velocity


class ShortcutObjective:
    """Loss and sampler of a shortcut model (Frans et al. 2025), and of plain flow matching.

    Args:
        max_steps: M = ``max_inference_steps``, the number of smallest steps (power of two); d in
            {1, 1/2, ..., 1/M}, so the model serves 1 .. M network calls per sample.
        consistency_fraction: share f of each batch trained on self-consistency targets
            (reference code 1/8, paper text 1/4). 0 gives plain flow matching.
        consistency_weight: loss weight of a consistency example relative to a flow example (1 =
            the reference's plain MSE over the batch). The flow targets x1 - x0 carry the whole
            spread of the data, the consistency targets none, so with weight 1 their share of the
            loss (and of its gradient noise) is tiny; a weight above 1 gives them more pull without
            taking flow examples away, as a larger ``consistency_fraction`` would.
        parameterization: "velocity" (the network returns s, the reference) or "endpoint" (the
            network returns x^ and s = (x^ - x_t) / (1 - t); the loss is then measured on x^).
    Consistency target levels 2d = 1, 1/2, ..., 2/M are drawn uniformly.
    """

    def __init__(self, max_steps: int = 128, consistency_fraction: float = 0.25, consistency_weight: float = 1.0,
                 parameterization: str = "velocity"):
        self.n_levels = check_max_steps(max_steps)
        self.max_steps = max_steps
        if not 0.0 <= consistency_fraction < 1.0:
            raise ValueError(f"consistency_fraction must be in [0, 1), got {consistency_fraction}")
        self.consistency_fraction = float(consistency_fraction)
        if not consistency_weight > 0:
            raise ValueError(f"consistency_weight must be positive, got {consistency_weight}")
        self.consistency_weight = float(consistency_weight)
        if parameterization not in PARAMETERIZATIONS:
            raise ValueError(f"parameterization must be one of {PARAMETERIZATIONS}, got {parameterization!r}")
        self.parameterization = parameterization

    @property
    def flow_only(self) -> bool:
        return self.consistency_fraction == 0.0

    # ------------------------------------------------------------------ what callers ask of an objective
    @property
    def kind(self) -> str:
        return "flow" if self.flow_only else "shortcut"

    @property
    def net_d_embedding(self) -> str:
        """How d reaches the network: "log2" (the level log2(1/d)) for shortcut, "none" for flow."""
        return "none" if self.flow_only else "log2"

    @property
    def samplers(self) -> tuple[str, ...]:
        """The samplers this objective offers, the default first."""
        return (self.kind,)

    @property
    def default_inference_steps(self) -> int:
        """Network calls when a caller does not say: one for a shortcut model, M for flow matching."""
        return self.max_steps if self.flow_only else 1

    def sweep_inference_steps(self, sampler: str | None = None) -> list[int]:
        """The numbers of network calls an evaluation sweeps by default: 1, 2, 4, ... M."""
        self.check_sampler(sampler)
        return dyadic_counts(self.max_steps)

    def check_inference_steps(self, n: int, sampler: str | None = None) -> None:
        """Raise (naming the valid range) unless ``n`` network calls are possible."""
        self.check_sampler(sampler)
        step_schedule(n, self.max_steps)

    def check_sampler(self, sampler: str | None) -> str:
        if sampler not in (None, *self.samplers):
            raise ValueError(f"a {self.kind} model samples with {self.samplers}, got sampler={sampler!r}")
        return self.kind

    def deterministic(self, sampler: str | None = None) -> bool:
        """True: the sample is a function of the initial noise alone (exportable)."""
        return True

    def velocity_fn(self, model: VelocityFn) -> VelocityFn:
        """The network as the velocity function s(x_t, t, d) the loss and the sampler integrate."""
        if self.parameterization == "endpoint":
            return endpoint_velocity(model)
        return model

    # ------------------------------------------------------------------ training
    def n_consistency(self, batch_size: int, generator: torch.Generator | None = None) -> int:
        """Examples of a batch that get a consistency target: floor(B f) plus a coin flip on
        the remainder, so small batches keep the right share on average (never a silent 0)."""
        exact = batch_size * self.consistency_fraction
        n = int(exact)
        if torch.rand((), generator=generator).item() < exact - n:
            n += 1
        return min(n, batch_size)

    def sample_levels(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Per-example consistency target levels j (target step 2d = 2^-j), j in 0..log2(M)-1: (n,)."""
        return torch.multinomial(torch.ones(self.n_levels), n, replacement=True, generator=generator)

    def loss(self, model: VelocityFn, x1: torch.Tensor, cond: Any = None,
             teacher: VelocityFn | None = None, teacher_cond: Any = None,
             generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
        """Mixed-batch shortcut loss.

        Args:
            model: the trained network (x, t, d, cond) -> v.
            x1: data (B, ...), e.g. normalized action chunks (B, T, A) or images (B, C, H, W).
            cond: condition of the batch (tensor / dict of tensors indexed on dim 0, or None).
            teacher: network that builds the consistency targets under no-grad (EMA weights,
                or None for the online ``model``).
            teacher_cond: the teacher's condition for the whole batch (defaults to ``cond`` detached).
        Returns:
            (loss, info) with the flow and consistency parts of the MSE logged separately; info's values are
            numbers or detached 0-dim tensors on the data's device (the training loop reads them when it logs).
        """
        B, M = x1.shape[0], self.max_steps
        dev, dt = x1.device, x1.dtype
        bshape = (B,) + (1,) * (x1.ndim - 1)
        x0 = randn(x1.shape, generator, dt, dev)

        # flow part: t = k / M, d = 1 / M, target x1 - x0
        t = to_device(torch.randint(0, M, (B,), generator=generator), dev, dt) / M  # (B,)
        d = torch.full((B,), 1.0 / M, dtype=dt, device=dev)  # (B,)
        nb = 0 if self.flow_only else self.n_consistency(B, generator)
        if nb:
            # consistency part: target step 2d = 2^-j, t a multiple of 2d
            t_c, size = dyadic_cells(self.sample_levels(nb, generator), generator)  # size = 2d
            t[:nb] = to_device(t_c, dev, dt)
            d[:nb] = to_device(size, dev, dt)
        x_t = (1 - t.view(bshape)) * x0 + t.view(bshape) * x1  # (B, ...)
        target = x1 - x0  # (B, ...)

        if nb:
            idx = torch.arange(nb, device=dev)
            tc = teacher_condition(cond, teacher_cond, idx)
            target[:nb] = self.consistency_target(self.velocity_fn(teacher or model), x_t[:nb], t[:nb], d[:nb] / 2, tc)

        pred = self.velocity_fn(model)(x_t, t, d, cond)  # (B, ...)
        if pred.shape != x1.shape:
            raise ValueError(f"network output {tuple(pred.shape)} does not match data {tuple(x1.shape)}")
        err = (pred - target).pow(2).flatten(1).mean(1)  # (B,)
        if self.parameterization == "endpoint":
            err = err * (1 - t) ** 2  # the error of x^ = x_t + (1 - t) s
        loss = (err[nb:].sum() + self.consistency_weight * err[:nb].sum()) / B
        err = err.detach()  # logged values stay on the device: reading them back each step would stall a GPU
        info = {"loss": loss.detach(), "loss_flow": err[nb:].mean() if nb < B else 0.0,
                "loss_consistency": err[:nb].mean() if nb else 0.0, "consistency_share": nb / B}
        return loss, info

    @torch.no_grad()
    def consistency_target(self, teacher: VelocityFn, x_t: torch.Tensor, t: torch.Tensor, d_half: torch.Tensor,
                           cond: Any) -> torch.Tensor:
        """Average velocity of two half jumps of size d_half from (x_t, t): the target for s(x_t, t, 2 d_half).
        ``teacher`` is a velocity function (see :meth:`velocity_fn`)."""
        return self.two_half_jumps(teacher, x_t, t, d_half, cond)[1]

    @torch.no_grad()
    def two_half_jumps(self, teacher: VelocityFn, x_t: torch.Tensor, t: torch.Tensor, d_half: torch.Tensor,
                       cond: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """The teacher's midpoint after the first half jump and the consistency target."""
        shape = (-1,) + (1,) * (x_t.ndim - 1)
        v1 = teacher(x_t, t, d_half, cond)  # (n, ...)
        x_mid = x_t + d_half.view(shape) * v1
        v2 = teacher(x_mid, t + d_half, d_half, cond)  # (n, ...)
        return x_mid, (v1 + v2) / 2

    # ------------------------------------------------------------------ sampling
    def sample(self, model: VelocityFn, x0: torch.Tensor, steps: int, cond: Any = None,
               generator: Noise = None, sampler: str | None = None) -> torch.Tensor:
        """``steps`` network calls from noise x0. A flow-only model is always fed d = 1/M."""
        self.check_sampler(sampler)
        fixed_d = 1.0 / self.max_steps if self.flow_only else None
        return sample(self.velocity_fn(model), x0, steps, cond, max_steps=self.max_steps, fixed_d=fixed_d)

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "max_inference_steps": self.max_steps,
                "consistency_fraction": self.consistency_fraction,
                "consistency_weight": self.consistency_weight, "parameterization": self.parameterization}


class EvalMode:
    """Call a network in eval mode (no dropout) when it builds targets, then restore its mode."""

    def __init__(self, net: torch.nn.Module):
        self.net = net

    def __call__(self, *args):
        was = self.net.training
        self.net.eval()
        try:
            return self.net(*args)
        finally:
            self.net.train(was)
