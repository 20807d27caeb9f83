"""MultiStepWrapper on a fake env that records every action it receives."""
from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces

from shortcut_policy.envs.multistep import MultiStepWrapper


class RecordingEnv(gym.Env):
    """obs = [steps since reset, last action]; reward = rewards[t-1]; terminates after ``terminate_at`` steps."""

    observation_space = spaces.Box(-np.inf, np.inf, shape=(2,), dtype=np.float32)
    action_space = spaces.Box(-np.inf, np.inf, shape=(1,), dtype=np.float32)

    def __init__(self, terminate_at: int | None = None, rewards=None):
        self.terminate_at, self.rewards = terminate_at, rewards
        self.actions: list[float] = []
        self.t = 0
        self._buf = np.zeros(2, dtype=np.float32)  # reused on purpose: the wrapper must copy

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t, self.actions = 0, []
        self._buf[:] = (0.0, -1.0)
        return self._buf, {}

    def step(self, action):
        self.actions.append(float(action[0]))
        self.t += 1
        self._buf[:] = (self.t, action[0])
        reward = self.rewards[self.t - 1] if self.rewards is not None else 0.0
        return self._buf, reward, self.t == self.terminate_at, False, {"t": self.t}


def chunk(*values) -> np.ndarray:
    return np.array(values, dtype=np.float32)[:, None]  # (n_action_steps, 1)


def test_spaces_are_stacked():
    env = MultiStepWrapper(RecordingEnv(), n_obs_steps=3, n_action_steps=4)
    assert env.observation_space.shape == (3, 2)
    assert env.action_space.shape == (4, 1)


def test_chunk_executed_in_order():
    env = MultiStepWrapper(RecordingEnv(), n_obs_steps=2, n_action_steps=3)
    env.reset()
    _, _, terminated, truncated, info = env.step(chunk(1, 2, 3))
    assert env.env.actions == [1.0, 2.0, 3.0]
    assert info["n_steps"] == 3 and info["t"] == 3
    assert not terminated and not truncated
    env.step(chunk(4, 5, 6))
    assert env.env.actions == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    assert env.elapsed_steps == 6


def test_early_stop_at_termination():
    env = MultiStepWrapper(RecordingEnv(terminate_at=2), n_obs_steps=2, n_action_steps=4)
    env.reset()
    obs, _, terminated, truncated, info = env.step(chunk(1, 2, 3, 4))
    assert env.env.actions == [1.0, 2.0]  # actions 3 and 4 never reached the env
    assert terminated and not truncated
    assert info["n_steps"] == 2
    np.testing.assert_array_equal(obs[-1], [2.0, 2.0])
    with pytest.raises(RuntimeError, match="reset"):
        env.step(chunk(5, 6, 7, 8))


def test_history_padded_at_reset_and_rolled():
    env = MultiStepWrapper(RecordingEnv(), n_obs_steps=3, n_action_steps=2)
    obs, _ = env.reset()
    np.testing.assert_array_equal(obs, [[0, -1], [0, -1], [0, -1]])  # first obs repeated
    obs, *_ = env.step(chunk(10, 20))
    np.testing.assert_array_equal(obs, [[0, -1], [1, 10], [2, 20]])
    obs, *_ = env.step(chunk(30, 40))
    np.testing.assert_array_equal(obs, [[2, 20], [3, 30], [4, 40]])
    obs, _ = env.reset()  # a new episode forgets the old history
    np.testing.assert_array_equal(obs, [[0, -1], [0, -1], [0, -1]])


def test_reward_is_max_over_executed_steps():
    env = MultiStepWrapper(RecordingEnv(rewards=[0.1, 0.7, 0.3, 0.2, 0.9]), n_obs_steps=1, n_action_steps=3)
    env.reset()
    _, reward, *_ = env.step(chunk(0, 0, 0))
    assert reward == pytest.approx(0.7)  # not the sum (1.1) nor the last (0.3)
    env2 = MultiStepWrapper(RecordingEnv(terminate_at=4, rewards=[0.1, 0.2, 0.3, 0.4, 0.9]), 1, 3)
    env2.reset()
    env2.step(chunk(0, 0, 0))
    _, reward, terminated, *_ = env2.step(chunk(0, 0, 0))
    assert terminated and reward == pytest.approx(0.4)  # the 0.9 after termination is never seen


def test_step_limit_counts_env_steps_not_chunks():
    env = MultiStepWrapper(RecordingEnv(), n_obs_steps=2, n_action_steps=4, max_episode_steps=5)
    env.reset()
    _, _, terminated, truncated, _ = env.step(chunk(1, 2, 3, 4))
    assert not truncated
    _, _, terminated, truncated, info = env.step(chunk(5, 6, 7, 8))
    assert truncated and not terminated
    assert env.env.actions == [1.0, 2.0, 3.0, 4.0, 5.0]  # cut mid-chunk at the 5th env step
    assert info["n_steps"] == 1 and env.elapsed_steps == 5


@pytest.mark.parametrize("bad", [np.zeros((3,)), np.zeros((2, 1)), np.zeros((3, 2)), np.zeros((1, 3, 1))])
def test_wrong_chunk_shape_raises(bad):
    env = MultiStepWrapper(RecordingEnv(), n_obs_steps=2, n_action_steps=3)
    env.reset()
    with pytest.raises(ValueError, match=r"expected \(n_action_steps, \*action_shape\) = \(3, 1\)"):
        env.step(bad)
    assert env.env.actions == []


def test_bad_configuration_raises():
    with pytest.raises(ValueError, match="n_obs_steps"):
        MultiStepWrapper(RecordingEnv(), n_obs_steps=0, n_action_steps=1)
    with pytest.raises(ValueError, match="max_episode_steps"):
        MultiStepWrapper(RecordingEnv(), n_obs_steps=1, n_action_steps=1, max_episode_steps=0)


class DictEnv(gym.Env):
    """A Dict observation ({"pos": (2,), "cam": (4, 4, 3) uint8}) echoing the step count."""

    observation_space = spaces.Dict({"pos": spaces.Box(-np.inf, np.inf, shape=(2,), dtype=np.float32),
                                     "cam": spaces.Box(0, 255, shape=(4, 4, 3), dtype=np.uint8)})
    action_space = spaces.Box(-1, 1, shape=(1,), dtype=np.float32)

    def reset(self, *, seed=None, options=None):
        self.t = 0
        return self._obs(), {}

    def _obs(self):
        return {"pos": np.array([self.t, -self.t], np.float32), "cam": np.full((4, 4, 3), self.t, np.uint8)}

    def step(self, action):
        self.t += 1
        return self._obs(), 0.0, False, False, {}


def test_dict_observations_are_stacked_per_key():
    env = MultiStepWrapper(DictEnv(), n_obs_steps=2, n_action_steps=3)
    assert env.observation_space["cam"].shape == (2, 4, 4, 3) and env.observation_space["pos"].shape == (2, 2)
    obs, _ = env.reset()
    assert obs["cam"].shape == (2, 4, 4, 3) and obs["cam"].dtype == np.uint8
    np.testing.assert_array_equal(obs["pos"][:, 0], [0, 0])  # the first observation repeated
    obs, *_ = env.step(chunk(0, 0, 0))
    np.testing.assert_array_equal(obs["pos"][:, 0], [2, 3])
    np.testing.assert_array_equal(obs["cam"][:, 0, 0, 0], [2, 3])
