"""All episodes of an evaluation in lockstep, in one process, with one act_fn call per chunk.

A suite subclasses ``LockstepRunner`` and only says how to build one single-step env
(``make_env``, a Dict observation space of Boxes) and, if it differs from ``info["is_success"]``,
what success means. Episodes run side by side: at each chunk boundary act_fn sees the batch of
episodes still running, {key: (B, n_obs_steps, *shape)}, and finished episodes leave the batch. Each episode's env is
seeded on reset and independent of the others, and act_fn learns each row's identity (episode seed,
chunk index), from which a sampling policy draws that row's noise: results do not depend on the batch.

``max_envs`` bounds how many envs exist at once: an env whose episode ends takes the next waiting seed,
so the batch stays full while seeds wait. By default (None) a suite whose envs are heavy (``env_memory_mb``,
measured by ``scripts/bench_envs.py``) runs as many as fit in ``ENV_MEMORY_BUDGET_MB``, a light suite one env
per episode: a robosuite env holds about 120 MB (a camera env 0.4-0.6 GB), so one env per episode made a
100-episode evaluation 12 GB, and two of them side by side were killed on a 24 GB machine.
"""
from __future__ import annotations

import abc
import math
import time
from pathlib import Path
from typing import Iterable

import gymnasium as gym
import numpy as np

from .base import ActFn, EnvRunner, RolloutResult, check_n_videos, normalize_seeds
from .multistep import MultiStepWrapper
from .video import VideoRecorder


ENV_MEMORY_BUDGET_MB = 4000.0  # what one evaluation's envs may hold by default (two evaluations side by side fit 24 GB)


class LockstepRunner(EnvRunner):
    """Shared rollout loop; subclasses implement ``make_env`` and set ``action_dim``."""

    name: str = "env"
    fps: float = 10.0  # video frame rate (the env's control rate)

    def env_memory_mb(self) -> float:
        """Resident MB one env holds (0: light enough for one env per episode); heavy suites override it."""
        return 0.0

    def envs_at_once(self, n_episodes: int) -> int:
        """How many envs an evaluation of ``n_episodes`` builds: ``max_envs`` when set, else as many as
        ``ENV_MEMORY_BUDGET_MB`` holds at ``env_memory_mb()`` apiece (all when that is 0)."""
        if self.max_envs is not None:
            return min(n_episodes, self.max_envs)
        mb = self.env_memory_mb()
        return n_episodes if mb <= 0 else max(1, min(n_episodes, int(ENV_MEMORY_BUDGET_MB // mb)))

    def __init__(self, n_obs_steps: int, n_action_steps: int, max_episode_steps: int, seeds: Iterable[int],
                 max_envs: int | None = None):
        for key, v in (("n_obs_steps", n_obs_steps), ("n_action_steps", n_action_steps),
                       ("max_episode_steps", max_episode_steps), ("max_envs", 1 if max_envs is None else max_envs)):
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{key} must be a positive integer, got {v!r}")
        self.n_obs_steps = int(n_obs_steps)
        self.n_action_steps = int(n_action_steps)
        self.max_episode_steps = int(max_episode_steps)
        self.max_envs = None if max_envs is None else int(max_envs)
        self.seeds = normalize_seeds(seeds)
        self._envs: list[MultiStepWrapper] = []

    @abc.abstractmethod
    def make_env(self) -> gym.Env:
        """One single-step env: a Dict observation space of Boxes, action (action_dim,), render_mode
        'rgb_array', no time limit."""

    def observation_shapes(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        space = self._env(0).env.observation_space  # the single-step env's (under MultiStepWrapper)
        if not isinstance(space, gym.spaces.Dict):
            raise TypeError(f"{type(self).__name__}.make_env must return an env with a Dict observation space "
                            f"(one entry per shape_meta key), got {type(space).__name__}")
        return {k: (tuple(b.shape), np.dtype(b.dtype)) for k, b in space.items()}

    def episode_success(self, info: dict) -> bool:
        return bool(info.get("is_success", False))

    def reset_options(self, index: int, n_episodes: int) -> dict | None:
        """Options for ``env.reset`` of episode ``index`` (of ``n_episodes``) in this run; None by default."""
        return None

    def episode_outcome(self, env: gym.Env) -> str | None:
        """Which of several ways to succeed an ended episode took (its single-step env's ``outcome()``,
        when it has one); None for tasks with one way."""
        outcome = getattr(env.unwrapped, "outcome", None)
        return None if outcome is None else str(outcome())

    def episode_final(self, env: gym.Env) -> dict[str, float] | None:
        """Where an ended episode left the task (its single-step env's ``final_state()``, when it has
        one: a dict of numbers, e.g. PushT's block pose error); None for tasks without one."""
        final = getattr(env.unwrapped, "final_state", None)
        return None if final is None else dict(final())

    def _env(self, i: int) -> MultiStepWrapper:
        # envs are reused across runs: reset(seed) rebuilds the simulation, so a pooled env is as good as a new one
        while len(self._envs) <= i:
            self._envs.append(
                MultiStepWrapper(VideoRecorder(self.make_env()), self.n_obs_steps, self.n_action_steps,
                                 self.max_episode_steps)
            )
        return self._envs[i]

    def run(
        self,
        act_fn: ActFn,
        seeds: Iterable[int] | None = None,
        progress: bool = True,
        video_dir: str | Path | None = None,
        n_videos: int = 0,
    ) -> RolloutResult:
        seeds = normalize_seeds(self.seeds if seeds is None else seeds)
        n = len(seeds)
        n_vid = check_n_videos(n_videos, video_dir, seeds)
        envs = [self._env(k) for k in range(self.envs_at_once(n))]
        recorders = [env.env for env in envs]  # the VideoRecorder under each MultiStepWrapper
        obs: list[dict[str, np.ndarray]] = [{} for _ in envs]  # per env {key: (To, *shape)}
        scores = np.full(n, -np.inf)
        successes = np.zeros(n, dtype=bool)
        lengths = np.zeros(n, dtype=np.int64)
        outcomes: list[str | None] = [None] * n
        finals: list[dict[str, float] | None] = [None] * n
        act_times: list[float] = []
        waves = math.ceil(n / len(envs)) if envs else 0
        bar = _progress_bar(progress, total=waves * math.ceil(self.max_episode_steps / self.n_action_steps),
                            desc=self.name)
        episode = [-1] * len(envs)  # the episode each env runs
        chunk = [0] * len(envs)  # act_fn calls so far in that episode
        waiting = iter(range(n))

        def start(k: int) -> bool:  # env k takes the next waiting seed, if any
            i = next(waiting, None)
            if i is None:
                return False
            episode[k], chunk[k] = i, 0
            if i < n_vid:
                recorders[k].start(Path(video_dir) / f"{self.name}_ep{i:03d}_seed{seeds[i]}.mp4", self.fps)
            obs[k], _ = envs[k].reset(seed=seeds[i], options=self.reset_options(i, n))
            return True

        try:
            active = [k for k in range(len(envs)) if start(k)]
            while active:
                batch = {key: np.stack([obs[k][key] for k in active]) for key in obs[active[0]]}  # {key: (B, To, ...)}
                t0 = time.perf_counter()
                rows = np.array([[seeds[episode[k]], chunk[k]] for k in active], dtype=np.int64)  # (B, 2)
                actions = act_fn(batch, rows)
                for k in active:
                    chunk[k] += 1
                act_times.append(time.perf_counter() - t0)
                actions = self.check_actions(actions, len(active))  # (B, n_action_steps, action_dim)
                still_running = []
                for j, k in enumerate(active):
                    i = episode[k]
                    obs[k], reward, terminated, truncated, info = envs[k].step(actions[j])
                    scores[i] = max(scores[i], reward)
                    successes[i] |= self.episode_success(info)
                    lengths[i] = envs[k].elapsed_steps
                    if terminated or truncated:
                        recorders[k].stop()
                        outcomes[i] = self.episode_outcome(envs[k])
                        finals[i] = self.episode_final(envs[k])
                        if start(k):
                            still_running.append(k)
                    else:
                        still_running.append(k)
                active = still_running
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(running=len(active), waiting=n - 1 - max(episode, default=-1))
        finally:
            for rec in recorders:
                rec.stop()
            if bar is not None:
                bar.close()
        return RolloutResult(seeds=seeds, scores=scores, successes=successes, lengths=lengths, act_times=act_times,
                             outcomes=None if any(o is None for o in outcomes) else outcomes,
                             finals=None if any(f is None for f in finals) else finals)

    def close(self):
        for env in self._envs:
            env.close()
        self._envs = []


def _progress_bar(enabled: bool, total: int, desc: str):
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is a dependency, but a missing bar must not stop an evaluation
        return None
    return tqdm(total=total, desc=desc, unit="chunk", leave=False)
