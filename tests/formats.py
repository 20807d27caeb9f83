"""Writers of small files in the published formats, independent of the package's importers and exporter:
robomimic HDF5 (as robomimic's dataset_states_to_obs.py writes it), LeRobot v3.0 and v2.1 (as lerobot's
dataset writer lays them out: meta/info.json, parquet tables, AV1 mp4 videos) and Diffusion Policy zarr.
Tests import through the package what these wrote, so a reader that merely mirrors our own writer
cannot pass."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np


# ---------------------------------------------------------------------------------------------- robomimic
def make_demos(n_demos: int = 3, lengths=(7, 5, 9, 6, 8, 5, 7, 6, 5, 8, 6), image: bool = False, seed: int = 0):
    """Synthetic demos with robomimic's keys and dtypes (float64 low-dim, uint8 images, int64 dones)."""
    rng = np.random.default_rng(seed)
    demos = []
    for i in range(n_demos):
        n = lengths[i % len(lengths)]
        obs = {"robot0_eef_pos": rng.normal(size=(n + 1, 3)), "object": rng.normal(size=(n + 1, 10))}
        if image:
            obs["agentview_image"] = rng.integers(0, 256, size=(n + 1, 12, 12, 3), dtype=np.uint8)
        demos.append({
            "obs": {k: v[:-1] for k, v in obs.items()}, "next_obs": {k: v[1:] for k, v in obs.items()},
            "actions": rng.uniform(-1, 1, size=(n, 7)), "rewards": (np.arange(n) == n - 1).astype(np.float64),
            "dones": (np.arange(n) == n - 1).astype(np.int64), "states": rng.normal(size=(n, 32)),
            "model_file": f"<mujoco model='demo{i}'/>"})
    return demos


def write_robomimic(path: Path, demos, env_args: dict | None = None, masks: dict | None = None,
                    names: list[str] | None = None) -> Path:
    import h5py

    names = names or [f"demo_{i}" for i in range(len(demos))]
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        for name, d in zip(names, demos):
            g = data.create_group(name)
            g.attrs["num_samples"] = len(d["actions"])
            g.attrs["model_file"] = d["model_file"]
            for key in ("actions", "rewards", "dones", "states"):
                if key in d:
                    g.create_dataset(key, data=d[key])
            for grp in ("obs", "next_obs"):
                if grp in d:
                    sub = g.create_group(grp)
                    for k, v in d[grp].items():
                        sub.create_dataset(k, data=v)
        data.attrs["total"] = sum(len(d["actions"]) for d in demos)
        data.attrs["env_args"] = json.dumps(env_args or LIFT_ENV_ARGS, indent=4)
        for fname, members in (masks or {}).items():
            f.create_dataset(f"mask/{fname}", data=np.array(members, dtype="S"))
    return path


LIFT_ENV_ARGS = {
    "env_name": "Lift", "env_version": "1.4.1", "type": 1,
    "env_kwargs": {"has_renderer": False, "has_offscreen_renderer": False, "ignore_done": True,
                   "use_object_obs": True, "use_camera_obs": False, "control_freq": 20, "robots": ["Panda"],
                   "controller_configs": {"type": "OSC_POSE", "input_max": 1, "input_min": -1,
                                          "output_max": [0.05, 0.05, 0.05, 0.5, 0.5, 0.5],
                                          "output_min": [-0.05, -0.05, -0.05, -0.5, -0.5, -0.5], "kp": 150,
                                          "damping": 1, "impedance_mode": "fixed", "kp_limits": [0, 300],
                                          "damping_limits": [0, 10], "position_limits": None,
                                          "orientation_limits": None, "uncouple_pos_ori": True,
                                          "control_delta": True, "interpolation": None, "ramp_ratio": 0.2},
                   "reward_shaping": False}}


# ---------------------------------------------------------------------------------------------- LeRobot
def make_episodes(lengths=(6, 4, 5), size: int = 16, seed: int = 0):
    """state (2,), action (2,) float32 and a camera (size, size, 3) uint8 per frame; frames are flat
    colours 12 apart from frame to frame (and far apart between episodes), which AV1 keeps within a
    few levels, so a frame put at the wrong row is seen."""
    rng = np.random.default_rng(seed)
    eps = []
    for e, n in enumerate(lengths):
        base = np.array([20 + 37 * e, 200 - 29 * e, 60 + 11 * e]) % 160
        frames = np.stack([np.broadcast_to((base + 12 * t).astype(np.uint8), (size, size, 3)) for t in range(n)])
        eps.append({"observation.state": rng.normal(size=(n, 2)).astype(np.float32),
                    "action": rng.normal(size=(n, 2)).astype(np.float32), "frames": frames.copy()})
    return eps


def _features(size: int, video: bool = True) -> dict:
    feats = {
        "observation.state": {"dtype": "float32", "shape": [2], "names": ["x", "y"]},
        "action": {"dtype": "float32", "shape": [2], "names": ["x", "y"]},
        "timestamp": {"dtype": "float32", "shape": [1], "names": None},
        "frame_index": {"dtype": "int64", "shape": [1], "names": None},
        "episode_index": {"dtype": "int64", "shape": [1], "names": None},
        "index": {"dtype": "int64", "shape": [1], "names": None},
        "task_index": {"dtype": "int64", "shape": [1], "names": None},
    }
    if video:
        feats["observation.images.top"] = {
            "dtype": "video", "shape": [size, size, 3], "names": ["height", "width", "channels"],
            "info": {"video.height": size, "video.width": size, "video.codec": "av1", "video.pix_fmt": "yuv420p",
                     "video.is_depth_map": False, "video.fps": 10, "video.channels": 3, "has_audio": False}}
    return feats


def _table(rows: dict):
    import pyarrow as pa

    cols = {}
    for k, v in rows.items():
        v = np.asarray(v)
        if v.ndim == 2:  # a vector feature: a fixed-size list column, as the datasets library writes it
            cols[k] = pa.FixedSizeListArray.from_arrays(pa.array(v.reshape(-1)), v.shape[1])
        else:
            cols[k] = pa.array(v)
    return pa.table(cols)


def encode_av1(path: Path, frames: np.ndarray, fps: int = 10) -> None:
    """AV1 (libsvtav1, yuv420p), LeRobot's default encoding."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as c:
        s = c.add_stream("libsvtav1", rate=fps)
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for fr in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(fr), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def _rows(eps, start_index: int = 0, fps: int = 10):
    index = start_index
    for e, ep in enumerate(eps):
        n = len(ep["action"])
        yield e, {"observation.state": ep["observation.state"], "action": ep["action"],
                  "timestamp": (np.arange(n) / fps).astype(np.float32), "frame_index": np.arange(n),
                  "episode_index": np.full(n, e), "index": np.arange(index, index + n), "task_index": np.zeros(n, int)}
        index += n


def write_lerobot_v3(root: Path, eps, fps: int = 10, video: bool = True, codebase_version: str = "v3.0") -> Path:
    """All episodes in one data parquet and one mp4 per camera, as lerobot 0.4's writer does."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    size = eps[0]["frames"].shape[1]
    total = sum(len(e["action"]) for e in eps)
    info = {"codebase_version": codebase_version, "robot_type": None, "total_episodes": len(eps),
            "total_frames": total, "total_tasks": 1, "chunks_size": 1000, "data_files_size_in_mb": 100,
            "video_files_size_in_mb": 200, "fps": fps, "splits": {"train": f"0:{len(eps)}"},
            "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
            "video_path": "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4" if video else None,
            "features": _features(size, video)}
    (root / "meta" / "episodes" / "chunk-000").mkdir(parents=True)
    (root / "data" / "chunk-000").mkdir(parents=True)
    (root / "meta" / "info.json").write_text(json.dumps(info, indent=4))
    rows = [r for _, r in _rows(eps, fps=fps)]
    data = {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}
    pq.write_table(_table(data), root / "data" / "chunk-000" / "file-000.parquet")
    ep_rows, start, t0 = [], 0, 0.0
    for e, ep in enumerate(eps):
        n = len(ep["action"])
        row = {"episode_index": e, "tasks": ["push the thing"], "length": n, "data/chunk_index": 0,
               "data/file_index": 0, "dataset_from_index": start, "dataset_to_index": start + n,
               "meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0}
        if video:
            row.update({"videos/observation.images.top/chunk_index": 0, "videos/observation.images.top/file_index": 0,
                        "videos/observation.images.top/from_timestamp": t0,
                        "videos/observation.images.top/to_timestamp": t0 + n / fps})
        ep_rows.append(row)
        start, t0 = start + n, t0 + n / fps
    pq.write_table(pa.Table.from_pylist(ep_rows), root / "meta" / "episodes" / "chunk-000" / "file-000.parquet")
    pq.write_table(pa.table({"task_index": [0], "__index_level_0__": ["push the thing"]}), root / "meta" / "tasks.parquet")
    if video:
        encode_av1(root / "videos" / "observation.images.top" / "chunk-000" / "file-000.mp4",
                   np.concatenate([e["frames"] for e in eps]), fps)
    return root


def write_lerobot_v21(root: Path, eps, fps: int = 10, chunks_size: int = 2) -> Path:
    """One parquet and one mp4 per episode, under chunk-{episode_index // chunks_size}."""
    import pyarrow.parquet as pq

    size = eps[0]["frames"].shape[1]
    info = {"codebase_version": "v2.1", "robot_type": None, "total_episodes": len(eps),
            "total_frames": sum(len(e["action"]) for e in eps), "total_tasks": 1, "total_videos": len(eps),
            "total_chunks": (len(eps) - 1) // chunks_size + 1, "chunks_size": chunks_size, "fps": fps,
            "splits": {"train": f"0:{len(eps)}"},
            "data_path": "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet",
            "video_path": "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4",
            "features": _features(size)}
    (root / "meta").mkdir(parents=True)
    (root / "meta" / "info.json").write_text(json.dumps(info, indent=4))
    lines = []
    for e, rows in _rows(eps, fps=fps):
        chunk = e // chunks_size
        path = root / f"data/chunk-{chunk:03d}/episode_{e:06d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(_table(rows), path)
        encode_av1(root / f"videos/chunk-{chunk:03d}/observation.images.top/episode_{e:06d}.mp4", eps[e]["frames"], fps)
        lines.append(json.dumps({"episode_index": e, "tasks": ["push the thing"], "length": len(eps[e]["action"])}))
    (root / "meta" / "episodes.jsonl").write_text("\n".join(lines) + "\n")
    (root / "meta" / "tasks.jsonl").write_text(json.dumps({"task_index": 0, "task": "push the thing"}) + "\n")
    return root


# ---------------------------------------------------------------------------------------------- DP zarr
def write_dp_zarr(path: Path, lengths=(5, 3, 4), seed: int = 0) -> dict:
    """Diffusion Policy's PushT layout, images as float32 0..255 like pusht_cchi_v7_replay.zarr."""
    import zarr

    rng = np.random.default_rng(seed)
    T = sum(lengths)
    arrays = {"img": rng.integers(0, 256, size=(T, 8, 8, 3)).astype(np.float32),
              "state": rng.normal(size=(T, 5)).astype(np.float32),
              "keypoint": rng.normal(size=(T, 9, 2)).astype(np.float32),
              "action": rng.normal(size=(T, 2)).astype(np.float32),
              "n_contacts": rng.integers(0, 3, size=(T, 1)).astype(np.float32)}
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    for k, v in arrays.items():
        root.create_array(f"data/{k}", data=v)
    root.create_array("meta/episode_ends", data=np.cumsum(lengths).astype(np.int64))
    return arrays
