"""Checkpoints, two files per save:

- ``<name>.pt``, the training state: the run config, the weights (online, EMA, teacher EMA), the
  optimizer and the RNG state, so a run resumes at the exact step (``torch.load(weights_only=True)``:
  nothing is unpickled);
- ``<name>.safetensors``, the inference file: the EMA weights and the run config (shape_meta inside
  the policy config) as safetensors metadata, a quarter of the size, readable without torch's
  pickle format. ``ShortcutPolicy.from_checkpoint`` takes either.

Writes are atomic (temporary file in the same folder, fsync, rename): a crash mid-write never
leaves a truncated checkpoint behind; files get the permissions of the umask (group-readable).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from .core.config import with_pre_option_values
from .utils import atomic_path

FORMAT = "shortcut-policy/1"
WEIGHTS_FORMAT = "shortcut-policy-weights/1"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, truncated, of another format or does not fit its config (the message says which)."""


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Atomically write ``state`` (tensors, numbers, strings, lists, dicts) to ``path``."""
    path = Path(path)
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            torch.save({"format": FORMAT, **state}, f)
            f.flush()
            os.fsync(f.fileno())
    except (OSError, RuntimeError) as e:  # torch wraps a full disk in a RuntimeError of its writer
        raise _write_error(path, e) from e
    return path


def _write_error(path: Path, e: BaseException) -> CheckpointError:
    """The error of a failed atomic write: its root cause (a full disk shows as ENOSPC deep in a chain)."""
    cause = e
    while cause.__cause__ is not None or cause.__context__ is not None:
        cause = cause.__cause__ or cause.__context__
    return CheckpointError(f"cannot write {path}: {cause} (disk full or not writable?); the previous file is intact")


def save_weights(path: str | Path, state_dict: dict[str, torch.Tensor], config: dict[str, Any], step: int,
                 weights: str = "ema") -> Path:
    """Atomically write the inference file: ``state_dict`` tensors and the run config (safetensors)."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    path = Path(path)
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    meta = {"format": WEIGHTS_FORMAT, "config": json.dumps(config), "step": str(int(step)), "weights": weights}
    try:
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata=meta)
    except (OSError, RuntimeError, SafetensorError) as e:  # safetensors reports a full disk as its own error
        raise _write_error(path, e) from e
    return path


def load_weights(path: str | Path, device: str | torch.device = "cpu") -> dict[str, Any]:
    """Read an inference file: {"config", "step", "weights", "state_dict"}; clear errors otherwise."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            meta = f.metadata() or {}
            state_dict = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"cannot read {path} as safetensors (truncated or another format?): {e}") from e
    if meta.get("format") != WEIGHTS_FORMAT:
        raise CheckpointError(f"{path} is not a shortcut-policy weights file (format {meta.get('format')!r}, "
                              f"expected {WEIGHTS_FORMAT!r})")
    try:
        config = json.loads(meta["config"])
    except (KeyError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: its config metadata is missing or not JSON ({e})") from e
    return {"config": config, "step": int(meta.get("step", -1)), "weights": meta.get("weights", "ema"),
            "state_dict": state_dict}


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`; clear errors for anything else."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated file, foreign pickle, ...
        raise CheckpointError(f"cannot read checkpoint {path}: {type(e).__name__}: {e}") from e
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{path} is not a shortcut-policy checkpoint (format {found!r}, expected {FORMAT!r})")
    for key in ("config", "model", "step"):
        if key not in state:
            raise CheckpointError(f"checkpoint {path} lacks {key!r}; keys: {sorted(state)}")
    return state


def load_state_strict(module: torch.nn.Module, state_dict: dict[str, torch.Tensor], what: str) -> None:
    """load_state_dict with an error that says which checkpoint entries do not fit."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    wrong = sorted(k for k in set(own) & set(state_dict) if own[k].shape != state_dict[k].shape)
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}")
        if wrong:
            parts.append("shape mismatch " + ", ".join(
                f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}" for k in wrong[:5]))
        raise CheckpointError(f"{what} does not match the model built from its config: " + "; ".join(parts))
    module.load_state_dict(state_dict)


def load_trained(module_factory, path: str | Path, config_key: str, weights: str = "ema",
                 device: str | torch.device = "cpu", other_kind: str = "another kind of model"):
    """Rebuild a trained model from its checkpoint alone (policy, image model, ...): a training state
    (``.pt``) or an inference file (``.safetensors``, which holds the EMA weights only).

    ``module_factory(config[config_key])`` builds the untrained module; the EMA (default) or online
    weights are loaded strictly. Returns ``(module in eval mode, run config)``: the whole stored
    config (task, training command, ...) with ``run["checkpoint"] = {"path", "step", "weights"}``
    added, so evaluators can report it next to their numbers.
    """
    if weights not in ("ema", "online"):
        raise ValueError(f"weights must be 'ema' or 'online', got {weights!r}")
    if Path(path).suffix == ".safetensors":
        w = load_weights(path, device)
        if weights != w["weights"]:
            raise CheckpointError(f"{path} holds the {w['weights']} weights only; the {weights} weights are in the "
                                  "training state (.pt)")
        cfg, step, sd = w["config"], w["step"], w["state_dict"]
    else:
        state = load_checkpoint(path, map_location=device)
        cfg, step = state["config"], state["step"]
        if weights == "ema" and not state.get("ema"):
            raise CheckpointError(f"{path} has no EMA weights; use weights='online'")
        sd = state["ema"]["module"] if weights == "ema" else state["model"]
    if config_key not in cfg:
        raise CheckpointError(f"{path} holds no {config_key!r} (is it a checkpoint of {other_kind}?)")
    saved = cfg[config_key]
    if isinstance(saved, dict) and isinstance(saved.get("objective", {}), dict):
        # options newer than the checkpoint take the values it was trained with (a bad value is named below)
        saved["objective"] = with_pre_option_values(saved.get("objective"))
    try:
        module = module_factory(cfg[config_key])
    except ValueError as e:
        raise CheckpointError(f"{path}: its {config_key} does not build a model with this version of the "
                              f"package: {e}") from e
    load_state_strict(module, sd, f"checkpoint {path} ({weights} weights)")
    run = {**cfg, "checkpoint": {"path": str(path), "step": int(step), "weights": weights}}
    return module.to(device).eval(), run
