"""The policy: normalizer + observation encoder + action network + generative objective.

API in the style robot-learning users know (LeRobot / Diffusion Policy):
- ``compute_loss(batch, teacher=None) -> (loss, info)``
- ``predict_action_chunk(obs, steps=N) -> (B, n_action_steps, action_dim)``
- ``select_action(obs_t)`` with observation and action queues, ``reset()``.

The network predicts ``horizon`` actions from the last ``n_obs_steps`` observations; the
executed chunk starts at the last observed step (index n_obs_steps - 1), as in Diffusion Policy.
"""
from __future__ import annotations

import dataclasses
import warnings
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..checkpoint import load_trained
from ..core.config import make_objective
from ..core.objective import EvalMode
from ..core.sampler import Noise, randn, row_generators
from ..nets import make_action_net
from ..shape_meta import ShapeMetaError
from .config import PolicyConfig
from .normalizer import Normalizer
from .obs_encoder import ObsEncoder


class ShortcutPolicy(nn.Module):
    """Normalizer + observation encoder + action network + generative objective, built from a
    :class:`PolicyConfig` (its ``shape_meta`` fixes the observation keys and the action).

    Timing (Diffusion Policy's; To = n_obs_steps, Ta = n_action_steps, H = horizon)::

        env step:      k-To+1 ... k-1   k   k+1 ... k+Ta-1 ...   k+H-To
        observations:  |<---- To ---->|
        predicted:     |<------------------------- H ------------------------>|
        executed:                       |<----- Ta ----->|

    The network predicts H actions for the steps from the first observed step on; the executed
    chunk starts at the last observed step k (the action for the observation just seen).

    Observations are dicts ``{key: (B, To, *shape)}`` as ``shape_meta`` describes them (low-dim keys
    as floats, rgb keys as uint8 (H, W, 3)); anything else is refused with the key, the shape it got
    and the shape expected.
    """

    OUT_OF_RANGE = 3.0  # normalized units ([-1, 1] is the training data's range)

    def __init__(self, cfg: PolicyConfig):
        super().__init__()
        self.cfg = cfg
        self.shape_meta = cfg.meta
        self.normalizer = Normalizer.from_shape_meta(self.shape_meta)
        transformer = cfg.net.startswith("transformer")
        try:
            self.obs_encoder = ObsEncoder(self.shape_meta, cfg.n_obs_steps, tokens=transformer, **cfg.obs_encoder)
        except TypeError as e:
            raise ValueError(f"policy.obs_encoder: {e}") from None
        self.objective = make_objective(cfg.objective)
        net_kwargs = dict(action_dim=cfg.action_dim, d_embedding=self.objective.net_d_embedding,
                          max_inference_steps=getattr(cfg.objective, "max_inference_steps", 2))
        if transformer:  # attention over the observation tokens (one per camera and step, and low-dim)
            net_kwargs.update(horizon=cfg.horizon, cond_dim=self.obs_encoder.token_dim,
                              n_cond_tokens=self.obs_encoder.n_tokens)
        else:
            net_kwargs["cond_dim"] = self.obs_encoder.out_dim
        self.net = make_action_net(cfg.net, **net_kwargs, **cfg.net_kwargs)
        self.reset()

    @classmethod
    def from_checkpoint(cls, path: str | Path, weights: str = "ema", device: str | torch.device = "cpu"
                        ) -> tuple[ShortcutPolicy, dict[str, Any]]:
        """Rebuild a trained policy from its checkpoint file alone.

        Returns ``(policy, run)``: the policy in eval mode with its EMA (default) or ``"online"``
        weights, and the run config stored in the checkpoint (task, training config and command),
        with ``run["checkpoint"] = {"path", "step", "weights"}``.
        """
        return load_trained(lambda c: cls(PolicyConfig.from_dict(c)), path, "policy_config", weights, device,
                            other_kind="an image model")

    # ------------------------------------------------------------------ observations
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def prepare_obs(self, obs: Any, exact_history: bool = False) -> dict[str, torch.Tensor]:
        """Check raw observations ``{key: (B, T, *shape)}`` against shape_meta and return the last
        ``n_obs_steps`` steps as tensors on the policy's device (low-dim float32, rgb uint8).

        T may exceed n_obs_steps at inference (a longer history; its newest steps are used);
        ``exact_history`` (training windows) requires T == n_obs_steps and skips the NaN check of low-dim
        keys: training batches come from datasets checked when loaded (a NaN would still show as a
        non-finite loss), and the check reads a value back from the device, stalling every GPU step.
        """
        To = self.cfg.n_obs_steps
        obs = self.shape_meta.check_obs(obs, n_lead=2, lead_names=("B", "To"))
        out = {}
        for key, x in obs.items():
            T = x.shape[1]
            if T < To or (exact_history and T != To):
                raise ShapeMetaError(f"observation[{key!r}] holds {T} steps (shape {tuple(x.shape)}); this policy "
                                     f"takes {'exactly ' if exact_history else 'at least '}n_obs_steps = {To}")
            spec = self.shape_meta.obs[key]
            dtype = torch.uint8 if spec.type == "rgb" else torch.float32
            x = torch.as_tensor(x[:, T - To:]).to(self.device, dtype)
            if spec.type == "low_dim" and not exact_history and not torch.isfinite(x).all():
                raise ValueError(f"observation[{key!r}] contains NaN or inf; refusing to act on it")
            out[key] = x
        return out

    def encode_obs(self, obs: dict[str, torch.Tensor], check_range: bool = True) -> torch.Tensor:
        """Prepared observations (``prepare_obs``) -> the network's condition (B, cond_dim):
        normalization, then the observation encoder. When acting (eval mode, ``check_range``), low-dim
        values far outside the training data's range (more than ``OUT_OF_RANGE`` times its half-width
        from its centre) are passed on with a warning, once per key until ``reset()``: the actions that
        follow are extrapolation. Training passes ``check_range=False`` (also for an EMA teacher, which
        is in eval mode): the test reads a value back from the device."""
        nobs = self.normalizer.normalize_dict(obs)
        if check_range and not self.training:
            warned = self.__dict__.setdefault("_range_warned", set())
            for key in self.shape_meta.low_dim_keys:
                worst = float(nobs[key].abs().max()) if nobs[key].numel() else 0.0
                if worst > self.OUT_OF_RANGE and key not in warned:
                    warned.add(key)
                    warnings.warn(f"observation[{key!r}] is {worst:.3g} half-ranges from the training data's centre "
                                  f"(beyond {self.OUT_OF_RANGE}): the policy extrapolates (said once per key until "
                                  "reset())", RuntimeWarning, stacklevel=3)
        return self.obs_encoder(nobs)

    def example_obs(self, batch: int = 1) -> dict[str, torch.Tensor]:
        """Observations of the right shapes and dtypes, inside the data range: low-dim keys at the
        fitted mean (zeros before fitting), images mid-grey. For latency probes and tracing."""
        out = {}
        for key, x in self.shape_meta.example_obs((batch, self.cfg.n_obs_steps)).items():
            x = torch.from_numpy(x).to(self.device)  # made on the host, shifted on the device (the stats' place)
            if key in self.normalizer.dims and self.normalizer.is_fitted:
                mean = self.normalizer.field(key).input_mean.float().reshape(self.shape_meta.obs[key].shape)
                x = x + mean
            elif self.shape_meta.obs[key].type == "rgb":
                x = x + 128
            out[key] = x
        return out

    # ------------------------------------------------------------------ training
    def compute_loss(self, batch: dict[str, Any], teacher: ShortcutPolicy | None = None
                     ) -> tuple[torch.Tensor, dict[str, Any]]:
        """batch: {"obs": {key: (B, n_obs_steps, *shape)}, "action": (B, horizon, action_dim)}, raw units.

        ``teacher``: a policy whose network builds the consistency targets (an EMA copy), or None
        for this policy's own weights under no-grad.
        """
        if not isinstance(batch, dict) or set(batch) != {"obs", "action"}:
            got = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
            raise KeyError(f"batch must be {{'obs': {{key: (B, n_obs_steps, ...)}}, 'action': (B, horizon, "
                           f"action_dim)}}, got {got}")
        action = batch["action"]
        H, A = self.cfg.horizon, self.cfg.action_dim
        if action.ndim != 3 or action.shape[1:] != (H, A):
            raise ValueError(f"batch['action'] must have shape (B, {H}, {A}), got {tuple(action.shape)}")
        obs = self.prepare_obs(batch["obs"], exact_history=True)
        if next(iter(obs.values())).shape[0] != action.shape[0]:
            raise ValueError(f"batch['obs'] holds {next(iter(obs.values())).shape[0]} examples, batch['action'] "
                             f"{action.shape[0]}")
        cond = self.encode_obs(obs, check_range=False)  # (B, cond_dim)
        x1 = self.normalizer.normalize("action", action.to(self.device, torch.float32))  # (B, H, A)
        if teacher is None:
            teacher_net, teacher_cond = EvalMode(self.net), None
        else:
            with torch.no_grad():
                teacher_cond = teacher.encode_obs(obs, check_range=False)
            teacher_net = EvalMode(teacher.net)
        return self.objective.loss(self.net, x1, cond, teacher=teacher_net, teacher_cond=teacher_cond)

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def predict_action_sequence(self, obs: Any, num_inference_steps: int | None = None,
                                generator: Noise = None, sampler: str | None = None) -> torch.Tensor:
        """The whole predicted horizon, unnormalized: (B, horizon, action_dim).

        ``num_inference_steps``: network calls for the chunk (default: the objective's, 1 for a
        shortcut policy); ``sampler``: one of ``policy.objective.samplers`` (DDPM-trained networks
        take "ddpm" or "ddim"); ``generator`` seeds the initial noise (and DDPM's): one generator for
        the batch, or one per row.
        """
        n = self.objective.default_inference_steps if num_inference_steps is None else num_inference_steps
        self.objective.check_inference_steps(n, sampler)
        cond = self.encode_obs(self.prepare_obs(obs))  # (B, cond_dim)
        B = cond.shape[0]
        shape = (B, self.cfg.horizon, self.cfg.action_dim)
        x0 = randn(shape, generator, device=self.device).to(cond.dtype)
        naction = self.objective.sample(self.net, x0, n, cond, generator=generator, sampler=sampler)  # (B, H, A)
        if not torch.isfinite(naction).all():
            raise FloatingPointError("the policy produced NaN or inf actions (non-finite weights or inputs); "
                                     "refusing to return them")
        return self.normalizer.unnormalize("action", naction)

    @torch.no_grad()
    def predict_action_chunk(self, obs: Any, num_inference_steps: int | None = None,
                             generator: Noise = None, sampler: str | None = None) -> torch.Tensor:
        """{key: (B, >= n_obs_steps, *shape)} -> (B, n_action_steps, action_dim) raw actions."""
        start = self.cfg.n_obs_steps - 1
        seq = self.predict_action_sequence(obs, num_inference_steps, generator, sampler)
        return seq[:, start:start + self.cfg.n_action_steps]

    def set_n_action_steps(self, n: int) -> None:
        """Execute ``n`` actions of each predicted chunk before predicting the next (a deployment choice:
        training predicts the whole horizon either way). Checked as the config checks it; clears the queues.
        Call it before exporting or building a controller: those copy the value when they are made."""
        self.cfg = dataclasses.replace(self.cfg, n_action_steps=int(n))
        self.reset()

    def reset(self) -> None:
        """Clear the observation and action queues (call at every episode start)."""
        self._obs_queue: deque = deque(maxlen=self.cfg.n_obs_steps)
        self._action_queue: deque = deque()
        self._range_warned: set[str] = set()

    @torch.no_grad()
    def select_action(self, obs: Any, num_inference_steps: int | None = None) -> torch.Tensor:
        """One control step: {key: (B, *shape)} -> action (B, action_dim).

        Queues observations (repeating the first after a reset) and replans a chunk only when the
        queued actions are used up.
        """
        obs = self.shape_meta.check_obs(obs, n_lead=1, lead_names=("B",))
        obs = {k: torch.as_tensor(v) for k, v in obs.items()}
        if self._obs_queue:
            b_old, b_new = next(iter(self._obs_queue[-1].values())).shape[0], next(iter(obs.values())).shape[0]
            if b_old != b_new:
                raise ValueError(f"select_action got a batch of {b_new} after {b_old} without reset(): the queued "
                                 "observations and actions belong to the old batch; call policy.reset() first")
        if not self._obs_queue:
            for _ in range(self.cfg.n_obs_steps):
                self._obs_queue.append(obs)
        else:
            self._obs_queue.append(obs)
        if not self._action_queue:
            hist = {k: torch.stack([o[k] for o in self._obs_queue], dim=1) for k in obs}  # (B, To, ...)
            chunk = self.predict_action_chunk(hist, num_inference_steps)  # (B, n_action_steps, A)
            self._action_queue.extend(chunk.unbind(1))
        return self._action_queue.popleft()

    def act_fn(self, num_inference_steps: int | None = None, generator: torch.Generator | None = None,
               sampler: str | None = None):
        """A numpy callable for env runners and the controller:
        {key: (B, To, *shape)}, rows -> (B, n_action_steps, action_dim).

        ``rows`` (B, k) int, given by env runners: each row's identity (its episode seed and chunk
        index). With a ``generator``, row i's noise then comes from (the generator's seed, rows[i])
        alone, so an episode's result does not depend on which episodes share its batch (``max_envs``,
        the number of episodes). Without ``rows`` the generator serves the whole batch."""
        def act(obs: dict[str, np.ndarray], rows: np.ndarray | None = None) -> np.ndarray:
            noise = generator
            if generator is not None and rows is not None:
                noise = row_generators(generator.initial_seed(), rows)
            return self.predict_action_chunk(obs, num_inference_steps, noise, sampler).cpu().numpy()
        return act
