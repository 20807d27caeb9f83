"""Velocity networks: action-chunk nets map (x_t (B, T, A), t (B,), d (B,), cond) -> (B, T, A);
the image DiT (``make_image_net``, presets in ``DIT_MODELS``) maps (B, C, H, W) images the same way.

``make_action_net(name, **kwargs)`` builds one by name. The plain names ("unet1d",
"transformer") take every constructor argument; sized presets fix their size arguments.
"""
from __future__ import annotations

from typing import Callable

from torch import nn

from shortcut_policy.nets.dit import DIT_MODELS, DiT, make_image_net
from shortcut_policy.nets.transformer import ActionTransformer
from shortcut_policy.nets.unet1d import ConditionalUnet1D


def _with_fixed(name: str, build: Callable[..., nn.Module], fixed: dict, kwargs: dict) -> nn.Module:
    clash = sorted(set(fixed) & set(kwargs))
    if clash:
        raise ValueError(f"preset {name!r} fixes {clash} (= {[fixed[k] for k in clash]}); "
                         f"use the plain name to choose them yourself")
    return build(**fixed, **kwargs)


def unet1d(**kwargs) -> nn.Module:
    """Diffusion Policy's size: down_dims (256, 512, 1024)."""
    return ConditionalUnet1D(**kwargs)


def unet1d_small(**kwargs) -> nn.Module:
    return _with_fixed("unet1d_small", ConditionalUnet1D, {"down_dims": (64, 128, 256)}, kwargs)


def transformer(**kwargs) -> nn.Module:
    """Diffusion Policy's transformer size: 8 layers, 4 heads, width 256."""
    return ActionTransformer(**kwargs)


def transformer_small(**kwargs) -> nn.Module:
    return _with_fixed("transformer_small", ActionTransformer, {"n_layer": 4, "n_head": 4, "n_emb": 128}, kwargs)


ACTION_NETS: dict[str, Callable[..., nn.Module]] = {
    "unet1d": unet1d,
    "unet1d_small": unet1d_small,
    "transformer": transformer,
    "transformer_small": transformer_small,
}


def make_action_net(name: str, **kwargs) -> nn.Module:
    """Build the action network ``name`` (a key of ACTION_NETS) with constructor kwargs."""
    if name not in ACTION_NETS:
        raise ValueError(f"unknown action net {name!r}; choose one of {sorted(ACTION_NETS)}")
    return ACTION_NETS[name](**kwargs)


__all__ = ["ACTION_NETS", "ActionTransformer", "ConditionalUnet1D", "DIT_MODELS", "DiT", "make_action_net",
           "make_image_net"]
