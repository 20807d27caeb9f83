from __future__ import annotations

import numpy as np
import pytest
import zarr

from shortcut_policy.data.replay_buffer import DatasetError, ReplayBuffer

LENGTHS = (3, 5, 2)


def _episode(i: int, n: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(i)
    return {
        "obs": rng.normal(size=(n, 4)).astype(np.float32),
        "action": rng.normal(size=(n, 2)),  # float64
        "flag": np.full(n, i, dtype=np.int32),
    }


@pytest.fixture
def buffer() -> ReplayBuffer:
    rb = ReplayBuffer.create_empty()
    for i, n in enumerate(LENGTHS):
        rb.add_episode(_episode(i, n))
    return rb


def _write_raw(path, data: dict, episode_ends=None, zarr_format: int = 2) -> None:
    """Write a store as-is (no validation), to produce malformed inputs."""
    root = zarr.open_group(str(path), mode="w", zarr_format=zarr_format)
    g = root.create_group("data")
    for k, v in data.items():
        g.create_array(k, data=np.asarray(v))
    if episode_ends is not None:
        root.create_group("meta").create_array("episode_ends", data=np.asarray(episode_ends, dtype=np.int64))


def test_add_episode_builds_episode_ends(buffer):
    assert buffer.episode_ends.tolist() == [3, 8, 10]
    assert buffer.episode_ends.dtype == np.int64
    assert (buffer.n_episodes, buffer.n_steps) == (3, 10)
    assert buffer.episode_lengths.tolist() == list(LENGTHS)
    assert buffer.episode_slice(1) == slice(3, 8)
    assert buffer.episode_slice(-1) == slice(8, 10)
    ep = buffer.get_episode(1)
    np.testing.assert_array_equal(ep["obs"], _episode(1, 5)["obs"])
    assert (ep["flag"] == 1).all()
    with pytest.raises(IndexError):
        buffer.get_episode(3)


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_round_trip(tmp_path, buffer, zarr_format):
    path = tmp_path / "rb.zarr"
    buffer.save(path, zarr_format=zarr_format)
    loaded = ReplayBuffer.from_path(path)
    assert sorted(loaded.keys()) == sorted(buffer.keys())
    for k in buffer.keys():
        assert loaded[k].dtype == buffer[k].dtype
        np.testing.assert_array_equal(loaded[k], buffer[k])
    np.testing.assert_array_equal(loaded.episode_ends, buffer.episode_ends)
    assert zarr.open_group(str(path), mode="r").metadata.zarr_format == zarr_format
    # one chunk per array: the only non-metadata file of each array
    array_dirs = [p for p in (path / "data").iterdir() if p.is_dir()] + [path / "meta" / "episode_ends"]
    assert len(array_dirs) == 4
    for array_dir in array_dirs:
        chunks = [p for p in array_dir.rglob("*") if p.is_file() and not p.name.startswith(".")
                  and p.name != "zarr.json"]
        assert len(chunks) == 1, (array_dir, chunks)


def test_from_path_loads_only_requested_keys(tmp_path, buffer):
    buffer.save(tmp_path / "rb.zarr")
    loaded = ReplayBuffer.from_path(tmp_path / "rb.zarr", keys=["action"])
    assert loaded.keys() == ["action"]
    np.testing.assert_array_equal(loaded["action"], buffer["action"])


def test_save_refuses_to_overwrite(tmp_path, buffer):
    buffer.save(tmp_path / "rb.zarr")
    with pytest.raises(FileExistsError):
        buffer.save(tmp_path / "rb.zarr")
    buffer.save(tmp_path / "rb.zarr", overwrite=True)


def test_missing_path(tmp_path):
    with pytest.raises(DatasetError, match="no zarr store"):
        ReplayBuffer.from_path(tmp_path / "nope.zarr")


def test_missing_episode_ends(tmp_path):
    _write_raw(tmp_path / "x.zarr", {"obs": np.zeros((4, 2), np.float32)})
    with pytest.raises(DatasetError, match="meta/episode_ends"):
        ReplayBuffer.from_path(tmp_path / "x.zarr")


def test_missing_key_lists_existing(tmp_path):
    _write_raw(tmp_path / "x.zarr", {"obs": np.zeros((4, 2)), "action": np.zeros((4, 1))}, [4])
    with pytest.raises(DatasetError, match=r"no data/img.*\['action', 'obs'\]"):
        ReplayBuffer.from_path(tmp_path / "x.zarr", keys=["obs", "img"])


@pytest.mark.parametrize("ends", [[2, 2, 4], [3, 1, 4], [0, 4]])
def test_episode_ends_not_increasing(tmp_path, ends):
    _write_raw(tmp_path / "x.zarr", {"obs": np.zeros((4, 2))}, ends)
    with pytest.raises(DatasetError, match="strictly increasing"):
        ReplayBuffer.from_path(tmp_path / "x.zarr")


def test_truncated_data(tmp_path):
    _write_raw(tmp_path / "x.zarr", {"obs": np.zeros((4, 2))}, [2, 6], zarr_format=3)
    with pytest.raises(DatasetError, match="truncated"):
        ReplayBuffer.from_path(tmp_path / "x.zarr")


def test_steps_beyond_last_episode(tmp_path):
    _write_raw(tmp_path / "x.zarr", {"obs": np.zeros((6, 2))}, [2, 4])
    with pytest.raises(DatasetError, match="2 steps belong to no episode"):
        ReplayBuffer.from_path(tmp_path / "x.zarr")


def test_arrays_of_different_lengths(tmp_path):
    _write_raw(tmp_path / "x.zarr", {"obs": np.zeros((4, 2)), "action": np.zeros((3, 2))}, [4])
    with pytest.raises(DatasetError, match="different lengths"):
        ReplayBuffer.from_path(tmp_path / "x.zarr")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_float_data(tmp_path, bad):
    obs = np.zeros((4, 2), np.float32)
    obs[2, 1] = bad
    _write_raw(tmp_path / "x.zarr", {"obs": obs}, [4])
    with pytest.raises(DatasetError, match="data/obs holds NaN or inf .* first at step 2"):
        ReplayBuffer.from_path(tmp_path / "x.zarr")


def test_not_a_zarr_group(tmp_path):
    (tmp_path / "empty.zarr").mkdir()
    with pytest.raises(DatasetError):
        ReplayBuffer.from_path(tmp_path / "empty.zarr")


def test_add_episode_errors(buffer):
    good = _episode(9, 2)
    with pytest.raises(DatasetError, match="keys"):
        buffer.add_episode({"obs": good["obs"], "action": good["action"]})
    with pytest.raises(DatasetError, match="different lengths"):
        buffer.add_episode({**good, "flag": np.zeros(3, np.int32)})
    with pytest.raises(DatasetError, match="per-step shape"):
        buffer.add_episode({**good, "obs": np.zeros((2, 5), np.float32)})
    with pytest.raises(DatasetError, match="empty episode"):
        buffer.add_episode({k: v[:0] for k, v in good.items()})
    bad = {**good, "action": good["action"].copy()}
    bad["action"][1, 0] = np.nan
    with pytest.raises(DatasetError, match="NaN"):
        buffer.add_episode(bad)
    assert buffer.n_episodes == 3 and buffer.n_steps == 10  # failed adds change nothing


def test_direct_construction_validates():
    with pytest.raises(DatasetError, match="truncated"):
        ReplayBuffer({"obs": np.zeros((3, 1))}, np.array([2, 5]))
    rb = ReplayBuffer({"obs": np.arange(5.0)[:, None]}, np.array([2, 5]))
    np.testing.assert_array_equal(rb.get_episode(1)["obs"][:, 0], [2.0, 3.0, 4.0])
