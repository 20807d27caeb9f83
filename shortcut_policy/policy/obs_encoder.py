"""Observation encoders: the swappable part of a policy that turns an observation history into
the network's condition.

Interface: ``encoder(obs: dict[str, Tensor (B, To, ...)]) -> Tensor (B, out_dim)``, with the
observation already normalized. ``out_dim`` tells the network its ``cond_dim``. Camera encoders
register here beside the low-dim one.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn


class LowDimObsEncoder(nn.Module):
    """Concatenate the last ``n_obs_steps`` low-dim observations (Diffusion Policy's global cond)."""

    def __init__(self, obs_dim: int, n_obs_steps: int, key: str = "obs"):
        super().__init__()
        self.obs_dim, self.n_obs_steps, self.key = obs_dim, n_obs_steps, key
        self.out_dim = obs_dim * n_obs_steps

    def forward(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.key not in obs:
            raise KeyError(f"observation needs key {self.key!r}, got keys {sorted(obs)}")
        x = obs[self.key]
        if x.ndim != 3 or x.shape[1:] != (self.n_obs_steps, self.obs_dim):
            raise ValueError(f"obs[{self.key!r}] must have shape (B, {self.n_obs_steps}, {self.obs_dim}), "
                             f"got {tuple(x.shape)}")
        return x.flatten(1)  # (B, To * obs_dim)


OBS_ENCODERS: dict[str, Callable[..., nn.Module]] = {"lowdim": LowDimObsEncoder}


def make_obs_encoder(name: str, **kwargs) -> nn.Module:
    if name not in OBS_ENCODERS:
        raise ValueError(f"unknown observation encoder {name!r}; choose one of {sorted(OBS_ENCODERS)}")
    return OBS_ENCODERS[name](**kwargs)
