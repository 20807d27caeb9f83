"""Meta-World v3 tasks (Sawyer arm, goal-observable variants), one or several in one policy.

Observation ``{"obs": (39,) float32}`` (end effector, gripper, two objects' poses, the previous frame
of those, the goal) plus, in multi-task mode, ``task_id``: a one-hot (n_tasks,) naming the task, so one
policy conditioned on it serves every task (MP1 and FlowPolicy report such averages). Action (4,) in
[-1, 1] (end-effector translation, gripper). Success is Meta-World's ``info["success"]``; it ends the
episode and is the reward passed on. A reset seed draws the object and goal positions from that
seed (Meta-World's own randomization, seeded: ``seeded_rand_vec``), so seeds give different scenes
reproducibly.

:func:`generate` runs Meta-World's bundled scripted policies (``metaworld.policies``) and writes the
successful episodes to a zarr store: ``obs``, ``action``, ``task_id`` (one-hot over the store's task
list, kept in its attributes), one task per episode.

    python scripts/generate_metaworld.py --tasks mt10 --episodes 50 --out data/metaworld_mt10.zarr

Meta-World (and MuJoCo 3.3.0) are optional: ``pip install 'shortcut-policy[suites]'``.
"""
from __future__ import annotations

import time
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from .lockstep import LockstepRunner

OBS_DIM, ACTION_DIM = 39, 4
# five everyday tasks and five harder ones (long horizon, precise insertion, tool use)
MT10 = ("push-v3", "pick-place-v3", "door-open-v3", "drawer-open-v3", "button-press-v3",
        "assembly-v3", "peg-insert-side-v3", "stick-pull-v3", "pick-out-of-hole-v3", "disassemble-v3")


def _import_metaworld():
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from metaworld.env_dict import ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE
    except ImportError as e:
        raise ImportError(f"Meta-World tasks need metaworld ({e}); install with: pip install 'shortcut-policy[suites]'") from e
    return ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE


def task_list(tasks: str | Sequence[str]) -> list[str]:
    """``"mt10"`` or task names (``push-v3``, ...), checked against Meta-World's."""
    names = list(MT10) if tasks == "mt10" else [tasks] if isinstance(tasks, str) else list(tasks)
    known = _import_metaworld()
    bad = [t for t in names if f"{t}-goal-observable" not in known]
    if bad or not names:
        raise ValueError(f"unknown Meta-World tasks {bad or names}; v3 names such as {', '.join(MT10[:3])}")
    return names


class MetaWorldEnv(gym.Env):
    """One or several Meta-World tasks behind one env; ``reset(options={"task": name})`` picks the task
    of the episode (default the first). See the module doc."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 80}

    def __init__(self, tasks: str | Sequence[str] = ("push-v3",), one_hot: bool | None = None):
        self.tasks = task_list(tasks)
        self.one_hot = len(self.tasks) > 1 if one_hot is None else bool(one_hot)
        self._envs: dict[str, Any] = {}
        self.task = self.tasks[0]
        obs = {"obs": spaces.Box(-np.inf, np.inf, shape=(OBS_DIM,), dtype=np.float32)}
        if self.one_hot:
            obs["task_id"] = spaces.Box(0.0, 1.0, shape=(len(self.tasks),), dtype=np.float32)
        self.observation_space = spaces.Dict(obs)
        self.action_space = spaces.Box(-1.0, 1.0, shape=(ACTION_DIM,), dtype=np.float32)

    def _env(self, task: str):
        if task not in self._envs:
            cls = _import_metaworld()[f"{task}-goal-observable"]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                env = cls(seed=0, render_mode="rgb_array")
            env._freeze_rand_vec, env.seeded_rand_vec = False, True  # a new scene from each reset seed
            self._envs[task] = env
        return self._envs[task]

    def _obs(self, raw: np.ndarray) -> dict[str, np.ndarray]:
        out = {"obs": np.asarray(raw, dtype=np.float32)}
        if self.one_hot:
            out["task_id"] = np.eye(len(self.tasks), dtype=np.float32)[self.tasks.index(self.task)]
        return out

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        task = (options or {}).get("task", self.tasks[0])
        if task not in self.tasks:
            raise ValueError(f"task {task!r} is not one of this env's {self.tasks}")
        self.task = task
        env = self._env(task)
        if seed is not None:
            env.seed(int(seed))
        raw, info = env.reset()
        return self._obs(raw), info

    def step(self, action):
        env = self._env(self.task)
        raw, _, _, _, info = env.step(np.clip(np.asarray(action, dtype=np.float64), -1, 1))
        success = bool(info.get("success", 0.0))
        return self._obs(raw), float(success), success, False, {**info, "is_success": success}

    def outcome(self) -> str:
        """The episode's task (per-task success tables of a multi-task run)."""
        return self.task

    def render(self):
        return self._env(self.task).render()

    def close(self):
        for env in self._envs.values():
            env.close()
        self._envs = {}


class MetaWorldRunner(LockstepRunner):
    """Meta-World evaluation: the seeds are dealt to the tasks in turn (episode i runs
    ``tasks[i % n_tasks]``), so 50 seeds over 10 tasks give 5 episodes per task; outcomes name each
    episode's task. Success ends an episode."""

    name = "metaworld"
    fps = 20.0
    action_dim = ACTION_DIM

    def __init__(self, n_obs_steps: int = 2, n_action_steps: int = 8, max_episode_steps: int = 300,
                 seeds: Iterable[int] = range(100000, 100050), tasks: str | Sequence[str] = ("push-v3",),
                 one_hot: bool | None = None, max_envs: int | None = None):
        super().__init__(n_obs_steps, n_action_steps, max_episode_steps, seeds, max_envs)
        if max_episode_steps > 500:
            raise ValueError(f"Meta-World ends every episode at 500 steps; max_episode_steps {max_episode_steps} > 500")
        self.tasks = task_list(tasks)
        self.one_hot = one_hot

    def make_env(self) -> gym.Env:
        return MetaWorldEnv(self.tasks, self.one_hot)

    def reset_options(self, index: int, n_episodes: int) -> dict | None:
        return {"task": self.tasks[index % len(self.tasks)]}


def generate(tasks: str | Sequence[str], episodes: int, out: str | Path, seed_start: int = 0,
             max_steps: int = 300, progress: bool = True, overwrite: bool = False) -> dict[str, Any]:
    """``episodes`` successful scripted demonstrations per task (seeds from ``seed_start``; failures
    counted and skipped), written to a zarr store; returns per-task expert success and speed."""
    from metaworld.policies import ENV_POLICY_MAP

    from shortcut_policy.data.replay_buffer import ReplayBuffer

    names = task_list(tasks)
    env = MetaWorldEnv(names, one_hot=True)
    eps, report = [], {"tasks": {}, "max_steps": max_steps}
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=episodes * len(names), desc="Meta-World experts", unit="demo")
    t0, total_steps = time.perf_counter(), 0
    for k, task in enumerate(names):
        policy = ENV_POLICY_MAP[task]()
        kept, tried, steps = 0, 0, []
        while kept < episodes:
            if tried >= 3 * episodes + 20:
                raise RuntimeError(f"the {task} scripted policy succeeded in {kept} of {tried} episodes")
            obs, _ = env.reset(seed=seed_start + 10_000 * k + tried, options={"task": task})
            tried += 1
            rec: dict[str, list] = {"obs": [], "task_id": [], "action": []}
            success = False
            for _ in range(max_steps):
                action = np.clip(policy.get_action(obs["obs"].astype(np.float64)), -1, 1).astype(np.float32)
                for key in ("obs", "task_id"):
                    rec[key].append(obs[key])
                rec["action"].append(action)
                obs, _, success, _, _ = env.step(action)
                total_steps += 1
                if success:
                    break
            if success:
                eps.append({key: np.stack(v) for key, v in rec.items()})
                kept += 1
                steps.append(len(rec["action"]))
                if bar is not None:
                    bar.update(1)
        report["tasks"][task] = {"expert_success": kept / tried, "episodes_tried": tried,
                                 "steps_mean": float(np.mean(steps)), "steps_max": int(np.max(steps))}
    if bar is not None:
        bar.close()
    env.close()
    report["env_steps_per_s"] = total_steps / (time.perf_counter() - t0)
    report["demos"] = len(eps)
    ReplayBuffer.from_episodes(eps, attrs={"tasks": names, "source": {"format": "metaworld_scripted"}}).save(
        out, overwrite=overwrite)
    report["out"] = str(out)
    return report


GENERATE_DOC = """Meta-World demonstrations from its bundled scripted policies, written to a zarr store (successful
episodes only; per-task expert success and the environment's speed are printed and stored beside it).

    python scripts/generate_metaworld.py --tasks mt10 --episodes 50 --out data/metaworld_mt10.zarr
    python scripts/generate_metaworld.py --tasks push-v3 --episodes 50 --out data/metaworld_push.zarr
"""


def main(argv: list[str] | None = None) -> None:
    import argparse
    import json

    from shortcut_policy.results import result_doc, write_result

    ap = argparse.ArgumentParser(prog="generate_metaworld", description=GENERATE_DOC,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", nargs="+", default=["mt10"], help="mt10, or v3 task names")
    ap.add_argument("--episodes", type=int, default=50, help="successful demonstrations per task")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--seed-start", type=int, default=0, help="evaluation uses seeds from 100000")
    ap.add_argument("--max-steps", type=int, default=300)
    ap.add_argument("--overwrite", action="store_true")
    ap.add_argument("--report", type=Path, default=None, help="results JSON (default: beside --out)")
    args = ap.parse_args(argv)
    tasks = args.tasks[0] if args.tasks == ["mt10"] else args.tasks
    rep = generate(tasks, args.episodes, args.out, args.seed_start, args.max_steps, overwrite=args.overwrite)
    print(json.dumps(rep, indent=1))
    write_result(args.report or args.out.with_suffix(".json"),
                 result_doc("data", "metaworld", "scripted-expert", {}, **rep,
                            about="Meta-World scripted policies: per-task success, steps, environment speed"))
