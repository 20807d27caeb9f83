"""Adroit door (gymnasium-robotics ``AdroitHandDoor-v1``): a 24-DoF hand on a 4-DoF arm opens a door.

Observation ``{"obs": (39,) float32}`` (gymnasium-robotics' vector: arm and hand joints, latch, door
hinge, palm and handle positions), action (28,) in [-1, 1] (absolute joint targets, normalized).
Evaluation starts from the environment's own seeded resets; success is its ``info["success"]``
(the hinge opened past 1.35 rad), which ends the episode, and the reward passed on is that 0 / 1.
``reset(options={"initial_state_dict": {"qpos", "qvel", "door_body_pos"}})`` starts from a
demonstration's recorded state (replay checks). The 25 human demonstrations of hand_dapg are
``door_human_v0.zarr`` (``data/obs``, ``data/action``, ``meta/init_*``); the task yaml is
``configs/task/adroit_door.yaml``.

gymnasium-robotics (and MuJoCo 3.3.0) are optional: ``pip install 'shortcut-policy[suites]'``.
"""
from __future__ import annotations

from collections.abc import Iterable

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from .lockstep import LockstepRunner

OBS_DIM, ACTION_DIM = 39, 28


def _import_robotics():
    import warnings

    try:
        with warnings.catch_warnings():  # its note on the Dense variants' rewards (we use the sparse success)
            warnings.simplefilter("ignore")
            import gymnasium_robotics
    except ImportError as e:
        raise ImportError(f"Adroit needs gymnasium-robotics ({e}); install with: pip install 'shortcut-policy[suites]'") from e
    gym.register_envs(gymnasium_robotics)
    return gymnasium_robotics


class AdroitDoorEnv(gym.Env):
    """``AdroitHandDoor-v1`` with a dict observation and success as the reward (see the module doc)."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 100}

    def __init__(self, render_mode: str | None = "rgb_array", render_size: int = 256):
        _import_robotics()
        import warnings

        with warnings.catch_warnings():  # gymnasium-robotics' note about the Dense variants' rewards
            warnings.simplefilter("ignore")
            self.sim = gym.make("AdroitHandDoor-v1", render_mode=render_mode, width=render_size, height=render_size,
                                disable_env_checker=True).unwrapped  # no TimeLimit: the runner's limit holds
        self.render_mode = render_mode
        self.observation_space = spaces.Dict({"obs": spaces.Box(-np.inf, np.inf, shape=(OBS_DIM,), dtype=np.float32)})
        self.action_space = spaces.Box(-1.0, 1.0, shape=(ACTION_DIM,), dtype=np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        obs, info = self.sim.reset(seed=seed, options=options)
        return {"obs": np.asarray(obs, dtype=np.float32)}, info

    def step(self, action):
        obs, _, _, _, info = self.sim.step(np.asarray(action, dtype=np.float64))
        success = bool(info.get("success", False))
        return {"obs": np.asarray(obs, dtype=np.float32)}, float(success), success, False, {**info, "is_success": success}

    def render(self):
        return self.sim.render()

    def close(self):
        self.sim.close()


class AdroitDoorRunner(LockstepRunner):
    """Adroit door on seeded episodes from the environment's resets; score = success share."""

    name = "adroit_door"
    fps = 25.0  # frame skip 5 at 500 Hz physics: 100 Hz control; videos play at a quarter speed
    action_dim = ACTION_DIM

    def __init__(self, n_obs_steps: int = 2, n_action_steps: int = 8, max_episode_steps: int = 300,
                 seeds: Iterable[int] = range(100000, 100050), render_size: int = 256, max_envs: int | None = None):
        _import_robotics()
        super().__init__(n_obs_steps, n_action_steps, max_episode_steps, seeds, max_envs)
        self.render_size = int(render_size)

    def make_env(self) -> gym.Env:
        return AdroitDoorEnv(render_size=self.render_size)
