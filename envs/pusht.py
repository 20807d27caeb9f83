"""PushT on gym-pusht's simulator, seen through Diffusion Policy's two observations.

Low-dim (``PushTKeypointsEnv``, runner ``pusht_keypoints``): a dict of float32 arrays in pixels: ``keypoint`` (9, 2), the T block's 9 keypoints
computed from the block pose, and ``agent_pos`` (2,), the agent position -- the arrays
``data/keypoint`` and ``data/state[:, :2]`` of pusht_cchi_v7_replay.zarr (the task config
``configs/task/pusht_lowdim.yaml`` names them). Not gym-pusht's own ``environment_state`` (8
polygon corners, another layout).

Pixels (``PushTImageEnv``, runner ``pusht_image``): ``image`` (96, 96, 3) uint8, gym-pusht's
``obs_type="pixels_agent_pos"`` view, and ``agent_pos`` (2,) -- the arrays ``data/img`` and
``data/state[:, :2]`` of the same store (``configs/task/pusht_image.yaml``). The simulator's render
matches the dataset's frames in layout and scale (``docs/images.md``).

Reward and success are gym-pusht's, unchanged (checked in gym_pusht 0.1.8, envs/pusht.py
``PushTEnv.step``): coverage = area(block ∩ goal) / area(goal), reward = clip(coverage / 0.95,
0, 1), ``info["is_success"] = terminated = coverage > 0.95``; the episode ends on success.
gym-pusht's registered 300-step TimeLimit is dropped: the runner's ``max_episode_steps`` is the limit.

gym-pusht (and pygame, pymunk, shapely, opencv with it) is optional: ``pip install
'shortcut-policy[pusht]'``. Only the environment classes import it; the keypoint maths is numpy.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from .lockstep import LockstepRunner

# The 9 block keypoints in the block's body frame (pixels), rows = keypoints, columns = (x, y).
# Diffusion Policy drew them at random inside the T mask (farthest-point sampling plus a small
# random shift), so they exist only in its data; recovered here from pusht_cchi_v7_replay.zarr:
#   local = R(angle)^T (keypoint - block_xy), with state = [ax, ay, bx, by, angle] and
#   R(a) = [[cos a, -sin a], [sin a, cos a]] (pymunk's convention; the opposite sign of the
#   angle leaves residuals of ~180 px), i.e. keypoint = R(angle) @ local + block_xy,
#   with block_xy = pymunk's ``block.position`` (the body origin, not its centre of gravity).
# The map is the median over all 25,650 frames, refined by the mean over the 19,648 frames that
# agree with it to 1e-3 px. Reconstruction error (max over the 9 points): median 1.6e-5 px
# (float32 round-off), < 1e-3 px on 99.86% of the 13,755 frames without agent-block contact, but
# up to 2.2 px on frames with contact (n_contacts > 0): there the stored keypoints sit at a block
# pose up to 1.1 px / 0.015 rad away from the stored state. They are still an exact rigid copy of
# this map (a free per-frame rigid fit leaves 2.4e-5 px), so the map is exact and the offset is
# in the data, confined to frames during or just after contact: most likely state and keypoints
# were not taken at the same physics instant while the agent pushes. The env computes both from
# one live pose, as Diffusion Policy's env did.
BLOCK_KEYPOINTS_LOCAL = np.array(
    [
        [9.269787, 90.040974],
        [-60.983472, -1.186730],
        [60.912756, -1.393364],
        [-0.270503, 25.543625],
        [-14.064927, 122.815854],
        [39.002739, 32.857404],
        [-39.966414, 32.729656],
        [-16.824344, 62.863179],
        [23.541461, -1.700288],
    ]
)  # (9, 2)

# The T's centre of gravity in its body frame (gym-pusht / Diffusion Policy ``add_tee``, scale 30):
# the mean of the two bars' centroids (0, 15) and (0, 75).
BLOCK_COG_LOCAL = np.array([0.0, 45.0])

ACTION_DIM = 2
# Keypoints lie up to 124 px from the block origin, which the arena walls keep inside [0, 512]:
# they can leave the window by that much (seen: -3.2 to 512.6), so the declared box is wider.
KEYPOINT_BOUNDS = (-128.0, 640.0)


def _rot(angle: np.ndarray) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.stack([np.stack([c, -s], -1), np.stack([s, c], -1)], -2)  # (..., 2, 2)


def _as_states(state, name: str = "state") -> np.ndarray:
    arr = np.asarray(state, dtype=np.float64)
    if arr.ndim == 0 or arr.shape[-1] != 5:
        raise ValueError(
            f"{name} must have shape (..., 5) = [agent x, agent y, block x, block y, angle], got {arr.shape}"
        )
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or inf")
    return arr


def keypoints_from_state(state) -> np.ndarray:
    """Block keypoints in pixels from PushT states: (..., 5) -> (..., 9, 2) float64."""
    s = _as_states(state)
    rot = _rot(s[..., 4])  # (..., 2, 2)
    return np.einsum("...ij,kj->...ki", rot, BLOCK_KEYPOINTS_LOCAL) + s[..., None, 2:4]  # (..., 9, 2)


def lowdim_obs_from_state(state) -> dict[str, np.ndarray]:
    """Diffusion Policy's low-dim observation from states (..., 5): {"keypoint": (..., 9, 2),
    "agent_pos": (..., 2)}, float32."""
    s = _as_states(state)
    return {"keypoint": keypoints_from_state(s).astype(np.float32), "agent_pos": s[..., :2].astype(np.float32)}


def legacy_reset_state(state) -> np.ndarray:
    """The ``reset_to_state`` to pass to gym-pusht so the block lands exactly at ``state``'s pose.

    gym-pusht (like Diffusion Policy's ``legacy`` mode) sets the block position while the block is
    at angle 0 and then rotates it about its centre of gravity c, so ``[.., bx, by, a]`` ends with
    the body origin at (bx, by) + c - R(a) c (up to 90 px away). Passing (bx, by) - c + R(a) c
    undoes that. (..., 5) -> (..., 5). One 10 ms physics step follows the reset, which moves the
    block only if the agent starts overlapping it. Assumes gym-pusht's default ``block_cog``.
    """
    s = _as_states(state).copy()
    rot = _rot(s[..., 4])
    s[..., 2:4] += -BLOCK_COG_LOCAL + np.einsum("...ij,j->...i", rot, BLOCK_COG_LOCAL)
    return s


def _import_gym_pusht():
    try:
        import gym_pusht  # registers gym_pusht/PushT-v0
    except ImportError as e:
        raise ImportError(
            f"PushT needs the optional dependency gym-pusht ({e}); "
            "install it with: pip install 'shortcut-policy[pusht]'  (or: pip install gym-pusht)"
        ) from e
    return gym_pusht


class _PushTEnv(gym.Env):
    """gym-pusht's PushT-v0 seen through one of this package's observations (subclasses say which).

    reset(seed=..., options={"reset_to_state": [ax, ay, bx, by, angle]}) is passed to gym-pusht
    unchanged (see ``legacy_reset_state`` for what that state means). ``render()`` gives an
    (render_size, render_size, 3) uint8 frame with the last action marked. ``sim`` is the gym-pusht
    env (its pymunk bodies: ``sim.agent``, ``sim.block``). Reward, termination and ``info`` are
    gym-pusht's; no time limit (the runner's ``max_episode_steps`` is the limit).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}
    _obs_type = "state"

    def __init__(self, render_mode: str = "rgb_array", render_size: int = 256, **pusht_kwargs):
        if render_size < 96:  # gym-pusht draws the action marker int(render_size / 96) px thick
            raise ValueError(f"render_size must be >= 96 (gym-pusht's action marker needs it), got {render_size}")
        _import_gym_pusht()
        self.sim = gym.make(
            "gym_pusht/PushT-v0",
            obs_type=self._obs_type,
            render_mode=render_mode,
            visualization_width=render_size,
            visualization_height=render_size,
            disable_env_checker=True,
            **pusht_kwargs,
        ).unwrapped  # drop the registered TimeLimit: the step limit belongs to the caller
        self.render_mode = render_mode
        self.action_space = self.sim.action_space

    def _obs(self, raw) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        raw, info = self.sim.reset(seed=seed, options=options)
        self._coverage = None
        return self._obs(raw), info

    def step(self, action):
        raw, reward, terminated, truncated, info = self.sim.step(action)
        self._coverage = float(info["coverage"])
        return self._obs(raw), reward, terminated, truncated, info

    def final_state(self) -> dict[str, float]:
        """Where the block is against the goal now: ``position_error_px`` (distance of the block's
        origin to the goal's, pixels of the 512 px arena), ``angle_error_deg`` (signed, wrapped to
        (-180, 180]), ``coverage`` (goal area covered after the last step; success is > 0.95)."""
        pose, goal = np.asarray(self.sim.block.position, dtype=np.float64), np.asarray(self.sim.goal_pose, dtype=np.float64)
        dangle = float(np.degrees(self.sim.block.angle - goal[2]))
        dangle = dangle - 360.0 * np.ceil((dangle - 180.0) / 360.0)  # wrapped to (-180, 180]
        return {"position_error_px": float(np.linalg.norm(pose - goal[:2])), "angle_error_deg": dangle,
                "coverage": float("nan") if self._coverage is None else self._coverage}

    def render(self):
        return self.sim.render()

    def close(self):
        self.sim.close()


class PushTKeypointsEnv(_PushTEnv):
    """PushT (gym-pusht, obs_type="state") seen through Diffusion Policy's keypoint observation
    {"keypoint": (9, 2), "agent_pos": (2,)}, float32 pixels; registered as
    ``shortcut_policy/PushTKeypoints-v0``. See :class:`_PushTEnv` for reset, render and ``sim``."""

    def __init__(self, render_mode: str = "rgb_array", render_size: int = 256, **pusht_kwargs):
        super().__init__(render_mode, render_size, **pusht_kwargs)
        self.observation_space = spaces.Dict({
            "keypoint": spaces.Box(*KEYPOINT_BOUNDS, shape=(9, 2), dtype=np.float32),
            "agent_pos": spaces.Box(0.0, 512.0, shape=(2,), dtype=np.float32)})

    def _obs(self, raw) -> dict[str, np.ndarray]:
        return lowdim_obs_from_state(raw)


class PushTImageEnv(_PushTEnv):
    """PushT from pixels (gym-pusht, obs_type="pixels_agent_pos"): {"image": (96, 96, 3) uint8, the
    top-down view without the action marker, as Diffusion Policy's ``data/img``; "agent_pos": (2,)
    float32 pixels}; registered as ``shortcut_policy/PushTImage-v0``. ``image_size`` sets the
    observed image's side (96 is the dataset's). See :class:`_PushTEnv` for reset, render and ``sim``.
    """

    _obs_type = "pixels_agent_pos"

    def __init__(self, render_mode: str = "rgb_array", render_size: int = 256, image_size: int = 96,
                 **pusht_kwargs):
        super().__init__(render_mode, render_size, observation_width=image_size, observation_height=image_size,
                         **pusht_kwargs)
        self.observation_space = spaces.Dict({
            "image": spaces.Box(0, 255, shape=(image_size, image_size, 3), dtype=np.uint8),
            "agent_pos": spaces.Box(0.0, 512.0, shape=(2,), dtype=np.float32)})

    def _obs(self, raw) -> dict[str, np.ndarray]:
        return {"image": np.ascontiguousarray(raw["pixels"], dtype=np.uint8),
                "agent_pos": np.asarray(raw["agent_pos"], dtype=np.float32)}


ENV_ID = "shortcut_policy/PushTKeypoints-v0"
IMAGE_ENV_ID = "shortcut_policy/PushTImage-v0"
for _id, _cls in ((ENV_ID, "PushTKeypointsEnv"), (IMAGE_ENV_ID, "PushTImageEnv")):
    if _id not in gym.registry:
        gym.register(_id, entry_point=f"shortcut_policy.envs.pusht:{_cls}")


class PushTRunner(LockstepRunner):
    """Diffusion Policy's PushT low-dim protocol: 50 seeded episodes of up to 300 env steps.

    ``reset_states`` (N, 5), optional, one per episode: start from these poses (e.g. dataset
    starts, in the dataset's convention) instead of the seed's random start.
    """

    name = "pusht_keypoints"
    fps = 10.0  # gym-pusht's control rate
    action_dim = ACTION_DIM

    def __init__(
        self,
        n_obs_steps: int = 2,
        n_action_steps: int = 8,
        max_episode_steps: int = 300,
        seeds: Iterable[int] = range(100000, 100050),
        render_size: int = 256,
        reset_states: Sequence[Sequence[float]] | np.ndarray | None = None,
        max_envs: int | None = None,
    ):
        _import_gym_pusht()  # fail here, with the install hint, rather than at the first run
        if render_size < 96:
            raise ValueError(f"render_size must be >= 96 (gym-pusht's action marker needs it), got {render_size}")
        super().__init__(n_obs_steps, n_action_steps, max_episode_steps, seeds, max_envs)
        self.render_size = int(render_size)
        self.reset_states = None if reset_states is None else _as_states(reset_states, "reset_states").reshape(-1, 5)

    def make_env(self) -> gym.Env:
        return gym.make(ENV_ID, render_mode="rgb_array", render_size=self.render_size,
                        disable_env_checker=True).unwrapped

    def reset_options(self, index: int, n_episodes: int) -> dict | None:
        if self.reset_states is None:
            return None
        if len(self.reset_states) != n_episodes:
            raise ValueError(f"reset_states has {len(self.reset_states)} rows but the run has {n_episodes} seeds")
        return {"reset_to_state": legacy_reset_state(self.reset_states[index])}


class PushTImageRunner(PushTRunner):
    """PushT from pixels under the same protocol as :class:`PushTRunner` (seeds, 300 env steps,
    gym-pusht's reward and success): observations {"image": (96, 96, 3) uint8, "agent_pos": (2,)}."""

    name = "pusht_image"

    def make_env(self) -> gym.Env:
        return gym.make(IMAGE_ENV_ID, render_mode="rgb_array", render_size=self.render_size,
                        disable_env_checker=True).unwrapped
