"""robomimic HDF5 <-> zarr replay buffer (read and written with h5py; robomimic itself is not needed).

robomimic's layout (also MimicGen's and Isaac Lab's), as its ``dataset_states_to_obs.py`` writes it::

    data                      attrs: total (sum of num_samples), env_args (JSON string)
    data/demo_<i>             attrs: num_samples, model_file (MJCF, robosuite only)
        obs/<key>             (N, ...)  low-dim float64 / images uint8 (H, W, 3)
        next_obs/<key>        (N, ...)  next_obs[t] = obs[t + 1]; the last one is the state after the episode
        actions (N, A), rewards (N,), dones (N,), states (N, S)
    mask/<filter>             byte strings b"demo_<i>": episode filters (train, valid, 20_percent, ...)

Import keeps, in the buffer (``data/<name>``, time first, episodes in numeric order: demo_10 after
demo_9): the chosen observation keys (low-dim as float32, images as uint8), ``actions`` and
``rewards`` as float32, ``dones`` as uint8, ``states`` as float64 (a simulator state is replayed, not
learned from); the buffer's attributes keep ``env_args`` (the MuJoCo suites build environments from
it), the filters as episode indices, the demo names; ``meta/`` keeps each episode's ``model_file``
and its last next observation (the rest of next_obs is obs shifted by one, checked at import).

Export writes a buffer back in the same layout; a buffer -> file -> buffer trip is exact, and a
file -> buffer -> file trip is exact except that float64 observations, actions and rewards come back
at float32 precision.
"""
from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..utils import atomic_path
from .replay_buffer import DatasetError, ReplayBuffer, decode_strings, encode_strings

DATASET_KEYS = ("actions", "rewards", "dones", "states")
_DTYPES = {"actions": np.float32, "rewards": np.float32, "dones": np.uint8, "states": np.float64}
_DEMO = re.compile(r"^demo_(\d+)$")
NEXT_OBS_LAST = "next_obs_last."  # meta array prefix: the last next_obs frame of each episode


def _h5py():
    try:
        import h5py
    except ImportError as e:
        raise ImportError(f"robomimic files need h5py ({e}); install it with: pip install 'shortcut-policy[data]'") from e
    return h5py


def _is_image(arr_or_ds) -> bool:
    return arr_or_ds.dtype == np.uint8 and len(arr_or_ds.shape) == 4 and arr_or_ds.shape[-1] == 3


def demo_order(names: Iterable[str], path: Path | str) -> list[str]:
    """``demo_<int>`` names in numeric order (demo_10 after demo_9); anything else is an error."""
    names = list(names)
    bad = [n for n in names if not _DEMO.match(n)]
    if bad:
        raise DatasetError(f"{path}: data/{bad[0]} is not named demo_<int> (robomimic sorts demos by that number)")
    return sorted(names, key=lambda n: int(_DEMO.match(n).group(1)))


def _open(path: Path):
    h5py = _h5py()
    if not path.is_file():
        raise DatasetError(f"no robomimic file at {path}")
    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise DatasetError(f"cannot read {path} as HDF5 (truncated or not an HDF5 file?): {e}") from e


def _read(f, name: str, path: Path) -> np.ndarray:
    try:
        return np.asarray(f[name][()])
    except (OSError, KeyError, RuntimeError) as e:
        raise DatasetError(f"{path}: cannot read {name}: {e} (truncated file?)") from e


def _check_finite(arr: np.ndarray, path: Path, name: str) -> None:
    if np.issubdtype(arr.dtype, np.floating) and arr.size and not np.isfinite(arr).all():
        t = int(np.flatnonzero(~np.isfinite(arr.reshape(len(arr), -1)).all(1))[0])
        raise DatasetError(f"{path}: {name} holds NaN or inf (first at step {t})")


def import_robomimic(src: str | os.PathLike, out: str | os.PathLike | None = None,
                     obs_keys: Sequence[str] | None = None, episode_filter: str | None = None,
                     overwrite: bool = False, progress: bool = True) -> ReplayBuffer:
    """Read a robomimic HDF5 file into a :class:`ReplayBuffer` (written to ``out`` when given).

    ``obs_keys``: observation keys to keep (default: every key of the first demo); ``episode_filter``:
    import only the demos of ``mask/<name>``. Errors name the file, the demo and the key.
    """
    src = Path(src)
    with _open(src) as f:
        if "data" not in f:
            raise DatasetError(f"{src} has no 'data' group (not a robomimic dataset?); top-level keys: {sorted(f)}")
        data = f["data"]
        all_demos = demo_order(data.keys(), src)
        if not all_demos:
            raise DatasetError(f"{src}: the 'data' group holds no demos")
        lengths = {}
        for name in all_demos:
            if "actions" not in data[name]:
                raise DatasetError(f"{src}: data/{name} has no 'actions'; it holds {sorted(data[name])}")
            lengths[name] = int(data[name]["actions"].shape[0])
            ns = data[name].attrs.get("num_samples")
            if ns is not None and int(ns) != lengths[name]:
                raise DatasetError(f"{src}: data/{name} says num_samples={int(ns)} but holds {lengths[name]} actions")
        total = data.attrs.get("total")
        if total is not None and int(total) != sum(lengths.values()):
            raise DatasetError(f"{src}: data.attrs['total'] = {int(total)} but the demos hold {sum(lengths.values())} "
                               "steps (a truncated or partly written file?)")
        filters = {}
        if "mask" in f:
            for fname in f["mask"]:
                names = [x.decode("utf-8") if isinstance(x, bytes) else str(x) for x in _read(f["mask"], fname, src)]
                unknown = sorted(set(names) - set(all_demos))
                if unknown:
                    raise DatasetError(f"{src}: mask/{fname} names demos that do not exist: {unknown[:5]}")
                filters[fname] = names
        if episode_filter is not None:
            if episode_filter not in filters:
                raise DatasetError(f"{src} has no mask/{episode_filter}; filters: {sorted(filters) or 'none'}")
            keep = set(filters[episode_filter])
            demos = [n for n in all_demos if n in keep]
        else:
            demos = all_demos
        first_obs = data[demos[0]].get("obs")
        available = sorted(first_obs.keys()) if first_obs is not None else []
        keys = list(obs_keys) if obs_keys is not None else available
        clash = sorted(set(keys) & set(DATASET_KEYS))
        if clash:
            raise DatasetError(f"{src}: observation keys {clash} collide with robomimic's dataset names")

        episodes, model_files, last_next, next_ok = [], [], {k: [] for k in keys}, True
        extra_attrs: dict[str, list[Any]] = {}
        it = demos
        if progress:
            from tqdm import tqdm
            it = tqdm(demos, desc=f"import {src.name}", unit="demo")
        for name in it:
            g = data[name]
            n = lengths[name]
            ep: dict[str, np.ndarray] = {}
            for key in keys:
                if "obs" not in g or key not in g["obs"]:
                    have = sorted(g["obs"]) if "obs" in g else []
                    raise DatasetError(f"{src}: data/{name}/obs has no {key!r}; keys: {have}")
                arr = _read(g["obs"], key, src)
                where = f"data/{name}/obs/{key}"
                if len(arr) != n:
                    raise DatasetError(f"{src}: {where} has {len(arr)} steps but data/{name}/actions has {n}")
                _check_finite(arr, src, where)
                ep[key] = arr if _is_image(arr) else _as_float32(arr, src, where)
                if "next_obs" in g and key in g["next_obs"]:
                    nxt = _read(g["next_obs"], key, src)
                    if len(nxt) != n or not np.array_equal(nxt[:-1], arr[1:]):
                        next_ok = False
                    else:
                        last_next[key].append(nxt[-1:].astype(ep[key].dtype))
                else:
                    next_ok = False
            for key in DATASET_KEYS:
                if key not in g:
                    if key == "actions":
                        raise DatasetError(f"{src}: data/{name} has no 'actions'")
                    continue
                arr = _read(g, key, src)
                if len(arr) != n:
                    raise DatasetError(f"{src}: data/{name}/{key} has {len(arr)} steps but actions has {n}")
                if key in ("actions", "rewards"):
                    _check_finite(arr, src, f"data/{name}/{key}")
                ep[key] = arr.astype(_DTYPES[key])
            episodes.append(ep)
            model_files.append(_attr_str(g.attrs.get("model_file")))
            for attr, value in g.attrs.items():
                if attr not in ("num_samples", "model_file"):
                    extra_attrs.setdefault(attr, []).append(_json_value(value))
        env_args = data.attrs.get("env_args")

    for name, ep in zip(demos, episodes):
        missing = sorted(set(episodes[0]) ^ set(ep))
        if missing:
            raise DatasetError(f"{src}: data/{name} and data/{demos[0]} differ in {missing}: some demos lack them")
    buf = ReplayBuffer.from_episodes(episodes)
    meta: dict[str, np.ndarray] = {}
    if any(m is not None for m in model_files):
        meta["model_file"], meta["model_file_ends"] = encode_strings([m or "" for m in model_files])
    if next_ok and keys:
        meta.update({NEXT_OBS_LAST + k: np.concatenate(v) for k, v in last_next.items()})
    elif keys:
        warnings.warn(f"{src}: next_obs is missing or is not obs shifted by one step; it is not imported "
                      "(training does not use it) and an export will not write it", stacklevel=2)
    index = {name: i for i, name in enumerate(demos)}
    buf.meta = meta
    buf.attrs = {
        "source": {"format": "robomimic", "path": str(src), "episode_filter": episode_filter},
        "env_args": _attr_str(env_args),
        "episode_names": demos,
        "filters": {k: [index[n] for n in v if n in index] for k, v in filters.items()},
        "episode_attrs": {k: v for k, v in extra_attrs.items() if len(v) == len(demos)},
        "obs_keys": keys,
    }
    if out is not None:
        buf.save(out, overwrite=overwrite)
    return buf


def _as_float32(arr: np.ndarray, path: Path, where: str) -> np.ndarray:
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise DatasetError(f"{path}: {where} has dtype {arr.dtype}; expected numbers or uint8 images")
    return arr.astype(np.float32)


def _attr_str(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return str(value)


def _json_value(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def export_robomimic(buffer: ReplayBuffer | str | os.PathLike, out: str | os.PathLike,
                     obs_keys: Sequence[str] | None = None, env_args: str | dict | None = None,
                     overwrite: bool = False) -> Path:
    """Write a replay buffer (or a zarr store) as a robomimic HDF5 file, atomically.

    ``obs_keys``: the buffer keys written under ``obs/`` (default: the keys the import recorded,
    else every key that is not one of actions / rewards / dones / states). The buffer must hold
    ``actions`` (an ``action`` key is accepted and written as ``actions``). Missing rewards and
    dones are written as zeros (dones 1 on each episode's last step), as robomimic's readers
    expect them to exist.
    """
    h5py = _h5py()
    if not isinstance(buffer, ReplayBuffer):
        buffer = ReplayBuffer.from_path(buffer)
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=True to replace it")
    action_key = "actions" if "actions" in buffer else "action" if "action" in buffer else None
    if action_key is None:
        raise DatasetError(f"the buffer has no 'actions' (or 'action') key; keys: {buffer.keys()}")
    reserved = set(DATASET_KEYS) | {"action"}
    keys = list(obs_keys) if obs_keys is not None else list(
        buffer.attrs.get("obs_keys") or [k for k in buffer.keys() if k not in reserved])
    missing = [k for k in keys if k not in buffer]
    if missing:
        raise DatasetError(f"the buffer has no {missing}; keys: {buffer.keys()}")
    names = buffer.attrs.get("episode_names") or [f"demo_{i}" for i in range(buffer.n_episodes)]
    if len(names) != buffer.n_episodes:
        raise DatasetError(f"the buffer's episode_names has {len(names)} entries for {buffer.n_episodes} episodes")
    demo_order(names, "the buffer's episode_names")
    model_files = (decode_strings(buffer.meta["model_file"], buffer.meta["model_file_ends"])
                   if "model_file" in buffer.meta else None)
    has_next = all(NEXT_OBS_LAST + k in buffer.meta for k in keys)
    env_args = env_args if env_args is not None else buffer.attrs.get("env_args")
    if isinstance(env_args, dict):
        env_args = json.dumps(env_args, indent=4)
    episode_attrs = buffer.attrs.get("episode_attrs") or {}

    with atomic_path(out) as tmp:
        with h5py.File(tmp, "w") as f:
            data = f.create_group("data")
            for i, name in enumerate(names):
                ep = buffer.get_episode(i)
                n = len(ep[action_key])
                g = data.create_group(name)
                g.attrs["num_samples"] = n
                if model_files is not None and model_files[i]:
                    g.attrs["model_file"] = model_files[i]
                for attr, values in episode_attrs.items():
                    g.attrs[attr] = values[i]
                g.create_dataset("actions", data=ep[action_key])
                rewards = ep["rewards"] if "rewards" in ep else np.zeros(n, dtype=np.float32)
                dones = ep["dones"] if "dones" in ep else (np.arange(n) == n - 1).astype(np.uint8)
                g.create_dataset("rewards", data=rewards)
                g.create_dataset("dones", data=dones)
                if "states" in ep:
                    g.create_dataset("states", data=ep["states"])
                obs = g.create_group("obs")
                for key in keys:
                    obs.create_dataset(key, data=ep[key])
                if has_next:
                    nxt = g.create_group("next_obs")
                    for key in keys:
                        last = buffer.meta[NEXT_OBS_LAST + key][i:i + 1]
                        nxt.create_dataset(key, data=np.concatenate([ep[key][1:], last]))
            data.attrs["total"] = int(buffer.n_steps)
            if env_args is not None:
                data.attrs["env_args"] = env_args
            filters = buffer.attrs.get("filters") or {}
            if filters:
                mask = f.create_group("mask")
                for fname, idx in filters.items():
                    mask.create_dataset(fname, data=np.array([names[j] for j in idx], dtype="S"))
    return out
