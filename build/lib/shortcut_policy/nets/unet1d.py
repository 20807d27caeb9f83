"""A 1D temporal UNet over an action chunk, conditioned by FiLM (Diffusion Policy's design).

Maps (x_t, t, d, cond) -> velocity with the chunk's time axis as the convolution axis.
The (t, d) embedding and the global observation condition are concatenated into one
vector that sets a FiLM scale and bias in every residual block, so d reaches every
block that t reaches (a shortcut network that ignores d is not one).

Differences from Diffusion Policy's ConditionalUnet1D, on purpose:
- FiLM is ``(1 + scale) * h + bias``: zero modulation is the identity, not a zero map;
- every down level but the deepest feeds a skip to the up level of the same length
  (DP stores the top-level skip and never uses it).
"""
from __future__ import annotations

import torch
from torch import nn

from shortcut_policy.core.embeddings import TimeStepEmbedding


class Conv1dBlock(nn.Module):
    """Conv1d -> GroupNorm -> Mish, keeping the length: (B, C_in, T) -> (B, C_out, T)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, n_groups: int):
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv1d(in_channels, out_channels, kernel_size, padding=kernel_size // 2),
            nn.GroupNorm(n_groups, out_channels),
            nn.Mish(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class FiLMResidualBlock1D(nn.Module):
    """Two conv blocks with FiLM from a global vector between them, plus a residual path.

    x: (B, C_in, T), c: (B, c_dim) -> (B, C_out, T).
    """

    def __init__(self, in_channels: int, out_channels: int, c_dim: int, kernel_size: int, n_groups: int,
                 predict_scale: bool):
        super().__init__()
        self.predict_scale = predict_scale
        self.conv1 = Conv1dBlock(in_channels, out_channels, kernel_size, n_groups)
        self.conv2 = Conv1dBlock(out_channels, out_channels, kernel_size, n_groups)
        self.film = nn.Sequential(nn.Mish(), nn.Linear(c_dim, out_channels * (2 if predict_scale else 1)))
        # a 1x1 conv matches channels on the residual path only where they differ
        self.residual = nn.Conv1d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        h = self.conv1(x)  # (B, C_out, T)
        film = self.film(c)[:, :, None]  # (B, 2 C_out or C_out, 1)
        if self.predict_scale:
            scale, bias = film.chunk(2, dim=1)  # (B, C_out, 1) each
            h = (1 + scale) * h + bias  # (B, C_out, T)
        else:
            h = h + film  # (B, C_out, T)
        h = self.conv2(h)  # (B, C_out, T)
        return h + self.residual(x)  # (B, C_out, T)


class ConditionalUnet1D(nn.Module):
    """UNet over the horizon axis of an action chunk.

    Args:
        action_dim: size of one action, A.
        cond_dim: size of the global observation condition; 0 for an unconditional net.
        down_dims: channels per level; the chunk is halved in length between levels, so the
            horizon must be a multiple of 2 ** (len(down_dims) - 1).
        kernel_size: odd temporal kernel of every conv block.
        n_groups: GroupNorm groups; must divide every entry of down_dims.
        emb_dim: width of the (t, d) embedding.
        d_embedding, max_inference_steps: see ``TimeStepEmbedding``.
        cond_predict_scale: FiLM predicts scale and bias (True) or bias only.

    forward(x (B, T, A), t (B,), d (B,), cond (B, cond_dim) or None) -> (B, T, A).
    """

    def __init__(self, action_dim: int, cond_dim: int, down_dims: tuple[int, ...] = (256, 512, 1024),
                 kernel_size: int = 5, n_groups: int = 8, emb_dim: int = 256, d_embedding: str = "log2",
                 max_inference_steps: int = 128, cond_predict_scale: bool = True):
        super().__init__()
        down_dims = tuple(int(c) for c in down_dims)
        if action_dim < 1:
            raise ValueError(f"action_dim must be >= 1, got {action_dim}")
        if cond_dim < 0:
            raise ValueError(f"cond_dim must be >= 0 (0 = unconditional), got {cond_dim}")
        if not down_dims:
            raise ValueError("down_dims must name at least one level, e.g. (256, 512, 1024)")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd so convs keep the length, got {kernel_size}")
        bad = [c for c in down_dims if c < 1 or c % n_groups]
        if bad:
            raise ValueError(f"every entry of down_dims must be a positive multiple of n_groups={n_groups}; "
                             f"{bad} in {down_dims} is not")
        self.action_dim = action_dim
        self.cond_dim = cond_dim
        self.down_dims = down_dims
        self.d_embedding = d_embedding
        self.horizon_multiple = 2 ** (len(down_dims) - 1)

        self.time_emb = TimeStepEmbedding(emb_dim, d_embedding=d_embedding, max_inference_steps=max_inference_steps)
        c_dim = emb_dim + cond_dim

        def res(c_in: int, c_out: int) -> FiLMResidualBlock1D:
            return FiLMResidualBlock1D(c_in, c_out, c_dim, kernel_size, n_groups, cond_predict_scale)

        in_dims = (action_dim,) + down_dims[:-1]
        self.down_blocks = nn.ModuleList(
            nn.ModuleList([res(c_in, c_out), res(c_out, c_out)]) for c_in, c_out in zip(in_dims, down_dims)
        )
        # stride-2 conv halves T between consecutive levels
        self.downsamples = nn.ModuleList(nn.Conv1d(c, c, 3, stride=2, padding=1) for c in down_dims[:-1])
        deepest = down_dims[-1]
        self.mid_blocks = nn.ModuleList([res(deepest, deepest), res(deepest, deepest)])
        # up path, deepest first: double T, concatenate the skip of that length, fuse
        pairs = list(zip(down_dims[:-1], down_dims[1:]))[::-1]  # (C_i, C_{i+1}) for i = L-2 .. 0
        self.upsamples = nn.ModuleList(nn.ConvTranspose1d(c_next, c_next, 4, stride=2, padding=1)
                                       for _, c_next in pairs)
        self.up_blocks = nn.ModuleList(
            nn.ModuleList([res(c_next + c_skip, c_skip), res(c_skip, c_skip)]) for c_skip, c_next in pairs
        )
        self.final = nn.Sequential(
            Conv1dBlock(down_dims[0], down_dims[0], kernel_size, n_groups),
            nn.Conv1d(down_dims[0], action_dim, 1),
        )

    def _check_inputs(self, x: torch.Tensor, t: torch.Tensor, d: torch.Tensor | None,
                      cond: torch.Tensor | None) -> None:
        if x.ndim != 3 or x.shape[-1] != self.action_dim:
            raise ValueError(f"x must have shape (B, T, action_dim={self.action_dim}), got {tuple(x.shape)}")
        B, T = x.shape[0], x.shape[1]
        if T < 1 or T % self.horizon_multiple:
            raise ValueError(
                f"horizon T={T} cannot pass {len(self.down_dims) - 1} halvings of down_dims={self.down_dims}: "
                f"T must be a positive multiple of {self.horizon_multiple} (e.g. {2 * self.horizon_multiple}, "
                f"{4 * self.horizon_multiple}); pad the chunk or use fewer levels")
        if t.shape != (B,):
            raise ValueError(f"t must have shape (B,)=({B},), got {tuple(t.shape)}")
        if not t.is_floating_point():
            raise ValueError(f"t must be a float tensor in [0, 1], got dtype {t.dtype}")
        if d is not None and d.shape != (B,):
            raise ValueError(f"d must have shape (B,)=({B},), got {tuple(d.shape)}")
        if self.cond_dim == 0:
            if cond is not None:
                raise ValueError("this net was built with cond_dim=0 (unconditional); pass cond=None")
        elif cond is None:
            raise ValueError(f"this net needs cond of shape (B, {self.cond_dim}); got None")
        elif cond.shape != (B, self.cond_dim):
            raise ValueError(f"cond must have shape (B, cond_dim)=({B}, {self.cond_dim}), got {tuple(cond.shape)}; "
                             "flatten per-step observation features into one vector first")

    def forward(self, x: torch.Tensor, t: torch.Tensor, d: torch.Tensor | None,
                cond: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, T, A), t: (B,) in [0, 1], d: (B,), cond: (B, cond_dim) or None -> (B, T, A)."""
        self._check_inputs(x, t, d, cond)
        c = self.time_emb(t, d)  # (B, emb_dim)
        if cond is not None:
            c = torch.cat([c, cond], dim=-1)  # (B, emb_dim + cond_dim)
        h = x.transpose(1, 2)  # (B, A, T)
        skips = []
        for level, (res_a, res_b) in enumerate(self.down_blocks):
            if level > 0:
                h = self.downsamples[level - 1](h)  # (B, C_{level-1}, T / 2^level)
            h = res_b(res_a(h, c), c)  # (B, C_level, T / 2^level)
            skips.append(h)
        skips.pop()  # the deepest level flows straight on into the middle blocks
        for block in self.mid_blocks:
            h = block(h, c)  # (B, C_{L-1}, T / 2^(L-1))
        for upsample, (res_a, res_b) in zip(self.upsamples, self.up_blocks):
            h = upsample(h)  # (B, C_{i+1}, T / 2^i)
            h = torch.cat([h, skips.pop()], dim=1)  # (B, C_{i+1} + C_i, T / 2^i)
            h = res_b(res_a(h, c), c)  # (B, C_i, T / 2^i)
        h = self.final(h)  # (B, A, T)
        return h.transpose(1, 2)  # (B, T, A)
