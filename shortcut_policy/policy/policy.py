"""The policy: normalizer + observation encoder + action network + generative objective.

API in the style robot-learning users know (LeRobot / Diffusion Policy):
- ``compute_loss(batch, teacher=None) -> (loss, info)``
- ``predict_action_chunk(obs, steps=N) -> (B, n_action_steps, action_dim)``
- ``select_action(obs_t)`` with observation and action queues, ``reset()``.

The network predicts ``horizon`` actions from the last ``n_obs_steps`` observations; the
executed chunk starts at the last observed step (index n_obs_steps - 1), as in Diffusion Policy.
"""
from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np
import torch
from torch import nn

from ..core.diffusion import DiffusionObjective
from ..core.objective import ShortcutObjective
from ..nets import make_action_net
from .config import ObjectiveConfig, PolicyConfig
from .normalizer import Normalizer
from .obs_encoder import make_obs_encoder


def make_objective(cfg: ObjectiveConfig) -> ShortcutObjective | DiffusionObjective:
    """One objective object per kind; all expose ``loss(model, x1, cond, teacher, teacher_cond)``
    and ``sample(model, x0, steps, cond)``."""
    if cfg.kind in ("shortcut", "flow"):
        frac = cfg.consistency_fraction if cfg.kind == "shortcut" else 0.0
        return ShortcutObjective(cfg.max_steps, frac, level_weights=cfg.level_weights, clip=cfg.clip,
                                 consistency_weight=cfg.consistency_weight, parameterization=cfg.parameterization,
                                 loss_space=cfg.loss_space)
    return DiffusionObjective(num_train_timesteps=cfg.num_train_timesteps, beta_schedule=cfg.beta_schedule,
                              prediction_type=cfg.prediction_type, sampler=cfg.kind,
                              timestep_spacing=cfg.timestep_spacing, max_steps=cfg.max_steps)


class ShortcutPolicy(nn.Module):
    def __init__(self, cfg: PolicyConfig):
        super().__init__()
        self.cfg = cfg
        self.normalizer = Normalizer({"obs": cfg.obs_dim, "action": cfg.action_dim})
        self.obs_encoder = make_obs_encoder(cfg.obs_encoder, obs_dim=cfg.obs_dim, n_obs_steps=cfg.n_obs_steps)
        net_kwargs = dict(action_dim=cfg.action_dim, cond_dim=self.obs_encoder.out_dim,
                          d_embedding=cfg.objective.net_d_embedding, max_steps=cfg.objective.max_steps)
        if cfg.net.startswith("transformer"):
            net_kwargs["horizon"] = cfg.horizon
        self.net = make_action_net(cfg.net, **net_kwargs, **cfg.net_kwargs)
        self.objective = make_objective(cfg.objective)
        self.num_inference_steps = cfg.objective.default_steps
        self.noise_scale = 1.0  # inference only: x0 ~ N(0, noise_scale^2); see set_noise_scale
        self.reset()

    def set_noise_scale(self, scale: float) -> None:
        """Scale of the initial noise at inference (a sampling temperature; training is unchanged).

        1 samples the learned action distribution; below 1 draws chunks nearer the middle of it
        (0: one deterministic chunk per observation). The network still sees the noise levels t it
        was trained on, so this is a choice about which samples to take, not a change of model.
        Not stored in checkpoints; an exported graph takes its noise as an input, so a deployment
        that wants a scale multiplies the noise it passes in.
        """
        scale = float(scale)
        if not (scale >= 0.0 and np.isfinite(scale)):
            raise ValueError(f"noise_scale must be a finite number >= 0, got {scale}")
        self.noise_scale = scale

    # ------------------------------------------------------------------ helpers
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def _encode(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Raw observation history {key: (B, >=To, ...)} -> condition (B, cond_dim)."""
        To = self.cfg.n_obs_steps
        nobs = {k: self.normalizer.normalize(k, v[:, :To]) for k, v in obs.items() if k in self.normalizer.dims}
        return self.obs_encoder(nobs)

    def _as_obs_dict(self, obs: Any) -> dict[str, torch.Tensor]:
        if isinstance(obs, dict):
            d = obs
        else:
            d = {"obs": obs}
        out = {}
        for k, v in d.items():
            v = torch.as_tensor(v, dtype=torch.float32, device=self.device)
            if not torch.isfinite(v).all():
                raise ValueError(f"observation {k!r} contains NaN or inf")
            out[k] = v
        return out

    # ------------------------------------------------------------------ training
    def compute_loss(self, batch: dict[str, torch.Tensor], teacher: "ShortcutPolicy | None" = None
                     ) -> tuple[torch.Tensor, dict[str, float]]:
        """batch: {"obs": (B, horizon, obs_dim), "action": (B, horizon, action_dim)} raw units.

        ``teacher``: a policy whose network builds the consistency targets (an EMA copy), or None
        for this policy's own weights under no-grad.
        """
        if "action" not in batch:
            raise KeyError(f"batch needs an 'action' entry, got keys {sorted(batch)}")
        action = batch["action"]
        H, A = self.cfg.horizon, self.cfg.action_dim
        if action.ndim != 3 or action.shape[1:] != (H, A):
            raise ValueError(f"batch['action'] must have shape (B, {H}, {A}), got {tuple(action.shape)}")
        obs = {k: v for k, v in batch.items() if k != "action"}
        cond = self._encode(obs)  # (B, cond_dim)
        x1 = self.normalizer.normalize("action", action)  # (B, H, A)
        if teacher is None:
            teacher_net, teacher_cond = _EvalMode(self.net), None
        else:
            with torch.no_grad():
                teacher_cond = teacher._encode(obs)
            teacher_net = _EvalMode(teacher.net)
        return self.objective.loss(self.net, x1, cond, teacher=teacher_net, teacher_cond=teacher_cond)

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def predict_action_sequence(self, obs: Any, steps: int | None = None,
                                generator: torch.Generator | None = None) -> torch.Tensor:
        """The whole predicted horizon, unnormalized: (B, horizon, action_dim)."""
        obs = self._as_obs_dict(obs)
        cond = self._encode(obs)  # (B, cond_dim)
        B = cond.shape[0]
        shape = (B, self.cfg.horizon, self.cfg.action_dim)
        x0 = torch.randn(shape, generator=generator, device="cpu" if generator is not None else self.device)
        x0 = x0.to(self.device, cond.dtype) * self.noise_scale
        steps = self.num_inference_steps if steps is None else int(steps)
        naction = self.objective.sample(self.net, x0, steps, cond, generator=generator)  # (B, H, A)
        return self.normalizer.unnormalize("action", naction)

    @torch.no_grad()
    def predict_action_chunk(self, obs: Any, steps: int | None = None,
                             generator: torch.Generator | None = None) -> torch.Tensor:
        """obs: (B, n_obs_steps, obs_dim) or {key: (B, n_obs_steps, ...)} -> (B, n_action_steps, action_dim)."""
        start = self.cfg.n_obs_steps - 1
        return self.predict_action_sequence(obs, steps, generator)[:, start:start + self.cfg.n_action_steps]

    def reset(self) -> None:
        """Clear the observation and action queues (call at every episode start)."""
        self._obs_queue: deque = deque(maxlen=self.cfg.n_obs_steps)
        self._action_queue: deque = deque()

    @torch.no_grad()
    def select_action(self, obs: Any, steps: int | None = None) -> torch.Tensor:
        """One control step: obs (B, obs_dim) (or dict of (B, ...)) -> action (B, action_dim).

        Queues observations (repeating the first after a reset) and replans a chunk only when the
        queued actions are used up.
        """
        obs = self._as_obs_dict(obs)
        if not self._obs_queue:
            for _ in range(self.cfg.n_obs_steps):
                self._obs_queue.append(obs)
        else:
            self._obs_queue.append(obs)
        if not self._action_queue:
            hist = {k: torch.stack([o[k] for o in self._obs_queue], dim=1) for k in obs}  # (B, To, ...)
            chunk = self.predict_action_chunk(hist, steps)  # (B, n_action_steps, A)
            self._action_queue.extend(chunk.unbind(1))
        return self._action_queue.popleft()

    def act_fn(self, steps: int | None = None, generator: torch.Generator | None = None):
        """A numpy callable for env runners: (B, To, obs_dim) -> (B, n_action_steps, action_dim)."""
        def act(obs: np.ndarray) -> np.ndarray:
            return self.predict_action_chunk(obs, steps, generator).cpu().numpy()
        return act


class _EvalMode:
    """Call a network in eval mode (no dropout) when it builds targets, then restore its mode."""

    def __init__(self, net: nn.Module):
        self.net = net

    def __call__(self, *args):
        was = self.net.training
        self.net.eval()
        try:
            return self.net(*args)
        finally:
            self.net.train(was)
