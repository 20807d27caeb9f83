"""Per-field affine normalization stored as buffers, so it travels in the policy's state_dict.

Two kinds of field, as ``shape_meta`` describes them:

- fitted fields (low-dim observations and the action), each of a per-step shape (``(20,)``,
  ``(9, 2)``): ``normalize(key, x) = (x - center) * scale + output_center`` per element of the
  trailing shape of ``x``: an affine map written around the centres (rather than ``x * a + b``) so
that float32 arithmetic subtracts nearby numbers first instead of cancelling two large
products. Parameters are float32 buffers; computation runs in float64 for float64 input
and in float32 otherwise. Two fits, as in Diffusion Policy's ``LinearNormalizer``:

- ``"limits"``: per-dimension min/max map to ``output_range`` (default [-1, 1]);
- ``"gaussian"``: per-dimension mean/std map to 0/1.

- image fields (rgb keys): the fixed map uint8 [0, 255] -> float [-1, 1], never fitted
  statistics (a camera's range is known; fitted per-pixel statistics would make a lighting change
  look like a new scene).

A dimension that barely varies (range or std below ``range_eps``) gets scale 1 and is
shifted to the centre of the output range: dividing by its range would blow it up to
inf/NaN, and a constant input carries no information to rescale anyway. A dimension that never
moved at all in the fitted data unnormalizes to its value, whatever the network says: demonstrations
that never turn the gripper (rotation actions all 0) give a policy that never turns it, where
sampling noise on that dimension would otherwise add up to a drift over an episode.

An unfitted normalizer of the right shapes (``Normalizer({"obs": 20, "action": 2})``, or
``Normalizer.from_shape_meta(shape_meta)``) accepts ``load_state_dict`` from a checkpoint, so a
policy can be rebuilt from its config and weights alone. Keys may hold dots (LeRobot's
``observation.state``): module names escape them.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from ..shape_meta import ShapeMeta

MODES = ("limits", "gaussian")


class _Field(nn.Module):
    """Affine parameters and input statistics of one fitted field of per-step ``shape``."""

    def __init__(self, shape: tuple[int, ...]):
        super().__init__()
        self.shape = shape
        self.dim = math.prod(shape)
        names = ("scale", "center", "output_center", "input_min", "input_max", "input_mean", "input_std")
        for name in names:
            self.register_buffer(name, torch.zeros(self.dim))
        self.scale.fill_(1.0)


def _module_name(key: str) -> str:
    """A field key as a module name: nn.Module names cannot hold '.', so escape it (reversibly)."""
    return key.replace("%", "%25").replace(".", "%2E")


def _as_shape(key: str, shape: int | Sequence[int]) -> tuple[int, ...]:
    shape = (shape,) if isinstance(shape, (int, np.integer)) and not isinstance(shape, bool) else tuple(shape)
    if not shape or any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 1 for s in shape):
        raise ValueError(f"field {key!r} needs a positive integer dimension or shape, got {shape!r}")
    return tuple(int(s) for s in shape)


def _as_tensor64(key: str, x: np.ndarray | torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """(..., *shape) array or tensor -> (N, prod(shape)) float64 CPU tensor, validated."""
    t = torch.as_tensor(x.detach().cpu() if isinstance(x, torch.Tensor) else np.asarray(x))
    if not (t.is_floating_point() or t.dtype in (torch.int32, torch.int64, torch.uint8)):
        raise TypeError(f"fit data for {key!r} must be numeric, got {t.dtype}")
    if t.ndim < len(shape) or tuple(t.shape[t.ndim - len(shape):]) != shape:
        raise ValueError(f"fit data for {key!r} must end in {_trailing(shape)}, got shape {tuple(t.shape)}")
    t = t.reshape(-1, math.prod(shape)).double()
    if len(t) == 0:
        raise ValueError(f"fit data for {key!r} is empty")
    if not torch.isfinite(t).all():
        raise ValueError(f"fit data for {key!r} holds NaN or inf")
    return t


def _trailing(shape: tuple[int, ...]) -> str:
    return f"last axis {shape[0]}" if len(shape) == 1 else f"trailing shape {shape}"


def _sync_fitted_flag(module: Normalizer, incompatible_keys) -> None:
    """After load_state_dict (also when loaded through a parent module)."""
    module._is_fitted = bool(module.fitted)


class Normalizer(nn.Module):
    """Normalize named fields; fitted parameters are buffers, image fields a fixed map.

    Args:
        dims: fitted field name -> its feature dimension D or per-step shape, e.g.
            ``{"obs": 20, "action": 2}`` or ``{"keypoint": (9, 2), "action": (2,)}``.
        image_keys: fields normalized by the fixed uint8 -> [-1, 1] map (rgb observations).
    """

    def __init__(self, dims: Mapping[str, int | Sequence[int]], image_keys: Sequence[str] = ()):
        super().__init__()
        if not dims:
            raise ValueError("Normalizer needs at least one fitted field, e.g. {'obs': 20, 'action': 2}")
        fields, self._names = {}, {}
        for key, shape in dims.items():
            if not isinstance(key, str) or not key:
                raise ValueError(f"field names must be non-empty strings, got {key!r}")
            fields[_module_name(key)] = _Field(_as_shape(key, shape))
            self._names[key] = _module_name(key)
        self.image_keys = tuple(image_keys)
        clash = sorted(set(self.image_keys) & set(dims))
        if clash:
            raise ValueError(f"fields {clash} are both fitted and image fields")
        self.fields = nn.ModuleDict(fields)
        # A buffer, so a checkpoint of a fitted normalizer marks the loaded one fitted.
        self.register_buffer("fitted", torch.tensor(False))
        # Python mirror of the buffer: checking it costs no device sync and does not trip
        # graph capture (torch.export / compile) on a data-dependent bool.
        self._is_fitted = False
        self.register_load_state_dict_post_hook(_sync_fitted_flag)

    @classmethod
    def from_shape_meta(cls, shape_meta: ShapeMeta) -> Normalizer:
        """Unfitted: a fitted field per low-dim observation key and the action, an image field per rgb key."""
        dims = {k: shape_meta.obs[k].shape for k in shape_meta.low_dim_keys}
        dims["action"] = shape_meta.action.shape
        return cls(dims, image_keys=shape_meta.rgb_keys)

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
        """Fitted field -> number of features per step."""
        return {k: self.field(k).dim for k in self._names}

    def keys(self) -> list[str]:
        """Every field: fitted ones, then image ones."""
        return list(self._names) + list(self.image_keys)

    def field(self, key: str) -> _Field:
        """The fitted parameters of ``key`` (scale, center, input_min, ...: (D,) buffers)."""
        if key not in self._names:
            raise KeyError(f"Normalizer has no fitted field {key!r}; fitted fields: {list(self._names)}")
        return self.fields[self._names[key]]

    @torch.no_grad()
    def fit(
        self,
        data: Mapping[str, np.ndarray | torch.Tensor],
        mode: str = "limits",
        output_range: tuple[float, float] = (-1.0, 1.0),
        range_eps: float = 1e-4,
    ) -> Normalizer:
        """Fit every fitted field from ``data[key]`` of shape (..., *shape); returns self.

        ``data`` must hold exactly the normalizer's fitted fields (image fields need no data).
        Statistics are computed per element of the per-step shape, in float64 over all leading axes.
        """
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        lo, hi = (float(v) for v in output_range)
        if not lo < hi:
            raise ValueError(f"output_range must be (low, high) with low < high, got {output_range}")
        if set(data) != set(self._names):
            raise KeyError(
                f"fit data keys {sorted(data)} must equal the normalizer's fitted fields {sorted(self._names)}"
            )
        for key in self._names:
            field = self.field(key)
            x = _as_tensor64(key, data[key], field.shape)  # (N, D)
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
        if key not in self._names:
            raise KeyError(f"Normalizer has no field {key!r}; fields: {self.keys()}")
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"normalize expects a torch.Tensor for {key!r}, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"{key!r} must be a float tensor, got {x.dtype}")
        field = self.field(key)
        n = len(field.shape)
        if x.ndim < n or tuple(x.shape[x.ndim - n:]) != field.shape:
            raise ValueError(f"{key!r} must have {_trailing(field.shape)}, got shape {tuple(x.shape)}")
        # Compute in at least float32: fp16/bf16 would round pixel-scale centres.
        dtype = torch.promote_types(x.dtype, torch.float32)
        params = (field.scale, field.center, field.output_center)
        return (*(p.to(x.device, dtype) for p in params), dtype)

    def _affine(self, key: str, x: torch.Tensor, inverse: bool) -> torch.Tensor:
        scale, center, out_center, dtype = self._params(key, x)
        flat = x.reshape(*x.shape[:x.ndim - len(self.field(key).shape)], -1).to(dtype)  # (..., D)
        if not inverse:
            return ((flat - center) * scale + out_center).reshape(x.shape).to(x.dtype)
        y = (flat - out_center) / scale + center
        field = self.field(key)
        still = (field.input_max == field.input_min).reshape(-1).to(x.device)  # the data never moved these
        y = torch.where(still, center, y)
        return y.reshape(x.shape).to(x.dtype)

    def normalize(self, key: str, x: torch.Tensor) -> torch.Tensor:
        """Fitted field: (..., *shape) raw -> normalized, same shape, dtype and device as ``x``.
        Image field: (..., H, W, C) uint8 -> float32 in [-1, 1], same shape."""
        if key in self.image_keys:
            if not isinstance(x, torch.Tensor) or x.dtype != torch.uint8:
                got = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
                raise TypeError(f"{key!r} is an image field: expected a uint8 tensor, got {got}")
            return x.to(torch.float32) / 127.5 - 1.0
        return self._affine(key, x, inverse=False)

    def unnormalize(self, key: str, x: torch.Tensor) -> torch.Tensor:
        """(..., *shape) normalized -> raw, same shape, dtype and device as ``x`` (fitted fields)."""
        if key in self.image_keys:
            raise KeyError(f"{key!r} is an image field: policies never unnormalize images")
        return self._affine(key, x, inverse=True)

    def normalize_dict(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Normalize every entry; each key must be a field."""
        return {k: self.normalize(k, v) for k, v in batch.items()}

    def unnormalize_dict(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Unnormalize every entry; each key must be a fitted field."""
        return {k: self.unnormalize(k, v) for k, v in batch.items()}

    def extra_repr(self) -> str:
        shapes = {k: self.field(k).shape for k in self._names}
        return f"fitted={shapes}, images={list(self.image_keys)}, is_fitted={self.is_fitted}"
