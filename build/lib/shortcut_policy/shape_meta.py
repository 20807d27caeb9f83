"""``shape_meta``: the one description of a policy's observations and actions.

    shape_meta = ShapeMeta.from_dict({
        "obs": {"keypoint":  {"shape": [9, 2], "type": "low_dim"},
                "agent_pos": {"shape": [2], "type": "low_dim"},
                "image":     {"shape": [96, 96, 3], "type": "rgb"}},
        "action": {"shape": [2]},
    })

Per observation key: its per-step ``shape``, its ``type`` and the dtype that type implies:

- ``low_dim``: float32 numbers of any shape (a position, keypoints, joint angles); normalized with
  statistics fitted on the training data, per element.
- ``rgb``: uint8 images laid out (H, W, C) with C = 3, exactly as cameras, simulators, zarr
  stores, robomimic and decoded LeRobot videos give them; normalized by the fixed map
  uint8 -> [-1, 1], never by fitted statistics.

The action is one low-dim vector (A,). Keys keep the order they are given in: a low-dim encoder
concatenates them in that order.

Observations travel as a dict ``{key: array (*lead, *shape)}`` everywhere (dataset windows,
policy, runners, export, the real-time controller); :meth:`ShapeMeta.check_obs` is the one check
of such a dict: it refuses a missing key, a key the policy does not know, a wrong per-step shape
or a wrong dtype, naming the key, the shape it got and the shape it expects.

Numpy only (no torch), so a deployment machine can check an exported policy's inputs with it.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

OBS_TYPES = ("low_dim", "rgb")
DTYPES = {"low_dim": "float32", "rgb": "uint8"}


class ShapeMetaError(ValueError):
    """An observation or a shape_meta description does not fit (the message names the key)."""


@dataclass(frozen=True)
class ArraySpec:
    """Per-step shape and type of one observation key (or of the action)."""

    shape: tuple[int, ...]
    type: str = "low_dim"

    def __post_init__(self):
        if self.type not in OBS_TYPES:
            raise ShapeMetaError(f"type must be one of {OBS_TYPES}, got {self.type!r}")
        shape = tuple(self.shape)
        if not shape or any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 1 for s in shape):
            raise ShapeMetaError(f"shape must be a non-empty list of positive integers, got {list(self.shape)}")
        object.__setattr__(self, "shape", tuple(int(s) for s in shape))
        if self.type == "rgb" and (len(shape) != 3 or shape[-1] != 3):
            raise ShapeMetaError(f"an rgb key must have shape (H, W, 3) (uint8, channels last), got {list(shape)}")

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(DTYPES[self.type])

    @property
    def dim(self) -> int:
        """Number of elements per step (what a low-dim encoder concatenates)."""
        return math.prod(self.shape)

    def to_dict(self) -> dict[str, Any]:
        return {"shape": list(self.shape), "type": self.type}


def _spec(where: str, d: Any, default_type: str = "low_dim") -> ArraySpec:
    if isinstance(d, ArraySpec):
        return d
    if not isinstance(d, Mapping) or "shape" not in d:
        raise ShapeMetaError(f"shape_meta {where} must be a mapping with a 'shape' (and a 'type'), got {d!r}")
    unknown = set(d) - {"shape", "type", "dtype"}
    if unknown:
        raise ShapeMetaError(f"shape_meta {where} has unknown fields {sorted(unknown)}; known: shape, type")
    try:
        spec = ArraySpec(tuple(d["shape"]) if isinstance(d["shape"], Sequence) else (d["shape"],),
                         d.get("type", default_type))
    except ShapeMetaError as e:
        raise ShapeMetaError(f"shape_meta {where}: {e}") from None
    if d.get("dtype") is not None and np.dtype(d["dtype"]) != spec.dtype:
        raise ShapeMetaError(f"shape_meta {where}: a {spec.type} key is {spec.dtype}, got dtype {d['dtype']!r}")
    return spec


def _shape_str(shape: Sequence[Any]) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"


@dataclass(frozen=True)
class ShapeMeta:
    """Observation keys (ordered) and the action of a policy; see the module doc."""

    obs: Mapping[str, ArraySpec]
    action: ArraySpec

    def __post_init__(self):
        if not self.obs:
            raise ShapeMetaError("shape_meta needs at least one observation key")
        for key in self.obs:
            if not isinstance(key, str) or not key or key == "action" or "/" in key:
                raise ShapeMetaError(f"observation keys must be non-empty strings without '/', not 'action'; "
                                     f"got {key!r}")
        if self.action.type != "low_dim" or len(self.action.shape) != 1:
            raise ShapeMetaError(f"the action must be one low-dim vector (A,), got shape {list(self.action.shape)} "
                                 f"type {self.action.type}")
        object.__setattr__(self, "obs", dict(self.obs))

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | ShapeMeta) -> ShapeMeta:
        if isinstance(d, ShapeMeta):
            return d
        if not isinstance(d, Mapping) or set(d) != {"obs", "action"}:
            got = sorted(d) if isinstance(d, Mapping) else type(d).__name__
            raise ShapeMetaError(f"shape_meta must have exactly the entries 'obs' and 'action', got {got}")
        if not isinstance(d["obs"], Mapping):
            raise ShapeMetaError(f"shape_meta obs must map keys to {{shape, type}}, got {d['obs']!r}")
        obs = {k: _spec(f"obs[{k!r}]", v) for k, v in d["obs"].items()}
        return cls(obs, _spec("action", d["action"]))

    @classmethod
    def infer(cls, obs: Mapping[str, np.ndarray], action: np.ndarray) -> ShapeMeta:
        """Derive from data arrays with time first: (T, *shape) each. uint8 (T, H, W, 3) is rgb, the
        rest low_dim."""
        specs = {}
        for key, arr in obs.items():
            arr = np.asarray(arr) if not hasattr(arr, "shape") else arr
            per_step = tuple(arr.shape[1:]) or (1,)
            is_rgb = arr.dtype == np.uint8 and len(per_step) == 3 and per_step[-1] == 3
            specs[key] = ArraySpec(per_step, "rgb" if is_rgb else "low_dim")
        a = tuple(action.shape[1:]) or (1,)
        return cls(specs, ArraySpec((math.prod(a),)))

    def to_dict(self) -> dict[str, Any]:
        return {"obs": {k: v.to_dict() for k, v in self.obs.items()}, "action": {"shape": list(self.action.shape)}}

    # ------------------------------------------------------------------ views
    @property
    def keys(self) -> list[str]:
        return list(self.obs)

    @property
    def low_dim_keys(self) -> list[str]:
        return [k for k, v in self.obs.items() if v.type == "low_dim"]

    @property
    def rgb_keys(self) -> list[str]:
        return [k for k, v in self.obs.items() if v.type == "rgb"]

    @property
    def action_dim(self) -> int:
        return self.action.shape[0]

    @property
    def low_dim(self) -> int:
        """Elements per step over all low-dim keys."""
        return sum(self.obs[k].dim for k in self.low_dim_keys)

    def describe(self) -> str:
        """e.g. ``keypoint (9, 2) low_dim, agent_pos (2,) low_dim -> action (2,)``."""
        obs = ", ".join(f"{k} {_shape_str(v.shape)} {v.type}" for k, v in self.obs.items())
        return f"{obs} -> action {_shape_str(self.action.shape)}"

    def example_obs(self, lead: Sequence[int] = (1, 1)) -> dict[str, np.ndarray]:
        """Zeros of the right shapes and dtypes, ``{key: (*lead, *shape)}`` (latency probes, tracing)."""
        return {k: np.zeros((*lead, *v.shape), dtype=v.dtype) for k, v in self.obs.items()}

    # ------------------------------------------------------------------ checking
    def check_obs(self, obs: Any, n_lead: int = 2, lead_names: Sequence[str] = ("B", "To"),
                  where: str = "observation") -> dict[str, Any]:
        """Check a dict of observations with ``n_lead`` leading axes (e.g. batch and time).

        Works on numpy arrays and torch tensors alike (anything with ``shape`` and ``dtype``); returns
        the same objects in shape_meta's key order. Low-dim keys may be any float dtype (and must be
        finite), rgb keys must be uint8. The leading axes must agree between keys.
        """
        if not isinstance(obs, Mapping):
            raise ShapeMetaError(
                f"{where} must be a dict {{key: array {_shape_str([*lead_names, '...'])}}} with the keys "
                f"{self.keys}, got {type(obs).__name__}" + (f" of shape {tuple(obs.shape)}" if hasattr(obs, "shape") else ""))
        missing = [k for k in self.obs if k not in obs]
        unknown = [k for k in obs if k not in self.obs]
        if missing or unknown:
            parts = []
            if missing:
                parts.append("missing " + ", ".join(
                    f"{k!r} {_shape_str([*lead_names, *self.obs[k].shape])}" for k in missing))
            if unknown:
                parts.append(f"unknown {unknown} (this policy would drop them)")
            raise ShapeMetaError(f"{where} keys do not match the policy's shape_meta: {'; '.join(parts)}. "
                                 f"Expected exactly: {self.describe()}")
        lead_seen: tuple[int, ...] | None = None
        out = {}
        for key, spec in self.obs.items():
            x = obs[key]
            shape = tuple(getattr(x, "shape", ()))
            want = _shape_str([*lead_names, *spec.shape])
            if len(shape) != n_lead + len(spec.shape) or shape[n_lead:] != spec.shape:
                raise ShapeMetaError(f"{where}[{key!r}] has shape {_shape_str(shape)}, expected {want}")
            dtype = _np_dtype(x)
            if spec.type == "rgb" and dtype != np.uint8:
                raise ShapeMetaError(f"{where}[{key!r}] is an rgb key: expected uint8 {want}, got dtype {dtype}")
            if spec.type == "low_dim" and not np.issubdtype(dtype, np.floating):
                raise ShapeMetaError(f"{where}[{key!r}] is a low_dim key: expected a float array {want}, "
                                     f"got dtype {dtype}")
            if lead_seen is None:
                lead_seen = shape[:n_lead]
            elif shape[:n_lead] != lead_seen:
                raise ShapeMetaError(f"{where}[{key!r}] has leading axes {_shape_str(shape[:n_lead])} "
                                     f"({', '.join(lead_names)}), other keys {_shape_str(lead_seen)}")
            out[key] = x
        return out


def _np_dtype(x: Any) -> np.dtype:
    dt = getattr(x, "dtype", None)
    if dt is None:
        return np.asarray(x).dtype
    if isinstance(dt, np.dtype):
        return dt
    name = str(dt).replace("torch.", "")  # a torch dtype, without importing torch
    try:
        return np.dtype(name)
    except TypeError:
        return np.dtype("float32") if "float" in name else np.dtype("object")
