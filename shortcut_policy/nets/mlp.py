"""A small residual MLP velocity network for vectors: (x (B, D), t, d, cond (B, C) | None) -> (B, D).

Used by the 2-D toy and as the cheapest shortcut network; the (t, d) embedding enters every block
as FiLM, like the larger networks.
"""
from __future__ import annotations

import torch
from torch import nn

from ..core.embeddings import TimeStepEmbedding


class _Block(nn.Module):
    def __init__(self, width: int, emb_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.film = nn.Linear(emb_dim, 2 * width)
        self.ff = nn.Sequential(nn.Linear(width, width * 2), nn.SiLU(), nn.Linear(width * 2, width))

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        scale, shift = self.film(emb).chunk(2, dim=-1)  # (B, W) each
        return h + self.ff(self.norm(h) * (1 + scale) + shift)  # (B, W)


class MLPVelocity(nn.Module):
    """A small MLP velocity network for low-dimensional data (the 2-D toy): (x (B, D), t, d, cond) -> (B, D)."""

    def __init__(self, dim: int, cond_dim: int = 0, width: int = 256, depth: int = 3, emb_dim: int = 128,
                 d_embedding: str = "log2", max_inference_steps: int = 128):
        super().__init__()
        self.dim, self.cond_dim = dim, cond_dim
        self.emb = TimeStepEmbedding(emb_dim, d_embedding=d_embedding, max_inference_steps=max_inference_steps)
        if cond_dim:
            self.cond_proj = nn.Linear(cond_dim, emb_dim)
        self.inp = nn.Linear(dim, width)
        self.blocks = nn.ModuleList(_Block(width, emb_dim) for _ in range(depth))
        self.out = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, dim))

    def forward(self, x: torch.Tensor, t: torch.Tensor, d: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must have shape (B, {self.dim}), got {tuple(x.shape)}")
        emb = self.emb(t, d)  # (B, E)
        if self.cond_dim:
            if cond is None or cond.shape != (x.shape[0], self.cond_dim):
                raise ValueError(f"cond must have shape (B, {self.cond_dim}), got "
                                 f"{None if cond is None else tuple(cond.shape)}")
            emb = emb + self.cond_proj(cond)
        emb = nn.functional.silu(emb)
        h = self.inp(x)  # (B, W)
        for blk in self.blocks:
            h = blk(h, emb)
        return self.out(h)  # (B, D)
