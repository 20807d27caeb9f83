"""Action chunks in, observation histories out: the policy-facing view of any env with Box (or
Dict of Box) observations.

``MultiStepWrapper`` turns an env stepping one action at a time into one that steps a chunk
of ``n_action_steps`` actions (as Diffusion Policy's wrapper of the same name):

    reset()      -> obs (n_obs_steps, *obs_shape): the first observation repeated
    step(chunk)  chunk (n_action_steps, *act_shape) -> obs (n_obs_steps, *obs_shape), the last
                 n_obs_steps observations; reward = max over the executed steps

With a Dict observation space every key is stacked the same way: {key: (n_obs_steps, *shape)}.
"""
from __future__ import annotations

from collections import deque

import gymnasium as gym
import numpy as np
from gymnasium import spaces


def _stack_box(space: spaces.Box, n: int) -> spaces.Box:
    low = np.repeat(space.low[None], n, axis=0)
    high = np.repeat(space.high[None], n, axis=0)
    return spaces.Box(low=low, high=high, dtype=space.dtype)


class MultiStepWrapper(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Executes action chunks and returns a history of the last ``n_obs_steps`` observations.

    The chunk stops early when the env reports terminated or truncated. ``max_episode_steps``
    truncates the episode once that many env steps (not chunks) have run, possibly mid-chunk.
    ``info`` is the last executed step's info plus ``"n_steps"``: env steps run by this call.
    """

    def __init__(self, env: gym.Env, n_obs_steps: int, n_action_steps: int, max_episode_steps: int | None = None):
        gym.utils.RecordConstructorArgs.__init__(self, n_obs_steps=n_obs_steps, n_action_steps=n_action_steps,
                                                 max_episode_steps=max_episode_steps)
        super().__init__(env)
        if n_obs_steps < 1 or n_action_steps < 1:
            raise ValueError(f"n_obs_steps and n_action_steps must be >= 1, got {n_obs_steps}, {n_action_steps}")
        if max_episode_steps is not None and max_episode_steps < 1:
            raise ValueError(f"max_episode_steps must be >= 1 or None, got {max_episode_steps}")
        obs_space = env.observation_space
        is_dict = isinstance(obs_space, spaces.Dict) and all(isinstance(s, spaces.Box) for s in obs_space.values())
        if not (isinstance(obs_space, spaces.Box) or is_dict) or not isinstance(env.action_space, spaces.Box):
            raise TypeError(
                "MultiStepWrapper supports Box (or Dict of Box) observation spaces and Box action spaces, got "
                f"{type(env.observation_space).__name__} and {type(env.action_space).__name__}"
            )
        self._is_dict = is_dict
        self.n_obs_steps = int(n_obs_steps)
        self.n_action_steps = int(n_action_steps)
        self.max_episode_steps = max_episode_steps
        self.observation_space = (spaces.Dict({k: _stack_box(s, self.n_obs_steps) for k, s in obs_space.items()})
                                  if is_dict else _stack_box(obs_space, self.n_obs_steps))
        self.action_space = _stack_box(env.action_space, self.n_action_steps)
        self._obs: deque = deque(maxlen=self.n_obs_steps)
        self.elapsed_steps = 0  # env steps since reset
        self._done = True  # step() before reset() is an error

    def _history(self):
        if self._is_dict:
            return {k: np.stack([o[k] for o in self._obs], axis=0) for k in self._obs[0]}  # {k: (To, *shape)}
        return np.stack(list(self._obs), axis=0)  # (n_obs_steps, *obs_shape)

    def _copy(self, obs):
        # a copy: some envs reuse their obs buffer
        return {k: np.array(v) for k, v in obs.items()} if self._is_dict else np.array(obs)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        obs, info = self.env.reset(seed=seed, options=options)
        obs = self._copy(obs)
        # pad the history by repeating the first observation, as Diffusion Policy does
        self._obs.clear()
        self._obs.extend([obs] * self.n_obs_steps)
        self.elapsed_steps = 0
        self._done = False
        return self._history(), info

    def step(self, action_chunk):
        if self._done:
            raise RuntimeError("MultiStepWrapper.step called after the episode ended (or before reset); call reset()")
        chunk = np.asarray(action_chunk)
        want = self.action_space.shape
        if chunk.shape != want:
            raise ValueError(
                f"action chunk has shape {chunk.shape}, expected (n_action_steps, *action_shape) = {want}"
            )
        rewards: list[float] = []
        terminated = truncated = False
        info: dict = {}
        for action in chunk:
            obs, reward, terminated, truncated, info = self.env.step(action)
            self._obs.append(self._copy(obs))
            rewards.append(float(reward))
            self.elapsed_steps += 1
            if self.max_episode_steps is not None and self.elapsed_steps >= self.max_episode_steps:
                truncated = True
            if terminated or truncated:
                break
        self._done = bool(terminated or truncated)
        info = dict(info)
        info["n_steps"] = len(rewards)
        # max over the chunk: a success reached mid-chunk is not averaged away (Diffusion Policy's choice)
        return self._history(), max(rewards), bool(terminated), bool(truncated), info
