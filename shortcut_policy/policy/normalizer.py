"""Per-field affine normalization stored as buffers, so it travels in the policy's state_dict.

``normalize(key, x) = (x - center) * scale + output_center`` per dimension of the last
axis of ``x``: an affine map written around the centres (rather than ``x * a + b``) so
that float32 arithmetic subtracts nearby numbers first instead of cancelling two large
products. Parameters are float32 buffers; computation runs in float64 for float64 input
and in float32 otherwise. Two fits, as in Diffusion Policy's ``LinearNormalizer``:

- ``"limits"``: per-dimension min/max map to ``output_range`` (default [-1, 1]);
- ``"gaussian"``: per-dimension mean/std map to 0/1.

A dimension that barely varies (range or std below ``range_eps``) gets scale 1 and is
shifted to the centre of the output range: dividing by its range would blow it up to
inf/NaN, and a constant input carries no information to rescale anyway.

An unfitted normalizer of the right shapes (``Normalizer({"obs": 20, "action": 2})``)
accepts ``load_state_dict`` from a checkpoint, so a policy can be rebuilt from its config
and weights alone.
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

MODES = ("limits", "gaussian")


class _Field(nn.Module):
    """Affine parameters and input statistics of one field with ``dim`` features."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        names = ("scale", "center", "output_center", "input_min", "input_max", "input_mean", "input_std")
        for name in names:
            self.register_buffer(name, torch.zeros(dim))
        self.scale.fill_(1.0)


def _as_tensor64(key: str, x: np.ndarray | torch.Tensor, dim: int) -> torch.Tensor:
    """(..., dim) array or tensor -> (N, dim) float64 CPU tensor, validated."""
    t = torch.as_tensor(x.detach().cpu() if isinstance(x, torch.Tensor) else np.asarray(x))
    if not (t.is_floating_point() or t.dtype in (torch.int32, torch.int64, torch.uint8)):
        raise TypeError(f"fit data for {key!r} must be numeric, got {t.dtype}")
    if t.ndim == 0 or t.shape[-1] != dim:
        raise ValueError(f"fit data for {key!r} must have last axis {dim}, got shape {tuple(t.shape)}")
    t = t.reshape(-1, dim).double()
    if len(t) == 0:
        raise ValueError(f"fit data for {key!r} is empty")
    if not torch.isfinite(t).all():
        raise ValueError(f"fit data for {key!r} holds NaN or inf")
    return t


def _sync_fitted_flag(module: Normalizer, incompatible_keys) -> None:
    """After load_state_dict (also when loaded through a parent module)."""
    module._is_fitted = bool(module.fitted)


class Normalizer(nn.Module):
    """Normalize named fields along their last axis; parameters are buffers.

    Args:
        dims: field name -> feature dimension D (size of the last axis), e.g.
            ``{"obs": 20, "action": 2}``.
    """

    def __init__(self, dims: Mapping[str, int]):
        super().__init__()
        if not dims:
            raise ValueError("Normalizer needs at least one field, e.g. {'obs': 20, 'action': 2}")
        fields = {}
        for key, dim in dims.items():
            if not isinstance(key, str) or not key or "." in key:
                raise ValueError(f"field names must be non-empty strings without '.', got {key!r}")
            if not isinstance(dim, (int, np.integer)) or dim < 1:
                raise ValueError(f"field {key!r} needs a positive integer dimension, got {dim!r}")
            fields[key] = _Field(int(dim))
        self.fields = nn.ModuleDict(fields)
        # A buffer, so a checkpoint of a fitted normalizer marks the loaded one fitted.
        self.register_buffer("fitted", torch.tensor(False))
        # Python mirror of the buffer: checking it costs no device sync and does not trip
        # graph capture (torch.export / compile) on a data-dependent bool.
        self._is_fitted = False
        self.register_load_state_dict_post_hook(_sync_fitted_flag)

    @classmethod
    def from_data(
        cls,
        data: Mapping[str, np.ndarray | torch.Tensor],
        mode: str = "limits",
        output_range: tuple[float, float] = (-1.0, 1.0),
        range_eps: float = 1e-4,
    ) -> Normalizer:
        """Build with dimensions read from ``data[key].shape[-1]`` and fit."""
        norm = cls({k: int(np.shape(v)[-1]) for k, v in data.items()})
        return norm.fit(data, mode=mode, output_range=output_range, range_eps=range_eps)

    # ---------------------------------------------------------------- fitting
    @property
    def is_fitted(self) -> bool:
        return self._is_fitted

    @property
    def dims(self) -> dict[str, int]:
        return {k: f.dim for k, f in self.fields.items()}

    def keys(self) -> list[str]:
        return list(self.fields.keys())

    @torch.no_grad()
    def fit(
        self,
        data: Mapping[str, np.ndarray | torch.Tensor],
        mode: str = "limits",
        output_range: tuple[float, float] = (-1.0, 1.0),
        range_eps: float = 1e-4,
    ) -> Normalizer:
        """Fit every field from ``data[key]`` of shape (..., D); returns self.

        ``data`` must hold exactly the normalizer's fields. Statistics are computed in
        float64 over all leading axes.
        """
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        lo, hi = (float(v) for v in output_range)
        if not lo < hi:
            raise ValueError(f"output_range must be (low, high) with low < high, got {output_range}")
        if set(data) != set(self.fields):
            raise KeyError(
                f"fit data keys {sorted(data)} must equal the normalizer's fields {sorted(self.fields)}"
            )
        for key, field in self.fields.items():
            x = _as_tensor64(key, data[key], field.dim)  # (N, D)
            x_min, x_max = x.min(0).values, x.max(0).values
            mean, std = x.mean(0), x.std(0, unbiased=False)
            if mode == "limits":
                span = x_max - x_min
                flat = span < range_eps
                scale = torch.where(flat, torch.ones_like(span), (hi - lo) / span.clamp_min(range_eps))
                # a flat dim's centre is its (near) constant value, which lands on output_center
                center = torch.where(flat, x_min, (x_min + x_max) / 2)
                output_center = torch.full_like(center, (hi + lo) / 2)
            else:
                flat = std < range_eps
                scale = torch.where(flat, torch.ones_like(std), 1.0 / std.clamp_min(range_eps))
                center, output_center = mean, torch.zeros_like(mean)
            for name, value in (
                ("scale", scale), ("center", center), ("output_center", output_center),
                ("input_min", x_min), ("input_max", x_max), ("input_mean", mean), ("input_std", std),
            ):
                getattr(field, name).copy_(value)
        self.fitted.fill_(True)
        self._is_fitted = True
        return self

    # ---------------------------------------------------------------- applying
    def _params(self, key: str, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(scale, center, output_center) of ``key`` as (D,) tensors on x's device, and the compute dtype."""
        if not self.is_fitted:
            raise RuntimeError("Normalizer is not fitted: call fit(data) or load_state_dict(checkpoint)")
        if key not in self.fields:
            raise KeyError(f"Normalizer has no field {key!r}; fields: {self.keys()}")
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"normalize expects a torch.Tensor for {key!r}, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"{key!r} must be a float tensor, got {x.dtype}")
        field = self.fields[key]
        if x.ndim == 0 or x.shape[-1] != field.dim:
            raise ValueError(f"{key!r} must have last axis {field.dim}, got shape {tuple(x.shape)}")
        # Compute in at least float32: fp16/bf16 would round pixel-scale centres.
        dtype = torch.promote_types(x.dtype, torch.float32)
        params = (field.scale, field.center, field.output_center)
        return (*(p.to(x.device, dtype) for p in params), dtype)

    def normalize(self, key: str, x: torch.Tensor) -> torch.Tensor:
        """(..., D) raw -> (..., D) normalized, same dtype and device as ``x``."""
        scale, center, out_center, dtype = self._params(key, x)
        return ((x.to(dtype) - center) * scale + out_center).to(x.dtype)

    def unnormalize(self, key: str, x: torch.Tensor) -> torch.Tensor:
        """(..., D) normalized -> (..., D) raw, same dtype and device as ``x``."""
        scale, center, out_center, dtype = self._params(key, x)
        return ((x.to(dtype) - out_center) / scale + center).to(x.dtype)

    def normalize_dict(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Normalize every entry; each key must be a field."""
        return {k: self.normalize(k, v) for k, v in batch.items()}

    def unnormalize_dict(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Unnormalize every entry; each key must be a field."""
        return {k: self.unnormalize(k, v) for k, v in batch.items()}

    def extra_repr(self) -> str:
        return f"dims={self.dims}, fitted={self.is_fitted}"
