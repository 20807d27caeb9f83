"""An in-memory replay buffer over Diffusion Policy's zarr layout.

On disk (zarr format 2 or 3)::

    <root>/data/<key>          (T, ...)  every array has time as its first axis
    <root>/meta/episode_ends   (E,) int64, exclusive end of each episode in the time axis

Episode ``i`` covers steps ``episode_ends[i-1]:episode_ends[i]`` (``0:episode_ends[0]``
for the first). Everything is loaded into numpy: the datasets this project trains on are
a few MB, and random access into a compressed store per sample is what makes Diffusion
Policy's data path slow without its caching layer.
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import zarr

_ZARR_MAJOR = int(zarr.__version__.split(".")[0])


class DatasetError(ValueError):
    """A dataset on disk or in memory is malformed (missing keys, truncated, NaN, ...)."""


def _check_finite(key: str, arr: np.ndarray) -> None:
    """Raise if a float array holds NaN or inf, naming the first bad time step."""
    if not np.issubdtype(arr.dtype, np.floating) or arr.size == 0:
        return
    finite = np.isfinite(arr).reshape(len(arr), -1).all(axis=1)  # (T,)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise DatasetError(
            f"data/{key} holds NaN or inf at {len(bad)} time step(s), first at step {bad[0]}"
        )


def _check_layout(data: Mapping[str, np.ndarray], episode_ends: np.ndarray) -> None:
    """Validate that ``data`` and ``episode_ends`` describe whole, consistent episodes."""
    if episode_ends.ndim != 1 or not np.issubdtype(episode_ends.dtype, np.integer):
        raise DatasetError(
            f"meta/episode_ends must be a 1-D integer array, got shape {episode_ends.shape} "
            f"dtype {episode_ends.dtype}"
        )
    lengths = {}
    for key, arr in data.items():
        if arr.ndim == 0:
            raise DatasetError(f"data/{key} is a scalar; arrays need time as their first axis")
        lengths[key] = len(arr)
    if len(set(lengths.values())) > 1:
        raise DatasetError(f"data arrays have different lengths along time: {lengths}")
    if len(episode_ends):
        steps = np.diff(episode_ends, prepend=0)  # (E,) episode lengths
        if (steps <= 0).any():
            i = int(np.flatnonzero(steps <= 0)[0])
            raise DatasetError(
                "meta/episode_ends must be strictly increasing and positive (no empty episodes); "
                f"episode {i} ends at {episode_ends[i]} after "
                f"{episode_ends[i - 1] if i else 0}"
            )
    n_steps = int(episode_ends[-1]) if len(episode_ends) else 0
    for key, n in lengths.items():
        if n < n_steps:
            raise DatasetError(
                f"data/{key} has {n} steps but meta/episode_ends ends at {n_steps}: "
                "the data is truncated"
            )
        if n > n_steps:
            raise DatasetError(
                f"data/{key} has {n} steps but meta/episode_ends ends at {n_steps}: "
                f"{n - n_steps} steps belong to no episode"
            )


class ReplayBuffer:
    """Episodes of time-aligned arrays, concatenated along time.

    ``data[key]`` is (T, ...) with T = ``n_steps``; ``episode_ends`` is (E,) int64.
    Construct with :meth:`from_path`, :meth:`create_empty` + :meth:`add_episode`, or
    directly from arrays (validated).
    """

    def __init__(self, data: Mapping[str, np.ndarray], episode_ends: np.ndarray):
        data = {str(k): np.asarray(v) for k, v in data.items()}
        episode_ends = np.asarray(episode_ends)
        _check_layout(data, episode_ends)
        for key, arr in data.items():
            _check_finite(key, arr)
        self._data = data
        self._episode_ends = episode_ends.astype(np.int64)

    # ---------------------------------------------------------------- construction
    @classmethod
    def create_empty(cls) -> ReplayBuffer:
        """A buffer with no keys and no episodes; keys are fixed by the first episode."""
        return cls({}, np.zeros(0, dtype=np.int64))

    @classmethod
    def from_path(cls, path: str | os.PathLike, keys: Iterable[str] | None = None) -> ReplayBuffer:
        """Load ``data/<key>`` for the chosen keys (all when None) and ``meta/episode_ends``.

        Reads zarr format 2 and 3 stores. Only the chosen keys are read, so a store with
        large image arrays costs nothing when only low-dim keys are asked for.
        """
        path = Path(path)
        if not path.exists():
            raise DatasetError(f"no zarr store at {path}")
        try:
            root = zarr.open_group(str(path), mode="r")
        except Exception as e:  # zarr raises several types for "not a group"
            raise DatasetError(f"{path} is not a readable zarr group: {e}") from e

        if "meta" not in root or "episode_ends" not in root["meta"]:
            raise DatasetError(f"{path} has no meta/episode_ends (not a Diffusion Policy replay buffer)")
        available = sorted(root["data"].array_keys()) if "data" in root else []
        if keys is None:
            keys = available
        keys = list(keys)
        missing = [k for k in keys if k not in available]
        if missing:
            raise DatasetError(f"{path} has no data/{missing[0]}; keys that exist: {available}")

        episode_ends = np.asarray(root["meta"]["episode_ends"][...])
        data = {k: np.asarray(root["data"][k][...]) for k in keys}
        try:
            return cls(data, episode_ends)
        except DatasetError as e:
            raise DatasetError(f"{path}: {e}") from None

    def add_episode(self, episode: Mapping[str, np.ndarray]) -> None:
        """Append one episode: ``episode[key]`` is (T_ep, ...) with the same T_ep for all keys.

        The first episode fixes the keys; later ones must have the same keys and the same
        per-step shapes.
        """
        episode = {str(k): np.asarray(v) for k, v in episode.items()}
        if not episode:
            raise DatasetError("add_episode got no arrays")
        if self._data and set(episode) != set(self._data):
            raise DatasetError(
                f"episode keys {sorted(episode)} differ from the buffer's {sorted(self._data)}"
            )
        lengths = {k: (len(v) if v.ndim else None) for k, v in episode.items()}
        if None in lengths.values():
            raise DatasetError(f"episode arrays need time as their first axis: {lengths}")
        if len(set(lengths.values())) > 1:
            raise DatasetError(f"episode arrays have different lengths along time: {lengths}")
        n = next(iter(lengths.values()))
        if n == 0:
            raise DatasetError("add_episode got an empty episode (0 steps)")
        for key, arr in episode.items():
            if self._data and arr.shape[1:] != self._data[key].shape[1:]:
                raise DatasetError(
                    f"episode {key} has per-step shape {arr.shape[1:]}, "
                    f"the buffer holds {self._data[key].shape[1:]}"
                )
            _check_finite(key, arr)
        # Concatenate per episode: O(n^2) copies in theory, but buffers here are small and
        # built once; the result stays plain contiguous arrays that slicing can view.
        if self._data:
            self._data = {k: np.concatenate([self._data[k], episode[k]]) for k in self._data}
        else:
            self._data = {k: v.copy() for k, v in episode.items()}
        self._episode_ends = np.append(self._episode_ends, self.n_steps + n).astype(np.int64)

    # ---------------------------------------------------------------- access
    @property
    def data(self) -> dict[str, np.ndarray]:
        """key -> (T, ...) array (the buffer's own arrays, not copies)."""
        return self._data

    @property
    def episode_ends(self) -> np.ndarray:
        """(E,) int64 exclusive end of each episode."""
        return self._episode_ends

    @property
    def n_episodes(self) -> int:
        return len(self._episode_ends)

    @property
    def n_steps(self) -> int:
        return int(self._episode_ends[-1]) if len(self._episode_ends) else 0

    @property
    def episode_lengths(self) -> np.ndarray:
        """(E,) int64 number of steps of each episode."""
        return np.diff(self._episode_ends, prepend=0)

    def keys(self) -> list[str]:
        return list(self._data)

    def __getitem__(self, key: str) -> np.ndarray:
        if key not in self._data:
            raise KeyError(f"replay buffer has no key {key!r}; keys: {self.keys()}")
        return self._data[key]

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def episode_slice(self, i: int) -> slice:
        """The time slice of episode ``i`` (negative counts from the end)."""
        if not -self.n_episodes <= i < self.n_episodes:
            raise IndexError(f"episode {i} out of range for {self.n_episodes} episodes")
        i %= self.n_episodes
        start = int(self._episode_ends[i - 1]) if i > 0 else 0
        return slice(start, int(self._episode_ends[i]))

    def get_episode(self, i: int) -> dict[str, np.ndarray]:
        """key -> (T_i, ...) views of episode ``i``."""
        s = self.episode_slice(i)
        return {k: v[s] for k, v in self._data.items()}

    def __repr__(self) -> str:
        shapes = {k: (v.shape, str(v.dtype)) for k, v in self._data.items()}
        return f"ReplayBuffer(n_episodes={self.n_episodes}, n_steps={self.n_steps}, data={shapes})"

    # ---------------------------------------------------------------- writing
    def save(self, path: str | os.PathLike, zarr_format: int = 2, overwrite: bool = False) -> None:
        """Write the buffer as a zarr store, one compressed chunk per array.

        One chunk per array keeps a store to a handful of files (easy to ship in git)
        and reads in one call; these arrays are small enough that chunking buys nothing.
        """
        if zarr_format not in (2, 3):
            raise ValueError(f"zarr_format must be 2 or 3, got {zarr_format}")
        if zarr_format == 3 and _ZARR_MAJOR < 3:
            raise ValueError(f"writing zarr format 3 needs zarr>=3, installed {zarr.__version__}")
        path = Path(path)
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
        kwargs = {"zarr_format": zarr_format} if _ZARR_MAJOR >= 3 else {}
        root = zarr.open_group(str(path), mode="w", **kwargs)
        data_group = root.create_group("data")
        meta_group = root.create_group("meta")
        for key, arr in self._data.items():
            _write_array(data_group, key, arr, zarr_format)
        _write_array(meta_group, "episode_ends", self._episode_ends, zarr_format)


def _write_array(group, name: str, arr: np.ndarray, zarr_format: int) -> None:
    """Write ``arr`` into ``group[name]`` as a single Blosc-zstd chunk."""
    chunks = tuple(max(1, s) for s in arr.shape)  # zarr rejects 0-length chunks
    if _ZARR_MAJOR < 3:
        from numcodecs import Blosc

        group.create_dataset(
            name, data=arr, chunks=chunks,
            compressor=Blosc(cname="zstd", clevel=5, shuffle=Blosc.BITSHUFFLE),
        )
        return
    if zarr_format == 2:
        from numcodecs import Blosc

        compressor = Blosc(cname="zstd", clevel=5, shuffle=Blosc.BITSHUFFLE)
    else:
        compressor = zarr.codecs.BloscCodec(cname="zstd", clevel=5, shuffle="bitshuffle")
    group.create_array(name, data=arr, chunks=chunks, compressors=compressor)
