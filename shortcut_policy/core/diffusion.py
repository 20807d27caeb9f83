"""DDPM / DDIM objective and sampler: the Diffusion Policy baseline.

It sits behind the same two methods as the shortcut objective, so the policy and the
training loop need not know which one they hold:

    loss(model, x1, cond=None, teacher=None, teacher_cond=None) -> (loss, info)
    sample(model, x0, steps, cond=None, generator=None) -> x

``model(x, t, d, cond)`` returns a tensor of x's shape (the predicted noise, as Diffusion Policy's
``prediction_type="epsilon"``). x may have any shape (B, ...).

Time convention. The project uses t in [0, 1] with 0 = pure noise and 1 = data. The
discrete DDPM timestep k in {0, ..., K-1} (K = ``num_train_timesteps``; k = K-1 is the
noisiest, as in diffusers) is passed to the network as

    t = 1 - (k + 1) / K          (``timestep_to_t``)

so k = K-1 -> t = 0 (pure noise) and k = 0 -> t = 1 - 1/K (one noising step away from
data). x_k has had k + 1 noising steps applied (abar_k = prod_{i<=k} (1 - beta_i)), so t
is the share of the K steps still to be undone. Loss and sampler both go through
``timestep_to_t``, so a network sees the same t for the same k in training and sampling.
d is filled with 1; baseline networks ignore it (d_embedding "none").

Inference timesteps (``inference_timesteps``), for N = ``steps`` network calls, "trailing"
spacing: k_i = round(K - i * K / N) - 1 for i = 0..N-1, which always starts at k = K-1 (Lin et al.
2024, "Common diffusion noise schedules and sample steps are flawed"; diffusers' default
"leading" spacing, Diffusion Policy's, starts few-step sampling below the noisiest timestep: DDIM
with N = 1 would evaluate the network at k = 0 only). Each step jumps to the next timestep of the
list and the last one to "clean" (abar = 1), where both samplers return the clipped predicted x0.

DDPM must use N = K or a divisor of K (strided ancestral sampling as diffusers'
``set_timesteps``: the per-step beta is 1 - abar_k / abar_prev, variance "fixed_small").
DDIM (eta 0, deterministic) accepts any N in 1..K. DDPM's noise comes from ``generator`` (a
torch.Generator on any device; the noise is drawn there and moved to x0's device).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, Callable

import torch

from .sampler import Noise, randn, to_device
from .schedule import DYADIC_COUNTS

SAMPLERS = ("ddpm", "ddim")

Denoiser = Callable[..., torch.Tensor]  # (x (B, ...), t (B,), d (B,), cond) -> eps (B, ...)


def cosine_alpha_bar(s: torch.Tensor | float) -> torch.Tensor:
    """Continuous abar(s) of the cosine schedule (Nichol & Dhariwal 2021), s in [0, 1], 0 = data.

    abar(s) = f(s) / f(0), f(s) = cos^2((s + 0.008) / 1.008 * pi / 2).
    """
    s = torch.as_tensor(s, dtype=torch.float64)
    f = lambda u: torch.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    return f(s) / f(torch.zeros((), dtype=torch.float64))


def make_betas(num_train_timesteps: int) -> torch.Tensor:
    """Diffusion Policy's "squaredcos_cap_v2" betas, float64 (K,): beta_k = min(1 - abar((k+1)/K) /
    abar(k/K), 0.999), so that the cumulative product follows the cosine abar (capped where it reaches 0)."""
    K = num_train_timesteps
    grid = torch.arange(K + 1, dtype=torch.float64) / K  # (K+1,)
    abar = cosine_alpha_bar(grid)  # (K+1,)
    return (1 - abar[1:] / abar[:-1]).clamp(max=0.999)  # (K,)


def timestep_to_t(k: torch.Tensor, num_train_timesteps: int) -> torch.Tensor:
    """Discrete timestep k (B,) int in 0..K-1 -> t = 1 - (k + 1) / K, float64 (B,), 0 = noise.

    Computed in float64 so that the same k gives the same t (after a cast) in the loss and
    in the sampler.
    """
    return 1.0 - (k.to(torch.float64) + 1.0) / num_train_timesteps


def t_to_timestep(t: torch.Tensor, num_train_timesteps: int) -> torch.Tensor:
    """Inverse of ``timestep_to_t``: t (B,) -> k (B,) long, rounded to the nearest step."""
    k = torch.round((1.0 - t.to(torch.float64)) * num_train_timesteps - 1.0).long()
    return k.clamp(0, num_train_timesteps - 1)


def _randn(like: torch.Tensor, generator: Noise) -> torch.Tensor:
    """Standard normal noise shaped like ``like`` (``sampler.randn``: one generator, or one per row)."""
    return randn(like.shape, generator, like.dtype, like.device)


def inference_timesteps(num_train_timesteps: int, steps: int) -> list[int]:
    """The N = ``steps`` timesteps visited by a sampler, noisiest first ("trailing"; module doc)."""
    K = num_train_timesteps
    if isinstance(steps, bool) or not isinstance(steps, int):
        raise TypeError(f"num_inference_steps must be an int, got {steps!r} ({type(steps).__name__})")
    if not 1 <= steps <= K:
        raise ValueError(f"num_inference_steps must be in 1..num_train_timesteps={K}, got {steps}")
    return [round(K - i * K / steps) - 1 for i in range(steps)]


@dataclass(eq=False)
class DiffusionObjective:
    """DDPM training loss and DDPM/DDIM sampling (Diffusion Policy's DDPMScheduler: epsilon prediction,
    squared-cosine betas, x0 clipped to [-1, 1]).

    Holds no learnable state: the schedule is rebuilt from these fields. ``sampler`` is the default
    one ("ddpm" or "ddim"); ``sample(..., sampler=...)`` takes either with the same network.
    """

    num_train_timesteps: int = 100
    sampler: str = "ddpm"
    clip_range: float = 1.0
    betas: torch.Tensor = field(init=False, repr=False)  # float64 (K,)
    alphas_cumprod: torch.Tensor = field(init=False, repr=False)  # float64 (K,), abar_k
    _abar_on: dict = field(init=False, repr=False, compare=False, default_factory=dict)  # device -> abar there

    def __post_init__(self) -> None:
        K = self.num_train_timesteps
        if isinstance(K, bool) or not isinstance(K, int) or K < 1:
            raise ValueError(f"num_train_timesteps must be a positive int, got {K!r}")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {self.sampler!r}")
        if not self.clip_range > 0:
            raise ValueError(f"clip_range must be > 0, got {self.clip_range}")
        self.betas = make_betas(K)
        self.alphas_cumprod = torch.cumprod(1.0 - self.betas, dim=0)

    def describe(self) -> dict[str, Any]:
        """The settings that rebuild this objective, plus its kind (for logs and checkpoints)."""
        return {"kind": "diffusion", **{f.name: getattr(self, f.name) for f in fields(self) if f.init}}

    # ------------------------------------------------------------------ what callers ask of an objective
    @property
    def kind(self) -> str:
        return self.sampler

    net_d_embedding = "none"

    @property
    def samplers(self) -> tuple[str, ...]:
        """The samplers this objective offers, the default first."""
        return (self.sampler, *[s for s in SAMPLERS if s != self.sampler])

    @property
    def default_inference_steps(self) -> int:
        """DDPM: every training timestep (Diffusion Policy's 100); DDIM: 10."""
        return self.num_train_timesteps if self.sampler == "ddpm" else min(10, self.num_train_timesteps)

    def check_sampler(self, sampler: str | None) -> str:
        if sampler not in (None, *SAMPLERS):
            raise ValueError(f"a diffusion model samples with {SAMPLERS}, got sampler={sampler!r}")
        return sampler or self.sampler

    def sweep_inference_steps(self, sampler: str | None = None) -> list[int]:
        """DDPM: the divisors of num_train_timesteps (1, 2, 4, 5, 10, 20, 25, 50, 100); DDIM: 1, 2, 4, ...
        up to num_train_timesteps, and 10."""
        K = self.num_train_timesteps
        if self.check_sampler(sampler) == "ddpm":
            return [n for n in range(1, K + 1) if K % n == 0]
        return sorted({n for n in DYADIC_COUNTS if n <= K} | {min(10, K)})

    def check_inference_steps(self, n: int, sampler: str | None = None) -> None:
        """Raise (naming the valid counts) unless ``n`` network calls are possible with ``sampler``."""
        method = self.check_sampler(sampler)
        K = self.num_train_timesteps
        inference_timesteps(K, n)
        if method == "ddpm" and K % n:
            raise ValueError(f"DDPM sampling needs num_inference_steps to divide num_train_timesteps={K} "
                             f"(strided ancestral sampling), got {n}; use DDIM for other counts")

    def deterministic(self, sampler: str | None = None) -> bool:
        """DDIM (eta 0) is a function of the initial noise; DDPM draws fresh noise at every step."""
        return self.check_sampler(sampler) == "ddim"

    # ----------------------------------------------------------------- helpers
    def _t_d(self, k: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """k (B,) long -> the network's t (B,) and d (B,) (ignored by baseline networks) in x's dtype."""
        t = timestep_to_t(k, self.num_train_timesteps).to(x.dtype)  # (B,)
        return t, torch.ones_like(t)

    def _call(self, model: Denoiser, x: torch.Tensor, k: torch.Tensor, cond) -> torch.Tensor:
        t, d = self._t_d(k, x)
        out = model(x, t, d, cond)
        if not isinstance(out, torch.Tensor) or out.shape != x.shape:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"model output must have the shape of x {tuple(x.shape)}, got {got}")
        return out

    @staticmethod
    def _check_x(x: torch.Tensor, name: str) -> None:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.ndim < 1 or x.shape[0] < 1:
            desc = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"{name} must be a floating tensor of shape (B, ...) with B >= 1, got {desc}")

    # -------------------------------------------------------------------- loss
    def loss(self, model: Denoiser, x1: torch.Tensor, cond=None, teacher: Denoiser | None = None,
             teacher_cond=None, generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
        """Denoising loss on clean data x1 (B, ...): one network call on the batch.

        k ~ U{0..K-1} per example, x_k = sqrt(abar_k) x1 + sqrt(1 - abar_k) eps, MSE between the
        network output and eps. ``teacher`` and
        ``teacher_cond`` exist for interface compatibility with the shortcut objective and are
        ignored. Returns (scalar loss, {"loss": the loss detached}).
        """
        self._check_x(x1, "x1")  # no NaN test here: it would stall a GPU each step (the loop checks the loss)
        B = x1.shape[0]
        gen_dev = x1.device if generator is None else generator.device
        k = to_device(torch.randint(0, self.num_train_timesteps, (B,), device=gen_dev, generator=generator), x1.device)  # (B,)
        eps = _randn(x1, generator)  # (B, ...)
        if x1.device not in self._abar_on:  # copied once per device, not every step
            self._abar_on[x1.device] = self.alphas_cumprod.to(x1.device)
        abar = self._abar_on[x1.device][k].to(x1.dtype)  # (B,)
        abar = abar.view(B, *([1] * (x1.ndim - 1)))  # (B, 1, ...)
        x_k = abar.sqrt() * x1 + (1 - abar).sqrt() * eps  # (B, ...)
        pred = self._call(model, x_k, k, cond)  # (B, ...)
        err = pred - eps  # (B, ...)
        if err.dtype in (torch.float16, torch.bfloat16):
            err = err.float()  # reduce in float32: half sums of many squares lose precision
        loss = err.pow(2).mean()
        return loss, {"loss": loss.detach()}

    # ------------------------------------------------------------------ sample
    def _predict_x0_eps(self, eps: torch.Tensor, x: torch.Tensor, abar: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Predicted noise at noise level abar -> (clipped x0, eps), both (B, ...)."""
        x0 = (x - math.sqrt(1 - abar) * eps) / math.sqrt(abar)
        # eps is kept unclipped, as diffusers does by default (use_clipped_model_output=False)
        return x0.clamp(-self.clip_range, self.clip_range), eps

    @torch.no_grad()
    def sample(self, model: Denoiser, x0: torch.Tensor, steps: int, cond=None,
               generator: Noise = None, sampler: str | None = None) -> torch.Tensor:
        """Denoise Gaussian noise x0 (B, ...) in exactly ``steps`` network calls -> sample (B, ...).

        ``sampler`` ("ddpm" | "ddim") overrides the configured one. DDPM needs ``steps`` to
        divide num_train_timesteps; DDIM takes any 1..num_train_timesteps. Runs without grad.
        """
        method = self.check_sampler(sampler)
        self._check_x(x0, "x0")
        self.check_inference_steps(steps, method)
        ks = inference_timesteps(self.num_train_timesteps, steps)
        abars = self.alphas_cumprod.tolist()
        B = x0.shape[0]
        x = x0
        for i, k in enumerate(ks):
            k_prev = ks[i + 1] if i + 1 < len(ks) else -1
            abar_t = abars[k]
            abar_prev = abars[k_prev] if k_prev >= 0 else 1.0
            out = self._call(model, x, torch.full((B,), k, dtype=torch.long, device=x.device), cond)
            x0_hat, eps = self._predict_x0_eps(out, x, abar_t)
            if method == "ddpm":
                x = self._ddpm_step(x, x0_hat, abar_t, abar_prev, generator)
            else:
                x = self._ddim_step(x0_hat, eps, abar_prev)
        return x

    def _ddpm_step(self, x: torch.Tensor, x0_hat: torch.Tensor, abar_t: float, abar_prev: float,
                   generator: Noise) -> torch.Tensor:
        """Ancestral step from abar_t to abar_prev: posterior mean q(x_prev | x_t, x0_hat) + noise."""
        alpha = abar_t / abar_prev  # the strided step's alpha
        beta = 1 - alpha
        mean = (math.sqrt(abar_prev) * beta / (1 - abar_t)) * x0_hat \
            + (math.sqrt(alpha) * (1 - abar_prev) / (1 - abar_t)) * x  # (B, ...)
        if abar_prev >= 1.0:  # last step: no noise, mean == x0_hat
            return mean
        var = max((1 - abar_prev) / (1 - abar_t) * beta, 1e-20)  # "fixed_small"
        return mean + math.sqrt(var) * _randn(x, generator)

    @staticmethod
    def _ddim_step(x0_hat: torch.Tensor, eps: torch.Tensor, abar_prev: float) -> torch.Tensor:
        """Deterministic DDIM step to abar_prev (Song et al. 2021, eq. 12 with eta = 0)."""
        return math.sqrt(abar_prev) * x0_hat + math.sqrt(max(1 - abar_prev, 0.0)) * eps  # (B, ...)
