"""What every command-line entry point shares: one flag per concept, with one name everywhere.

    --checkpoint PATH             a training checkpoint (``checkpoints/latest.pt`` of a run)
    --num-inference-steps N [N ...]   network calls per action chunk (what diffusers and LeRobot
                                  call num_inference_steps); not optimizer steps (``train.steps``),
                                  not levels (``objective.max_inference_steps``), not environment
                                  steps (``env.max_episode_steps``)
    --sampler NAME                one of the checkpoint's samplers (DDPM-trained: ddpm or ddim)
    --weights ema|online, --device auto|cpu|cuda|mps, --threads N, --out PATH, --no-progress

Training entry points (``shortcut-train``, ``shortcut-train-image``) compose Hydra configs and take
``key=value`` overrides instead; every other entry point takes these flags.
"""
from __future__ import annotations

import argparse
from typing import Any


def parser(doc: str | None, prog: str | None = None) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


def add_policy_args(ap: argparse.ArgumentParser, several: bool = False) -> None:
    if several:
        ap.add_argument("--checkpoint", nargs="+", required=True, help="one or more training checkpoints")
    else:
        ap.add_argument("--checkpoint", required=True, help="a training checkpoint (checkpoints/latest.pt)")
    ap.add_argument("--weights", choices=["ema", "online"], default="ema")
    ap.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:1, mps")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")


def add_calls_arg(ap: argparse.ArgumentParser, default_help: str, several: bool = True) -> None:
    ap.add_argument("--num-inference-steps", type=int, nargs="+" if several else None, default=None,
                    dest="num_inference_steps", help=f"network calls per action chunk ({default_help})")


def load_policy(args: argparse.Namespace, path: str | None = None) -> tuple[Any, dict[str, Any]]:
    """(policy, run config) of ``--checkpoint`` on ``--device`` with ``--threads``; errors end the command."""
    import torch

    from .checkpoint import CheckpointError
    from .policy import ShortcutPolicy
    from .utils import resolve_device

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return ShortcutPolicy.from_checkpoint(path or args.checkpoint, weights=args.weights,
                                              device=resolve_device(args.device))
    except (CheckpointError, ValueError) as e:
        raise SystemExit(str(e)) from None


def check_sampler(policy, sampler: str | None) -> str:
    try:
        return policy.objective.check_sampler(sampler)
    except ValueError as e:
        raise SystemExit(f"--sampler: {e}") from None


def calls_for(policy, requested: list[int] | None, sampler: str | None) -> list[int]:
    """The requested numbers of network calls, checked, or the objective's default sweep."""
    counts = requested or policy.objective.sweep_inference_steps(sampler)
    for n in counts:
        try:
            policy.objective.check_inference_steps(n, sampler)
        except (ValueError, TypeError) as e:
            raise SystemExit(f"--num-inference-steps {n}: {e}") from None
    return counts
