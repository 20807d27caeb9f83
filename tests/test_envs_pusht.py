"""PushT low-dim env and runner: keypoint maths against the dataset, observation layout,
gym-pusht's reward/success, lockstep batching, determinism, result format."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from shortcut_policy.envs import make_runner, runner_names
from shortcut_policy.envs.pusht import BLOCK_KEYPOINTS_LOCAL, keypoints_from_state, legacy_reset_state, lowdim_obs_from_state

GOAL = np.array([256.0, 256.0, np.pi / 4])  # gym-pusht's goal pose of the block


def _gym_pusht():
    return pytest.importorskip("gym_pusht", reason="gym-pusht (extra 'pusht') not installed")


def _load(shared_data, *keys):
    zarr = pytest.importorskip("zarr")
    g = zarr.open_group(str(shared_data / "pusht" / "pusht_cchi_v7_replay.zarr"), mode="r")
    return [g[k][:] for k in keys]


def toward_block(obs: dict, rows=None) -> np.ndarray:
    """Scripted act_fn: every action of the chunk aims at the block's keypoint centroid.
    {keypoint: (B, 2, 9, 2), agent_pos: (B, 2, 2)} -> (B, 8, 2)."""
    target = obs["keypoint"][:, -1].mean(axis=1)  # (B, 2)
    return np.repeat(target[:, None], 8, axis=1)


# ---- keypoint maths (numpy only) --------------------------------------------------------------


def test_keypoints_known_answers():
    s = np.array([0.0, 0.0, 100.0, 200.0, 0.0])
    np.testing.assert_allclose(keypoints_from_state(s), BLOCK_KEYPOINTS_LOCAL + [100.0, 200.0])
    s[4] = np.pi / 2  # (x, y) -> (-y, x)
    rotated = np.stack([-BLOCK_KEYPOINTS_LOCAL[:, 1], BLOCK_KEYPOINTS_LOCAL[:, 0]], axis=1)
    np.testing.assert_allclose(keypoints_from_state(s), rotated + [100.0, 200.0], atol=1e-12)
    batch = np.zeros((4, 3, 5))
    assert keypoints_from_state(batch).shape == (4, 3, 9, 2)
    obs = lowdim_obs_from_state(np.array([1.0, 2.0, 100.0, 200.0, 0.3]))
    assert obs["keypoint"].shape == (9, 2) and obs["keypoint"].dtype == np.float32
    assert obs["agent_pos"].dtype == np.float32
    np.testing.assert_array_equal(obs["agent_pos"], [1.0, 2.0])


def test_keypoints_bad_input():
    with pytest.raises(ValueError, match=r"shape \(\.\.\., 5\)"):
        keypoints_from_state(np.zeros((3, 4)))
    with pytest.raises(ValueError, match="NaN"):
        keypoints_from_state([0, 0, 0, 0, np.nan])


def test_keypoints_reproduce_dataset(shared_data):
    state, keypoint, n_contacts = _load(shared_data, "data/state", "data/keypoint", "data/n_contacts")
    err = np.linalg.norm(keypoints_from_state(state) - keypoint, axis=-1).max(axis=-1)  # (T,) px
    free = n_contacts[:, 0] == 0
    assert np.median(err) < 1e-4
    # without agent-block contact the stored keypoints are the state's, to float32 precision
    assert np.mean(err[free] < 1e-3) > 0.995
    # with contact the data's keypoints lag the state by at most a couple of pixels (see envs/pusht.py)
    assert err.max() < 2.5


# ---- the env ----------------------------------------------------------------------------------


def test_obs_layout_and_reset_passthrough():
    _gym_pusht()
    from shortcut_policy.envs.pusht import PushTKeypointsEnv

    env = PushTKeypointsEnv()
    obs, _ = env.reset(seed=3)
    assert {k: s.shape for k, s in env.observation_space.items()} == {"keypoint": (9, 2), "agent_pos": (2,)}
    assert obs["keypoint"].dtype == np.float32 and env.observation_space.contains(obs)
    u = env.sim
    state = np.array([*u.agent.position, *u.block.position, u.block.angle])
    np.testing.assert_allclose(obs["keypoint"], keypoints_from_state(state), atol=1e-3)
    np.testing.assert_allclose(obs["agent_pos"], state[:2], atol=1e-4)
    # reset_to_state goes to gym-pusht unchanged (its legacy placement shifts the block; see legacy_reset_state)
    raw = [100.0, 100.0, 300.0, 300.0, 1.0]
    env.reset(options={"reset_to_state": raw})
    assert not np.allclose(u.block.position, raw[2:4], atol=1.0)
    obs, _ = env.reset(options={"reset_to_state": legacy_reset_state(raw)})
    np.testing.assert_allclose(u.block.position, raw[2:4], atol=1e-6)
    for k, v in lowdim_obs_from_state(raw).items():
        np.testing.assert_allclose(obs[k], v, atol=1e-3)


def test_dataset_starts_reproduced(shared_data):
    _gym_pusht()
    from shortcut_policy.envs.pusht import PushTKeypointsEnv

    state, ends = _load(shared_data, "data/state", "meta/episode_ends")
    env = PushTKeypointsEnv()
    for start in [0, *ends[:4]]:
        obs, _ = env.reset(options={"reset_to_state": legacy_reset_state(state[start])})
        for k, v in lowdim_obs_from_state(state[start]).items():
            np.testing.assert_allclose(obs[k], v, atol=1e-3)


def test_reward_and_success_definitions():
    _gym_pusht()
    from shortcut_policy.envs.pusht import PushTKeypointsEnv

    env = PushTKeypointsEnv()
    # block exactly on the goal, agent parked in a corner: full coverage, success, episode over
    start = legacy_reset_state([60.0, 60.0, *GOAL])
    env.reset(options={"reset_to_state": start})
    _, reward, terminated, _, info = env.step(np.array([60.0, 60.0]))
    assert info["coverage"] == pytest.approx(1.0, abs=1e-6)
    assert reward == 1.0 and info["is_success"] and terminated
    # anywhere else: reward = clip(coverage / 0.95, 0, 1), success = coverage > 0.95
    env.reset(options={"reset_to_state": legacy_reset_state([60.0, 60.0, 256.0, 230.0, np.pi / 4 + 0.2])})
    rng = np.random.default_rng(0)
    seen = []
    for _ in range(10):
        _, reward, terminated, _, info = env.step(rng.uniform(200, 300, size=2))
        cov = info["coverage"]
        assert reward == pytest.approx(min(max(cov / 0.95, 0.0), 1.0))
        assert info["is_success"] == (cov > 0.95) == terminated
        seen.append(cov)
        if terminated:
            break
    assert 0.0 < seen[0] < 0.95  # the partial-overlap branch was exercised


# ---- the runner -------------------------------------------------------------------------------


def test_runner_deterministic_and_result_dict():
    _gym_pusht()
    runner = make_runner("pusht_keypoints", max_episode_steps=24, seeds=[100000, 100001, 100002])
    a = runner.run(toward_block, progress=False)
    b = runner.run(toward_block, progress=False)
    np.testing.assert_array_equal(a.scores, b.scores)
    np.testing.assert_array_equal(a.lengths, b.lengths)
    assert a.lengths.tolist() == [24, 24, 24] and a.n_calls == 3
    assert len(set(a.scores.tolist())) > 1  # seeds give different starts
    d = a.to_dict()
    json.dumps(d)
    for key in ("score", "success", "n_episodes", "seeds", "scores", "successes", "lengths", "n_calls",
                "act_time_ms_p50", "act_time_ms_p99", "act_times_s"):
        assert key in d
    assert d["seeds"] == [100000, 100001, 100002] and d["score"] == pytest.approx(float(np.mean(d["scores"])))
    assert len(d["act_times_s"]) == 3 and all(t >= 0 for t in d["act_times_s"])


def test_finished_episodes_leave_the_batch():
    _gym_pusht()
    from shortcut_policy.envs.pusht import PushTRunner

    starts = [[60.0, 60.0, *GOAL], [60.0, 450.0, 150.0, 350.0, 0.5], [450.0, 60.0, 350.0, 150.0, 2.0]]
    runner = PushTRunner(max_episode_steps=20, seeds=[1, 2, 3], reset_states=starts)
    batch_sizes = []

    def act_fn(obs, rows):
        batch_sizes.append(obs["agent_pos"].shape[0])
        assert obs["keypoint"].shape[1:] == (2, 9, 2) and obs["agent_pos"].dtype == np.float32
        return np.repeat(obs["agent_pos"][:, -1:], 8, axis=1)  # hold position

    res = runner.run(act_fn, progress=False)
    assert batch_sizes == [3, 2, 2]  # episode 0 succeeds on its first step, the others run 8 + 8 + 4 steps
    assert res.successes.tolist() == [True, False, False]
    assert res.lengths.tolist() == [1, 20, 20]
    assert res.scores[0] == 1.0 and res.success == pytest.approx(1 / 3)
    # where each episode left the block: the goal itself, then two untouched starts
    f = res.finals
    assert f[0]["position_error_px"] == pytest.approx(0.0, abs=1e-6) and f[0]["angle_error_deg"] == pytest.approx(0.0, abs=1e-6)
    assert f[0]["coverage"] == pytest.approx(1.0, abs=1e-6)
    assert f[1]["position_error_px"] == pytest.approx(np.hypot(106.0, 94.0), abs=1e-3)
    assert f[1]["angle_error_deg"] == pytest.approx(np.degrees(0.5 - np.pi / 4), abs=1e-3)
    assert f[2]["angle_error_deg"] == pytest.approx(np.degrees(2.0 - np.pi / 4), abs=1e-3)
    assert 0.0 <= f[1]["coverage"] < 0.95 and "finals" in res.to_dict()
    # angles wrap to (-180, 180]: a block turned a full circle and a bit is a bit off
    res = PushTRunner(max_episode_steps=1, seeds=[1], reset_states=[[60.0, 60.0, 256.0, 256.0, np.pi / 4 + 2 * np.pi - 0.1]]).run(
        act_fn, progress=False)
    assert res.finals[0]["angle_error_deg"] == pytest.approx(np.degrees(-0.1), abs=1e-3)


def test_at_most_max_envs_run_at_once_and_results_match_one_env_per_episode(tmp_path):
    _gym_pusht()
    from shortcut_policy.envs.pusht import PushTRunner

    starts = [[60.0, 60.0, *GOAL], [60.0, 450.0, 150.0, 350.0, 0.5], [450.0, 60.0, 350.0, 150.0, 2.0],
              [300.0, 100.0, 200.0, 300.0, 1.0], [100.0, 300.0, 300.0, 200.0, 0.2]]
    seeds = [1, 2, 3, 4, 5]
    batch_sizes = []

    def act_fn(obs, rows):  # a function of each episode's own observation: results cannot depend on the batch
        batch_sizes.append(obs["agent_pos"].shape[0])
        return np.repeat((obs["agent_pos"][:, -1:] + obs["keypoint"][:, -1:, 0]) / 2, 8, axis=1)

    whole = PushTRunner(max_episode_steps=20, seeds=seeds, reset_states=starts).run(act_fn, progress=False)
    assert batch_sizes == [5, 4, 4]
    batch_sizes.clear()
    pooled = PushTRunner(max_episode_steps=20, seeds=seeds, reset_states=starts, max_envs=2)
    res = pooled.run(act_fn, progress=False, video_dir=tmp_path, n_videos=3)
    assert len(pooled._envs) == 2 and max(batch_sizes) == 2
    # episode 0 ends on its first step and its env takes episode 2 at once: the batch stays full
    assert batch_sizes == [2, 2, 2, 2, 2, 2, 1]  # 1 + 20 steps, then 20, 20 beside 20, 20
    for key in ("scores", "successes", "lengths"):
        np.testing.assert_array_equal(getattr(res, key), getattr(whole, key))
    assert res.finals == whole.finals and list(res.seeds) == seeds
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"pusht_keypoints_ep{i:03d}_seed{seeds[i]}.mp4" for i in range(3)]
    with pytest.raises(ValueError, match="max_envs must be a positive integer, got 0"):
        PushTRunner(seeds=seeds, max_envs=0)


def test_runner_rejects_bad_actions_and_names():
    _gym_pusht()
    runner = make_runner("pusht_keypoints", max_episode_steps=8, seeds=[0])
    with pytest.raises(ValueError, match=r"expected \(B, n_action_steps, action_dim\) = \(1, 8, 2\)"):
        runner.run(lambda obs, rows: np.zeros((1, 16, 2)), progress=False)
    with pytest.raises(ValueError, match="NaN"):
        runner.run(lambda obs, rows: np.full((1, 8, 2), np.nan), progress=False)
    with pytest.raises(ValueError, match="pusht_keypoints"):
        make_runner("pusht_image_typo")
    assert "pusht_keypoints" in runner_names()
    assert runner.observation_shapes() == {"keypoint": ((9, 2), np.float32), "agent_pos": ((2,), np.float32)}


def test_video_written_as_h264(tmp_path):
    _gym_pusht()
    av = pytest.importorskip("av")
    runner = make_runner("pusht_keypoints", max_episode_steps=8, seeds=[0, 1], render_size=96)
    runner.run(toward_block, progress=False, video_dir=tmp_path, n_videos=1)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["pusht_keypoints_ep000_seed0.mp4"]
    with av.open(str(tmp_path / files[0])) as c:
        stream = c.streams.video[0]
        assert stream.codec_context.name == "h264" and stream.codec_context.pix_fmt == "yuv420p"  # plays in browsers
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(stream)]
    assert len(frames) == 9 and frames[0].shape == (96, 96, 3)  # the reset frame + one per env step


def test_registered_env_and_wrappers_pass_gymnasium_check_env():
    _gym_pusht()
    import gymnasium as gym
    from gymnasium.utils.env_checker import check_env

    from shortcut_policy.envs.multistep import MultiStepWrapper
    from shortcut_policy.envs.pusht import ENV_ID
    from shortcut_policy.envs.video import VideoRecorder

    env = gym.make(ENV_ID, disable_env_checker=True)
    check_env(env.unwrapped, skip_render_check=True)
    check_env(MultiStepWrapper(VideoRecorder(env.unwrapped), n_obs_steps=2, n_action_steps=8, max_episode_steps=50),
              skip_render_check=True)


def test_declared_observation_bounds_hold():
    """Random and scripted play, and every dataset frame, stay inside the declared Dict observation space."""
    _gym_pusht()
    from shortcut_policy.envs.pusht import PushTKeypointsEnv

    env = PushTKeypointsEnv()
    rng = np.random.default_rng(0)
    for seed in range(4):
        obs, _ = env.reset(seed=seed)
        assert env.observation_space.contains(obs)
        for _ in range(120):
            obs, *_ = env.step(rng.uniform(0, 512, size=2) if rng.random() < 0.5 else np.array([5.0, 5.0]))
            assert env.observation_space.contains(obs), obs
    import zarr

    root = zarr.open_group(str(Path(__file__).resolve().parents[1] / "datasets/pusht_lowdim.zarr"), mode="r")
    kp, state = root["data/keypoint"][...], root["data/state"][...]
    box = env.observation_space
    assert box["keypoint"].low.min() <= kp.min() and kp.max() <= box["keypoint"].high.max()
    assert box["agent_pos"].low.min() <= state[:, :2].min() and state[:, :2].max() <= box["agent_pos"].high.max()


def test_missing_gym_pusht_error(monkeypatch):
    from shortcut_policy.envs import pusht

    monkeypatch.setitem(sys.modules, "gym_pusht", None)  # makes `import gym_pusht` fail
    with pytest.raises(ImportError, match=r"pip install 'shortcut-policy\[pusht\]'"):
        pusht.PushTRunner()


def test_import_envs_loads_no_torch_or_simulator():
    code = "import sys, envs; bad = [m for m in ('torch', 'gym_pusht', 'pygame') if m in sys.modules]; print(bad)"
    repo = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=repo)
    assert out.stdout.strip() == "[]"


def test_a_sampling_policys_episodes_do_not_depend_on_the_batch_they_run_in():
    """DDPM draws fresh noise at every step: each episode's noise comes from (seed, episode seed, chunk),
    so its actions are the same alone, one env at a time, or beside any other episodes."""
    _gym_pusht()
    import torch

    from shortcut_policy.core.config import objective_config
    from shortcut_policy.envs.pusht import PushTRunner
    from shortcut_policy.policy import PolicyConfig, ShortcutPolicy

    shape_meta = {"obs": {"keypoint": {"shape": [9, 2]}, "agent_pos": {"shape": [2]}}, "action": {"shape": [2]}}
    cfg = PolicyConfig(shape_meta=shape_meta, horizon=16, n_obs_steps=2, n_action_steps=8,
                       objective=objective_config({"kind": "ddpm", "num_train_timesteps": 10}),
                       net="unet1d", net_kwargs={"down_dims": [16, 32], "emb_dim": 32})
    policy = ShortcutPolicy(cfg)
    g = torch.Generator().manual_seed(0)
    policy.normalizer.fit({"keypoint": torch.rand(100, 9, 2, generator=g) * 512,
                           "agent_pos": torch.rand(100, 2, generator=g) * 512,
                           "action": torch.rand(100, 2, generator=g) * 512})
    policy.eval()

    def actions(seeds, max_envs=None, noise_seed=3):
        act = policy.act_fn(5, torch.Generator().manual_seed(noise_seed), "ddpm")
        seen: dict[tuple[int, int], np.ndarray] = {}

        def record(obs, rows):
            a = act(obs, rows)
            for row, chunk in zip(rows, a):
                seen[tuple(int(x) for x in row)] = chunk
            return a
        res = PushTRunner(max_episode_steps=24, seeds=seeds, max_envs=max_envs).run(record, progress=False)
        return seen, res.scores

    seeds = [11, 12, 13, 14]
    whole, scores = actions(seeds)
    assert sorted(whole) == [(s, c) for s in seeds for c in range(3)]
    one_at_a_time, scores1 = actions(seeds, max_envs=1)
    subset, _ = actions([13, 11])
    np.testing.assert_allclose(scores1, scores, atol=1e-3)
    for key, chunk in whole.items():  # the same up to float rounding, which varies with the batch size
        np.testing.assert_allclose(one_at_a_time[key], chunk, rtol=0, atol=0.05)
        if key[0] in (11, 13):
            np.testing.assert_allclose(subset[key], chunk, rtol=0, atol=0.05)
    other, _ = actions(seeds, noise_seed=4)  # the noise matters: another seed gives other actions
    assert all(np.abs(other[k] - whole[k]).max() > 1.0 for k in whole)
    assert np.abs(whole[(11, 0)] - whole[(12, 0)]).max() > 1.0  # and episodes do not share noise
