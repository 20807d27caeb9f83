"""Build a policy training run from a plain config (what Hydra composes) and run it.

Run config layout (``configs/train.yaml``):
    task:      name, zarr_path, horizon, n_obs_steps, n_action_steps, val_ratio, max_train_episodes,
               env: {max_steps, seed_start, n_episodes}
    policy:    net, net_kwargs, obs_encoder, normalizer_mode
    objective: ObjectiveConfig fields
    train:     TrainConfig fields
    eval:      {steps: [..], every_episodes: int}  periodic closed-loop evaluation during training
    out_dir
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from ..policy import PolicyConfig, ShortcutPolicy
from ..utils import provenance
from .checkpoint import load_trained
from .loop import TrainConfig, train

TASKS = ("pusht_lowdim",)


def make_dataset(task: dict[str, Any]):
    name = task.get("name")
    if name == "pusht_lowdim":
        from ..data.pusht import PushTLowDimDataset

        return PushTLowDimDataset(zarr_path=task.get("zarr_path"), horizon=task["horizon"],
                                  n_obs_steps=task["n_obs_steps"], n_action_steps=task["n_action_steps"],
                                  val_ratio=task.get("val_ratio", 0.02), seed=task.get("split_seed", 42),
                                  max_train_episodes=task.get("max_train_episodes"))
    raise ValueError(f"unknown task {name!r}; known tasks: {TASKS}")


def policy_config_from_run(run: dict[str, Any]) -> PolicyConfig:
    task, pol = run["task"], dict(run["policy"])
    return PolicyConfig.from_dict({**pol, "obs_dim": task["obs_dim"], "action_dim": task["action_dim"],
                                   "horizon": task["horizon"], "n_obs_steps": task["n_obs_steps"],
                                   "n_action_steps": task["n_action_steps"], "objective": dict(run["objective"])})


def make_runner_for(task: dict[str, Any], n_episodes: int | None = None, seed_start: int | None = None):
    import envs

    env = task.get("env", {})
    n = env.get("n_episodes", 50) if n_episodes is None else n_episodes
    s0 = env.get("seed_start", 100000) if seed_start is None else seed_start
    return envs.make_runner(task["name"], n_obs_steps=task["n_obs_steps"], n_action_steps=task["n_action_steps"],
                            max_steps=env.get("max_steps", 300), seeds=range(s0, s0 + n))


def run_training(run: dict[str, Any]) -> tuple[Path, dict[str, Any]]:
    """Train the policy described by ``run``; returns (out_dir, final metrics)."""
    out_dir = Path(run["out_dir"])
    train_cfg = TrainConfig(**run["train"])
    pcfg = policy_config_from_run(run)
    torch.manual_seed(train_cfg.seed)
    dataset = make_dataset(run["task"])
    policy = ShortcutPolicy(pcfg)
    policy.normalizer.load_state_dict(dataset.get_normalizer(mode=pcfg.normalizer_mode).state_dict())
    n_params = sum(p.numel() for p in policy.parameters())
    print(f"{run['task']['name']}: {len(dataset)} training windows, policy {pcfg.net} "
          f"({n_params / 1e6:.2f}M parameters), objective {pcfg.objective.kind}, out_dir {out_dir}")

    evaluate = None
    ev = run.get("eval") or {}
    if ev.get("episodes", 0) > 0:
        runner = make_runner_for(run["task"], n_episodes=ev["episodes"])
        steps_list = [int(s) for s in ev.get("steps", [pcfg.objective.default_steps])]

        def evaluate(ema_policy, step):
            out = {}
            for s in steps_list:
                res = runner.run(ema_policy.act_fn(steps=s), progress=False)
                out[f"eval/score@{s}"] = res.score
                out[f"eval/success@{s}"] = res.success
            print(f"step {step}: " + ", ".join(f"{k}={v:.3f}" for k, v in out.items()))
            return out

    full = {**run, "policy_config": pcfg.to_dict(), "train": dataclasses.asdict(train_cfg),
            "provenance": run.get("provenance") or provenance()}
    metrics = train(policy, dataset, train_cfg, out_dir, full, teacher=pcfg.objective.teacher,
                    teacher_ema_decay=pcfg.objective.teacher_ema_decay,
                    teacher_ema_warmup=pcfg.objective.teacher_ema_warmup,
                    val_dataset=dataset.get_validation_dataset(), evaluate=evaluate,
                    resume=run.get("resume", True))
    return out_dir, metrics


def training_command(checkpoint: str | Path, config: dict[str, Any]) -> str | None:
    """The command that trained a checkpoint: stored in its config, else rebuilt from Hydra's overrides."""
    if config.get("provenance"):
        return config["provenance"]["command"]
    overrides = Path(checkpoint).resolve().parent.parent / "hydra" / "overrides.yaml"
    if overrides.is_file():
        import yaml

        return "python scripts/train.py " + " ".join(yaml.safe_load(overrides.read_text()) or [])
    return None


def load_policy(path: str | Path, weights: str = "ema", device: str | torch.device = "cpu") -> ShortcutPolicy:
    """Rebuild a trained policy from its checkpoint alone. ``weights``: "ema" (default) or "online"."""
    return load_trained(lambda c: ShortcutPolicy(PolicyConfig.from_dict(c)), path, "policy_config", weights,
                        device, other_kind="an image model")
