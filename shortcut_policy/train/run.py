"""Build a policy training run from a plain config (what Hydra composes) and run it.

Run config layout (``configs/train.yaml``):
    task:      TaskConfig fields: name, dataset {path, obs, action, ...}, horizon, n_obs_steps,
               n_action_steps, shape_meta (optional), env {runner, max_episode_steps, seed_start, n_episodes}
    policy:    net, net_kwargs, obs_encoder
    objective: the objective's config (core.config: kind shortcut | flow | ddpm | ddim)
    train:     TrainConfig fields
    eval:      {episodes: int, num_inference_steps: [..]}  periodic evaluation during training (closed
               loop when the task has a simulator, offline on the validation episodes otherwise); the best
               evaluated checkpoint is kept as checkpoints/best.* beside latest.*
    out_dir
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from ..policy import PolicyConfig, ShortcutPolicy
from ..shape_meta import ShapeMeta
from ..task import TaskConfig, make_dataset, make_runner
from ..core.config import teacher_ema_decay
from ..utils import provenance
from .loop import TrainConfig, train


def policy_config_from_run(run: dict[str, Any], shape_meta: ShapeMeta) -> PolicyConfig:
    task, pol = TaskConfig.from_dict(run["task"]), dict(run["policy"])
    return PolicyConfig.from_dict({**pol, "shape_meta": shape_meta.to_dict(), "horizon": task.horizon,
                                   "n_obs_steps": task.n_obs_steps, "n_action_steps": task.n_action_steps,
                                   "objective": dict(run["objective"])})


def make_evaluator(task: TaskConfig, episodes: int, steps: list[int], val_dataset=None, videos: int = 0,
                   video_dir: Path | None = None):
    """``evaluate(policy, step) -> metrics``: closed loop on ``episodes`` seeded episodes when the task
    has a simulator (the first ``videos`` episodes recorded as H.264 mp4 under ``video_dir``/step<k>,
    their paths in the metrics, which wandb logs as videos), else offline (action error on
    ``episodes`` validation windows)."""
    if task.simulated:
        runner = None

        def evaluate(policy, step):
            nonlocal runner
            runner = runner or make_runner(task, policy.shape_meta, n_episodes=episodes)
            out = {}
            for s in steps:
                vd = video_dir / f"step{step}" / f"calls{s}" if videos else None
                res = runner.run(policy.act_fn(s), progress=False, video_dir=vd, n_videos=videos)
                out[f"eval/score@{s}"] = res.score
                out[f"eval/success@{s}"] = res.success
                if vd is not None:
                    out.update({f"eval/video@{s}/{i}": str(p) for i, p in enumerate(sorted(vd.glob("*.mp4")))})
            print(f"step {step}: " + ", ".join(f"{k}={v:.3f}" for k, v in out.items() if "video" not in k))
            return out
        return evaluate
    from ..eval.offline import offline_eval

    def evaluate(policy, step):
        res = offline_eval(policy, val_dataset, steps, n_windows=episodes)
        out = {f"eval/action_mse@{s}": r["action_mse"] for s, r in res["steps"].items()}
        print(f"step {step}: " + ", ".join(f"{k}={v:.4f}" for k, v in out.items()))
        return out
    return evaluate


def run_training(run: dict[str, Any]) -> tuple[Path, dict[str, Any]]:
    """Train the policy described by ``run``; returns (out_dir, final metrics)."""
    out_dir = Path(run["out_dir"])
    train_cfg = TrainConfig(**run["train"])
    task = TaskConfig.from_dict(run["task"])
    torch.manual_seed(train_cfg.seed)
    dataset = make_dataset(task)
    pcfg = policy_config_from_run(run, dataset.shape_meta)
    policy = ShortcutPolicy(pcfg)
    policy.normalizer.load_state_dict(dataset.get_normalizer().state_dict())
    n_params = sum(p.numel() for p in policy.parameters())
    val = dataset.get_validation_dataset()
    print(f"{task.name}: {dataset.describe()}\n{len(dataset)} training windows, policy {pcfg.net} "
          f"({n_params / 1e6:.2f}M parameters), objective {pcfg.objective.kind}, out_dir {out_dir}")

    ev = run.get("eval") or {}
    evaluate, select = None, None
    if ev.get("episodes", 0) > 0:
        counts = [int(s) for s in ev.get("num_inference_steps", [1])]
        evaluate = make_evaluator(task, ev["episodes"], counts, val, videos=int(ev.get("videos", 0)),
                                  video_dir=out_dir / "videos")
        # the best checkpoint: highest closed-loop score, or lowest offline action error, at the first count
        select = (f"eval/score@{counts[0]}", "max") if task.simulated else (f"eval/action_mse@{counts[0]}", "min")

    full = {**run, "task": dataclasses.asdict(task), "policy_config": pcfg.to_dict(),
            "train": dataclasses.asdict(train_cfg), "provenance": run.get("provenance") or provenance(),
            "data": dataset.fingerprint()}  # a resume refuses other content at the same path
    metrics = train(policy, dataset, train_cfg, out_dir, full, teacher_ema_decay=teacher_ema_decay(pcfg.objective),
                    val_dataset=val, evaluate=evaluate, select=select, resume=run.get("resume", True))
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
