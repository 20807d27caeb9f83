"""The generic sequence dataset: PushT low-dim through its task config (one yaml), windows and padding
against the raw arrays, splits, the normalizer built from shape_meta, transforms, filters, errors."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
import zarr

from shortcut_policy.data.dataset import SequenceDataset, register_transform
from shortcut_policy.data.replay_buffer import DatasetError, ReplayBuffer
from shortcut_policy.shape_meta import ShapeMetaError
from shortcut_policy.task import TaskConfig, make_dataset

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "datasets" / "pusht_lowdim.zarr"
PUSHT_TASK = yaml.safe_load((REPO / "configs" / "task" / "pusht_lowdim.yaml").read_text())


def pusht(**dataset_overrides) -> SequenceDataset:
    task = {**PUSHT_TASK, "dataset": {**PUSHT_TASK["dataset"], "path": str(SHIPPED), **dataset_overrides}}
    return make_dataset(TaskConfig.from_dict(task))


@pytest.fixture(scope="module")
def dataset() -> SequenceDataset:
    return pusht()


@pytest.fixture(scope="module")
def raw() -> dict[str, np.ndarray]:
    """The shipped store read with zarr directly, independent of the code under test."""
    root = zarr.open_group(str(SHIPPED), mode="r")
    out = {k: root["data"][k][...] for k in ("state", "keypoint", "action")}
    out["episode_ends"] = root["meta"]["episode_ends"][...]
    return out


# ---------------------------------------------------------------- PushT through its task config
def test_pusht_items_are_observation_dicts(dataset):
    item = dataset[0]
    assert set(item) == {"obs", "action"} and set(item["obs"]) == {"keypoint", "agent_pos"}
    assert item["obs"]["keypoint"].shape == (2, 9, 2) and item["obs"]["keypoint"].dtype == torch.float32
    assert item["obs"]["agent_pos"].shape == (2, 2)
    assert item["action"].shape == (16, 2) and item["action"].dtype == torch.float32
    assert dataset.shape_meta.to_dict() == {
        "obs": {"keypoint": {"shape": [9, 2], "type": "low_dim"}, "agent_pos": {"shape": [2], "type": "low_dim"}},
        "action": {"shape": [2]}}
    with pytest.raises(IndexError):
        dataset[len(dataset)]


def test_split_and_window_count(dataset, raw):
    lengths = np.diff(raw["episode_ends"], prepend=0)
    assert dataset.val_mask.sum() == 4 and dataset.train_mask.sum() == 202
    assert not (dataset.val_mask & dataset.train_mask).any()
    # horizon 16, pad 1 before and 7 after: L - 16 + 1 + 7 + 1 windows per episode
    assert len(dataset) == int((lengths[dataset.train_mask] - 7).sum())
    val = dataset.get_validation_dataset()
    assert len(val) == int((lengths[dataset.val_mask] - 7).sum())
    assert len(dataset) != len(val)  # the copy did not replace the training sampler


def test_windows_match_raw_arrays_with_padding(dataset, raw):
    indices = dataset.sampler.indices
    i = int(np.flatnonzero((indices[:, 2] == 0) & (indices[:, 3] == 16))[100])  # an unpadded window
    t0 = int(indices[i, 0])
    item = dataset[i]
    np.testing.assert_array_equal(item["obs"]["keypoint"].numpy(), raw["keypoint"][t0:t0 + 2])
    np.testing.assert_array_equal(item["obs"]["agent_pos"].numpy(), raw["state"][t0:t0 + 2, :2])
    np.testing.assert_array_equal(item["action"].numpy(), raw["action"][t0:t0 + 16])

    j = int(np.flatnonzero(indices[:, 2] == 1)[5])  # starts one step before its episode
    first = int(indices[j, 0])
    assert first == 0 or first in raw["episode_ends"]
    obs = dataset[j]["obs"]["agent_pos"].numpy()
    np.testing.assert_array_equal(obs[0], obs[1])  # padded with the episode's first frame
    np.testing.assert_array_equal(obs[1], raw["state"][first, :2])
    act = dataset[j]["action"].numpy()
    np.testing.assert_array_equal(act[0], act[1])


def test_paper_protocol_90_episodes(dataset):
    ds90 = pusht(max_train_episodes=90)
    assert ds90.train_mask.sum() == 90
    assert not (ds90.train_mask & ds90.val_mask).any()
    np.testing.assert_array_equal(ds90.val_mask, dataset.val_mask)
    np.testing.assert_array_equal(ds90.train_mask, pusht(max_train_episodes=90).train_mask)
    assert len(ds90) < len(dataset)


def test_normalizer_fields_come_from_shape_meta(dataset, raw):
    norm = dataset.get_normalizer()
    assert norm.is_fitted and norm.dims == {"keypoint": 18, "agent_pos": 2, "action": 2}
    kp = torch.stack([dataset[i]["obs"]["keypoint"] for i in range(0, len(dataset), 997)])
    y = norm.normalize("keypoint", kp)
    assert y.shape == kp.shape and y.abs().max() <= 1.0 + 1e-5
    torch.testing.assert_close(norm.unnormalize("keypoint", y), kp, atol=1e-3, rtol=1e-5)
    # per element, not pooled over the 9 keypoints
    train_steps = np.repeat(dataset.train_mask, np.diff(raw["episode_ends"], prepend=0))
    np.testing.assert_allclose(norm.field("keypoint").input_max.numpy(),
                               raw["keypoint"][train_steps].reshape(-1, 18).max(0), rtol=1e-6)
    assert not torch.equal(dataset.get_normalizer(fit_on="all").field("agent_pos").input_max,
                           pusht(max_train_episodes=5).get_normalizer().field("agent_pos").input_max)


def test_bad_horizon_and_task_keys():
    with pytest.raises(ValueError, match="horizon >= 9"):
        SequenceDataset(SHIPPED, ["keypoint"], horizon=8, n_obs_steps=2, n_action_steps=8)
    with pytest.raises(ValueError, match="zarr_path is now dataset.path"):
        TaskConfig.from_dict({**PUSHT_TASK, "zarr_path": "x"})
    with pytest.raises(ValueError, match="unknown task.dataset keys"):
        TaskConfig.from_dict({**PUSHT_TASK, "dataset": {**PUSHT_TASK["dataset"], "obs_keys": []}})


def test_missing_data_names_the_path_it_tried(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    task = {**PUSHT_TASK, "dataset": {**PUSHT_TASK["dataset"], "path": "data/mine.zarr"}}
    with pytest.raises(DatasetError, match=f"no zarr store at data/mine.zarr \\(resolved to {tmp_path}"):
        make_dataset(TaskConfig.from_dict(task))


def test_the_default_pusht_path_is_the_copy_shipped_in_the_package(tmp_path, monkeypatch):
    from shortcut_policy.data.dataset import resolve_data_path

    monkeypatch.chdir(tmp_path)  # anywhere: the default does not depend on the working directory
    assert PUSHT_TASK["dataset"]["path"] == "pkg://shortcut_policy.datasets/pusht_lowdim.zarr"
    assert resolve_data_path(PUSHT_TASK["dataset"]["path"]).resolve() == SHIPPED.resolve()
    assert len(make_dataset(TaskConfig.from_dict(PUSHT_TASK))) == 23804
    with pytest.raises(DatasetError, match="no installed package 'nope'"):
        resolve_data_path("pkg://nope/x.zarr")


def test_original_store_serves_the_same_windows(dataset, shared_data):
    ds = pusht(path=str(shared_data / "pusht" / "pusht_cchi_v7_replay.zarr"))
    assert len(ds) == len(dataset)
    for k in ("keypoint", "agent_pos"):
        torch.testing.assert_close(ds[123]["obs"][k], dataset[123]["obs"][k], rtol=0, atol=0)


def test_shipped_copy_equals_original(raw, shared_data):
    src = zarr.open_group(str(shared_data / "pusht" / "pusht_cchi_v7_replay.zarr"), mode="r")
    for k in ("state", "keypoint", "action"):
        assert raw[k].dtype == np.float32
        np.testing.assert_array_equal(raw[k], src["data"][k][...])
    np.testing.assert_array_equal(raw["episode_ends"], src["meta"]["episode_ends"][...])


def test_make_script_keeps_only_lowdim_keys(tmp_path):
    src = ReplayBuffer.create_empty()
    for n in (3, 4):
        src.add_episode({
            "state": np.ones((n, 5)), "keypoint": np.ones((n, 9, 2), np.float32),
            "action": np.ones((n, 2), np.float32), "img": np.zeros((n, 4, 4, 3), np.float32),
        })
    src.save(tmp_path / "src.zarr")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, str(REPO / "datasets" / "make_pusht_lowdim.py"),
           "--src", str(tmp_path / "src.zarr"), "--out", str(tmp_path / "out.zarr")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    out = ReplayBuffer.from_path(tmp_path / "out.zarr")
    assert sorted(out.keys()) == ["action", "keypoint", "state"]
    assert out["state"].dtype == np.float32 and out.episode_ends.tolist() == [3, 7]
    sums = zarr.open_group(str(tmp_path / "out.zarr"), mode="r").attrs["checksums"]  # verified at every later load
    assert sorted(sums) == ["data/action", "data/keypoint", "data/state", "meta/episode_ends"]


# ---------------------------------------------------------------- generic behaviour on small stores
def small_store(path: Path, **extra) -> Path:
    rng = np.random.default_rng(0)
    buf = ReplayBuffer.create_empty()
    for n in (12, 9, 15, 10):
        buf.add_episode({"pos": rng.normal(size=(n, 3)), "grip": rng.normal(size=n),
                         "cam": rng.integers(0, 256, size=(n, 8, 8, 3), dtype=np.uint8),
                         "actions": rng.normal(size=(n, 4)).astype(np.float32)})
    buf.attrs.update(extra)
    buf.save(path)
    return path


def test_keys_index_scalars_and_images(tmp_path):
    path = small_store(tmp_path / "s.zarr")
    ds = SequenceDataset(path, {"xy": {"key": "pos", "index": [0, 2]}, "grip": "grip", "cam": "cam"},
                         action="actions", horizon=6, n_obs_steps=3, n_action_steps=2, val_ratio=0.0)
    sm = ds.shape_meta
    assert sm.describe() == "xy (2,) low_dim, grip (1,) low_dim, cam (8, 8, 3) rgb -> action (4,)"
    item = ds[5]
    assert item["obs"]["cam"].dtype == torch.uint8 and item["obs"]["cam"].shape == (3, 8, 8, 3)
    assert item["obs"]["xy"].dtype == torch.float32 and item["obs"]["grip"].shape == (3, 1)
    raw = ReplayBuffer.from_path(path)
    t0 = int(ds.sampler.indices[5, 0]) - int(ds.sampler.indices[5, 2])
    np.testing.assert_array_equal(item["obs"]["cam"].numpy(), raw["cam"][t0:t0 + 3])
    np.testing.assert_allclose(item["obs"]["xy"].numpy(), raw["pos"][t0:t0 + 3, :2].astype(np.float32))
    # images get the fixed map, not fitted statistics
    norm = ds.get_normalizer()
    assert set(norm.dims) == {"xy", "grip", "action"} and norm.image_keys == ("cam",)
    y = norm.normalize("cam", item["obs"]["cam"])
    assert y.dtype == torch.float32 and y.min() >= -1 and y.max() <= 1
    torch.testing.assert_close(norm.normalize("cam", torch.tensor([0, 255], dtype=torch.uint8)),
                               torch.tensor([-1.0, 1.0]))
    with pytest.raises(TypeError, match="expected a uint8 tensor"):
        norm.normalize("cam", item["obs"]["cam"].float())


def _double(x):
    return 2 * x


register_transform("test_double", _double)


def test_transforms_registered_or_imported(tmp_path):
    path = small_store(tmp_path / "s.zarr")
    a = SequenceDataset(path, {"p": "pos"}, action="actions", horizon=4, n_obs_steps=1, n_action_steps=2)
    b = SequenceDataset(path, {"p": {"key": "pos", "transform": "test_double"}}, action="actions", horizon=4,
                        n_obs_steps=1, n_action_steps=2)
    c = SequenceDataset(path, {"p": {"key": "pos", "transform": "numpy:negative"}}, action="actions", horizon=4,
                        n_obs_steps=1, n_action_steps=2)
    torch.testing.assert_close(b[3]["obs"]["p"], 2 * a[3]["obs"]["p"])
    torch.testing.assert_close(c[3]["obs"]["p"], -a[3]["obs"]["p"])
    with pytest.raises(ValueError, match="unknown transform 'nope'"):
        SequenceDataset(path, {"p": {"key": "pos", "transform": "nope"}}, action="actions", horizon=4, n_action_steps=2)


def test_filters_choose_training_and_validation_episodes(tmp_path):
    path = small_store(tmp_path / "s.zarr", filters={"train": [0, 2, 3], "valid": [1], "half": [0, 1]})
    ds = SequenceDataset(path, ["pos"], action="actions", horizon=4, n_obs_steps=2, n_action_steps=2,
                         episode_filter="train", val_filter="valid")
    assert ds.train_mask.tolist() == [True, False, True, True] and ds.val_mask.tolist() == [False, True, False, False]
    ds = SequenceDataset(path, ["pos"], action="actions", horizon=4, n_action_steps=2, episode_filter="half",
                         val_ratio=0.0)
    assert ds.train_mask.tolist() == [True, True, False, False]
    with pytest.raises(DatasetError, match=r"no episode filter '20_percent'; filters: \['half', 'train', 'valid'\]"):
        SequenceDataset(path, ["pos"], action="actions", horizon=4, n_action_steps=2, episode_filter="20_percent")


def test_data_errors_name_the_file_and_key(tmp_path):
    path = small_store(tmp_path / "s.zarr")
    with pytest.raises(DatasetError, match=r"s.zarr has no data/joint; keys that exist: \['actions', 'cam', 'grip', 'pos'\]"):
        SequenceDataset(path, ["joint"], action="actions", horizon=4, n_action_steps=2)
    with pytest.raises(DatasetError, match=r"takes data/pos\[\.\.\., 2:5\], but data/pos has shape \(46, 3\)"):
        SequenceDataset(path, {"p": {"key": "pos", "index": [2, 5]}}, action="actions", horizon=4, n_action_steps=2)
    with pytest.raises(DatasetError, match=r"obs 'pos' is low_dim of per-step shape \[3\] in the data, shape_meta says low_dim \[2\]"):
        SequenceDataset(path, ["pos"], action="actions", horizon=4,
                        n_action_steps=2, shape_meta={"obs": {"pos": {"shape": [2]}}, "action": {"shape": [4]}})
    with pytest.raises(DatasetError, match="names observation keys"):
        SequenceDataset(path, ["pos"], action="actions", horizon=4,
                        n_action_steps=2, shape_meta={"obs": {"grip": {"shape": [1]}}, "action": {"shape": [4]}})
    with pytest.raises(ShapeMetaError, match=r"an rgb key must have shape \(H, W, 3\)"):
        SequenceDataset(path, ["pos"], action="actions", horizon=4,
                        n_action_steps=2, shape_meta={"obs": {"pos": {"shape": [3], "type": "rgb"}}, "action": {"shape": [4]}})
    # NaN in a float64 key is caught where it is stored
    buf = ReplayBuffer.from_path(path)
    bad = dict(buf.data)
    bad["pos"] = bad["pos"].copy()
    bad["pos"][20, 1] = np.inf
    with pytest.raises(DatasetError, match=r"data/pos holds NaN or inf at 1 time step\(s\), first at step 20"):
        ReplayBuffer(bad, buf.episode_ends)
