"""A transformer over the action tokens of a chunk, with cross-attention to observation tokens.

Maps (x_t, t, d, cond) -> velocity. Each action step is one token (learned positional
embedding). The (t, d) embedding modulates every block through adaLN-Zero (DiT), so d
reaches every block that t reaches; the observations enter through cross-attention,
one token per observation step (or a single token). Zero-initialised gates and head
make the whole network output zero at init, and each block starts as the identity.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from shortcut_policy.core.embeddings import TimeStepEmbedding


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x: (B, T, C), shift/scale: (B, 1, C) -> (B, T, C)."""
    return x * (1 + scale) + shift


class Attention(nn.Module):
    """Multi-head attention of query tokens over key/value tokens (self-attention when they are the same)."""

    def __init__(self, n_emb: int, n_head: int, p_drop: float):
        super().__init__()
        self.n_head = n_head
        self.p_drop = p_drop
        self.q = nn.Linear(n_emb, n_emb)
        self.kv = nn.Linear(n_emb, 2 * n_emb)
        self.proj = nn.Linear(n_emb, n_emb)

    def forward(self, x: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        """x: (B, T, C), memory: (B, S, C) -> (B, T, C)."""
        B, T, C = x.shape
        S = memory.shape[1]
        q = self.q(x).reshape(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, H, T, C/H)
        k, v = self.kv(memory).reshape(B, S, 2, self.n_head, C // self.n_head).permute(2, 0, 3, 1, 4)  # (B, H, S, C/H) each
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.p_drop if self.training else 0.0)  # (B, H, T, C/H)
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, T, C)
        return self.proj(y)  # (B, T, C)


def xavier_linear_init(m: nn.Module) -> None:
    """DiT's default init for every linear layer (xavier weights, zero bias); the adaLN-Zero
    projections are zeroed afterwards by the owning network."""
    if isinstance(m, nn.Linear):
        nn.init.xavier_uniform_(m.weight)
        nn.init.zeros_(m.bias)


def zero_init_adaln(blocks: nn.ModuleList, ada_final: nn.Sequential, head: nn.Linear) -> None:
    """adaLN-Zero: every block starts as the identity (zero modulation) and the head outputs zero."""
    for block in blocks:
        nn.init.zeros_(block.ada[-1].weight)
        nn.init.zeros_(block.ada[-1].bias)
    for layer in (ada_final[-1], head):
        nn.init.zeros_(layer.weight)
        nn.init.zeros_(layer.bias)


class AdaLNBlock(nn.Module):
    """Self-attention, cross-attention (if there is a condition) and MLP, each gated by adaLN-Zero.

    x: (B, T, C), c: (B, C) the (t, d) embedding, memory: (B, S, C) or None -> (B, T, C).
    """

    def __init__(self, n_emb: int, n_head: int, p_drop: float, cross: bool):
        super().__init__()
        self.cross = cross
        self.norm1 = nn.LayerNorm(n_emb, elementwise_affine=False, eps=1e-6)
        self.self_attn = Attention(n_emb, n_head, p_drop)
        if cross:
            self.norm2 = nn.LayerNorm(n_emb, elementwise_affine=False, eps=1e-6)
            self.cross_attn = Attention(n_emb, n_head, p_drop)
        self.norm3 = nn.LayerNorm(n_emb, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(
            nn.Linear(n_emb, 4 * n_emb), nn.GELU(approximate="tanh"), nn.Dropout(p_drop), nn.Linear(4 * n_emb, n_emb)
        )
        # (shift, scale, gate) per sub-layer, from the (t, d) embedding
        self.n_mod = 9 if cross else 6
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(n_emb, self.n_mod * n_emb))

    def forward(self, x: torch.Tensor, c: torch.Tensor, memory: torch.Tensor | None) -> torch.Tensor:
        mods = self.ada(c)[:, None].chunk(self.n_mod, dim=-1)  # n_mod x (B, 1, C)
        shift1, scale1, gate1 = mods[0:3]
        h = modulate(self.norm1(x), shift1, scale1)  # (B, T, C)
        x = x + gate1 * self.self_attn(h, h)  # (B, T, C)
        if self.cross:
            shift2, scale2, gate2 = mods[3:6]
            x = x + gate2 * self.cross_attn(modulate(self.norm2(x), shift2, scale2), memory)  # (B, T, C)
        shift3, scale3, gate3 = mods[-3:]
        x = x + gate3 * self.mlp(modulate(self.norm3(x), shift3, scale3))  # (B, T, C)
        return x


class ActionTransformer(nn.Module):
    """Transformer velocity network for action chunks of a fixed horizon.

    Args:
        action_dim: size of one action, A.
        cond_dim: size of one observation token; 0 for an unconditional net (no cross-attention).
        horizon: chunk length T (positional embeddings are learned for exactly T tokens).
        n_cond_tokens: number of observation tokens S (e.g. observation steps).
        n_layer, n_head, n_emb: depth, heads, width (n_emb must be a multiple of n_head).
        p_drop: dropout on embeddings, attention weights and MLP hidden units.
        d_embedding, max_inference_steps: see ``TimeStepEmbedding``.

    forward(x (B, T, A), t (B,), d (B,), cond (B, cond_dim) [S = 1] or (B, S, cond_dim) or None)
        -> (B, T, A).
    """

    def __init__(self, action_dim: int, cond_dim: int, horizon: int, n_cond_tokens: int = 1, n_layer: int = 8,
                 n_head: int = 4, n_emb: int = 256, p_drop: float = 0.0, d_embedding: str = "log2",
                 max_inference_steps: int = 128):
        super().__init__()
        if action_dim < 1:
            raise ValueError(f"action_dim must be >= 1, got {action_dim}")
        if cond_dim < 0:
            raise ValueError(f"cond_dim must be >= 0 (0 = unconditional), got {cond_dim}")
        if horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {horizon}")
        if n_cond_tokens < 1:
            raise ValueError(f"n_cond_tokens must be >= 1, got {n_cond_tokens}")
        if n_layer < 1:
            raise ValueError(f"n_layer must be >= 1, got {n_layer}")
        if n_head < 1 or n_emb % n_head:
            raise ValueError(f"n_emb={n_emb} must be a multiple of n_head={n_head}")
        if not 0.0 <= p_drop < 1.0:
            raise ValueError(f"p_drop must be in [0, 1), got {p_drop}")
        self.action_dim = action_dim
        self.cond_dim = cond_dim
        self.horizon = horizon
        self.n_cond_tokens = n_cond_tokens
        self.d_embedding = d_embedding

        self.time_emb = TimeStepEmbedding(n_emb, d_embedding=d_embedding, max_inference_steps=max_inference_steps)
        self.in_proj = nn.Linear(action_dim, n_emb)
        self.pos_emb = nn.Parameter(torch.zeros(1, horizon, n_emb))
        self.drop = nn.Dropout(p_drop)
        if cond_dim > 0:
            self.cond_mlp = nn.Sequential(nn.Linear(cond_dim, n_emb), nn.GELU(approximate="tanh"),
                                          nn.Linear(n_emb, n_emb))
            self.cond_pos_emb = nn.Parameter(torch.zeros(1, n_cond_tokens, n_emb))
        self.blocks = nn.ModuleList(AdaLNBlock(n_emb, n_head, p_drop, cross=cond_dim > 0) for _ in range(n_layer))
        self.norm_final = nn.LayerNorm(n_emb, elementwise_affine=False, eps=1e-6)
        self.ada_final = nn.Sequential(nn.SiLU(), nn.Linear(n_emb, 2 * n_emb))
        self.head = nn.Linear(n_emb, action_dim)
        self._init_weights()

    def _init_weights(self) -> None:
        # the (t, d) embedding keeps its own init; everything else follows DiT
        for module in [self.in_proj, self.blocks, self.ada_final, self.head] + (
                [self.cond_mlp] if self.cond_dim > 0 else []):
            module.apply(xavier_linear_init)
        nn.init.normal_(self.pos_emb, std=0.02)
        if self.cond_dim > 0:
            nn.init.normal_(self.cond_pos_emb, std=0.02)
        # adaLN-Zero: every block starts as the identity and the head outputs zero
        zero_init_adaln(self.blocks, self.ada_final, self.head)

    def _cond_tokens(self, cond: torch.Tensor | None, B: int) -> torch.Tensor | None:
        """cond: (B, cond_dim) or (B, S, cond_dim) or None -> (B, S, cond_dim) or None, checked."""
        if self.cond_dim == 0:
            if cond is not None:
                raise ValueError("this net was built with cond_dim=0 (unconditional); pass cond=None")
            return None
        S = self.n_cond_tokens
        expected = f"(B, {self.cond_dim})" if S == 1 else ""
        expected = (expected + " or " if expected else "") + f"(B, {S}, {self.cond_dim}) with B={B}"
        if cond is None:
            raise ValueError(f"this net needs cond of shape {expected}; got None")
        if cond.ndim == 2 and S == 1 and cond.shape == (B, self.cond_dim):
            return cond[:, None]  # (B, 1, cond_dim)
        if cond.ndim == 3 and cond.shape == (B, S, self.cond_dim):
            return cond  # (B, S, cond_dim)
        raise ValueError(f"cond must have shape {expected} (n_cond_tokens={S}), got {tuple(cond.shape)}")

    def forward(self, x: torch.Tensor, t: torch.Tensor, d: torch.Tensor | None,
                cond: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, T, A), t: (B,) in [0, 1], d: (B,), cond: see class docstring -> (B, T, A)."""
        if x.ndim != 3 or x.shape[1] != self.horizon or x.shape[2] != self.action_dim:
            raise ValueError(f"x must have shape (B, horizon={self.horizon}, action_dim={self.action_dim}), "
                             f"got {tuple(x.shape)}")
        B = x.shape[0]
        if t.shape != (B,):
            raise ValueError(f"t must have shape (B,)=({B},), got {tuple(t.shape)}")
        if not t.is_floating_point():
            raise ValueError(f"t must be a float tensor in [0, 1], got dtype {t.dtype}")
        if d is not None and d.shape != (B,):
            raise ValueError(f"d must have shape (B,)=({B},), got {tuple(d.shape)}")
        cond = self._cond_tokens(cond, B)  # (B, S, cond_dim) or None

        c = self.time_emb(t, d)  # (B, C)
        h = self.drop(self.in_proj(x) + self.pos_emb)  # (B, T, C)
        memory = None
        if cond is not None:
            memory = self.drop(self.cond_mlp(cond) + self.cond_pos_emb)  # (B, S, C)
        for block in self.blocks:
            h = block(h, c, memory)  # (B, T, C)
        shift, scale = self.ada_final(c)[:, None].chunk(2, dim=-1)  # (B, 1, C) each
        h = modulate(self.norm_final(h), shift, scale)  # (B, T, C)
        return self.head(h)  # (B, T, A)
