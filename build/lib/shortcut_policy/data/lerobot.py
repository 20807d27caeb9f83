"""LeRobot datasets (v3.0 and v2.1) -> zarr replay buffer, read with pyarrow and PyAV (no lerobot).

Both versions describe themselves in ``meta/info.json`` (``codebase_version``, ``fps``, ``features``
with dtype and shape per key, path templates). They differ in how files hold episodes:

- **v3.0** (today's): many episodes per file. ``meta/episodes/chunk-*/file-*.parquet`` gives each
  episode's ``length``, its rows ``dataset_from_index .. dataset_to_index`` (global ``index``), the
  data file (``data/chunk_index``, ``data/file_index``) and per video key the mp4 file and
  ``from_timestamp``: an episode's frame at row timestamp ``ts`` sits at ``from_timestamp + ts`` in
  the shared video.
- **v2.1** (and v2.0, the same layout): one parquet and one mp4 per episode under
  ``chunk-{episode_index // chunks_size}``; ``meta/episodes.jsonl`` lists episodes and lengths.

Non-video features are parquet columns (vectors as fixed-size lists); video features are mp4 files,
decoded with PyAV (LeRobot encodes AV1 by default: PyAV's bundled libdav1d reads it) to uint8
(H, W, 3) frames matched to the rows by timestamp (within ``TOLERANCE_S``, LeRobot's own tolerance).
``image`` features (PNG bytes in the parquet) are decoded with Pillow.

Every feature is imported under its own name (``observation.state`` stays ``observation.state``),
numbers in their own dtype, except the row bookkeeping (timestamp, frame_index, episode_index,
index). The buffer's attributes keep fps, the task strings, the robot type, the features and the
source episode indices.
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .replay_buffer import DatasetError, ReplayBuffer

SUPPORTED = ("v2.0", "v2.1", "v3.0")
BOOKKEEPING = ("timestamp", "frame_index", "episode_index", "index")
TOLERANCE_S = 1e-4  # LeRobot's default tolerance between a row's timestamp and the decoded frame's


def _pq():
    try:
        import pyarrow.parquet as pq
    except ImportError as e:
        raise ImportError(f"LeRobot datasets need pyarrow ({e}); install it with: pip install 'shortcut-policy[data]'") from e
    return pq


def read_info(root: Path) -> dict[str, Any]:
    path = root / "meta" / "info.json"
    if not path.is_file():
        raise DatasetError(f"{root} is not a LeRobot dataset: no meta/info.json")
    try:
        info = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}: not valid JSON ({e})") from e
    version = info.get("codebase_version")
    if version not in SUPPORTED:
        raise DatasetError(f"{path}: codebase_version {version!r} is not supported; this importer reads {SUPPORTED}")
    for key in ("fps", "features", "data_path"):
        if key not in info:
            raise DatasetError(f"{path} lacks {key!r}")
    return info


def _column(table, name: str, shape: Sequence[int], where: str) -> np.ndarray:
    """A parquet column of per-row values of ``shape`` -> (n, *shape) array (fixed-size lists unnested)."""
    import pyarrow as pa

    if name not in table.column_names:
        raise DatasetError(f"{where} has no column {name!r}; columns: {table.column_names}")
    arr = table.column(name).combine_chunks()
    n = len(arr)
    while pa.types.is_list(arr.type) or pa.types.is_fixed_size_list(arr.type) or pa.types.is_large_list(arr.type):
        arr = arr.flatten()
    values = arr.to_numpy(zero_copy_only=False)
    size = int(np.prod(shape)) if shape else 1
    if values.size != n * size:
        raise DatasetError(f"{where}: column {name!r} holds {values.size} numbers for {n} rows of shape {list(shape)}")
    return values.reshape(n, *shape) if list(shape) != [1] else values.reshape(n)


def _decode_png_column(table, name: str, where: str) -> np.ndarray:
    import io

    from PIL import Image

    rows = table.column(name).to_pylist()
    frames = []
    for i, r in enumerate(rows):
        blob = r.get("bytes") if isinstance(r, dict) else None
        if not blob:
            raise DatasetError(f"{where}: image {name!r} row {i} holds no PNG bytes")
        frames.append(np.asarray(Image.open(io.BytesIO(blob)).convert("RGB"), dtype=np.uint8))
    return np.stack(frames)


def _grow(frames: np.ndarray | None, like: np.ndarray, n: int) -> np.ndarray:
    out = np.empty((n, *like.shape), dtype=like.dtype)
    if frames is not None:
        out[:len(frames)] = frames
    return out


class _Video:
    """All frames of one mp4 (uint8 (N, H, W, 3)) and their presentation times in seconds."""

    def __init__(self, path: Path):
        try:
            import av
        except ImportError as e:
            raise ImportError(f"LeRobot videos need PyAV ({e}); install it with: pip install 'shortcut-policy[data]'") from e
        if not path.is_file():
            raise DatasetError(f"missing video file {path}")
        self.path = path
        frames, times = None, []
        try:
            with av.open(str(path)) as container:
                stream = container.streams.video[0]
                stream.thread_type = "AUTO"  # frame-parallel decoding
                tb = stream.time_base
                for i, frame in enumerate(container.decode(stream)):
                    rgb = frame.to_ndarray(format="rgb24")  # (H, W, 3) uint8
                    if frames is None or i == len(frames):  # preallocate from the header's count, grow if it lied
                        frames = _grow(frames, rgb, max(int(stream.frames or 0), 2 * i, 16))
                    frames[i] = rgb
                    times.append(float(frame.pts * tb) if frame.pts is not None else np.nan)
        except av.error.FFmpegError as e:
            raise DatasetError(f"cannot decode {path}: {e}") from e
        if not times:
            raise DatasetError(f"{path} holds no video frames")
        self.frames = frames[:len(times)]
        self.times = np.asarray(times)

    def at(self, timestamps: np.ndarray, where: str) -> np.ndarray:
        """Frames whose times match ``timestamps`` (s) within TOLERANCE_S."""
        idx = np.clip(np.searchsorted(self.times, timestamps - TOLERANCE_S), 0, len(self.times) - 1)
        err = np.abs(self.times[idx] - timestamps)
        bad = np.flatnonzero(err > TOLERANCE_S)
        if len(bad):
            t = float(timestamps[bad[0]])
            if t > self.times[-1] + TOLERANCE_S:
                raise DatasetError(f"{self.path}: {where} needs a frame at {t:.4f} s but the video has {len(self.times)} "
                                   f"frames ending at {self.times[-1]:.4f} s (fewer frames than the table says)")
            raise DatasetError(f"{self.path}: {where} has no frame within {TOLERANCE_S} s of {t:.4f} s "
                               f"(nearest {self.times[idx[bad[0]]]:.4f} s)")
        return self.frames[idx]


def import_lerobot(src: str | os.PathLike, out: str | os.PathLike | None = None, keys: Sequence[str] | None = None,
                   overwrite: bool = False, progress: bool = True) -> ReplayBuffer:
    """Read a LeRobot v3.0 / v2.1 dataset folder into a :class:`ReplayBuffer` (written to ``out``).

    ``keys``: features to import (default: every feature but the row bookkeeping).
    """
    root = Path(src)
    info = read_info(root)
    features = info["features"]
    wanted = list(keys) if keys is not None else [k for k in features if k not in BOOKKEEPING]
    unknown = [k for k in wanted if k not in features]
    if unknown:
        raise DatasetError(f"{root}: no feature {unknown[0]!r}; features: {sorted(features)}")
    episodes = _episodes_v3(root, info) if info["codebase_version"] == "v3.0" else _episodes_v2(root, info)
    fps = float(info["fps"])
    videos: dict[Path, _Video] = {}
    loaded = []
    it = episodes
    if progress:
        from tqdm import tqdm
        it = tqdm(episodes, desc=f"import {root.name}", unit="episode")
    for ep in it:
        where = f"episode {ep['episode_index']}"
        rows = ep["rows"]()
        n = rows.num_rows
        if n != ep["length"]:
            raise DatasetError(f"{ep['data_file']}: {where} has {n} rows, the episodes table says {ep['length']}")
        ts = _column(rows, "timestamp", [1], f"{ep['data_file']} ({where})").astype(np.float64)
        out_ep: dict[str, np.ndarray] = {}
        for key in wanted:
            feat = features[key]
            dtype = feat.get("dtype")
            if dtype == "video":
                vpath = ep["video"](key)
                if vpath not in videos:
                    videos.clear()  # one file at a time: episodes come in file order
                    videos[vpath] = _Video(vpath)
                out_ep[key] = videos[vpath].at(ep["video_from"](key) + ts, f"{where} ({key})")
            elif dtype == "image":
                out_ep[key] = _decode_png_column(rows, key, f"{ep['data_file']} ({where})")
            else:
                arr = _column(rows, key, feat.get("shape", [1]), f"{ep['data_file']} ({where})")
                if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
                    t = int(np.flatnonzero(~np.isfinite(arr.reshape(n, -1)).all(1))[0])
                    raise DatasetError(f"{ep['data_file']}: {where}, {key!r} holds NaN or inf (first at frame {t})")
                out_ep[key] = arr
        loaded.append(out_ep)
    buf = ReplayBuffer.from_episodes(loaded)
    buf.attrs = {
        "source": {"format": "lerobot", "codebase_version": info["codebase_version"], "path": str(root)},
        "fps": fps, "robot_type": info.get("robot_type"), "tasks": _tasks(root, info),
        "features": {k: features[k] for k in wanted},
        "episode_indices": [int(ep["episode_index"]) for ep in episodes],
    }
    if out is not None:
        buf.save(out, overwrite=overwrite)
    return buf


# ---------------------------------------------------------------------------------------------- v3.0
def _episodes_v3(root: Path, info: dict[str, Any]) -> list[dict[str, Any]]:
    pq = _pq()
    files = sorted((root / "meta" / "episodes").glob("chunk-*/file-*.parquet"))
    if not files:
        raise DatasetError(f"{root}: no meta/episodes/chunk-*/file-*.parquet (a v3.0 dataset lists its episodes there)")
    table = pq.read_table(files[0]) if len(files) == 1 else _concat([pq.read_table(f) for f in files])
    cols = [c for c in table.column_names if not c.startswith("stats/")]
    meta = table.select(cols).to_pylist()
    meta.sort(key=lambda r: r["episode_index"])
    need = ("episode_index", "length", "dataset_from_index", "dataset_to_index", "data/chunk_index", "data/file_index")
    for r in meta:
        missing = [k for k in need if k not in r]
        if missing:
            raise DatasetError(f"{files[0]}: the episodes table lacks {missing}")
        if r["dataset_to_index"] - r["dataset_from_index"] != r["length"]:
            raise DatasetError(f"{files[0]}: episode {r['episode_index']} spans rows {r['dataset_from_index']}.."
                               f"{r['dataset_to_index']} but its length is {r['length']}")
    cache: dict[Path, Any] = {}

    def data_rows(r):
        path = root / info["data_path"].format(chunk_index=r["data/chunk_index"], file_index=r["data/file_index"])
        if path not in cache:
            if not path.is_file():
                raise DatasetError(f"{root}: episode {r['episode_index']} lives in {path}, which is missing")
            cache.clear()
            t = pq.read_table(path)
            cache[path] = (t, _column(t, "index", [1], str(path)))
        t, index = cache[path]
        sel = np.flatnonzero((index >= r["dataset_from_index"]) & (index < r["dataset_to_index"]))
        rows = t.take(sel)
        order = np.argsort(_column(rows, "index", [1], str(path)), kind="stable")
        return rows.take(order)

    out = []
    for r in meta:
        data_file = root / info["data_path"].format(chunk_index=r["data/chunk_index"], file_index=r["data/file_index"])

        def video(key, r=r):
            return root / info["video_path"].format(video_key=key, chunk_index=r[f"videos/{key}/chunk_index"],
                                                    file_index=r[f"videos/{key}/file_index"])

        def video_from(key, r=r):
            col = f"videos/{key}/from_timestamp"
            if col not in r:
                raise DatasetError(f"{root}: the episodes table has no {col!r}")
            return float(r[col])

        out.append({"episode_index": r["episode_index"], "length": r["length"], "data_file": data_file,
                    "rows": (lambda r=r: data_rows(r)), "video": video, "video_from": video_from})
    return out


def _concat(tables):
    import pyarrow as pa

    return pa.concat_tables(tables)


# ---------------------------------------------------------------------------------------------- v2.x
def _episodes_v2(root: Path, info: dict[str, Any]) -> list[dict[str, Any]]:
    pq = _pq()
    path = root / "meta" / "episodes.jsonl"
    if not path.is_file():
        raise DatasetError(f"{root}: no meta/episodes.jsonl (a v2.1 dataset lists its episodes there)")
    meta = []
    for i, line in enumerate(path.read_text().splitlines()):
        if line.strip():
            try:
                meta.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise DatasetError(f"{path}: line {i + 1} is not valid JSON ({e})") from e
    meta.sort(key=lambda r: r["episode_index"])
    chunks = int(info.get("chunks_size", 1000))
    out = []
    for r in meta:
        e = int(r["episode_index"])
        data_file = root / info["data_path"].format(episode_chunk=e // chunks, episode_index=e)

        def rows(data_file=data_file, e=e):
            if not data_file.is_file():
                raise DatasetError(f"{root}: episode {e} should be in {data_file}, which is missing")
            t = pq.read_table(data_file)
            order = np.argsort(_column(t, "frame_index", [1], str(data_file)), kind="stable")
            return t.take(order)

        def video(key, e=e):
            return root / info["video_path"].format(episode_chunk=e // chunks, video_key=key, episode_index=e)

        out.append({"episode_index": e, "length": int(r["length"]), "data_file": data_file, "rows": rows,
                    "video": video, "video_from": lambda key: 0.0})
    return out


def _tasks(root: Path, info: dict[str, Any]) -> list[str]:
    """Task strings by task_index."""
    if info["codebase_version"] == "v3.0":
        path = root / "meta" / "tasks.parquet"
        if not path.is_file():
            return []
        rows = _pq().read_table(path).to_pylist()
        by_index = {}
        for r in rows:
            text = r.get("task", r.get("__index_level_0__"))
            by_index[int(r["task_index"])] = text
    else:
        path = root / "meta" / "tasks.jsonl"
        if not path.is_file():
            return []
        by_index = {int(r["task_index"]): r["task"] for r in map(json.loads, path.read_text().splitlines()) if r}
    return [by_index[i] for i in sorted(by_index)]
