"""Embeddings of the noise level t and the step size d, usable by any network.

A shortcut network must see d everywhere it sees t (FiLM in a 1D UNet, adaLN in a
DiT), so both are folded into one conditioning vector here:

    emb = MLP_t(sin(t)) + MLP_d(sin(code(d)))

``code(d)`` is how d reaches the sinusoid:
- ``"log2"``: the level log2(1/d) in 0..log2(M), as the reference implementation (d itself
  scaled to the t range did worse at one call on PushT: docs/pusht.md);
- ``"linear"``: d itself on the t scale, smooth in d and defined at d = 0, for MeanFlow, which
  trains on any d in [0, 1 - t] and differentiates the network with respect to d;
- ``"unit"``: d itself unscaled (every sinusoid argument at most 1, so the features are nearly
  linear in d and the network's du/dd is not stretched by t_scale); a MeanFlow option
  (docs/objectives.md);
- ``"none"``: d is ignored (plain flow matching / diffusion baselines).
"""
from __future__ import annotations

import math

import torch
from torch import nn

D_EMBEDDINGS = ("log2", "linear", "unit", "none")
SMOOTH_D_EMBEDDINGS = ("linear", "unit")  # smooth in d and defined at d = 0: what a JVP in d needs (MeanFlow)


class SinusoidalEmbedding(nn.Module):
    """Fixed sin/cos features of a scalar per example: (B,) -> (B, dim)."""

    def __init__(self, dim: int, max_period: float = 10000.0):
        super().__init__()
        if dim % 2:
            raise ValueError(f"SinusoidalEmbedding dim must be even, got {dim}")
        self.dim = dim
        self.max_period = max_period

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        freqs = torch.exp(
            -math.log(self.max_period) * torch.arange(half, device=x.device, dtype=torch.float32) / half
        )  # (half,)
        args = x.float()[:, None] * freqs[None]  # (B, half)
        return torch.cat([torch.sin(args), torch.cos(args)], dim=-1).to(x.dtype if x.is_floating_point() else torch.float32)


def _mlp(in_dim: int, dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, dim * 4), nn.SiLU(), nn.Linear(dim * 4, dim))


class TimeStepEmbedding(nn.Module):
    """Joint embedding of (t, d): t in [0, 1], d in (0, 1] -> (B, dim).

    ``t_scale`` stretches t before the sinusoid (t in [0,1] is tiny next to the
    sinusoid's periods); levels are already integers 0..log2(M) and are scaled
    the same way so both features span a similar range.
    """

    def __init__(self, dim: int, d_embedding: str = "log2", max_inference_steps: int = 128, t_scale: float = 1000.0,
                 freq_dim: int = 256):
        super().__init__()
        if d_embedding not in D_EMBEDDINGS:
            raise ValueError(f"d_embedding must be one of {D_EMBEDDINGS}, got {d_embedding!r}")
        if max_inference_steps < 1 or max_inference_steps & (max_inference_steps - 1):
            raise ValueError(f"max_inference_steps must be a power of two, got {max_inference_steps}")
        self.dim = dim
        self.d_embedding = d_embedding
        self.max_level = int(math.log2(max_inference_steps))
        self.t_scale = t_scale
        self.t_freq = SinusoidalEmbedding(freq_dim)
        self.t_mlp = _mlp(freq_dim, dim)
        if d_embedding != "none":
            self.d_freq = SinusoidalEmbedding(freq_dim)
            self.d_mlp = _mlp(freq_dim, dim)

    def d_code(self, d: torch.Tensor) -> torch.Tensor:
        """The scalar that enters the d sinusoid (on the scale of t * t_scale except for "unit")."""
        if self.d_embedding == "linear":
            return d * self.t_scale
        if self.d_embedding == "unit":
            return d
        level = -torch.log2(d.clamp_min(2.0 ** -30))  # 0 for d=1, log2(M) for d=1/M
        return level / max(self.max_level, 1) * self.t_scale

    def forward(self, t: torch.Tensor, d: torch.Tensor | None = None) -> torch.Tensor:
        """t: (B,), d: (B,) -> (B, dim)."""
        if t.ndim != 1:
            raise ValueError(f"t must have shape (B,), got {tuple(t.shape)}")
        emb = self.t_mlp(self.t_freq(t * self.t_scale))  # (B, dim)
        if self.d_embedding != "none":
            if d is None:
                raise ValueError("this embedding conditions on d; pass d (B,)")
            if d.shape != t.shape:
                raise ValueError(f"d must have the shape of t {tuple(t.shape)}, got {tuple(d.shape)}")
            emb = emb + self.d_mlp(self.d_freq(self.d_code(d)))  # (B, dim)
        return emb
