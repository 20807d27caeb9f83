"""The observation encoder: from shape_meta to the network's condition, for any number of cameras and
low-dim keys.

Input: normalized observations ``{key: (B, To, *shape)}`` (low-dim keys by fitted statistics, rgb keys
by the fixed uint8 -> [-1, 1] map). Per step, each camera goes through a vision encoder
(``nets.vision.ImageEncoder``: ResNet-18 (or a narrower trunk of its layout) with GroupNorm, spatial softmax, linear; one per camera, or
one ``shared`` by all) to ``out_dim`` features, and the low-dim keys are flattened and concatenated in
shape_meta order. Two output forms:

- a vector (the 1D UNet's FiLM condition, Diffusion Policy's "global cond"): per step [camera
  features..., low-dim values], all steps concatenated: (B, To * (n_cameras * out_dim + low_dim));
- tokens (the transformer's cross-attention): per step one token per camera and one for the low-dim
  keys (projected to out_dim), so attention can pick a camera: (B, To * (n_cameras + 1), out_dim).

With no camera the vector is the low-dim values of every step (the encoder holds no parameters) and
the token form is one token of that vector.
"""
from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

from ..nets.vision import ImageEncoder, load_torchvision_resnet18
from ..shape_meta import ShapeMeta


def _name(key: str) -> str:
    return key.replace("%", "%25").replace(".", "%2E")  # nn.Module names cannot hold '.'


class ObsEncoder(nn.Module):
    """See the module doc. Options (``policy.obs_encoder``), used when the observation has cameras:

    out_dim: features per camera (and the token width); num_kp: spatial-softmax keypoints;
    crop_ratio: crop side / image side (random crop in training, centre crop in evaluation; Diffusion
    Policy's 84 of 96 = 0.875; 1 = no crop); shared: one vision encoder for every camera;
    color_jitter: brightness/contrast jitter in training (0 = off); pretrained: a torchvision
    ResNet-18 state dict file to start the trunk from (None = from scratch); width: the trunk's
    first-stage channels (64 = ResNet-18, 32 = a quarter of its convolutions; docs/images.md).
    """

    def __init__(self, shape_meta: ShapeMeta, n_obs_steps: int, tokens: bool = False, out_dim: int = 64,
                 num_kp: int = 32, crop_ratio: float = 0.875, shared: bool = False, color_jitter: float = 0.0,
                 pretrained: str | None = None, width: int = 64):
        super().__init__()
        if not 0.0 < crop_ratio <= 1.0:
            raise ValueError(f"policy.obs_encoder.crop_ratio must be in (0, 1], got {crop_ratio}")
        self.cameras, self.low_keys = shape_meta.rgb_keys, shape_meta.low_dim_keys
        self.n_obs_steps, self.tokens = n_obs_steps, tokens
        self.low_dim = shape_meta.low_dim
        self.encoders = nn.ModuleDict()
        for i, key in enumerate(self.cameras):
            H, W, _ = shape_meta.obs[key].shape
            if shared and i > 0:
                if shape_meta.obs[key].shape != shape_meta.obs[self.cameras[0]].shape:
                    raise ValueError(f"a shared vision encoder needs cameras of one size; {key} is "
                                     f"{shape_meta.obs[key].shape}, {self.cameras[0]} {shape_meta.obs[self.cameras[0]].shape}")
                continue
            crop = None if crop_ratio == 1.0 else (round(H * crop_ratio), round(W * crop_ratio))
            enc = ImageEncoder((H, W, 3), out_dim=out_dim, num_kp=num_kp, crop=crop, color_jitter=color_jitter,
                               width=width)
            if pretrained:
                load_torchvision_resnet18(enc.trunk, pretrained)
            self.encoders[_name(key)] = enc
        self.shared = shared
        self.feat_dim = out_dim
        per_step = len(self.cameras) * out_dim + self.low_dim
        if tokens and self.cameras:
            self.low_proj = nn.Linear(self.low_dim, out_dim) if self.low_dim else None
            self.n_tokens = n_obs_steps * (len(self.cameras) + (1 if self.low_dim else 0))
            self.token_dim = out_dim
        else:
            self.n_tokens, self.token_dim = 1, per_step * n_obs_steps
        self.out_dim = per_step * n_obs_steps

    def _encoder(self, key: str) -> ImageEncoder:
        return self.encoders[_name(self.cameras[0] if self.shared else key)]

    def camera_features(self, obs: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """Per camera (B, To, out_dim)."""
        out = []
        for key in self.cameras:
            x = obs[key]  # (B, To, H, W, 3)
            feat = self._encoder(key)(rearrange(x, "b t h w c -> (b t) h w c"))  # (B*To, out_dim)
            out.append(rearrange(feat, "(b t) d -> b t d", t=x.shape[1]))
        return out

    def forward(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        low = [obs[k].flatten(2) for k in self.low_keys]  # each (B, To, D_k)
        cams = self.camera_features(obs)
        if self.tokens and self.cameras:
            toks = cams + ([self.low_proj(torch.cat(low, dim=-1))] if low else [])  # each (B, To, out_dim)
            return rearrange(torch.stack(toks, dim=2), "b t n d -> b (t n) d")  # (B, To * n, out_dim)
        return torch.cat(cams + low, dim=-1).flatten(1)  # (B, To * per_step)
