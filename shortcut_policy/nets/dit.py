"""A class-conditional Diffusion Transformer (DiT, Peebles & Xie 2023) for shortcut image models.

Maps (x_t (B, C, H, W), t (B,), d (B,), labels (B,)) -> velocity (B, C, H, W). The image is cut
into p x p patches (one token each) with a fixed 2D sin-cos or a learned position embedding. One
conditioning vector, the core (t, d) embedding plus a class embedding, modulates every block through
adaLN-Zero, so d reaches every block that t reaches. The class table has one extra row, the null
class (index ``num_classes``), used for label dropout and classifier-free guidance; an
unconditional model (num_classes = 0) has only that row. The blocks are the action transformer's
adaLN-Zero blocks without cross-attention; the net knows nothing of schedules or guidance.

Sizes: ``DIT_MODELS`` maps a preset name to a factory, from a ~1M-parameter CPU model for 28x28
MNIST to DiT-B (width 768, 12 layers, 12 heads).
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from einops import rearrange
from torch import nn

from shortcut_policy.core.embeddings import TimeStepEmbedding
from shortcut_policy.nets.transformer import AdaLNBlock, modulate, xavier_linear_init, zero_init_adaln


def sincos_pos_embed_2d(dim: int, grid_h: int, grid_w: int) -> torch.Tensor:
    """Fixed 2D sin-cos position embedding: half the channels encode the row, half the column.

    Returns (grid_h * grid_w, dim), row-major token order (the order of ``DiT.patchify``).
    """
    if dim % 4:
        raise ValueError(f"sin-cos 2D position embedding needs a width divisible by 4, got {dim}")

    def one_axis(n_ch: int, pos: np.ndarray) -> np.ndarray:
        omega = 1.0 / 10000 ** (np.arange(n_ch // 2, dtype=np.float64) / (n_ch / 2))  # (n_ch/2,)
        out = pos.reshape(-1)[:, None] * omega[None]  # (N, n_ch/2)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)  # (N, n_ch)

    rows, cols = np.meshgrid(np.arange(grid_h, dtype=np.float64), np.arange(grid_w, dtype=np.float64),
                             indexing="ij")  # (gh, gw) each
    emb = np.concatenate([one_axis(dim // 2, rows), one_axis(dim // 2, cols)], axis=1)  # (N, dim)
    return torch.from_numpy(emb).float()


class DiT(nn.Module):
    """Patch-token transformer with adaLN-Zero conditioning on (t, d, class).

    Args:
        in_channels, image_size: input image (C, H, W) with image_size = (H, W) or an int.
        patch_size: p; H and W must be multiples of p (tokens = H W / p^2).
        hidden_size, depth, num_heads, mlp ratio 4: transformer size.
        num_classes: number of real classes K; the null class is index K. 0 = unconditional.
        pos_embed: "sincos" (fixed) or "learned".
        d_embedding, max_inference_steps: see ``TimeStepEmbedding``; "none" for a flow-matching baseline.
        p_drop: dropout in attention and MLP.
        class_embed_std: init scale of the class table (1: on par with the (t, d) embedding; DiT used 0.02).

    forward(x (B, C, H, W), t (B,), d (B,) or None, labels (B,) long or None) -> (B, C, H, W).
    ``labels=None`` means the null class for the whole batch.
    """

    def __init__(self, in_channels: int = 1, image_size: int | tuple[int, int] = 28, patch_size: int = 4,
                 hidden_size: int = 96, depth: int = 4, num_heads: int = 4, num_classes: int = 10,
                 pos_embed: str = "sincos", d_embedding: str = "log2", max_inference_steps: int = 128, p_drop: float = 0.0,
                 class_embed_std: float = 1.0):
        super().__init__()
        self.class_embed_std = class_embed_std
        H, W = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        if in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {in_channels}")
        if patch_size < 1 or H % patch_size or W % patch_size:
            raise ValueError(f"image size {H}x{W} must be a multiple of patch_size={patch_size}")
        if num_heads < 1 or hidden_size % num_heads:
            raise ValueError(f"hidden_size={hidden_size} must be a multiple of num_heads={num_heads}")
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0 (0 = unconditional), got {num_classes}")
        if pos_embed not in ("sincos", "learned"):
            raise ValueError(f"pos_embed must be 'sincos' or 'learned', got {pos_embed!r}")
        self.in_channels, self.height, self.width, self.patch_size = in_channels, H, W, patch_size
        self.grid = (H // patch_size, W // patch_size)
        self.num_classes = num_classes
        self.null_class = num_classes
        n_tokens = self.grid[0] * self.grid[1]
        patch_dim = in_channels * patch_size * patch_size

        self.time_emb = TimeStepEmbedding(hidden_size, d_embedding=d_embedding, max_inference_steps=max_inference_steps)
        self.class_emb = nn.Embedding(num_classes + 1, hidden_size)  # last row: the null class
        self.patch_embed = nn.Linear(patch_dim, hidden_size)  # a p x p stride-p conv, as a matmul
        pe = sincos_pos_embed_2d(hidden_size, *self.grid)[None]  # (1, N, C)
        if pos_embed == "learned":
            self.pos_embed = nn.Parameter(pe.clone())
        else:
            self.register_buffer("pos_embed", pe, persistent=False)
        self.blocks = nn.ModuleList(AdaLNBlock(hidden_size, num_heads, p_drop, cross=False) for _ in range(depth))
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.ada_final = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))
        self.head = nn.Linear(hidden_size, patch_dim)
        self.n_tokens = n_tokens
        self._init_weights()

    def _init_weights(self) -> None:
        for module in (self.patch_embed, self.blocks, self.ada_final, self.head):
            module.apply(xavier_linear_init)
        # N(0, 1) per channel, so a class vector is on the scale of the (t, d) embedding (norm ~ sqrt(width)
        # vs ~13 for dit_tiny). DiT's std 0.02 makes the class nearly invisible next to t for a long time:
        # a 1200-step MNIST run with it reached class-embedding norms of 0.6-0.9 and chance-level accuracy.
        nn.init.normal_(self.class_emb.weight, std=self.class_embed_std)
        # adaLN-Zero: each block starts as the identity and the output is zero
        zero_init_adaln(self.blocks, self.ada_final, self.head)

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, N, C p p), tokens in row-major patch order."""
        return rearrange(x, "b c (gh p1) (gw p2) -> b (gh gw) (c p1 p2)", p1=self.patch_size, p2=self.patch_size)

    def unpatchify(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, N, C p p) -> (B, C, H, W), the inverse of ``patchify``."""
        return rearrange(tokens, "b (gh gw) (c p1 p2) -> b c (gh p1) (gw p2)", gh=self.grid[0], gw=self.grid[1],
                         p1=self.patch_size, p2=self.patch_size)

    def forward(self, x: torch.Tensor, t: torch.Tensor, d: torch.Tensor | None,
                labels: torch.Tensor | None = None) -> torch.Tensor:
        expected = (self.in_channels, self.height, self.width)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"x must have shape (B, {', '.join(map(str, expected))}), got {tuple(x.shape)}")
        B = x.shape[0]
        if t.shape != (B,):
            raise ValueError(f"t must have shape (B,)=({B},), got {tuple(t.shape)}")
        if labels is None:
            labels = torch.full((B,), self.null_class, dtype=torch.long, device=x.device)
        if labels.shape != (B,) or labels.is_floating_point():
            raise ValueError(f"labels must be an integer tensor of shape ({B},), got {labels.dtype} "
                             f"{tuple(labels.shape)}")
        # the range test reads values back, which stalls a GPU at every call: there the data loader's check
        # of the labels (image/data.py) and the embedding's own index assert stand in for it
        if labels.device.type == "cpu" and labels.numel() and (labels.min() < 0 or labels.max() > self.null_class):
            raise ValueError(f"labels must be in 0..{self.num_classes} ({self.num_classes} = null class), "
                             f"got range {labels.min().item()}..{labels.max().item()}")

        c = self.time_emb(t, d) + self.class_emb(labels)  # (B, C)
        h = self.patch_embed(self.patchify(x)) + self.pos_embed  # (B, N, C)
        for block in self.blocks:
            h = block(h, c, None)  # (B, N, C)
        shift, scale = self.ada_final(c)[:, None].chunk(2, dim=-1)  # (B, 1, C) each
        h = modulate(self.norm_final(h), shift, scale)  # (B, N, C)
        return self.unpatchify(self.head(h))  # (B, C_in, H, W)


def _preset(name: str, fixed: dict) -> Callable[..., DiT]:
    def build(**kwargs) -> DiT:
        clash = sorted(set(fixed) & set(kwargs))
        if clash:
            raise ValueError(f"preset {name!r} fixes {clash} (= {[fixed[k] for k in clash]}); "
                             f"use 'dit' to choose them yourself")
        return DiT(**fixed, **kwargs)
    build.__doc__ = f"DiT preset {name!r}: {fixed}"
    return build


# Size presets (patch size stays a free argument: 4 suits 28x28 MNIST on a CPU, 2 is DiT's usual).
DIT_MODELS: dict[str, Callable[..., DiT]] = {
    "dit": lambda **kwargs: DiT(**kwargs),
    "dit_tiny": _preset("dit_tiny", {"hidden_size": 96, "depth": 4, "num_heads": 4}),  # ~1M params
    "dit_s": _preset("dit_s", {"hidden_size": 384, "depth": 12, "num_heads": 6}),  # DiT-S
    "dit_b": _preset("dit_b", {"hidden_size": 768, "depth": 12, "num_heads": 12}),  # DiT-B
}


def make_image_net(name: str, **kwargs) -> DiT:
    """Build the image network ``name`` (a key of DIT_MODELS) with constructor kwargs."""
    if name not in DIT_MODELS:
        raise ValueError(f"unknown image net {name!r}; choose one of {sorted(DIT_MODELS)}")
    return DIT_MODELS[name](**kwargs)
