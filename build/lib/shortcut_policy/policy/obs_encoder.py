"""Observation encoders: the swappable part of a policy that turns an observation history into
the network's condition.

Interface: ``encoder(obs: dict[str, Tensor (B, To, *shape)]) -> Tensor (B, out_dim)``, with the
observation already normalized and checked against the policy's ``shape_meta``. ``out_dim`` tells
the network its ``cond_dim``. Camera encoders register here beside the low-dim one.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..shape_meta import ShapeMeta


class LowDimObsEncoder(nn.Module):
    """Concatenate the low-dim keys per step (in shape_meta order, each flattened), then the last
    ``n_obs_steps`` steps (Diffusion Policy's global condition): (B, To * sum of key sizes)."""

    def __init__(self, shape_meta: ShapeMeta, n_obs_steps: int):
        super().__init__()
        if shape_meta.rgb_keys:
            raise ValueError(f"obs_encoder 'lowdim' takes low_dim keys only; {shape_meta.rgb_keys} are rgb "
                             "(camera) keys and need a vision encoder")
        self.keys = shape_meta.low_dim_keys
        self.n_obs_steps = n_obs_steps
        self.out_dim = shape_meta.low_dim * n_obs_steps

    def forward(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        x = torch.cat([obs[k].flatten(2) for k in self.keys], dim=-1)  # (B, To, D)
        return x.flatten(1)  # (B, To * D)


OBS_ENCODERS: dict[str, Callable[..., nn.Module]] = {"lowdim": LowDimObsEncoder}


def make_obs_encoder(name: str, **kwargs) -> nn.Module:
    if name not in OBS_ENCODERS:
        raise ValueError(f"unknown observation encoder {name!r}; choose one of {sorted(OBS_ENCODERS)}")
    return OBS_ENCODERS[name](**kwargs)
