"""Measurements of the data path (docs/data.md, docs/images.md): import speed, image chunking in the zarr
store, data-loader throughput against training throughput."""
from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import default_collate

from .replay_buffer import ReplayBuffer
from ..utils import save_figure


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def chunk_sweep(images: np.ndarray, episode_ends: np.ndarray, chunk_frames: Sequence[int], codecs: Sequence[str],
                window: int = 2, n_reads: int = 300, seed: int = 0) -> dict[str, dict[str, float]]:
    """For each Blosc codec and chunk length (frames per chunk of a (T, H, W, 3) uint8 array): store size, write time,
    time to load the whole array, and the median time to read one random ``window`` of frames
    straight from the store (what a loader that does not hold the data in memory pays per sample)."""
    import zarr

    rng = np.random.default_rng(seed)
    starts = rng.integers(0, len(images) - window, size=n_reads)
    out = {}
    tmp = Path(tempfile.mkdtemp(prefix="chunks_"))
    try:
        for codec in codecs:
            for k in chunk_frames:
                path = tmp / f"{codec}{k}.zarr"
                buf = ReplayBuffer({"img": images}, episode_ends)
                _, write_s = timed(lambda: buf.save(path, chunk_frames=k, image_codec=codec))
                size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
                _, load_s = timed(lambda: ReplayBuffer.from_path(path, keys=["img"]))
                arr = zarr.open_group(str(path), mode="r")["data"]["img"]
                reads = []
                for s in starts:
                    t0 = time.perf_counter()
                    arr[int(s):int(s) + window]
                    reads.append(time.perf_counter() - t0)
                out[f"{codec}/{k}"] = {"store_mb": size / 1e6, "write_s": write_s, "load_all_s": load_s,
                                       "random_window_ms_p50": float(np.median(reads) * 1e3),
                                       "random_window_ms_p90": float(np.percentile(reads, 90) * 1e3)}
                shutil.rmtree(path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    out["raw_mb"] = {"store_mb": images.nbytes / 1e6}
    return out


def loader_samples_per_s(dataset, batch_size: int, n_batches: int = 30, num_workers: int = 0, seed: int = 0) -> float:
    """Samples/s of the training loop's own loader (``train.loop.batch_loader``: the dataset's batch
    gather, ``num_workers`` worker processes), after a warm-up batch (which starts the workers)."""
    from ..train.loop import TrainConfig, batch_loader

    cfg = TrainConfig(steps=n_batches + 1, batch_size=batch_size, num_workers=num_workers, seed=seed)
    it = iter(batch_loader(dataset, cfg, 0, torch.device("cpu")))
    next(it)  # warm-up
    t0 = time.perf_counter()
    n = sum(1 for _ in it)
    return n * batch_size / (time.perf_counter() - t0)


def _batch(dataset, idx):
    return dataset.get_batch(idx) if hasattr(dataset, "get_batch") else default_collate([dataset[int(i)] for i in idx])


def train_samples_per_s(policy, dataset, batch_size: int, n_steps: int = 20, seed: int = 0) -> float:
    """Samples/s of the optimizer step alone (loss, backward, AdamW) on batches loaded beforehand."""
    from ..train.loop import make_optimizer

    g = torch.Generator().manual_seed(seed)
    batches = [_batch(dataset, torch.randint(len(dataset), (batch_size,), generator=g).tolist()) for _ in range(3)]
    opt = make_optimizer(policy, policy.device, lr=1e-4)
    policy.train()

    def step(b):
        loss, _ = policy.compute_loss(b)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step(batches[0])  # warm-up
    t0 = time.perf_counter()
    for i in range(n_steps):
        step(batches[i % len(batches)])
    return n_steps * batch_size / (time.perf_counter() - t0)


def throughput(datasets: dict[str, Any], batch_size: int = 64, workers: Sequence[int] = (0, 2),
               train_steps: dict[str, int] | None = None) -> dict[str, Any]:
    """Per dataset: loader samples/s (each worker count) against training samples/s of a policy
    (unet1d_small, the shortcut objective the published figures were measured with; the ResNet-18
    encoder for cameras) on it, the step time, and which one bounds."""
    from ..policy import PolicyConfig, ShortcutPolicy

    out: dict[str, Any] = {"batch_size": batch_size, "torch_threads": torch.get_num_threads()}
    for name, ds in datasets.items():
        policy = ShortcutPolicy(PolicyConfig(shape_meta=ds.shape_meta.to_dict(), net="unet1d_small",
                                             objective={"kind": "shortcut"}))
        policy.normalizer.load_state_dict(ds.get_normalizer().state_dict())
        loader = {str(w): loader_samples_per_s(ds, batch_size, num_workers=w) for w in workers}
        train = train_samples_per_s(policy, ds, batch_size, n_steps=(train_steps or {}).get(name, 20))
        best = max(loader.values())
        out[name] = {"shape_meta": ds.shape_meta.describe(), "loader_samples_per_s": loader,
                     "train_samples_per_s": train, "train_step_ms": 1e3 * batch_size / train,
                     "parameters_m": sum(p.numel() for p in policy.parameters()) / 1e6,
                     "bound_by": "network" if train < best else "loader", "loader_over_train": best / train}
    return out


def loss_curves_match(runs: dict[str, Path]) -> dict[str, Any]:
    """Train/val loss curves of runs (their metrics.jsonl) side by side and their largest difference."""
    import json

    curves = {}
    for name, out in runs.items():
        rows = [json.loads(x) for x in (Path(out) / "metrics.jsonl").read_text().splitlines()]
        curves[name] = {"step": [r["step"] for r in rows if "train/loss" in r],
                        "train_loss": [r["train/loss"] for r in rows if "train/loss" in r],
                        "val_loss": [r.get("val/loss") for r in rows if "train/loss" in r]}
    a, b = list(curves.values())[:2]
    diff = max(abs(x - y) for x, y in zip(a["train_loss"], b["train_loss"]))
    return {"curves": curves, "max_abs_train_loss_difference": diff, "identical": diff == 0.0}


def plot_loss_curves(result: dict[str, Any], path: str, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for i, (name, c) in enumerate(result["curves"].items()):
        ax.plot(c["step"], c["train_loss"], ["-", "--"][i % 2], label=f"{name} (train)", lw=2 - i)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    import textwrap

    ax.set_title("\n".join(textwrap.wrap(title, 90)), fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def run_data_benchmarks(lerobot_pusht: Path, dp_zarr: Path, lowdim_zarr: Path, work: Path, train_steps: int = 500,
                        batch_size: int = 64) -> dict[str, Any]:
    """Every figure of docs/data.md in one process (see scripts/bench_data.py)."""
    import zarr

    from ..policy import PolicyConfig, ShortcutPolicy
    from ..task import TaskConfig, make_dataset
    from ..train.run import run_training
    from .dataset import SequenceDataset
    from .lerobot import import_lerobot
    from .robomimic import export_robomimic, import_robomimic

    out: dict[str, Any] = {}
    # 1. LeRobot PushT (written by lerobot) -> zarr, compared with the DP zarr it was made from
    buf, s = timed(lambda: import_lerobot(lerobot_pusht, progress=False))
    _, save_s = timed(lambda: buf.save(work / "pusht_lerobot.zarr", overwrite=True))
    z = zarr.open_group(str(dp_zarr), mode="r")
    img = z["data/img"][...]
    out["lerobot_import"] = {
        "frames": buf.n_steps, "episodes": buf.n_episodes, "import_s": s, "frames_per_s": buf.n_steps / s,
        "save_s": save_s, "states_equal": bool(np.array_equal(buf["observation.state"], z["data/state"][:, :2])),
        "actions_equal": bool(np.array_equal(buf["action"], z["data/action"][...])),
        "image_mean_abs_error": float(np.abs(buf["observation.image"].astype(np.float32) - img).mean()),
        "image_max_abs_error": float(np.abs(buf["observation.image"].astype(np.float32) - img).max())}
    del img
    # 2. a robomimic file with images: the same demonstrations exported (agent_pos + 96x96 image)
    rm = ReplayBuffer({"agent_pos": buf["observation.state"], "image": buf["observation.image"],
                       "actions": buf["action"]}, buf.episode_ends, attrs={"obs_keys": ["agent_pos", "image"]})
    _, export_s = timed(lambda: export_robomimic(rm, work / "pusht.hdf5", overwrite=True))
    back, import_s = timed(lambda: import_robomimic(work / "pusht.hdf5", progress=False))
    out["robomimic_import"] = {"frames": back.n_steps, "export_s": export_s, "import_s": import_s,
                               "frames_per_s": back.n_steps / import_s,
                               "file_mb": (work / "pusht.hdf5").stat().st_size / 1e6,
                               "round_trip_exact": bool(all(np.array_equal(back[k], rm[k]) for k in rm.keys()))}
    # 3. image chunking in the store
    out["image_chunks"] = chunk_sweep(buf["observation.image"], buf.episode_ends, [1, 4, 16, 64, 256], ["lz4", "zstd"])
    # 4. loader vs training throughput, low-dim PushT and 96x96 images
    lowdim = make_dataset(TaskConfig(name="pusht_lowdim", dataset={
        "path": str(lowdim_zarr), "obs": {"keypoint": "keypoint", "agent_pos": {"key": "state", "index": [0, 2]}},
        "action": "action"}))
    images = SequenceDataset(work / "pusht_lerobot.zarr", ["observation.image", "observation.state"], "action")
    policy = ShortcutPolicy(PolicyConfig(shape_meta=lowdim.shape_meta.to_dict(), net="unet1d_small",
                                         objective={"kind": "shortcut"}))
    policy.normalizer.load_state_dict(lowdim.get_normalizer().state_dict())
    out["throughput"] = {
        "batch_size": batch_size, "torch_threads": torch.get_num_threads(),
        "lowdim_loader_samples_per_s": loader_samples_per_s(lowdim, batch_size),
        "lowdim_train_samples_per_s": train_samples_per_s(policy, lowdim, batch_size),
        "image_loader_samples_per_s": loader_samples_per_s(images, batch_size)}
    # 5. the same data from two sources trains the same: agent position only, from the zarr and the import
    base = {"policy": {"net": "unet1d_small", "net_kwargs": {}, "obs_encoder": {}},
            "objective": {"kind": "shortcut", "max_inference_steps": 16, "consistency_weight": 4.0},
            "train": {"steps": train_steps, "batch_size": batch_size, "lr": 1e-3, "warmup_steps": 100, "log_every": 10,
                      "val_every": 100, "ckpt_every": train_steps, "progress": False, "seed": 0},
            "eval": {"episodes": 0}, "resume": False}
    sources = {"zarr": {"path": str(lowdim_zarr), "obs": {"agent_pos": {"key": "state", "index": [0, 2]}},
                        "action": "action"},
               "lerobot": {"path": str(work / "pusht_lerobot.zarr"), "obs": {"agent_pos": "observation.state"},
                           "action": "action"}}
    runs = {}
    for name, ds in sources.items():
        run = {**base, "task": {"name": f"pusht_agentpos_{name}", "dataset": ds, "env": None},
               "out_dir": str(work / f"run_{name}")}
        runs[name] = run_training(run)[0]
    out["same_data"] = loss_curves_match(runs)
    out["same_data"]["train_steps"] = train_steps
    return out


BENCH_DOC = """The data-path figures of docs/data.md in one run: LeRobot and robomimic import speed, the LeRobot
PushT import against the zarr it was made from, image chunking in the store, loader vs training
throughput, and the same loss curve from the zarr and from the LeRobot import.

    python scripts/bench_data.py --shared ../shared/data --out docs/results/pusht_lowdim/data/data.json
"""


def main(argv: list[str] | None = None) -> None:
    from .. import cli
    from ..results import result_doc, write_result

    ap = cli.parser(BENCH_DOC)
    ap.add_argument("--shared", type=Path, required=True, help="folder holding pusht/ and lerobot_pusht_v3/")
    ap.add_argument("--lowdim", type=Path, default=Path("datasets/pusht_lowdim.zarr"))
    ap.add_argument("--train-steps", type=int, default=500)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench_data_") as work:
        res = run_data_benchmarks(args.shared / "lerobot_pusht_v3", args.shared / "pusht" / "pusht_cchi_v7_replay.zarr",
                                  args.lowdim, Path(work), train_steps=args.train_steps)
    doc = result_doc("data", "pusht", "data", {}, **res)
    write_result(args.out, doc)
    plot_loss_curves(res["same_data"], str(args.out.with_suffix(".png")),
                     f"PushT, agent position only: the zarr vs the LeRobot import ({doc['date']}, {doc['machine']})")
    for key in ("lerobot_import", "robomimic_import", "throughput"):
        print(key, {k: round(v, 3) if isinstance(v, float) else v for k, v in res[key].items()})
    print("same data, max train-loss difference:", res["same_data"]["max_abs_train_loss_difference"])


THROUGHPUT_DOC = """Loader against training throughput (docs/images.md): the training loop's loader (batch gather,
0 and 2 worker processes) and the optimizer step of a default policy, on PushT low-dim (the shipped data)
and on a PushT image store (96x96 camera + agent position), batch 64, this machine's threads.

    python scripts/bench_throughput.py --image-data ../shared/data/pusht/pusht_cchi_v7_replay.zarr \\
        --out docs/results/pusht_image/data/throughput.json
"""


def throughput_main(argv: list[str] | None = None) -> None:
    from .. import cli
    from ..results import result_doc, write_result
    from .dataset import SequenceDataset

    ap = cli.parser(THROUGHPUT_DOC, "bench_throughput")
    ap.add_argument("--image-data", type=Path, required=True, help="a PushT image store (data/img, data/state)")
    ap.add_argument("--lowdim", default="pkg://shortcut_policy.datasets/pusht_lowdim.zarr")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    agent = {"key": "state", "index": [0, 2]}
    datasets = {"lowdim": SequenceDataset(args.lowdim, {"keypoint": "keypoint", "agent_pos": agent}),
                "image": SequenceDataset(args.image_data, {"image": "img", "agent_pos": agent})}
    res = throughput(datasets, args.batch_size, train_steps={"lowdim": 20, "image": 6})
    for name in datasets:
        r = res[name]
        print(f"{name}: loader {', '.join(f'{v:,.0f}' for v in r['loader_samples_per_s'].values())} samples/s "
              f"(workers {', '.join(r['loader_samples_per_s'])}), training {r['train_samples_per_s']:,.0f} samples/s "
              f"({r['train_step_ms']:.0f} ms a step): bound by the {r['bound_by']}")
    if args.out:
        write_result(args.out, result_doc("data", "pusht_image", "throughput", {}, **res,
                                          about="loader vs training samples/s, low-dim and 96x96 image PushT"))
