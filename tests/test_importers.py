"""Importers and the exporter on files written by independent writers (tests/formats.py follows the
published formats; the shared LeRobot data was written by lerobot itself; robomimic's own reader
checks our export when robomimic is installed), and every bad-input case names file, episode, key."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from shortcut_policy.data.diffusion_policy import import_dp_zarr
from shortcut_policy.data.lerobot import import_lerobot
from shortcut_policy.data.replay_buffer import DatasetError, ReplayBuffer, decode_strings
from shortcut_policy.data.robomimic import export_robomimic, import_robomimic

from .formats import (LIFT_ENV_ARGS, make_demos, make_episodes, write_dp_zarr, write_lerobot_v3, write_lerobot_v21,
                      write_robomimic)

h5py = pytest.importorskip("h5py")


# ---------------------------------------------------------------------------------------------- robomimic
@pytest.fixture
def rm_file(tmp_path):
    demos = make_demos(11, image=True)
    # written in a scrambled order: the importer sorts numerically (demo_10 after demo_9)
    order = [3, 10, 0, 7, 1, 9, 2, 8, 4, 6, 5]
    path = write_robomimic(tmp_path / "lift.hdf5", [demos[i] for i in order],
                           masks={"train": [f"demo_{i}" for i in range(9)], "valid": ["demo_9", "demo_10"],
                                  "20_percent": ["demo_1", "demo_10"]},
                           names=[f"demo_{i}" for i in order])
    return path, demos


def test_robomimic_import_keeps_everything_in_numeric_order(rm_file, tmp_path):
    path, demos = rm_file
    buf = import_robomimic(path, tmp_path / "lift.zarr", progress=False)
    assert buf.attrs["episode_names"] == [f"demo_{i}" for i in range(11)]
    assert buf.episode_lengths.tolist() == [len(d["actions"]) for d in demos]
    ep10 = buf.get_episode(10)
    np.testing.assert_array_equal(ep10["robot0_eef_pos"], demos[10]["obs"]["robot0_eef_pos"].astype(np.float32))
    np.testing.assert_array_equal(ep10["agentview_image"], demos[10]["obs"]["agentview_image"])
    np.testing.assert_array_equal(ep10["states"], demos[10]["states"])  # float64 kept: replayed, not learned from
    assert buf["robot0_eef_pos"].dtype == np.float32 and buf["agentview_image"].dtype == np.uint8
    assert buf["actions"].dtype == np.float32 and buf["dones"].dtype == np.uint8
    assert json.loads(buf.attrs["env_args"]) == LIFT_ENV_ARGS
    assert buf.attrs["filters"] == {"train": list(range(9)), "valid": [9, 10], "20_percent": [1, 10]}
    assert decode_strings(buf.meta["model_file"], buf.meta["model_file_ends"])[10] == "<mujoco model='demo10'/>"
    # what was written reads back the same
    again = ReplayBuffer.from_path(tmp_path / "lift.zarr")
    for k in buf.keys():
        np.testing.assert_array_equal(again[k], buf[k])
    assert again.attrs["filters"] == buf.attrs["filters"]


def test_robomimic_filter_and_key_choice(rm_file):
    path, demos = rm_file
    buf = import_robomimic(path, obs_keys=["object"], episode_filter="20_percent", progress=False)
    assert buf.attrs["episode_names"] == ["demo_1", "demo_10"] and buf.keys() == ["object", "actions", "rewards",
                                                                                     "dones", "states"]
    np.testing.assert_array_equal(buf.get_episode(1)["object"], demos[10]["obs"]["object"].astype(np.float32))
    assert buf.attrs["filters"]["20_percent"] == [0, 1] and buf.attrs["filters"]["valid"] == [1]


def test_robomimic_round_trips(rm_file, tmp_path):
    path, demos = rm_file
    buf = import_robomimic(path, progress=False)
    out = export_robomimic(buf, tmp_path / "back.hdf5")
    # file -> buffer -> file: the layout and values come back (float64 at float32 precision)
    with h5py.File(path, "r") as a, h5py.File(out, "r") as b:
        assert sorted(a["data"]) == sorted(b["data"]) and sorted(a["mask"]) == sorted(b["mask"])
        assert b["data"].attrs["total"] == a["data"].attrs["total"]
        assert json.loads(b["data"].attrs["env_args"]) == json.loads(a["data"].attrs["env_args"])
        for m in a["mask"]:
            assert list(a["mask"][m][()]) == list(b["mask"][m][()])
        for name in a["data"]:
            ga, gb = a["data"][name], b["data"][name]
            assert gb.attrs["num_samples"] == ga.attrs["num_samples"] and gb.attrs["model_file"] == ga.attrs["model_file"]
            for grp in ("obs", "next_obs"):
                for k in ga[grp]:
                    np.testing.assert_array_equal(gb[grp][k][()], ga[grp][k][()].astype(gb[grp][k].dtype))
            np.testing.assert_array_equal(gb["states"][()], ga["states"][()])
            np.testing.assert_allclose(gb["actions"][()], ga["actions"][()], rtol=1e-7, atol=1e-7)
            np.testing.assert_array_equal(gb["dones"][()], ga["dones"][()])
    # buffer -> file -> buffer: exact
    back = import_robomimic(out, progress=False)
    for k in buf.keys():
        assert back[k].dtype == buf[k].dtype
        np.testing.assert_array_equal(back[k], buf[k])
    np.testing.assert_array_equal(back.episode_ends, buf.episode_ends)
    for k in buf.meta:
        np.testing.assert_array_equal(back.meta[k], buf.meta[k])
    assert {k: v for k, v in back.attrs.items() if k != "source"} == {k: v for k, v in buf.attrs.items() if k != "source"}


def test_robomimic_reads_our_export(rm_file, tmp_path):
    """robomimic's own SequenceDataset reads the exported file (skipped, with the reason, without robomimic)."""
    try:
        import robomimic.utils.obs_utils as ObsUtils
        from robomimic.utils.dataset import SequenceDataset
    except Exception as e:  # ImportError, or robomimic's own import-time failures
        pytest.skip(f"robomimic is not importable here ({type(e).__name__}: {e}); install it with "
                    "pip install --no-deps robomimic==0.3.0 termcolor")
    path, demos = rm_file
    out = export_robomimic(import_robomimic(path, progress=False), tmp_path / "export.hdf5")
    ObsUtils.initialize_obs_utils_with_obs_specs({"obs": {"low_dim": ["robot0_eef_pos", "object"],
                                                          "rgb": ["agentview_image"]}})
    ds = SequenceDataset(hdf5_path=str(out), obs_keys=("robot0_eef_pos", "object"),
                         dataset_keys=("actions", "rewards", "dones"), load_next_obs=True, frame_stack=1,
                         seq_length=3, pad_frame_stack=True, pad_seq_length=True, get_pad_mask=False, goal_mode=None,
                         hdf5_cache_mode="low_dim", hdf5_use_swmr=True, hdf5_normalize_obs=False,
                         filter_by_attribute="valid")
    assert ds.demos == ["demo_9", "demo_10"] and ds.total_num_sequences == len(demos[9]["actions"]) + len(demos[10]["actions"])
    item = ds[0]
    np.testing.assert_allclose(item["obs"]["object"][0], demos[9]["obs"]["object"][0], rtol=1e-6)
    np.testing.assert_allclose(item["next_obs"]["object"][0], demos[9]["next_obs"]["object"][0], rtol=1e-6)
    np.testing.assert_allclose(item["actions"], demos[9]["actions"][:3], rtol=1e-6)


def _edit(path: Path, fn) -> Path:
    with h5py.File(path, "a") as f:
        fn(f)
    return path


@pytest.mark.parametrize("case, match", [
    ("no_data", r"has no 'data' group \(not a robomimic dataset\?\)"),
    ("no_actions", r"data/demo_1 has no 'actions'"),
    ("short_obs", r"data/demo_2/obs/object has 5 steps but data/demo_2/actions has 9"),
    ("nan_actions", r"data/demo_0/actions holds NaN or inf \(first at step 3\)"),
    ("inf_obs", r"data/demo_1/obs/robot0_eef_pos holds NaN or inf \(first at step 2\)"),
    ("bad_name", r"data/trajectory_7 is not named demo_<int>"),
    ("num_samples", r"data/demo_0 says num_samples=99 but holds 7 actions"),
    ("total", r"data.attrs\['total'\] = 3 but the demos hold 21 steps"),
    ("mask", r"mask/train names demos that do not exist: \['demo_7'\]"),
    ("missing_key", r"data/demo_0/obs has no 'joint_pos'; keys: \['object', 'robot0_eef_pos'\]"),
])
def test_robomimic_bad_input_names_file_demo_and_key(tmp_path, case, match):
    path = write_robomimic(tmp_path / f"{case}.hdf5", make_demos(3), masks={"train": ["demo_0"]})
    edits = {
        "no_data": lambda f: f.move("data", "stuff"),
        "no_actions": lambda f: f["data/demo_1"].__delitem__("actions"),
        "short_obs": lambda f: (f["data/demo_2/obs"].__delitem__("object"),
                                f["data/demo_2/obs"].create_dataset("object", data=np.zeros((5, 10)))),
        "nan_actions": lambda f: f["data/demo_0/actions"].__setitem__((3, 2), np.nan),
        "inf_obs": lambda f: f["data/demo_1/obs/robot0_eef_pos"].__setitem__((2, 0), np.inf),
        "bad_name": lambda f: f.move("data/demo_1", "data/trajectory_7"),
        "num_samples": lambda f: f["data/demo_0"].attrs.__setitem__("num_samples", 99),
        "total": lambda f: f["data"].attrs.__setitem__("total", 3),
        "mask": lambda f: (f["mask"].__delitem__("train"), f.create_dataset("mask/train", data=np.array([b"demo_7"]))),
        "missing_key": lambda f: None,
    }
    _edit(path, edits[case])
    with pytest.raises(DatasetError, match=match) as err:
        import_robomimic(path, obs_keys=["joint_pos"] if case == "missing_key" else None, progress=False)
    assert str(path) in str(err.value)


def test_robomimic_truncated_file_and_atomic_outputs(tmp_path, monkeypatch):
    path = write_robomimic(tmp_path / "x.hdf5", make_demos(3))
    data = path.read_bytes()
    (tmp_path / "cut.hdf5").write_bytes(data[: len(data) // 3])
    with pytest.raises(DatasetError, match=r"cut.hdf5"):
        import_robomimic(tmp_path / "cut.hdf5", progress=False)
    # an export that fails half way leaves neither the target nor a temporary file behind
    buf = import_robomimic(path, progress=False)
    real = h5py.Group.create_dataset
    calls = []

    def failing(self, name, *a, **kw):
        calls.append(name)
        if len(calls) == 7:
            raise OSError("disk full")
        return real(self, name, *a, **kw)

    monkeypatch.setattr(h5py.Group, "create_dataset", failing)
    with pytest.raises(OSError, match="disk full"):
        export_robomimic(buf, tmp_path / "out.hdf5")
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.hdf5", "x.hdf5"]
    # so does a zarr write that fails
    monkeypatch.setattr("shortcut_policy.data.replay_buffer.checksum", lambda a: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        buf.save(tmp_path / "out.zarr")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.hdf5", "x.hdf5"]


def test_export_refuses_what_it_cannot_write(tmp_path):
    buf = ReplayBuffer({"pos": np.zeros((4, 2), np.float32)}, [2, 4])
    with pytest.raises(DatasetError, match="no 'actions'"):
        export_robomimic(buf, tmp_path / "x.hdf5")
    buf = ReplayBuffer({"pos": np.zeros((4, 2), np.float32), "action": np.ones((4, 3), np.float32)}, [2, 4])
    out = export_robomimic(buf, tmp_path / "x.hdf5", env_args={"env_name": "Lift"})
    with h5py.File(out, "r") as f:
        assert list(f["data"]) == ["demo_0", "demo_1"] and f["data/demo_1/dones"][()].tolist() == [0, 1]
        assert json.loads(f["data"].attrs["env_args"]) == {"env_name": "Lift"}
    with pytest.raises(FileExistsError):
        export_robomimic(buf, out)


# ---------------------------------------------------------------------------------------------- LeRobot
@pytest.mark.parametrize("writer", [write_lerobot_v3, write_lerobot_v21])
def test_lerobot_import_aligns_rows_and_video_frames(tmp_path, writer):
    eps = make_episodes(lengths=(6, 4, 5, 3))
    root = writer(tmp_path / "ds", eps)
    buf = import_lerobot(root, tmp_path / "out.zarr", progress=False)
    assert buf.episode_lengths.tolist() == [6, 4, 5, 3]
    assert sorted(buf.keys()) == ["action", "observation.images.top", "observation.state", "task_index"]
    for i, ep in enumerate(eps):
        got = buf.get_episode(i)
        np.testing.assert_array_equal(got["observation.state"], ep["observation.state"])  # exact
        np.testing.assert_array_equal(got["action"], ep["action"])
        assert got["observation.images.top"].dtype == np.uint8
    # AV1 is lossy, but every decoded frame must be nearest to its own source frame (alignment)
    source = np.concatenate([e["frames"] for e in eps]).reshape(18, -1).astype(float)
    decoded = buf["observation.images.top"].reshape(18, -1).astype(float)
    dist = np.abs(decoded[:, None] - source[None]).mean(-1)  # (decoded, source)
    assert dist.argmin(1).tolist() == list(range(18)) and dist.diagonal().max() < 4.0, dist.diagonal()
    assert buf.attrs["fps"] == 10.0 and buf.attrs["tasks"] == ["push the thing"]
    assert buf.attrs["source"]["codebase_version"] == ("v3.0" if writer is write_lerobot_v3 else "v2.1")


def test_lerobot_sample_written_by_lerobot(shared_data):
    import pyarrow.parquet as pq

    root = shared_data / "lerobot_sample_v3"
    buf = import_lerobot(root, progress=False)
    table = pq.read_table(root / "data" / "chunk-000" / "file-000.parquet").to_pydict()
    assert buf.n_episodes == 3 and buf.n_steps == 90 == len(table["index"])
    np.testing.assert_array_equal(buf["observation.state"], np.array(table["observation.state"], np.float32))
    np.testing.assert_array_equal(buf["action"], np.array(table["action"], np.float32))
    assert buf["observation.image"].shape == (90, 96, 96, 3)


def test_lerobot_pusht_equals_the_zarr(shared_data):
    """The 206 PushT demonstrations written by lerobot: states and actions exactly the zarr's, images
    within video-compression error (docs/data.md reports it)."""
    import zarr

    buf = import_lerobot(shared_data / "lerobot_pusht_v3", progress=False)
    z = zarr.open_group(str(shared_data / "pusht" / "pusht_cchi_v7_replay.zarr"), mode="r")
    np.testing.assert_array_equal(buf.episode_ends, z["meta/episode_ends"][...])
    np.testing.assert_array_equal(buf["observation.state"], z["data/state"][:, :2])
    np.testing.assert_array_equal(buf["action"], z["data/action"][...])
    idx = np.arange(0, buf.n_steps, 7)
    err = np.abs(buf["observation.image"][idx].astype(np.float32) - z["data/img"].get_orthogonal_selection((idx,)))
    assert err.mean() < 1.5, err.mean()


@pytest.mark.parametrize("case, match", [
    ("version", r"codebase_version 'v1.6' is not supported"),
    ("short_video", r"episode 2 \(observation.images.top\) needs a frame at 1.2000 s but the video has 12 frames"),
    ("nan", r"episode 1, 'observation.state' holds NaN or inf \(first at frame 2\)"),
    ("length", r"episode 0 has 4 rows, the episodes table says 5"),
    ("no_info", r"is not a LeRobot dataset: no meta/info.json"),
])
def test_lerobot_bad_input(tmp_path, case, match):
    import pyarrow.parquet as pq

    eps = make_episodes(lengths=(4, 4, 5))
    if case == "nan":
        eps[1]["observation.state"][2, 1] = np.nan
    if case == "short_video":
        root = write_lerobot_v3(tmp_path / "ds", eps)
        from .formats import encode_av1

        encode_av1(root / "videos/observation.images.top/chunk-000/file-000.mp4", np.concatenate([e["frames"] for e in eps])[:12])
    else:
        root = write_lerobot_v21(tmp_path / "ds", eps)
    if case == "version":
        info = json.loads((root / "meta/info.json").read_text())
        (root / "meta/info.json").write_text(json.dumps({**info, "codebase_version": "v1.6"}))
    if case == "length":
        lines = (root / "meta/episodes.jsonl").read_text().splitlines()
        lines[0] = json.dumps({**json.loads(lines[0]), "length": 5})
        (root / "meta/episodes.jsonl").write_text("\n".join(lines))
    if case == "no_info":
        os.remove(root / "meta/info.json")
    with pytest.raises(DatasetError, match=match):
        import_lerobot(root, progress=False)
    assert pq  # pyarrow is what the importer reads with


# ---------------------------------------------------------------------------------------------- DP zarr
def test_dp_zarr_import_turns_float_images_into_uint8(tmp_path):
    arrays = write_dp_zarr(tmp_path / "dp.zarr")
    buf = import_dp_zarr(tmp_path / "dp.zarr", tmp_path / "out.zarr", keys=["img", "state", "action"])
    assert buf["img"].dtype == np.uint8
    np.testing.assert_array_equal(buf["img"], arrays["img"].astype(np.uint8))
    np.testing.assert_array_equal(buf["state"], arrays["state"])
    back = ReplayBuffer.from_path(tmp_path / "out.zarr")
    np.testing.assert_array_equal(back["img"], buf["img"])
    assert back.episode_ends.tolist() == [5, 8, 12]
    import zarr

    root = zarr.open_group(str(tmp_path / "dp.zarr"), mode="a")
    root["data/img"][0, 0, 0, 0] = 0.5
    with pytest.raises(DatasetError, match=r"data/img looks like images .* not integers in 0..255"):
        import_dp_zarr(tmp_path / "dp.zarr", keys=["img"])


def test_lerobot_camera_data_trains_the_image_task_with_the_documented_override(shared_data, tmp_path):
    """docs/images.md: a LeRobot dataset written by lerobot itself, imported with shortcut-import, trains
    the pusht_image task by renaming its keys, and the policy sees the camera as a camera."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from shortcut_policy.data.cli import main as import_main
    from shortcut_policy.policy.policy import ShortcutPolicy
    from shortcut_policy.train.run import run_training

    from .conftest import REPO

    store = tmp_path / "lerobot.zarr"
    assert import_main(["lerobot", "--src", str(shared_data / "lerobot_sample_v3"), "--out", str(store)]) == 0
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=[
            "task=pusht_image", f"task.dataset.path={store}",
            "task.dataset.obs={image: observation.image, agent_pos: observation.state}", "task.dataset.val_ratio=0.34",
            f"out_dir={tmp_path / 'run'}", "+policy.obs_encoder.width=16", "+policy.obs_encoder.out_dim=16",
            "train.steps=2", "train.batch_size=4", "train.warmup_steps=1", "train.log_every=1", "train.progress=false"])
    out, metrics = run_training(OmegaConf.to_container(cfg, resolve=True))
    assert np.isfinite(metrics["train/loss"])
    policy, _ = ShortcutPolicy.from_checkpoint(out / "checkpoints" / "latest.pt")
    assert policy.shape_meta.rgb_keys == ["image"] and policy.shape_meta.low_dim_keys == ["agent_pos"]
    assert policy.shape_meta.obs["image"].shape == (96, 96, 3)
