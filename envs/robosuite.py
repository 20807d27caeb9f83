"""robosuite manipulation tasks (Lift, PickPlaceCan, NutAssemblySquare, and TwoCubeLift, a task with
two equally good answers), built from a robomimic ``env_args`` description.

A robomimic HDF5 file says how its demonstrations' environment was made::

    {"env_name": "Lift", "type": 1, "env_kwargs": {"robots": ["Panda"], "controller_configs": {...},
     "control_freq": 20, ...}}

:func:`make_robosuite` builds exactly that environment with robosuite 1.5: controller configs written
for robosuite <= 1.4 (one part config, ``{"type": "OSC_POSE", ...}``) are converted to 1.5's composite
format for the robot's right arm, rendering is switched on only when cameras are asked for, and the
episode never ends inside robosuite (the runner's ``max_episode_steps`` is the limit). Without
``env_args`` the defaults are robomimic's: Panda, the OSC_POSE delta controller (``BASIC``, 7-D
actions: end-effector translation, rotation, gripper), 20 Hz, sparse reward, object observations.

Observations use robomimic's names: ``robot0_eef_pos`` (3,), ``robot0_eef_quat`` (4,),
``robot0_gripper_qpos`` (2,) and ``object`` (robosuite's ``object-state``), and cameras as
``<camera>_image`` (H, W, 3) uint8, upright (robosuite renders them upside down; robomimic flips them,
and so do we). Reward is robosuite's own success check (``env._check_success()``) as 0 / 1, the episode
ends on success, and ``info["is_success"]`` carries it.

robosuite (with numba, scipy, opencv) is optional: ``pip install 'shortcut-policy[suites]'`` and then
``pip install --no-deps robosuite==1.5.2`` (its mink pin wants numpy < 2; ``scripts/setup.sh`` does both).
"""
from __future__ import annotations

import copy
import gc
import importlib
import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from .lockstep import LockstepRunner

LOW_DIM_KEYS = ("robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos", "object")
ACTION_DIM = 7
CONTROL_FREQ = 20
TASKS = ("Lift", "PickPlaceCan", "NutAssemblySquare", "TwoCubeLift")


def _import_robosuite():
    os.environ.setdefault("MUJOCO_GL", "egl")  # headless offscreen rendering for cameras
    try:
        import robosuite
    except ImportError as e:
        raise ImportError(
            f"robosuite tasks need robosuite 1.5 ({e}); install with: pip install 'shortcut-policy[suites]' && "
            "pip install --no-deps robosuite==1.5.2") from e
    logging.getLogger("robosuite_logs").setLevel(logging.ERROR)  # per-part controller notices on every make
    importlib.import_module(f"{__package__}.robosuite_tasks")  # defining TwoCubeLift registers it with robosuite
    return robosuite


def default_env_args(env_name: str) -> dict[str, Any]:
    """robomimic-style ``env_args`` for ``env_name`` with this package's defaults (see the module doc)."""
    if env_name not in TASKS:
        raise ValueError(f"unknown robosuite task {env_name!r}; known: {', '.join(TASKS)}")
    robosuite = _import_robosuite()
    from robosuite.controllers import load_composite_controller_config

    return {"env_name": env_name, "type": 1, "env_version": robosuite.__version__,
            "env_kwargs": {"robots": ["Panda"],
                           "controller_configs": load_composite_controller_config(controller="BASIC", robot="Panda"),
                           "control_freq": CONTROL_FREQ, "reward_shaping": False, "use_object_obs": True,
                           "has_renderer": False, "has_offscreen_renderer": False, "use_camera_obs": False,
                           "ignore_done": True}}


def parse_env_args(env_args: str | Mapping[str, Any]) -> dict[str, Any]:
    """``env_args`` as a dict (robomimic stores it as a JSON string); errors say what is missing."""
    if isinstance(env_args, str):
        try:
            env_args = json.loads(env_args)
        except json.JSONDecodeError as e:
            raise ValueError(f"env_args is not JSON: {e}") from None
    if not isinstance(env_args, Mapping) or "env_name" not in env_args:
        raise ValueError(f"env_args must be a mapping with env_name (robomimic's data attribute), got {env_args!r}")
    if env_args.get("type", 1) != 1:
        raise ValueError(f"env_args type {env_args.get('type')} is not a robosuite environment (robomimic type 1)")
    return copy.deepcopy(dict(env_args))


def make_robosuite(env_args: str | Mapping[str, Any], cameras: Sequence[str] = (), image_size: int = 84,
                   seed: int | None = None):
    """The robosuite environment ``env_args`` describes (see the module doc); ``cameras`` switches on
    offscreen rendering of those cameras at ``image_size`` px."""
    robosuite = _import_robosuite()
    from robosuite.controllers.composite.composite_controller_factory import refactor_composite_controller_config

    args = parse_env_args(env_args)
    kwargs = dict(args.get("env_kwargs") or {})
    robots = kwargs.get("robots", ["Panda"])
    robot = robots[0] if isinstance(robots, (list, tuple)) else robots
    ctrl = kwargs.get("controller_configs")
    if ctrl is None:
        from robosuite.controllers import load_composite_controller_config

        ctrl = load_composite_controller_config(controller="BASIC", robot=robot)
    kwargs["controller_configs"] = refactor_composite_controller_config(ctrl, robot, ["right"])
    kwargs.update(has_renderer=False, has_offscreen_renderer=bool(cameras), use_camera_obs=bool(cameras),
                  ignore_done=True, use_object_obs=True)
    if cameras:
        kwargs.update(camera_names=list(cameras), camera_heights=image_size, camera_widths=image_size)
    kwargs.pop("seed", None)
    try:
        return robosuite.make(args["env_name"], seed=seed, **kwargs)
    except Exception as e:  # robosuite raises bare exceptions for unknown names and kwargs
        raise ValueError(f"robosuite cannot make {args['env_name']!r} from env_args: {e}") from e


def _reseed(sim, seed: int) -> None:
    """One generator for everything robosuite draws at reset (robot start noise, object sizes and
    placements): a placement sampler kept from an earlier scene still holds its old generator."""
    sim.rng = np.random.default_rng(seed)
    sim.hard_reset = True  # the scene is rebuilt from the new generator

    def walk(sampler):
        if sampler is None:
            return
        for sub in getattr(sampler, "samplers", {}).values():
            walk(sub)
        if hasattr(sampler, "rng"):
            sampler.rng = sim.rng

    walk(getattr(sim, "placement_initializer", None))


def _release_gl() -> None:
    """Leave no EGL context current (no EGL display yet, or another GL backend: nothing to do)."""
    if os.environ.get("MUJOCO_GL") == "egl":
        from robosuite.renderers.context.egl_context import EGL, EGL_DISPLAY

        if EGL_DISPLAY is not None:
            EGL.eglMakeCurrent(EGL_DISPLAY, EGL.EGL_NO_SURFACE, EGL.EGL_NO_SURFACE, EGL.EGL_NO_CONTEXT)


class RobosuiteEnv(gym.Env):
    """A robosuite task as a gymnasium env with robomimic's observation names (see the module doc).

    ``reset(seed=s)`` re-seeds robosuite's generator and rebuilds the scene (robosuite's hard reset), so
    a seed gives the same object placement in every process. ``sim`` is the robosuite environment.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": CONTROL_FREQ}

    def __init__(self, env_args: str | Mapping[str, Any] | None = None, env_name: str = "Lift",
                 obs_keys: Sequence[str] = LOW_DIM_KEYS, cameras: Sequence[str] = (), image_size: int = 84,
                 render_camera: str = "agentview", render_size: int = 256, render_mode: str = "rgb_array"):
        self.env_args = parse_env_args(env_args) if env_args is not None else default_env_args(env_name)
        self.cameras = list(cameras)
        self.render_camera, self.render_size, self.render_mode = render_camera, int(render_size), render_mode
        self.sim = make_robosuite(self.env_args, self.cameras, image_size)
        self.obs_keys = list(obs_keys)
        raw = self.sim.reset()
        low = self._low_dim(raw)
        self.observation_space = spaces.Dict({
            **{k: spaces.Box(-np.inf, np.inf, shape=v.shape, dtype=np.float32) for k, v in low.items()},
            **{f"{c}_image": spaces.Box(0, 255, shape=(image_size, image_size, 3), dtype=np.uint8) for c in self.cameras}})
        if hasattr(self.sim, "outcome"):  # a task with several ways to succeed says which one an episode took
            self.outcome = self.sim.outcome
        lo, hi = self.sim.action_spec
        self.action_space = spaces.Box(lo.astype(np.float32), hi.astype(np.float32), dtype=np.float32)

    @property
    def env_name(self) -> str:
        return self.env_args["env_name"]

    def _low_dim(self, raw: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = {}
        for k in self.obs_keys:
            src = "object-state" if k == "object" else k
            if src not in raw:
                raise KeyError(f"robosuite {self.env_args['env_name']} has no observation {k!r}; it has "
                               f"{sorted(raw)} ('object' is object-state)")
            out[k] = np.asarray(raw[src], dtype=np.float32)
        return out

    def _obs(self, raw: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        obs = self._low_dim(raw)
        for c in self.cameras:
            obs[f"{c}_image"] = np.ascontiguousarray(raw[f"{c}_image"][::-1])  # upright, as robomimic stores it
        return obs

    def _gl_current(self) -> None:
        """Make this env's offscreen GL context current before its sim renders. robosuite renders into
        whatever context is current, and freeing an old context (``eglReleaseThread``) releases the
        live one: without this, a second camera env in the process, or the collection of a reset's old
        scene, left the camera frames as noise on an EGL machine."""
        ctx = getattr(self.sim.sim, "_render_context_offscreen", None)
        if ctx is not None:
            ctx.gl_ctx.make_current()

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is not None:
            _reseed(self.sim, seed)
        self._gl_current()
        raw = self.sim.reset()
        # the hard reset rebuilt the scene and left the old one (with its renderer's buffers) in reference
        # cycles: collected now, a camera env stays at about 0.6 GB; left to the collector, it grew by about
        # 0.3 GB per reset here. No GL context is current while it is collected: the old scene's renderer
        # frees its GL objects by id in whatever context is current, which would be this env's new one
        # (noise frames on an EGL machine)
        if self.cameras:
            _release_gl()
        gc.collect()
        self._gl_current()
        if options and "state" in options:  # a recorded simulator state (robomimic's states/<t>)
            self.sim.sim.set_state_from_flattened(np.asarray(options["state"], dtype=np.float64))
            self.sim.sim.forward()
            raw = self.sim._get_observations(force_update=True)
        return self._obs(raw), {}

    def step(self, action):
        self._gl_current()
        raw, _, _, info = self.sim.step(np.asarray(action, dtype=np.float64))
        success = bool(self.sim._check_success())
        info = {**info, "is_success": success}
        return self._obs(raw), float(success), success, False, info

    def render(self):
        self._gl_current()
        frame = self.sim.sim.render(camera_name=self.render_camera, height=self.render_size, width=self.render_size)
        return np.ascontiguousarray(frame[::-1])

    def close(self):
        self.sim.close()

    def get_state(self) -> np.ndarray:
        """The flattened MuJoCo state (robomimic's ``states``)."""
        return np.asarray(self.sim.sim.get_state().flatten(), dtype=np.float64)


ENV_ID = "shortcut_policy/Robosuite-v0"
if ENV_ID not in gym.registry:
    gym.register(ENV_ID, entry_point="shortcut_policy.envs.robosuite:RobosuiteEnv")


class RobosuiteRunner(LockstepRunner):
    """Closed-loop evaluation of a robosuite task on seeded episodes: success = robosuite's check at any
    step (the episode ends there), score = the share of successful episodes.

    ``env_args``: a robomimic description (dict or JSON string) or None for ``env_name`` with the defaults;
    ``obs_keys`` and ``cameras`` must match the policy's shape_meta keys (cameras as ``<name>_image``);
    ``obs_keys`` None: the policy's low-dim keys when ``observe`` offers them (``task.make_runner`` does),
    else robomimic's low-dim set.
    """

    name = "robosuite"
    fps = float(CONTROL_FREQ)
    action_dim = ACTION_DIM

    def __init__(self, n_obs_steps: int = 2, n_action_steps: int = 8, max_episode_steps: int = 400,
                 seeds: Iterable[int] = range(100000, 100050), env_name: str = "Lift",
                 env_args: str | Mapping[str, Any] | None = None, obs_keys: Sequence[str] | None = None,
                 cameras: Sequence[str] = (), image_size: int = 84, render_size: int = 256,
                 max_envs: int | None = None):
        _import_robosuite()  # fail here, with the install hint
        super().__init__(n_obs_steps, n_action_steps, max_episode_steps, seeds, max_envs)
        self.env_kwargs = dict(env_args=env_args, env_name=env_name, obs_keys=None if obs_keys is None else list(obs_keys),
                               cameras=list(cameras), image_size=image_size, render_size=render_size)
        self.name = f"robosuite_{(parse_env_args(env_args)['env_name'] if env_args else env_name).lower()}"

    def env_memory_mb(self) -> float:
        # scripts/bench_envs.py on the Xeon: 117-126 MB a low-dim env, 394 MB with one 84x84 camera (0.6 GB on
        # the AMD machine); rounded up, so a 100-episode low-dim evaluation runs 30 envs, not 100 (12 GB)
        return 130.0 + 500.0 * len(self.env_kwargs["cameras"])

    def observe(self, low_dim_keys: list[str]) -> None:
        if self.env_kwargs["obs_keys"] is None and not self._envs:  # the task named none: the policy's
            self.env_kwargs["obs_keys"] = list(low_dim_keys)

    def make_env(self) -> gym.Env:
        return RobosuiteEnv(**{**self.env_kwargs, "obs_keys": self.env_kwargs["obs_keys"] or LOW_DIM_KEYS})
