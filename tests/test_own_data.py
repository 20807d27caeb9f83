"""A user's own demonstrations, as README's "Train on your own data" runs them: import a robomimic file or a
LeRobot folder (the import writes the task yaml), train with that one yaml and no library edit, evaluate
offline (no simulator for these robots)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from shortcut_policy.data.cli import main as import_main
from shortcut_policy.policy import ShortcutPolicy
from shortcut_policy.train.run import run_training

from .formats import make_demos, make_episodes, write_lerobot_v3, write_robomimic

REPO = Path(__file__).resolve().parents[1]
TINY = ["policy=unet1d", "policy.net_kwargs.down_dims=[16,32]", "+policy.net_kwargs.emb_dim=16", "train.steps=4",
        "train.batch_size=8", "train.warmup_steps=1", "train.log_every=2", "train.progress=false",
        "task.horizon=8", "task.n_action_steps=4"]


def train_with_task_yaml(cfg_dir: Path, task: str, out_dir: Path) -> Path:
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=[f"hydra.searchpath=[file://{cfg_dir}]", f"task={task}",
                                          f"out_dir={out_dir}", *TINY])
    out, metrics = run_training(OmegaConf.to_container(cfg, resolve=True))
    assert metrics["train/loss"] > 0 and "val/loss" in metrics
    return out / "checkpoints" / "latest.pt"


def offline_eval(ckpt: Path, out: Path) -> dict:
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "eval.py"), "--checkpoint", str(ckpt),
                           "--num-inference-steps", "1", "2", "--episodes", "4", "--out", str(out), "--no-progress"],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(out.read_text())


def test_robomimic_file_to_trained_policy(tmp_path):
    pytest.importorskip("h5py")
    src = write_robomimic(tmp_path / "lift.hdf5", make_demos(12, lengths=(14, 11, 16)),
                          masks={"train": [f"demo_{i}" for i in range(10)], "valid": ["demo_10", "demo_11"]})
    cfg_dir = tmp_path / "configs"
    import_main(["robomimic", "--src", str(src), "--out", str(tmp_path / "lift.zarr"),
                 "--keys", "robot0_eef_pos", "object", "--task-config", str(cfg_dir / "task" / "lift.yaml")])
    task = yaml.safe_load((cfg_dir / "task" / "lift.yaml").read_text())
    assert task["dataset"]["obs"] == ["robot0_eef_pos", "object"] and task["dataset"]["action"] == "actions"
    assert task["dataset"]["episode_filter"] == "train" and task["dataset"]["val_filter"] == "valid"
    # robomimic's env_args names robosuite's Lift, which this package simulates: closed-loop evaluation
    assert task["env"]["runner"] == "robosuite" and task["env"]["env_args"]["env_name"] == "Lift"
    assert task["env"]["obs_keys"] == ["robot0_eef_pos", "object"]
    task["env"] = None  # a robot without a simulator: the offline path
    (cfg_dir / "task" / "lift.yaml").write_text(yaml.safe_dump(task, sort_keys=False))
    ckpt = train_with_task_yaml(cfg_dir, "lift", tmp_path / "run")
    policy, run = ShortcutPolicy.from_checkpoint(ckpt)
    assert policy.shape_meta.describe() == "robot0_eef_pos (3,) low_dim, object (10,) low_dim -> action (7,)"
    res = offline_eval(ckpt, tmp_path / "eval.json")
    assert res["kind"] == "offline" and res["task"] == "lift" and set(res["steps"]) == {"1", "2"}
    for r in res["steps"].values():
        assert r["action_mse"] > 0 and len(r["action_rmse"]) == 7
    assert res["windows"] > 0 and res["val_loss"] > 0


def test_lerobot_folder_to_trained_policy(tmp_path):
    pytest.importorskip("pyarrow")
    pytest.importorskip("av")
    root = write_lerobot_v3(tmp_path / "pusht_like", make_episodes(lengths=(20, 16, 18, 15, 17), size=48))
    cfg_dir = tmp_path / "configs"
    import_main(["lerobot", "--src", str(root), "--out", str(tmp_path / "ds.zarr"),
                 "--task-config", str(cfg_dir / "task" / "mine.yaml"), "--task-name", "mine"])
    task = yaml.safe_load((cfg_dir / "task" / "mine.yaml").read_text())
    # the camera is an observation too: it goes through the vision encoder
    assert sorted(task["dataset"]["obs"]) == ["observation.images.top", "observation.state"]
    assert task["dataset"]["action"] == "action"
    ckpt = train_with_task_yaml(cfg_dir, "mine", tmp_path / "run")
    policy, _ = ShortcutPolicy.from_checkpoint(ckpt)
    assert policy.shape_meta.rgb_keys == ["observation.images.top"]  # LeRobot's dotted keys, kept as they are
    assert policy.shape_meta.low_dim_keys == ["observation.state"]
    res = offline_eval(ckpt, tmp_path / "eval.json")
    assert res["kind"] == "offline" and res["steps"]["1"]["action_mse"] > 0
