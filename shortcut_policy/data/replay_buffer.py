"""An in-memory replay buffer over Diffusion Policy's zarr layout.

On disk (zarr format 2 or 3)::

    <root>/data/<key>          (T, ...)  every array has time as its first axis
    <root>/meta/episode_ends   (E,) int64, exclusive end of each episode in the time axis
    <root>/meta/<name>         (E, ...)  optional per-episode arrays (importers keep what a round
                               trip needs: the last next observation, model files as bytes)
    <root> attributes          optional JSON metadata (source format, env_args, episode filters)

Episode ``i`` covers steps ``episode_ends[i-1]:episode_ends[i]`` (``0:episode_ends[0]``
for the first). The chosen keys are loaded into numpy: random access into a compressed store per
sample is what makes Diffusion Policy's data path slow without its caching layer, and even
PushT's 25,650 camera frames are 0.7 GB as uint8.

Stores are written to a temporary folder beside the target and renamed when complete, so an
interrupted write never leaves a half store under the target's name.
"""
from __future__ import annotations

import json
import os
import warnings
import zlib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from ..utils import atomic_path

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

    def __init__(self, data: Mapping[str, np.ndarray], episode_ends: np.ndarray,
                 meta: Mapping[str, np.ndarray] | None = None, attrs: Mapping[str, Any] | None = None):
        data = {str(k): np.asarray(v) for k, v in data.items()}
        episode_ends = np.asarray(episode_ends)
        _check_layout(data, episode_ends)
        for key, arr in data.items():
            _check_finite(key, arr)
        self._data = data
        self._episode_ends = episode_ends.astype(np.int64)
        #: per-episode arrays stored under meta/ beside episode_ends (first axis: episodes, or free
        #: for byte strings); the importers' business, carried through load and save unchanged
        self.meta = {str(k): np.asarray(v) for k, v in (meta or {}).items()}
        if "episode_ends" in self.meta:
            raise DatasetError("meta arrays cannot be named 'episode_ends'")
        #: JSON-serializable attributes of the store (source format, env_args, episode filters, ...)
        self.attrs = dict(attrs or {})
        json.dumps(self.attrs)  # fail now, not at save time

    # ---------------------------------------------------------------- construction
    @classmethod
    def create_empty(cls) -> ReplayBuffer:
        """A buffer with no keys and no episodes; keys are fixed by the first episode."""
        return cls({}, np.zeros(0, dtype=np.int64))

    @classmethod
    def from_path(cls, path: str | os.PathLike, keys: Iterable[str] | None = None,
                  warn_unverified: bool = True) -> ReplayBuffer:
        """Load ``data/<key>`` for the chosen keys (all when None), ``meta/*`` and the attributes.

        Reads zarr format 2 and 3 stores. Only the chosen keys are read, so a store with
        large image arrays costs nothing when only low-dim keys are asked for. Errors name the
        store and the array (a missing, truncated or corrupt chunk included). A store without this
        package's checksums is said to be unverifiable (a ``RuntimeWarning``, once per store) unless
        ``warn_unverified`` is False (the importer, which makes the verified copy).
        """
        path = Path(path)
        if not path.exists():
            raise DatasetError(f"no zarr store at {path} (resolved to {path.resolve()})")
        try:
            root = zarr.open_group(str(path), mode="r")
        except Exception as e:  # zarr raises several types for "not a group"
            raise DatasetError(f"{path} is not a readable zarr group: {e}") from e

        try:
            if "meta" not in root or "episode_ends" not in root["meta"]:
                raise DatasetError(f"{path} has no meta/episode_ends (not a Diffusion Policy replay buffer)")
            available = sorted(root["data"].array_keys()) if "data" in root else []
            meta_keys = [k for k in root["meta"].array_keys() if k != "episode_ends"]
        except DatasetError:
            raise
        except Exception as e:  # a damaged .zarray / zarr.json of some array, read while listing
            raise DatasetError(f"{path}: the store's array metadata cannot be read ({type(e).__name__}: {e}); "
                               "the store is damaged: re-copy or re-import it") from e
        if keys is None:
            keys = available
        keys = list(keys)
        missing = [k for k in keys if k not in available]
        if missing:
            raise DatasetError(f"{path} has no data/{missing[0]}; keys that exist: {available}")

        episode_ends = _read_array(root["meta"], "episode_ends", path, "meta")
        data = {k: _read_array(root["data"], k, path, "data") for k in keys}
        meta = {k: _read_array(root["meta"], k, path, "meta") for k in meta_keys}
        attrs = dict(root.attrs)
        _verify_checksums(path, attrs, warn_unverified, {"meta/episode_ends": episode_ends, **{f"data/{k}": v for k, v in data.items()},
                                        **{f"meta/{k}": v for k, v in meta.items()}})
        attrs.pop(CHECKSUMS, None)
        try:
            return cls(data, episode_ends, meta=meta, attrs=attrs)
        except DatasetError as e:
            raise DatasetError(f"{path}: {e}") from None

    @staticmethod
    def array_info(path: str | os.PathLike) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        """Shapes and dtypes of the store's data arrays without reading them: {key: (shape, dtype)}."""
        path = Path(path)
        try:
            root = zarr.open_group(str(path), mode="r")
            return {k: (tuple(a.shape), np.dtype(a.dtype)) for k, a in root["data"].arrays()} if "data" in root else {}
        except Exception as e:
            raise DatasetError(f"{path} is not a readable zarr group: {e}") from e

    @classmethod
    def from_episodes(cls, episodes: Iterable[Mapping[str, np.ndarray]], meta: Mapping[str, np.ndarray] | None = None,
                      attrs: Mapping[str, Any] | None = None) -> ReplayBuffer:
        """Build from a sequence of episodes ({key: (T_ep, ...)}, same keys and per-step shapes), each
        array copied once (``add_episode`` in a loop copies the growing buffer every time)."""
        episodes = [{str(k): np.asarray(v) for k, v in ep.items()} for ep in episodes]
        if not episodes:
            return cls({}, np.zeros(0, dtype=np.int64), meta, attrs)
        keys = sorted(episodes[0])
        lengths = []
        for i, ep in enumerate(episodes):
            if sorted(ep) != keys:
                raise DatasetError(f"episode {i} has keys {sorted(ep)}, episode 0 has {keys}")
            n = {k: len(v) if v.ndim else None for k, v in ep.items()}
            if None in n.values() or len(set(n.values())) != 1:
                raise DatasetError(f"episode {i}: arrays need time as their first axis and one length, got {n}")
            if next(iter(n.values())) == 0:
                raise DatasetError(f"episode {i} is empty (0 steps)")
            for k in keys:
                if ep[k].shape[1:] != episodes[0][k].shape[1:]:
                    raise DatasetError(f"episode {i}: {k} has per-step shape {ep[k].shape[1:]}, episode 0 has "
                                       f"{episodes[0][k].shape[1:]}")
            lengths.append(next(iter(n.values())))
        data = {k: np.concatenate([ep[k] for ep in episodes]) for k in episodes[0]}
        return cls(data, np.cumsum(lengths, dtype=np.int64), meta, attrs)

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
    def save(self, path: str | os.PathLike, zarr_format: int = 2, overwrite: bool = False,
             chunk_frames: int | None = None, image_codec: str | None = None) -> None:
        """Write the buffer as a zarr store, atomically (a temporary folder renamed when complete).

        Low-dim arrays are one compressed chunk each (a handful of small files that read in one
        call). Image arrays (uint8 (T, H, W, C)) are chunked along time, ``chunk_frames`` frames
        per chunk (default :data:`IMAGE_CHUNK_FRAMES`) and compressed with Blosc ``image_codec``
        (default :data:`IMAGE_CODEC`), both chosen by measurement (docs/data.md), so a few frames can
        be read without decompressing the whole array.
        """
        if zarr_format not in (2, 3):
            raise ValueError(f"zarr_format must be 2 or 3, got {zarr_format}")
        if zarr_format == 3 and _ZARR_MAJOR < 3:
            raise ValueError(f"writing zarr format 3 needs zarr>=3, installed {zarr.__version__}")
        path = Path(path)
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
        with atomic_path(path, directory=True) as tmp:
            kwargs = {"zarr_format": zarr_format} if _ZARR_MAJOR >= 3 else {}
            root = zarr.open_group(str(tmp), mode="w", **kwargs)
            data_group = root.create_group("data")
            meta_group = root.create_group("meta")
            for key, arr in self._data.items():
                if _is_image(arr):
                    _write_array(data_group, key, arr, zarr_format, chunk_frames or IMAGE_CHUNK_FRAMES,
                                 image_codec or IMAGE_CODEC)
                else:
                    _write_array(data_group, key, arr, zarr_format)
            _write_array(meta_group, "episode_ends", self._episode_ends, zarr_format)
            for key, arr in self.meta.items():
                _write_array(meta_group, key, arr, zarr_format)
            sums = {f"data/{k}": checksum(v) for k, v in self._data.items()}
            sums.update({f"meta/{k}": checksum(v) for k, v in self.meta.items()})
            sums["meta/episode_ends"] = checksum(self._episode_ends)
            root.attrs.update({**self.attrs, CHECKSUMS: sums})


#: frames per chunk of an image array, and its Blosc codec: see docs/data.md for the measurement
IMAGE_CHUNK_FRAMES = 16
IMAGE_CODEC = "zstd"


def _is_image(arr: np.ndarray) -> bool:
    return arr.dtype == np.uint8 and arr.ndim == 4 and arr.shape[-1] in (1, 3, 4)


def _read_array(group, name: str, path: Path, where: str) -> np.ndarray:
    try:
        arr = group[name]
        out = np.asarray(arr[...])
        present, expected = arr.nchunks_initialized, arr.nchunks
    except Exception as e:  # truncated or corrupt chunks or metadata: zarr/numcodecs raise many types
        raise DatasetError(f"cannot read {where}/{name} of {path}: {type(e).__name__}: {e} "
                           "(truncated or corrupt store?)") from e
    # zarr reads an absent chunk as fill values, silently. zarr 2 (Diffusion Policy's stores) and this
    # package's writer store every chunk, but zarr 3's defaults skip chunks that equal the fill value, so
    # an absent chunk is damage only maybe: said aloud here, and an error for stores with checksums.
    if arr.size and present < expected:
        warnings.warn(f"{path}: {where}/{name} has {present} of its {expected} chunks on disk; zarr reads the missing "
                      "ones as zeros. Unless the writer skipped all-zero chunks (zarr 3's default), the store is "
                      "damaged: re-copy or re-import it", RuntimeWarning, stacklevel=3)
    return out


_UNCHECKED_SAID: set[str] = set()  # stores without checksums already warned about in this process
CHECKSUMS = "checksums"  # attribute of stores this package writes: {"data/<key>": crc32 of the array bytes}


def checksum(arr: np.ndarray) -> int:
    """CRC-32 of an array's bytes (C order): catches a flipped bit, a zero-filled missing chunk or a
    truncated copy that still decompresses."""
    return zlib.crc32(np.ascontiguousarray(arr).view(np.uint8).reshape(-1)) & 0xFFFFFFFF


def _verify_checksums(path: Path, attrs: Mapping[str, Any], warn_unverified: bool,
                      arrays: Mapping[str, np.ndarray]) -> None:
    sums = attrs.get(CHECKSUMS)
    if not isinstance(sums, Mapping):  # a store written elsewhere: nothing recorded to check against
        if warn_unverified and str(path.resolve()) not in _UNCHECKED_SAID:
            _UNCHECKED_SAID.add(str(path.resolve()))
            warnings.warn(f"{path} carries no checksums (written by another tool): a flipped bit or a truncated chunk "
                          f"that still decodes would load as wrong numbers without an error. `shortcut-import zarr "
                          f"--src {path} --out <copy>.zarr` writes a copy whose every later read is verified",
                          RuntimeWarning, stacklevel=3)
        return
    for name, arr in arrays.items():
        want = sums.get(name)
        if want is not None and checksum(arr) != int(want):
            raise DatasetError(f"{path}: {name} does not match the checksum recorded when the store was written "
                               "(a corrupt, truncated or partly missing chunk; zarr reads a missing chunk as "
                               "zeros). Re-import or re-copy the dataset.")


def encode_strings(strings: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Strings as (bytes uint8 (N,), exclusive ends int64 (E,)): per-episode text in numeric arrays
    (no object arrays, nothing pickled)."""
    blobs = [s.encode("utf-8") for s in strings]
    ends = np.cumsum([len(b) for b in blobs], dtype=np.int64)
    return np.frombuffer(b"".join(blobs), dtype=np.uint8).copy(), ends


def decode_strings(data: np.ndarray, ends: np.ndarray) -> list[str]:
    raw = np.asarray(data, dtype=np.uint8).tobytes()
    starts = np.concatenate([[0], ends[:-1]]) if len(ends) else np.zeros(0, dtype=np.int64)
    return [raw[int(a):int(b)].decode("utf-8") for a, b in zip(starts, ends)]


def _write_array(group, name: str, arr: np.ndarray, zarr_format: int, chunk_frames: int | None = None,
                 image_codec: str = "zstd") -> None:
    """Write ``arr`` into ``group[name]``, Blosc-compressed: one chunk (zstd, bit-shuffled), or
    ``chunk_frames`` steps per chunk along time with ``image_codec`` (images)."""
    if chunk_frames is None:
        chunks = tuple(max(1, s) for s in arr.shape)  # zarr rejects 0-length chunks
        cname, shuffle = "zstd", "BITSHUFFLE"
    else:
        chunks = (max(1, min(chunk_frames, len(arr))),) + tuple(arr.shape[1:])
        cname, shuffle = image_codec, "SHUFFLE"
    if _ZARR_MAJOR < 3:
        from numcodecs import Blosc

        group.create_dataset(name, data=arr, chunks=chunks, write_empty_chunks=True,
                             compressor=Blosc(cname=cname, clevel=5, shuffle=getattr(Blosc, shuffle)))
        return
    if zarr_format == 2:
        from numcodecs import Blosc

        compressor = Blosc(cname=cname, clevel=5, shuffle=getattr(Blosc, shuffle))
    else:
        compressor = zarr.codecs.BloscCodec(cname=cname, clevel=5, shuffle=shuffle.lower())
    # every chunk on disk, also all-zero ones: a missing chunk file then always means damage
    group.create_array(name, data=arr, chunks=chunks, compressors=compressor, config={"write_empty_chunks": True})
