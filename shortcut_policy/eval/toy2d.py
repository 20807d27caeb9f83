"""The paper's Figure 2 in miniature: a 2-D multimodal distribution, where one Euler step of
flow matching lands on the mean between modes while one shortcut step lands on the modes.

`train_toy` trains the small MLP with a given objective; `sliced_wasserstein` measures how far
samples are from the data.
"""
from __future__ import annotations

import math

import torch

from ..core.ema import EMA
from ..core.objective import ShortcutObjective
from ..nets.mlp import MLPVelocity


def gaussian_ring(n: int, n_modes: int = 8, radius: float = 2.0, std: float = 0.08,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """n points from a mixture of ``n_modes`` Gaussians on a circle: (n, 2)."""
    k = torch.randint(0, n_modes, (n,), generator=generator)
    ang = 2 * math.pi * k.float() / n_modes
    centres = radius * torch.stack([ang.cos(), ang.sin()], dim=1)  # (n, 2)
    return centres + std * torch.randn(n, 2, generator=generator)


def sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, n_proj: int = 256, seed: int = 0) -> float:
    """Sliced 1-Wasserstein distance between two equal-size point clouds (n, D)."""
    if a.shape != b.shape:
        raise ValueError(f"point clouds must have equal shapes, got {tuple(a.shape)} and {tuple(b.shape)}")
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(a.shape[1], n_proj, generator=g, dtype=a.dtype)
    dirs = dirs / dirs.norm(dim=0, keepdim=True)
    pa, _ = (a @ dirs).sort(dim=0)  # (n, P)
    pb, _ = (b @ dirs).sort(dim=0)
    return (pa - pb).abs().mean().item()


def train_toy(objective: ShortcutObjective, steps: int = 400, batch_size: int = 256, lr: float = 1e-3,
              teacher: str = "online", seed: int = 0, width: int = 128, progress: bool = False) -> MLPVelocity:
    """Train the toy MLP; d is ignored by the network when the objective is flow-only."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    net = MLPVelocity(2, width=width, d_embedding="none" if objective.flow_only else "log2",
                      max_steps=objective.max_steps)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.0)
    ema = EMA(net, max_decay=0.99, warmup=False) if teacher == "ema" else None
    it = range(steps)
    if progress:
        from tqdm import tqdm
        it = tqdm(it, desc="toy", leave=False)
    for _ in it:
        x1 = gaussian_ring(batch_size, generator=g)
        loss, _ = objective.loss(net, x1, teacher=ema.module if ema else None, generator=g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if ema:
            ema.update(net)
    return net.eval()
