from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from shortcut_policy.data import pusht
from shortcut_policy.data.pusht import PushTLowDimDataset, default_pusht_path
from shortcut_policy.data.replay_buffer import ReplayBuffer

ORIGINAL = Path("/work/shared/data/pusht/pusht_cchi_v7_replay.zarr")
needs_original = pytest.mark.skipif(not ORIGINAL.exists(), reason="shared PushT data not on this machine")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dataset() -> PushTLowDimDataset:
    return PushTLowDimDataset()


@pytest.fixture(scope="module")
def raw() -> dict[str, np.ndarray]:
    """The shipped store read with zarr directly, independent of the code under test."""
    root = zarr.open_group(str(default_pusht_path()), mode="r")
    out = {k: root["data"][k][...] for k in ("state", "keypoint", "action")}
    out["episode_ends"] = root["meta"]["episode_ends"][...]
    return out


def test_shapes_and_dtypes(dataset):
    item = dataset[0]
    assert set(item) == {"obs", "action"}
    assert item["obs"].shape == (16, 20) and item["obs"].dtype == torch.float32
    assert item["action"].shape == (16, 2) and item["action"].dtype == torch.float32
    assert dataset[len(dataset) - 1]["obs"].shape == (16, 20)
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
    assert val[0]["obs"].shape == (16, 20)
    assert len(dataset) != len(val)  # the copy did not replace the training sampler


def test_obs_layout_matches_raw_arrays(dataset, raw):
    indices = dataset.sampler.indices
    # an unpadded window and the first (padded) window of some episode
    i = int(np.flatnonzero((indices[:, 2] == 0) & (indices[:, 3] == 16))[100])
    t0 = int(indices[i, 0])
    item = dataset[i]
    t = np.arange(t0, t0 + 16)
    expected = np.concatenate([raw["keypoint"][t].reshape(16, 18), raw["state"][t, :2]], axis=1)
    np.testing.assert_array_equal(item["obs"].numpy(), expected)
    np.testing.assert_array_equal(item["obs"].numpy()[:, :2], raw["keypoint"][t, 0])  # kp0 (x, y)
    np.testing.assert_array_equal(item["action"].numpy(), raw["action"][t])

    j = int(np.flatnonzero(indices[:, 2] == 1)[5])  # starts one step before its episode
    first = int(indices[j, 0])
    assert first == 0 or first in raw["episode_ends"]
    obs = dataset[j]["obs"].numpy()
    np.testing.assert_array_equal(obs[0], obs[1])  # padded with the episode's first frame
    np.testing.assert_array_equal(obs[1, 18:], raw["state"][first, :2])


def test_paper_protocol_90_episodes(dataset):
    ds90 = PushTLowDimDataset(max_train_episodes=90)
    assert ds90.train_mask.sum() == 90
    assert not (ds90.train_mask & ds90.val_mask).any()
    np.testing.assert_array_equal(ds90.val_mask, dataset.val_mask)
    np.testing.assert_array_equal(ds90.train_mask, PushTLowDimDataset(max_train_episodes=90).train_mask)
    assert len(ds90) < len(dataset)


def test_normalizer(dataset):
    norm = dataset.get_normalizer()
    assert norm.is_fitted and norm.dims == {"obs": 20, "action": 2}
    batch = torch.stack([dataset[i]["obs"] for i in range(0, len(dataset), 997)])
    y = norm.normalize("obs", batch)
    assert y.abs().max() <= 1.0 + 1e-5
    torch.testing.assert_close(norm.unnormalize("obs", y), batch, atol=1e-3, rtol=1e-5)
    assert not torch.equal(dataset.get_normalizer(fit_on="all").fields.obs.input_max,
                           PushTLowDimDataset(max_train_episodes=5).get_normalizer().fields.obs.input_max)


def test_bad_horizon():
    with pytest.raises(ValueError, match="horizon >= 9"):
        PushTLowDimDataset(horizon=8, n_obs_steps=2, n_action_steps=8)


def test_default_path_missing(monkeypatch, tmp_path):
    monkeypatch.setattr(pusht, "_REPO_ROOT", tmp_path)
    with pytest.raises(FileNotFoundError, match="make_pusht_lowdim.py"):
        default_pusht_path()


@needs_original
def test_shipped_copy_equals_original(raw):
    src = zarr.open_group(str(ORIGINAL), mode="r")
    for k in ("state", "keypoint", "action"):
        assert raw[k].dtype == np.float32
        np.testing.assert_array_equal(raw[k], src["data"][k][...])
    assert raw["episode_ends"].dtype == np.int64
    np.testing.assert_array_equal(raw["episode_ends"], src["meta"]["episode_ends"][...])


@needs_original
def test_original_store_without_images(dataset):
    ds = PushTLowDimDataset(ORIGINAL)
    assert len(ds) == len(dataset)
    torch.testing.assert_close(ds[123]["obs"], dataset[123]["obs"], rtol=0, atol=0)


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
