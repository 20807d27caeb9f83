"""The vision encoder: a ResNet-18 trunk with GroupNorm, spatial-softmax keypoints, a linear projection.

    image (B, H, W, 3) in [-1, 1] (the fixed image map of the normalizer)
      -> crop: random in training, centre in evaluation (Diffusion Policy crops 84 of 96 on PushT)
      -> (B, 3, h, w) -> ResNet-18 conv trunk, GroupNorm instead of BatchNorm (BatchNorm's running
         statistics and the EMA copy of the weights do not mix)
      -> (B, 512, h/32, w/32) -> spatial softmax: K learned keypoints, each the expected (x, y) in
         [-1, 1] of a softmax over the feature map (where a feature is, not how strong it is)
      -> (B, 2K) -> linear -> (B, out_dim)

Written without torchvision (it does not install beside the CPU torch used here). A torchvision-format
ResNet-18 state dict (``resnet18-f37072fd.pth``) loads with :func:`load_torchvision_resnet18`: the
convolution weights are copied, BatchNorm's affine (gamma, beta) becomes GroupNorm's affine, and
BatchNorm's running statistics are dropped (GroupNorm computes its statistics per sample); the
fully connected head is not used. Training from scratch is the default.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


def group_norm(channels: int) -> nn.GroupNorm:
    """Diffusion Policy's replacement of BatchNorm: 16 channels per group."""
    return nn.GroupNorm(max(1, channels // 16), channels)


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = group_norm(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = group_norm(cout)
        self.downsample = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), group_norm(cout))
                           if stride != 1 or cin != cout else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResNet18Trunk(nn.Module):
    """ResNet-18 without its pooling and head: (B, 3, H, W) -> (B, 8 * width, ceil(H/32), ceil(W/32)).
    Module names follow torchvision's, so its state dicts map one to one.

    width: channels of the first stage (ResNet-18: 64; stages width, 2, 4, 8 x width). A narrower
    trunk costs about (width / 64)^2 of the convolutions: 32 is about a quarter (docs/images.md has
    its closed-loop score); only width 64 takes torchvision's weights.
    """

    def __init__(self, width: int = 64):
        super().__init__()
        if int(width) < 16 or int(width) % 16:
            raise ValueError(f"the trunk width must be a multiple of 16 (GroupNorm's group size), at least 16; got {width}")
        width = int(width)
        self.width, self.out_channels = width, 8 * width
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = group_norm(width)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        widths, cin = (width, 2 * width, 4 * width, 8 * width), width
        for i, w in enumerate(widths):
            stride = 1 if i == 0 else 2
            setattr(self, f"layer{i + 1}", nn.Sequential(BasicBlock(cin, w, stride), BasicBlock(w, w, 1)))
            cin = w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))  # (B, width, H/4, W/4)
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
        return x  # (B, 8 * width, H/32, W/32)


class SpatialSoftmax(nn.Module):
    """Keypoints of a feature map: (B, C, h, w) -> (B, K, 2), each the softmax-weighted mean position
    (x, y) in [-1, 1] of one learned 1x1 projection of the features (Levine et al. 2016)."""

    def __init__(self, in_channels: int, num_kp: int = 32, temperature: float = 1.0):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, num_kp, 1)
        self.num_kp = num_kp
        self.temperature = temperature

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        B, _, h, w = feat.shape
        logits = rearrange(self.proj(feat), "b k h w -> b k (h w)") / self.temperature  # (B, K, h*w)
        attn = logits.softmax(dim=-1)
        ys = torch.linspace(-1.0, 1.0, h, device=feat.device, dtype=attn.dtype)
        xs = torch.linspace(-1.0, 1.0, w, device=feat.device, dtype=attn.dtype)
        grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1).reshape(h * w, 2)  # (h*w, 2): x, y
        return attn @ grid  # (B, K, 2)


class ImageEncoder(nn.Module):
    """One camera: (B, H, W, 3) normalized to [-1, 1] -> (B, out_dim). See the module doc.

    crop: (h, w) of the random (training) / centre (evaluation) crop, or None for the full image.
    color_jitter: in training, multiply brightness and contrast by factors drawn uniformly within
    1 +- color_jitter per image (0 = off). width: the trunk's first-stage channels (64 = ResNet-18).
    """

    def __init__(self, image_shape: tuple[int, int, int], out_dim: int = 64, num_kp: int = 32,
                 crop: tuple[int, int] | None = None, color_jitter: float = 0.0, width: int = 64):
        super().__init__()
        H, W, C = image_shape
        if C != 3:
            raise ValueError(f"the vision encoder takes RGB images (H, W, 3), got {image_shape}")
        self.crop = None if crop is None else (int(crop[0]), int(crop[1]))
        if self.crop is not None and not (0 < self.crop[0] <= H and 0 < self.crop[1] <= W):
            raise ValueError(f"crop {list(self.crop)} must fit the image {H}x{W}")
        h, w = self.crop or (H, W)
        if -(-h // 32) < 2 or -(-w // 32) < 2:  # the trunk's map is ceil(side / 32) per side
            raise ValueError(f"the vision encoder needs images of at least 33x33 px after the crop (got {h}x{w}): "
                             "the trunk downsamples by 32, and the spatial softmax of a 1-px wide map sees nothing")
        if not 0.0 <= color_jitter < 1.0:
            raise ValueError(f"color_jitter must be in [0, 1), got {color_jitter}")
        self.color_jitter = float(color_jitter)
        # channels-last convolution weights: the (B, H, W, 3) input is already laid out so, and CPU
        # convolutions run about 15% faster for it (measured on this package's 2-core CPU)
        self.trunk = ResNet18Trunk(width).to(memory_format=torch.channels_last)
        self.pool = SpatialSoftmax(self.trunk.out_channels, num_kp)
        self.proj = nn.Linear(2 * num_kp, out_dim)
        self.out_dim = out_dim

    def augment(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> the crop (random per image in training, centred in evaluation) and jitter."""
        if self.crop is not None:
            h, w = self.crop
            H, W = x.shape[-2:]
            if self.training:
                top = torch.randint(0, H - h + 1, (x.shape[0],), device=x.device)
                left = torch.randint(0, W - w + 1, (x.shape[0],), device=x.device)
                rows = top[:, None] + torch.arange(h, device=x.device)  # (B, h)
                cols = left[:, None] + torch.arange(w, device=x.device)  # (B, w)
                x = x[torch.arange(x.shape[0], device=x.device)[:, None, None, None],
                      torch.arange(x.shape[1], device=x.device)[None, :, None, None],
                      rows[:, None, :, None], cols[:, None, None, :]]  # (B, 3, h, w)
            else:
                top, left = (H - h) // 2, (W - w) // 2
                x = x[..., top:top + h, left:left + w]
        if self.training and self.color_jitter > 0:
            B = x.shape[0]
            j = self.color_jitter
            bright = 1 + (torch.rand(B, 1, 1, 1, device=x.device) * 2 - 1) * j
            contrast = 1 + (torch.rand(B, 1, 1, 1, device=x.device) * 2 - 1) * j
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            x = ((x - mean) * contrast + mean) * bright + (bright - 1)
            x = x.clamp(-1, 1)
        return x

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = rearrange(image, "b h w c -> b c h w")
        x = self.augment(x)  # (B, 3, h, w)
        kp = self.pool(self.trunk(x))  # (B, K, 2)
        return self.proj(kp.flatten(1))  # (B, out_dim)


def load_torchvision_resnet18(trunk: ResNet18Trunk, path: str | Path) -> dict[str, list[str]]:
    """Load a torchvision-format ResNet-18 state dict (a local file, ``weights_only``) into ``trunk``.

    Convolutions are copied; each BatchNorm's weight / bias becomes the GroupNorm's affine; running
    means, variances and ``num_batches_tracked`` are dropped, as is the ``fc`` head. Returns
    {"loaded": [...], "dropped": [...]} parameter names.
    """
    if trunk.width != 64:
        raise ValueError(f"{path}: torchvision's ResNet-18 weights fit a trunk of width 64, this one has width "
                         f"{trunk.width} (policy.obs_encoder.width)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    own = trunk.state_dict()
    loaded, dropped = [], []
    for name, value in state.items():
        if name.startswith("fc.") or name.endswith(("running_mean", "running_var", "num_batches_tracked")):
            dropped.append(name)
            continue
        if name not in own:
            raise ValueError(f"{path}: {name!r} has no place in a ResNet-18 trunk (a ResNet-18 state dict?)")
        if tuple(value.shape) != tuple(own[name].shape):
            raise ValueError(f"{path}: {name} has shape {tuple(value.shape)}, the trunk {tuple(own[name].shape)}")
        own[name] = value.to(own[name].dtype)
        loaded.append(name)
    missing = sorted(set(own) - set(loaded))
    if missing:
        raise ValueError(f"{path} lacks {missing[:5]}{'...' if len(missing) > 5 else ''}")
    trunk.load_state_dict(own)
    return {"loaded": loaded, "dropped": dropped}
