"""DDPM / DDIM objective and sampler: the Diffusion Policy baseline.

It sits behind the same two methods as the shortcut objective, so the policy and the
training loop need not know which one they hold:

    loss(model, x1, cond=None, teacher=None, teacher_cond=None) -> (loss, info)
    sample(model, x0, steps, cond=None, generator=None) -> x

``model(x, t, d, cond)`` returns a tensor of x's shape (the predicted noise, or the
predicted clean sample with ``prediction_type="sample"``). x may have any shape (B, ...).

Time convention. The project uses t in [0, 1] with 0 = pure noise and 1 = data. The
discrete DDPM timestep k in {0, ..., K-1} (K = ``num_train_timesteps``; k = K-1 is the
noisiest, as in diffusers) is passed to the network as

    t = 1 - (k + 1) / K          (``timestep_to_t``)

so k = K-1 -> t = 0 (pure noise) and k = 0 -> t = 1 - 1/K (one noising step away from
data). x_k has had k + 1 noising steps applied (abar_k = prod_{i<=k} (1 - beta_i)), so t
is the share of the K steps still to be undone. Loss and sampler both go through
``timestep_to_t``, so a network sees the same t for the same k in training and sampling.
d is filled with 1 / ``max_steps``; baseline networks ignore it (d_embedding "none").

Inference timesteps (``inference_timesteps``), for N = ``steps`` network calls:
- "leading" (diffusers' default, Diffusion Policy's setting): k_i = i * (K // N),
  visited from the largest down. With N = K this is K-1, ..., 0. With N < K the first
  step is K - K//N, not K-1, so few-step sampling starts from a timestep that is not the
  noisiest (DDIM with N = 1 evaluates the network at k = 0 only).
- "trailing": k_i = round(K - i * K / N) - 1 for i = 0..N-1, which always starts at
  k = K-1; better for few steps (Lin et al. 2024, "Common diffusion noise schedules and
  sample steps are flawed").
Each step jumps to the next timestep of the list and the last one to "clean"
(abar = 1), where both samplers return the (clipped) predicted x0.

DDPM must use N = K or a divisor of K (strided ancestral sampling as diffusers'
``set_timesteps``: the per-step beta is 1 - abar_k / abar_prev, variance "fixed_small").
DDIM accepts any N in 1..K; ``ddim_eta = 0`` is deterministic. Random noise (the DDPM
variance, DDIM with eta > 0) comes from ``generator`` (a torch.Generator on any device;
the noise is drawn there and moved to x0's device).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, Callable

import torch

BETA_SCHEDULES = ("squaredcos_cap_v2", "linear")
PREDICTION_TYPES = ("epsilon", "sample")
SAMPLERS = ("ddpm", "ddim")
TIMESTEP_SPACINGS = ("leading", "trailing")

Denoiser = Callable[..., torch.Tensor]  # (x (B, ...), t (B,), d (B,), cond) -> eps or x0 (B, ...)


def cosine_alpha_bar(s: torch.Tensor | float) -> torch.Tensor:
    """Continuous abar(s) of the cosine schedule (Nichol & Dhariwal 2021), s in [0, 1], 0 = data.

    abar(s) = f(s) / f(0), f(s) = cos^2((s + 0.008) / 1.008 * pi / 2).
    """
    s = torch.as_tensor(s, dtype=torch.float64)
    f = lambda u: torch.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    return f(s) / f(torch.zeros((), dtype=torch.float64))


def make_betas(schedule: str, num_train_timesteps: int, beta_start: float = 1e-4,
               beta_end: float = 0.02) -> torch.Tensor:
    """Noise schedule betas, float64 (K,).

    - "squaredcos_cap_v2": beta_k = min(1 - abar((k+1)/K) / abar(k/K), 0.999), so that
      the cumulative product follows the cosine abar (capped where it reaches 0).
    - "linear": betas evenly spaced from beta_start to beta_end.
    """
    K = num_train_timesteps
    if schedule == "squaredcos_cap_v2":
        grid = torch.arange(K + 1, dtype=torch.float64) / K  # (K+1,)
        abar = cosine_alpha_bar(grid)  # (K+1,)
        return (1 - abar[1:] / abar[:-1]).clamp(max=0.999)  # (K,)
    if schedule == "linear":
        return torch.linspace(beta_start, beta_end, K, dtype=torch.float64)  # (K,)
    raise ValueError(f"beta_schedule must be one of {BETA_SCHEDULES}, got {schedule!r}")


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


def _randn(like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Standard normal noise shaped like ``like``, drawn on the generator's device (a CPU
    generator then works for CUDA data, and the draw does not depend on the data's device)."""
    dev = like.device if generator is None else generator.device
    return torch.randn(like.shape, generator=generator, dtype=like.dtype, device=dev).to(like.device)


def inference_timesteps(num_train_timesteps: int, steps: int, spacing: str = "leading") -> list[int]:
    """The N = ``steps`` timesteps visited by a sampler, noisiest first (see module doc)."""
    K = num_train_timesteps
    if isinstance(steps, bool) or not isinstance(steps, int):
        raise TypeError(f"steps must be an int, got {type(steps).__name__}")
    if not 1 <= steps <= K:
        raise ValueError(f"steps must be in 1..num_train_timesteps={K}, got {steps}")
    if spacing == "leading":
        ratio = K // steps
        return [i * ratio for i in reversed(range(steps))]
    if spacing == "trailing":
        return [round(K - i * K / steps) - 1 for i in range(steps)]
    raise ValueError(f"timestep_spacing must be one of {TIMESTEP_SPACINGS}, got {spacing!r}")


@dataclass(eq=False)
class DiffusionObjective:
    """DDPM training loss and DDPM/DDIM sampling (defaults: Diffusion Policy's DDPMScheduler).

    Holds no learnable state: the schedule is rebuilt from these fields, so storing the
    fields (``dataclasses.asdict``) is enough to rebuild the objective.
    """

    num_train_timesteps: int = 100
    beta_schedule: str = "squaredcos_cap_v2"
    prediction_type: str = "epsilon"
    clip_sample: bool = True
    clip_range: float = 1.0
    sampler: str = "ddpm"
    ddim_eta: float = 0.0
    max_steps: int = 128
    timestep_spacing: str = "leading"
    beta_start: float = 1e-4  # "linear" only
    beta_end: float = 0.02  # "linear" only
    betas: torch.Tensor = field(init=False, repr=False)  # float64 (K,)
    alphas_cumprod: torch.Tensor = field(init=False, repr=False)  # float64 (K,), abar_k

    def __post_init__(self) -> None:
        K = self.num_train_timesteps
        if isinstance(K, bool) or not isinstance(K, int) or K < 1:
            raise ValueError(f"num_train_timesteps must be a positive int, got {K!r}")
        if self.beta_schedule not in BETA_SCHEDULES:
            raise ValueError(f"beta_schedule must be one of {BETA_SCHEDULES}, got {self.beta_schedule!r}")
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {self.prediction_type!r}")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {self.sampler!r}")
        if self.timestep_spacing not in TIMESTEP_SPACINGS:
            raise ValueError(f"timestep_spacing must be one of {TIMESTEP_SPACINGS}, got {self.timestep_spacing!r}")
        if not self.clip_range > 0:
            raise ValueError(f"clip_range must be > 0, got {self.clip_range}")
        if not 0.0 <= self.ddim_eta <= 1.0:
            raise ValueError(f"ddim_eta must be in [0, 1], got {self.ddim_eta}")
        if isinstance(self.max_steps, bool) or not isinstance(self.max_steps, int) or self.max_steps < 1:
            raise ValueError(f"max_steps must be a positive int, got {self.max_steps!r}")
        if self.beta_schedule == "linear" and not 0 < self.beta_start <= self.beta_end < 1:
            raise ValueError(f"linear schedule needs 0 < beta_start <= beta_end < 1, "
                             f"got beta_start={self.beta_start}, beta_end={self.beta_end}")
        self.betas = make_betas(self.beta_schedule, K, self.beta_start, self.beta_end)
        self.alphas_cumprod = torch.cumprod(1.0 - self.betas, dim=0)

    def describe(self) -> dict[str, Any]:
        """The settings that rebuild this objective, plus its kind (for logs and checkpoints)."""
        return {"kind": "diffusion", **{f.name: getattr(self, f.name) for f in fields(self) if f.init}}

    # ----------------------------------------------------------------- helpers
    def _t_d(self, k: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """k (B,) long -> the network's t (B,) and d (B,) in x's dtype and device."""
        t = timestep_to_t(k, self.num_train_timesteps).to(x.dtype)  # (B,)
        d = torch.full_like(t, 1.0 / self.max_steps)  # (B,)
        return t, d

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
             teacher_cond=None, generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """Denoising loss on clean data x1 (B, ...): one network call on the batch.

        k ~ U{0..K-1} per example, x_k = sqrt(abar_k) x1 + sqrt(1 - abar_k) eps, MSE between the
        network output and eps (or x1 for ``prediction_type="sample"``). ``teacher`` and
        ``teacher_cond`` exist for interface compatibility with the shortcut objective and are
        ignored. Returns (scalar loss, {"loss": float}).
        """
        self._check_x(x1, "x1")
        if not torch.isfinite(x1).all():
            raise ValueError("x1 contains NaN or inf")
        B = x1.shape[0]
        gen_dev = x1.device if generator is None else generator.device
        k = torch.randint(0, self.num_train_timesteps, (B,), device=gen_dev, generator=generator).to(x1.device)  # (B,)
        eps = _randn(x1, generator)  # (B, ...)
        abar = self.alphas_cumprod.to(x1.device)[k].to(x1.dtype)  # (B,)
        abar = abar.view(B, *([1] * (x1.ndim - 1)))  # (B, 1, ...)
        x_k = abar.sqrt() * x1 + (1 - abar).sqrt() * eps  # (B, ...)
        pred = self._call(model, x_k, k, cond)  # (B, ...)
        target = eps if self.prediction_type == "epsilon" else x1
        err = pred - target  # (B, ...)
        if err.dtype in (torch.float16, torch.bfloat16):
            err = err.float()  # reduce in float32: half sums of many squares lose precision
        loss = err.pow(2).mean()
        return loss, {"loss": float(loss.detach())}

    # ------------------------------------------------------------------ sample
    def _predict_x0_eps(self, out: torch.Tensor, x: torch.Tensor, abar: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Network output at noise level abar -> (clipped x0, eps), both (B, ...)."""
        if self.prediction_type == "epsilon":
            eps = out
            x0 = (x - math.sqrt(1 - abar) * eps) / math.sqrt(abar)
        else:
            x0 = out
            eps = (x - math.sqrt(abar) * x0) / math.sqrt(1 - abar)
        if self.clip_sample:
            # eps is kept unclipped, as diffusers does by default (use_clipped_model_output=False)
            x0 = x0.clamp(-self.clip_range, self.clip_range)
        return x0, eps

    @torch.no_grad()
    def sample(self, model: Denoiser, x0: torch.Tensor, steps: int, cond=None,
               generator: torch.Generator | None = None, method: str | None = None) -> torch.Tensor:
        """Denoise Gaussian noise x0 (B, ...) in exactly ``steps`` network calls -> sample (B, ...).

        ``method`` ("ddpm" | "ddim") overrides the configured sampler. DDPM needs ``steps`` to
        divide num_train_timesteps; DDIM takes any 1..num_train_timesteps. Runs without grad.
        """
        method = self.sampler if method is None else method
        if method not in SAMPLERS:
            raise ValueError(f"method must be one of {SAMPLERS}, got {method!r}")
        self._check_x(x0, "x0")
        K = self.num_train_timesteps
        ks = inference_timesteps(K, steps, self.timestep_spacing)
        if method == "ddpm" and K % steps:
            raise ValueError(f"DDPM sampling needs steps to divide num_train_timesteps={K} "
                             f"(strided ancestral sampling), got steps={steps}; use DDIM for other counts")
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
                x = self._ddim_step(x0_hat, eps, abar_t, abar_prev, generator)
        return x

    def _ddpm_step(self, x: torch.Tensor, x0_hat: torch.Tensor, abar_t: float, abar_prev: float,
                   generator: torch.Generator | None) -> torch.Tensor:
        """Ancestral step from abar_t to abar_prev: posterior mean q(x_prev | x_t, x0_hat) + noise."""
        alpha = abar_t / abar_prev  # the strided step's alpha
        beta = 1 - alpha
        mean = (math.sqrt(abar_prev) * beta / (1 - abar_t)) * x0_hat \
            + (math.sqrt(alpha) * (1 - abar_prev) / (1 - abar_t)) * x  # (B, ...)
        if abar_prev >= 1.0:  # last step: no noise, mean == x0_hat
            return mean
        var = max((1 - abar_prev) / (1 - abar_t) * beta, 1e-20)  # "fixed_small"
        return mean + math.sqrt(var) * _randn(x, generator)

    def _ddim_step(self, x0_hat: torch.Tensor, eps: torch.Tensor, abar_t: float, abar_prev: float,
                   generator: torch.Generator | None) -> torch.Tensor:
        """DDIM step from abar_t to abar_prev (Song et al. 2021, eq. 12); eta = 0 is deterministic."""
        var = (1 - abar_prev) / (1 - abar_t) * (1 - abar_t / abar_prev)
        sigma = self.ddim_eta * math.sqrt(max(var, 0.0))
        x = math.sqrt(abar_prev) * x0_hat + math.sqrt(max(1 - abar_prev - sigma ** 2, 0.0)) * eps  # (B, ...)
        if sigma > 0:
            x = x + sigma * _randn(x, generator)
        return x
