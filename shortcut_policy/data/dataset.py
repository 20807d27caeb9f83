"""The one training dataset: windows of a zarr replay buffer, configured by key names.

A task names its arrays; no task needs a dataset class of its own::

    dataset:
      path: datasets/pusht_lowdim.zarr
      obs:                                 # policy key -> store key (or {key, index, transform})
        keypoint: keypoint
        agent_pos: {key: state, index: [0, 2]}   # the first two numbers of data/state
      action: action

Item ``i`` is ``{"obs": {key: (n_obs_steps, *shape)}, "action": (horizon, action_dim)}``: the
first ``n_obs_steps`` observations of the window (the history the policy sees) and the
``horizon`` actions from the first observed step on, padded at episode edges as in Diffusion
Policy (``n_obs_steps - 1`` before, ``n_action_steps - 1`` after).

Per observation key, ``index: [start, stop]`` keeps a slice of the last axis and ``transform``
names a function ``(T, ...) array -> (T, ...) array`` applied once at load: one registered with
:func:`register_transform`, or ``"package.module:function"`` of the user's own code. Low-dim keys
are served as float32 and (T, H, W, 3) arrays as uint8 rgb images (float arrays of integers 0..255,
Diffusion Policy's ``data/img``, are converted; other float images are refused).

``shape_meta`` is derived from the arrays; a task that gives one has it checked against the data.
"""
from __future__ import annotations

import copy
import importlib
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..shape_meta import ShapeMeta, ShapeMetaError
from .diffusion_policy import as_uint8_images
from .replay_buffer import DatasetError, ReplayBuffer, checksum
from .sequence_sampler import SequenceSampler, downsample_mask, get_val_mask

_TRANSFORMS: dict[str, Callable[[np.ndarray], np.ndarray]] = {}


def register_transform(name: str, fn: Callable[[np.ndarray], np.ndarray]) -> None:
    """Make ``fn`` ((T, ...) -> (T, ...) array) usable as ``transform: name`` in a task config."""
    if name in _TRANSFORMS:
        raise ValueError(f"transform {name!r} is already registered")
    _TRANSFORMS[name] = fn


def _resolve_transform(name: str) -> Callable[[np.ndarray], np.ndarray]:
    if name in _TRANSFORMS:
        return _TRANSFORMS[name]
    if ":" in name:
        module, _, attr = name.partition(":")
        try:
            return getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise ValueError(f"transform {name!r} cannot be imported: {e}") from e
    raise ValueError(f"unknown transform {name!r}; registered: {sorted(_TRANSFORMS)}, or give "
                     "'package.module:function'")


@dataclass(frozen=True)
class KeySource:
    """Where a policy key comes from in the store: ``data/<key>``, optionally a slice of its last
    axis and a transform."""

    key: str
    index: tuple[int, int] | None = None
    transform: str | None = None

    @classmethod
    def parse(cls, where: str, spec: Any) -> KeySource:
        if isinstance(spec, str):
            return cls(spec)
        if not isinstance(spec, Mapping) or "key" not in spec or set(spec) - {"key", "index", "transform"}:
            raise ValueError(f"{where} must be a store key or {{key, index: [start, stop], transform}}, got {spec!r}")
        index = spec.get("index")
        if index is not None:
            if not (isinstance(index, Sequence) and len(index) == 2 and all(isinstance(i, int) for i in index)):
                raise ValueError(f"{where}.index must be [start, stop] (a slice of the last axis), got {index!r}")
            index = (int(index[0]), int(index[1]))
        return cls(str(spec["key"]), index, spec.get("transform"))

    def load(self, buffer: ReplayBuffer, path: Path, name: str) -> np.ndarray:
        arr = buffer[self.key]
        if self.index is not None:
            start, stop = self.index
            if arr.ndim < 2 or not 0 <= start < stop <= arr.shape[-1]:
                raise DatasetError(f"{path}: {name} takes data/{self.key}[..., {start}:{stop}], but data/{self.key} "
                                   f"has shape {arr.shape}")
            arr = arr[..., start:stop]
        if self.transform is not None:
            out = np.asarray(_resolve_transform(self.transform)(arr))
            if len(out) != len(arr):
                raise DatasetError(f"{path}: transform {self.transform!r} of {name} returned {len(out)} steps "
                                   f"for {len(arr)}")
            arr = out
        if arr.ndim == 4 and arr.shape[-1] == 3:  # (T, H, W, 3): a camera
            if arr.dtype != np.uint8:
                try:  # Diffusion Policy stores images as float 0..255
                    arr = as_uint8_images(self.key, arr)
                except DatasetError as e:
                    raise DatasetError(f"{path}: {name}: {e}") from None
            if arr.dtype == np.uint8:
                return arr  # an rgb image key
        if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)
                or arr.dtype == np.bool_):
            raise DatasetError(f"{path}: {name} (data/{self.key}) has dtype {arr.dtype}; expected numbers")
        if arr.ndim == 1:
            arr = arr[:, None]  # a scalar per step is a (1,) vector
        arr = arr.astype(np.float32)
        if not np.isfinite(arr).all():
            t = int(np.flatnonzero(~np.isfinite(arr.reshape(len(arr), -1)).all(1))[0])
            raise DatasetError(f"{path}: {name} (data/{self.key}) holds NaN or inf (first at step {t}) after "
                               "conversion to float32")
        return arr


PKG_SCHEME = "pkg://"


def resolve_data_path(path: str | os.PathLike) -> Path:
    """A dataset path: a filesystem path (relative to the working directory), or ``pkg://<package>/<file>``
    for data shipped inside an installed package (the PushT demonstrations:
    ``pkg://shortcut_policy.datasets/pusht_lowdim.zarr``)."""
    text = str(path)
    if not text.startswith(PKG_SCHEME):
        return Path(path)
    package, _, rel = text[len(PKG_SCHEME):].partition("/")
    from importlib import resources

    try:
        root = resources.files(package)
    except ModuleNotFoundError as e:
        raise DatasetError(f"{text}: no installed package {package!r} ({e})") from None
    return Path(str(root / rel))


def filter_mask(buffer: ReplayBuffer, name: str, path: Path) -> np.ndarray:
    """(E,) bool mask of the episodes in the store's filter ``name`` (robomimic's mask/<name>,
    kept by the importer in the ``filters`` attribute)."""
    filters = buffer.attrs.get("filters") or {}
    if name not in filters:
        raise DatasetError(f"{path} has no episode filter {name!r}; filters: {sorted(filters) or 'none'}")
    mask = np.zeros(buffer.n_episodes, dtype=bool)
    idx = np.asarray(filters[name], dtype=np.int64)
    if len(idx) and (idx.min() < 0 or idx.max() >= buffer.n_episodes):
        raise DatasetError(f"{path}: filter {name!r} names episodes outside 0..{buffer.n_episodes - 1}")
    mask[idx] = True
    return mask


class SequenceDataset(Dataset):
    """Windows of a zarr replay buffer for policy training; see the module doc.

    Args:
        path: the zarr store (relative paths are relative to the working directory;
            ``pkg://<package>/<file>`` names data shipped in a package).
        obs: policy observation keys, a list of store keys or ``{policy key: store key or
            {key, index, transform}}``.
        action: the action's store key (or ``{key, index, transform}``).
        horizon, n_obs_steps, n_action_steps: window length and padding.
        val_ratio, split_seed: held-out validation episodes (:func:`get_val_mask`).
        max_train_episodes: keep at most this many training episodes, drawn with ``split_seed``
            (90 reproduces the Diffusion Policy PushT protocol); None keeps all.
        episode_filter: train only on the episodes of this store filter (robomimic ``mask/<name>``).
        val_filter: validate on this filter's episodes instead of a ``val_ratio`` draw.
        shape_meta: expected shapes (checked against the data); None derives them.
    """

    def __init__(self, path: str | os.PathLike, obs: Sequence[str] | Mapping[str, Any], action: Any = "action",
                 horizon: int = 16, n_obs_steps: int = 2, n_action_steps: int = 8, val_ratio: float = 0.02,
                 split_seed: int = 42, max_train_episodes: int | None = None, episode_filter: str | None = None,
                 val_filter: str | None = None, shape_meta: Mapping[str, Any] | None = None):
        if n_obs_steps < 1 or n_action_steps < 1:
            raise ValueError(f"n_obs_steps and n_action_steps must be >= 1, got {n_obs_steps}, {n_action_steps}")
        if n_obs_steps - 1 + n_action_steps > horizon:
            raise ValueError(
                f"horizon {horizon} is too short for n_obs_steps {n_obs_steps} and n_action_steps "
                f"{n_action_steps}: the executed actions span steps n_obs_steps-1 .. "
                f"n_obs_steps+n_action_steps-2, so set horizon >= {n_obs_steps - 1 + n_action_steps}")
        if isinstance(obs, str) or not obs:
            raise ValueError(f"dataset obs must be a non-empty list of keys or a mapping, got {obs!r}")
        sources = ({k: KeySource(k) for k in obs} if not isinstance(obs, Mapping)
                   else {str(k): KeySource.parse(f"dataset.obs.{k}", v) for k, v in obs.items()})
        action_source = KeySource.parse("dataset.action", action)
        self.path = resolve_data_path(path)
        needed = sorted({s.key for s in sources.values()} | {action_source.key})
        raw = ReplayBuffer.from_path(self.path, keys=needed)
        arrays = {k: s.load(raw, self.path, f"obs {k!r}") for k, s in sources.items()}
        act = action_source.load(raw, self.path, "the action")
        if act.dtype != np.float32:
            raise DatasetError(f"{self.path}: the action (data/{action_source.key}) must be numbers, got images")
        act = act.reshape(len(act), -1)
        try:
            derived = ShapeMeta.infer(arrays, act)
        except ShapeMetaError as e:
            raise DatasetError(f"{self.path}: {e}") from None
        if shape_meta is not None:
            _check_shape_meta(ShapeMeta.from_dict(shape_meta), derived, self.path)
        self.shape_meta = derived
        self.replay_buffer = ReplayBuffer({**arrays, "action": act}, raw.episode_ends)
        self.attrs = raw.attrs
        self.obs_keys = list(arrays)

        self.horizon, self.n_obs_steps, self.n_action_steps = horizon, n_obs_steps, n_action_steps
        n = self.replay_buffer.n_episodes
        pool = np.ones(n, dtype=bool) if episode_filter is None else filter_mask(raw, episode_filter, self.path)
        if val_filter is not None:
            if val_filter == episode_filter:
                raise ValueError(f"dataset.val_filter and dataset.episode_filter are both {val_filter!r}")
            self.val_mask = filter_mask(raw, val_filter, self.path)
            pool &= ~self.val_mask
        else:
            self.val_mask = np.zeros(n, dtype=bool)
            self.val_mask[pool] = get_val_mask(int(pool.sum()), val_ratio, split_seed)
        self.train_mask = downsample_mask(pool & ~self.val_mask, max_train_episodes, split_seed)
        if not self.train_mask.any():
            raise DatasetError(f"{self.path}: no training episodes left (filter {episode_filter!r}, "
                               f"val_ratio {val_ratio}, max_train_episodes {max_train_episodes})")
        self.episode_mask = self.train_mask  # episodes this dataset serves
        self.sampler = self._make_sampler(self.episode_mask)

    def fingerprint(self) -> dict[str, Any]:
        """What a resume checks the data against (a run config's ``data``): episodes, steps, the
        training episodes, and a CRC-32 of each array as loaded (after any index or transform), so other
        content at the same path is refused rather than trained on."""
        buf = self.replay_buffer
        return {"episodes": int(buf.n_episodes), "steps": int(buf.n_steps),
                "train_episodes": int(self.train_mask.sum()),
                "crc32": {k: checksum(v) for k, v in buf.data.items()}}

    def _make_sampler(self, mask: np.ndarray) -> SequenceSampler:
        return SequenceSampler(self.replay_buffer, self.horizon, self.n_obs_steps - 1, self.n_action_steps - 1,
                               episode_mask=mask, key_first_k={k: self.n_obs_steps for k in self.obs_keys})

    def get_validation_dataset(self) -> SequenceDataset:
        """The same data served from the held-out validation episodes (``val_mask``).

        Unlike Diffusion Policy (which validates on every episode not used for training,
        including those dropped by ``max_train_episodes``), this serves only ``val_mask``.
        """
        val = copy.copy(self)
        val.episode_mask = self.val_mask
        val.sampler = self._make_sampler(self.val_mask)
        return val

    def get_normalizer(self, mode: str = "limits", fit_on: str = "train"):
        """A :class:`Normalizer` (fields from shape_meta) fitted on every step of the episodes: the
        low-dim keys and the action; rgb keys take the fixed image map.

        ``fit_on="train"`` uses the training episodes; ``"all"`` uses every episode, as
        Diffusion Policy does (its normalizer sees the validation data too).
        """
        from ..policy.normalizer import Normalizer

        if fit_on == "train":
            mask = self.train_mask
        elif fit_on == "all":
            mask = np.ones_like(self.train_mask)
        else:
            raise ValueError(f"fit_on must be 'train' or 'all', got {fit_on!r}")
        buf = self.replay_buffer
        step_mask = np.repeat(mask, buf.episode_lengths)  # (T,) bool
        data = {k: buf[k][step_mask] for k in [*self.shape_meta.low_dim_keys, "action"]}
        return Normalizer.from_shape_meta(self.shape_meta).fit(data, mode=mode)

    def __len__(self) -> int:
        return len(self.sampler)

    def __getitem__(self, i: int) -> dict[str, Any]:
        """Window ``i``: {"obs": {key: (n_obs_steps, *shape)}, "action": (horizon, action_dim)}."""
        sample = self.sampler.sample_sequence(i)
        return {"obs": {k: torch.from_numpy(sample[k]) for k in self.obs_keys},
                "action": torch.from_numpy(sample["action"])}

    def get_batch(self, idx) -> dict[str, Any]:
        """Windows ``idx`` (a sequence of ints) as one batch, gathered per key at once:
        {"obs": {key: (B, n_obs_steps, *shape)}, "action": (B, horizon, action_dim)}, the same
        tensors as collating ``self[i]`` for each i."""
        sample = self.sampler.sample_batch(np.asarray(idx))
        return {"obs": {k: torch.from_numpy(sample[k]) for k in self.obs_keys},
                "action": torch.from_numpy(sample["action"])}

    def describe(self) -> str:
        b = self.replay_buffer
        return (f"{self.path}: {b.n_episodes} episodes ({int(self.train_mask.sum())} train, "
                f"{int(self.val_mask.sum())} val), {b.n_steps} steps; {self.shape_meta.describe()}")


def _check_shape_meta(given: ShapeMeta, derived: ShapeMeta, path: Path) -> None:
    if list(given.obs) != list(derived.obs):
        raise DatasetError(f"{path}: task shape_meta names observation keys {list(given.obs)}, the dataset "
                           f"config serves {list(derived.obs)}")
    for key, spec in given.obs.items():
        got = derived.obs[key]
        if spec != got:
            raise DatasetError(f"{path}: obs {key!r} is {got.type} of per-step shape {list(got.shape)} in the data, "
                               f"shape_meta says {spec.type} {list(spec.shape)}")
    if given.action != derived.action:
        raise DatasetError(f"{path}: the action has per-step shape {list(derived.action.shape)} in the data, "
                           f"shape_meta says {list(given.action.shape)}")
