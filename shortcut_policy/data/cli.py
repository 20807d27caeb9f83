"""``shortcut-import``: demonstrations from robomimic HDF5, LeRobot or Diffusion Policy zarr into a zarr
replay buffer, and a replay buffer back to robomimic HDF5.

    shortcut-import robomimic --src lift.hdf5 --out data/lift.zarr --task-config configs/task/lift.yaml
    shortcut-import lerobot --src ~/lerobot/pusht --out data/pusht_lerobot.zarr
    shortcut-import zarr --src pusht_cchi_v7_replay.zarr --out data/pusht.zarr
    shortcut-import export-robomimic --src data/lift.zarr --out lift_roundtrip.hdf5

Prints what was imported (episodes, steps, keys with shapes and dtypes, speed). ``--task-config``
also writes the task yaml that trains on the import (one file, no code): its observation keys are
the low-dim and camera keys imported, its action the action key; tasks without a simulator are
evaluated offline.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import yaml

from .replay_buffer import ReplayBuffer


def _summary(buf: ReplayBuffer, seconds: float) -> str:
    lines = [f"{buf.n_episodes} episodes, {buf.n_steps} steps in {seconds:.1f} s ({buf.n_steps / seconds:.0f} frames/s)"]
    for k, v in buf.data.items():
        lines.append(f"  data/{k}: {v.shape} {v.dtype}")
    return "\n".join(lines)


def simulator(buf: ReplayBuffer, obs: list[str]) -> dict | None:
    """The closed-loop evaluation block of a task yaml when the data names a simulator this package
    runs (a robosuite task in robomimic's ``env_args``), else None (offline evaluation)."""
    from ..envs.robosuite import TASKS

    env_args = buf.attrs.get("env_args")
    try:
        args = json.loads(env_args) if isinstance(env_args, str) else env_args
    except json.JSONDecodeError:
        return None
    if not isinstance(args, dict) or args.get("type", 1) != 1 or args.get("env_name") not in TASKS:
        return None
    cams = [k[:-len("_image")] for k in obs if k.endswith("_image")]
    return {"runner": "robosuite", "env_args": args, "obs_keys": [k for k in obs if not k.endswith("_image")],
            "cameras": cams, "max_episode_steps": 400, "seed_start": 100000, "n_episodes": 50}


def task_config(name: str, store: Path, buf: ReplayBuffer, action: str, obs: list[str]) -> dict:
    """A task yaml for ``store``: the observation keys, the action, filters as splits when robomimic has
    them, and the simulator when the data names one this package runs."""
    filters = buf.attrs.get("filters") or {}
    dataset = {"path": str(store), "obs": obs, "action": action, "val_ratio": 0.02, "split_seed": 42,
               "max_train_episodes": None}
    if "train" in filters and "valid" in filters:
        dataset.update(episode_filter="train", val_filter="valid")
    return {"name": name, "dataset": dataset, "shape_meta": None, "horizon": 16, "n_obs_steps": 2,
            "n_action_steps": 8, "env": simulator(buf, obs)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="shortcut-import", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="format", required=True)
    for name, help_ in (("robomimic", "robomimic HDF5 -> zarr"), ("lerobot", "LeRobot v3.0 / v2.1 folder -> zarr"),
                        ("zarr", "Diffusion Policy zarr -> zarr (images to uint8)"),
                        ("export-robomimic", "zarr -> robomimic HDF5")):
        p = sub.add_parser(name, help=help_)
        p.add_argument("--src", required=True, type=Path)
        p.add_argument("--out", required=True, type=Path)
        p.add_argument("--overwrite", action="store_true")
        if name != "export-robomimic":
            p.add_argument("--keys", nargs="+", default=None,
                           help="observation keys (robomimic) or features (lerobot) or arrays (zarr) to import "
                                "(default: all)")
            p.add_argument("--task-config", type=Path, default=None, help="also write a task yaml for the import")
            p.add_argument("--task-name", default=None, help="name in the task yaml (default: the --out stem)")
        if name == "robomimic":
            p.add_argument("--filter", default=None, help="import only the demos of mask/<filter>")
        if name == "export-robomimic":
            p.add_argument("--keys", nargs="+", default=None, help="buffer keys written under obs/ (default: all)")
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    if args.format == "export-robomimic":
        from .robomimic import export_robomimic

        out = export_robomimic(args.src, args.out, obs_keys=args.keys, overwrite=args.overwrite)
        print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB) in {time.perf_counter() - t0:.1f} s")
        return 0
    if args.format == "robomimic":
        from .robomimic import import_robomimic

        buf = import_robomimic(args.src, args.out, obs_keys=args.keys, episode_filter=args.filter,
                               overwrite=args.overwrite)
        action, obs = "actions", list(buf.attrs["obs_keys"])
    elif args.format == "lerobot":
        from .lerobot import import_lerobot

        buf = import_lerobot(args.src, args.out, keys=args.keys, overwrite=args.overwrite)
        feats = buf.attrs["features"]
        action = "action" if "action" in feats else None
        obs = [k for k in feats if k.startswith("observation.")]
    else:
        from .diffusion_policy import import_dp_zarr

        buf = import_dp_zarr(args.src, args.out, keys=args.keys, overwrite=args.overwrite)
        action = "action" if "action" in buf else None
        obs = [k for k in buf.keys() if k != "action"]
    print(f"wrote {args.out}: " + _summary(buf, time.perf_counter() - t0))
    cameras = [k for k in obs if buf[k].dtype == "uint8" and buf[k].ndim == 4]
    if cameras:
        print(f"camera keys {cameras} go through the vision encoder (policy.obs_encoder options: docs/images.md)")
    if args.task_config is not None:
        if action is None:
            raise SystemExit(f"no 'action' key to train on in {args.out}; write the task yaml by hand "
                             "(dataset.action names the action key)")
        cfg = task_config(args.task_name or args.out.stem, args.out, buf, action, obs)
        args.task_config.parent.mkdir(parents=True, exist_ok=True)
        args.task_config.write_text(f"# written by shortcut-import {args.format} --src {args.src}\n"
                                    + yaml.safe_dump(cfg, sort_keys=False))
        print(f"wrote {args.task_config}: train with  python scripts/train.py task={args.task_config.stem}"
              if args.task_config.parent.name == "task" else f"wrote {args.task_config}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
