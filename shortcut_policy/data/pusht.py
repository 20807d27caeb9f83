"""PushT from human demonstrations, low-dim observations (Diffusion Policy's task).

Per step, obs = 9 block keypoints (x, y), flattened row-major, then the agent position:
``[kp0x, kp0y, kp1x, ..., kp8y, agent_x, agent_y]`` (20 numbers, pixel units 0..512);
action = target agent position (2 numbers, same units). Windows are ``horizon`` steps,
padded ``n_obs_steps - 1`` before and ``n_action_steps - 1`` after each episode, as in
Diffusion Policy's training config.
"""
from __future__ import annotations

import copy
import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from shortcut_policy.data.replay_buffer import DatasetError, ReplayBuffer
from shortcut_policy.data.sequence_sampler import SequenceSampler, downsample_mask, get_val_mask
from shortcut_policy.policy.normalizer import Normalizer

OBS_DIM = 20
ACTION_DIM = 2
N_KEYPOINTS = 9
RAW_KEYS = ("state", "keypoint", "action")

_REPO_ROOT = Path(__file__).resolve().parents[2]


def default_pusht_path() -> Path:
    """The compact low-dim copy shipped at ``<repo>/datasets/pusht_lowdim.zarr``."""
    path = _REPO_ROOT / "datasets" / "pusht_lowdim.zarr"
    if not path.exists():
        raise FileNotFoundError(
            f"PushT low-dim data not found at {path}. Build it from Diffusion Policy's "
            "pusht_cchi_v7_replay.zarr (in pusht.zip from their data server) with:\n"
            "  python datasets/make_pusht_lowdim.py --src <dir>/pusht_cchi_v7_replay.zarr "
            "--out datasets/pusht_lowdim.zarr\n"
            "or pass zarr_path= to the dataset."
        )
    return path


def pusht_lowdim_obs(keypoint: np.ndarray, state: np.ndarray) -> np.ndarray:
    """(T, 9, 2) keypoints and (T, >=2) state -> (T, 20) float32 observations."""
    if keypoint.ndim != 3 or keypoint.shape[1:] != (N_KEYPOINTS, 2):
        raise DatasetError(f"keypoint must be (T, {N_KEYPOINTS}, 2), got {keypoint.shape}")
    if state.ndim != 2 or state.shape[1] < 2 or len(state) != len(keypoint):
        raise DatasetError(f"state must be (T, >=2) with T={len(keypoint)}, got {state.shape}")
    agent_pos = state[:, :2]  # (T, 2)
    return np.concatenate([keypoint.reshape(len(keypoint), -1), agent_pos], axis=-1).astype(np.float32)


class PushTLowDimDataset(Dataset):
    """Windows of PushT demonstrations: item -> {"obs": (horizon, 20), "action": (horizon, 2)}.

    Args:
        zarr_path: a store with data/state, data/keypoint, data/action and
            meta/episode_ends (the shipped compact copy or the original
            pusht_cchi_v7_replay.zarr); None uses :func:`default_pusht_path`.
        horizon: window length in steps.
        n_obs_steps, n_action_steps: set the padding (n_obs_steps - 1 before,
            n_action_steps - 1 after each episode).
        val_ratio, seed: held-out validation episodes (:func:`get_val_mask`).
        max_train_episodes: keep at most this many training episodes, drawn with
            ``seed`` (90 reproduces the Diffusion Policy protocol); None keeps all.
    """

    def __init__(
        self,
        zarr_path: str | os.PathLike | None = None,
        horizon: int = 16,
        n_obs_steps: int = 2,
        n_action_steps: int = 8,
        val_ratio: float = 0.02,
        seed: int = 42,
        max_train_episodes: int | None = None,
    ):
        if n_obs_steps < 1 or n_action_steps < 1:
            raise ValueError(
                f"n_obs_steps and n_action_steps must be >= 1, got {n_obs_steps}, {n_action_steps}"
            )
        if n_obs_steps - 1 + n_action_steps > horizon:
            raise ValueError(
                f"horizon {horizon} is too short for n_obs_steps {n_obs_steps} and n_action_steps "
                f"{n_action_steps}: the executed actions span steps n_obs_steps-1 .. "
                f"n_obs_steps+n_action_steps-2, so set horizon >= {n_obs_steps - 1 + n_action_steps}"
            )
        self.zarr_path = Path(zarr_path) if zarr_path is not None else default_pusht_path()
        raw = ReplayBuffer.from_path(self.zarr_path, keys=RAW_KEYS)  # never loads img
        action = raw["action"]
        if action.ndim != 2 or action.shape[1] != ACTION_DIM:
            raise DatasetError(f"{self.zarr_path}: data/action must be (T, {ACTION_DIM}), got {action.shape}")
        obs = pusht_lowdim_obs(raw["keypoint"], raw["state"])  # (T, 20)
        # The derived buffer holds exactly what the sampler serves.
        self.replay_buffer = ReplayBuffer(
            {"obs": obs, "action": action.astype(np.float32)}, raw.episode_ends
        )

        self.horizon = horizon
        self.n_obs_steps = n_obs_steps
        self.n_action_steps = n_action_steps
        self.pad_before = n_obs_steps - 1
        self.pad_after = n_action_steps - 1
        n = self.replay_buffer.n_episodes
        self.val_mask = get_val_mask(n, val_ratio, seed)  # (E,) bool
        self.train_mask = downsample_mask(~self.val_mask, max_train_episodes, seed)  # (E,) bool
        self.episode_mask = self.train_mask  # episodes this dataset serves
        self.sampler = self._make_sampler(self.episode_mask)

    def _make_sampler(self, mask: np.ndarray) -> SequenceSampler:
        return SequenceSampler(
            self.replay_buffer, self.horizon, self.pad_before, self.pad_after, episode_mask=mask
        )

    def get_validation_dataset(self) -> PushTLowDimDataset:
        """The same data served from the held-out validation episodes.

        Unlike Diffusion Policy (which validates on every episode not used for training,
        including those dropped by ``max_train_episodes``), this serves only ``val_mask``.
        """
        val = copy.copy(self)
        val.episode_mask = self.val_mask
        val.sampler = self._make_sampler(self.val_mask)
        return val

    def get_normalizer(self, mode: str = "limits", fit_on: str = "train") -> Normalizer:
        """A :class:`Normalizer` for "obs" and "action" fitted on every step of the episodes.

        ``fit_on="train"`` uses the training episodes; ``"all"`` uses every episode, as
        Diffusion Policy does (its normalizer sees the validation data too).
        """
        if fit_on == "train":
            mask = self.train_mask
        elif fit_on == "all":
            mask = np.ones_like(self.train_mask)
        else:
            raise ValueError(f"fit_on must be 'train' or 'all', got {fit_on!r}")
        if not mask.any():
            raise ValueError("no episodes to fit the normalizer on (max_train_episodes=0?)")
        buf = self.replay_buffer
        step_mask = np.repeat(mask, buf.episode_lengths)  # (T,) bool
        data = {k: buf[k][step_mask] for k in ("obs", "action")}
        return Normalizer({"obs": OBS_DIM, "action": ACTION_DIM}).fit(data, mode=mode)

    def __len__(self) -> int:
        return len(self.sampler)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        """Window ``i``: {"obs": (horizon, 20) float32, "action": (horizon, 2) float32}."""
        sample = self.sampler.sample_sequence(i)
        return {k: torch.from_numpy(v) for k, v in sample.items()}
