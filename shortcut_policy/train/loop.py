"""The one training loop, shared by policies and the image model.

A model is anything with ``compute_loss(batch, teacher=None) -> (loss, info)``. The loop owns the
optimizer (AdamW, warm-up + cosine or constant lr), the EMA weights used for evaluation, the
teacher EMA (when the objective's teacher is "ema"), logging, periodic validation / closed-loop
evaluation, and checkpoints that resume at the exact step:

- the batch order is a pure function of (seed, step): every epoch is a permutation drawn from
  ``seed + epoch``, so a resumed run sees the same batches without saving a data-loader state;
- batches come from a ``torch.utils.data.DataLoader`` over those indices (``train.num_workers``
  worker processes, pinned memory on CUDA); a dataset with ``get_batch(indices)`` (the sequence
  dataset) is gathered a batch at a time, any other is collated sample by sample; images stay
  uint8 until the model (augmentation runs on the batch, on the device);
- the global torch RNG state (noise, t and level draws) is stored in each checkpoint.

Rank-awareness: ``is_main`` gates logging and checkpoint writes; a DistributedDataParallel run
shards ``_batch_indices`` by rank and wraps ``model`` at the marked place.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from ..core.ema import EMA
from ..checkpoint import load_checkpoint, load_state_strict, save_checkpoint, save_weights
from ..utils import resolve_device
from .logger import RunLogger


@dataclass
class TrainConfig:
    """The optimizer, schedule, EMA, logging, checkpoint and device settings of a run (``train.*``).

    ``steps`` counts optimizer steps (not network calls per chunk, not environment steps).
    """

    steps: int = 4000
    batch_size: int = 128
    lr: float = 1e-4
    weight_decay: float = 1e-6
    betas: tuple[float, float] = (0.95, 0.999)
    lr_schedule: str = "cosine"  # "cosine" | "constant"
    warmup_steps: int = 500
    grad_clip: float | None = None
    ema_max_decay: float = 0.9999
    ema_power: float = 0.75
    log_every: int = 50
    val_every: int = 500
    eval_every: int = 0  # closed-loop evaluation period in steps; 0 = only at the end (if given)
    ckpt_every: int = 1000
    seed: int = 0
    device: str = "auto"
    num_threads: int = 0  # 0 = torch's default
    num_workers: int = 0  # DataLoader worker processes (0 = load in the training process)
    wandb: str = "disabled"  # "disabled" | "offline" | "online"
    wandb_project: str = "shortcut-policy"
    progress: bool = True

    def __post_init__(self):
        self.betas = tuple(self.betas)
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"train.steps and train.batch_size must be >= 1, got {self.steps}, {self.batch_size}")
        if self.lr_schedule not in ("cosine", "constant"):
            raise ValueError(f"train.lr_schedule must be 'cosine' or 'constant', got {self.lr_schedule!r}")
        if self.lr <= 0 or self.weight_decay < 0 or self.warmup_steps < 0:
            raise ValueError("train.lr must be > 0 and train.weight_decay, train.warmup_steps >= 0")
        if self.num_workers < 0:
            raise ValueError(f"train.num_workers must be >= 0, got {self.num_workers}")

    def lr_at(self, step: int) -> float:
        """Learning rate for optimizer step ``step`` (0-based): linear warm-up, then cosine to 0."""
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        if self.lr_schedule == "constant":
            return self.lr
        progress = (step - self.warmup_steps) / max(1, self.steps - self.warmup_steps)
        return self.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _batch_indices(n: int, batch_size: int, step: int, seed: int) -> torch.Tensor:
    """Indices of the batch at ``step``: epochs are seeded permutations, last partial batch dropped."""
    per_epoch = n // batch_size
    if per_epoch == 0:
        raise ValueError(f"dataset has {n} samples, fewer than one batch of {batch_size}")
    epoch, k = divmod(step, per_epoch)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    return perm[k * batch_size:(k + 1) * batch_size]


class StepBatches(Sampler):
    """The index batches of optimizer steps ``start .. steps - 1`` (``_batch_indices``), in order."""

    def __init__(self, n: int, batch_size: int, seed: int, start: int, steps: int):
        if n < batch_size:
            raise ValueError(f"dataset has {n} samples, fewer than one batch of {batch_size}")
        self.n, self.batch_size, self.seed, self.start, self.steps = n, batch_size, seed, start, steps

    def __iter__(self):
        for step in range(self.start, self.steps):
            yield _batch_indices(self.n, self.batch_size, step, self.seed).tolist()

    def __len__(self) -> int:
        return max(0, self.steps - self.start)


class _Batched(Dataset):
    """``dataset.get_batch`` behind the map-style interface: item = a whole batch."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __getitem__(self, idx):
        return self.dataset.get_batch(idx)

    def __len__(self) -> int:
        return len(self.dataset)


def batch_loader(dataset: Dataset, cfg: TrainConfig, start: int, device: torch.device) -> DataLoader:
    """Batches for steps ``start .. cfg.steps - 1``; see the module doc."""
    batches = StepBatches(len(dataset), cfg.batch_size, cfg.seed, start, cfg.steps)
    # a private generator: the loader's base seed must not draw from the global RNG, whose state the
    # checkpoint carries (a resumed run would otherwise diverge from an uninterrupted one)
    common = dict(num_workers=cfg.num_workers, pin_memory=device.type == "cuda", persistent_workers=False,
                  prefetch_factor=4 if cfg.num_workers else None,
                  generator=torch.Generator().manual_seed(cfg.seed * 100_003 + start))
    if hasattr(dataset, "get_batch"):
        return DataLoader(_Batched(dataset), sampler=batches, batch_size=None, **common)
    return DataLoader(dataset, batch_sampler=batches, collate_fn=default_collate, **common)


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    return batch


@torch.no_grad()
def validation_loss(model, dataset: Dataset, batch_size: int, device: torch.device, n_batches: int = 8,
                    seed: int = 1234) -> float:
    """Mean loss on up to ``n_batches`` fixed batches (fixed RNG so the curve is comparable over time)."""
    rng = torch.get_rng_state()
    torch.manual_seed(seed)
    losses = []
    n = len(dataset)
    bs = min(batch_size, n)
    for i in range(min(n_batches, max(1, n // bs))):
        idx = list(range(i * bs, (i + 1) * bs))
        batch = dataset.get_batch(idx) if hasattr(dataset, "get_batch") else default_collate([dataset[j] for j in idx])
        losses.append(model.compute_loss(_to_device(batch, device))[0].item())
    torch.set_rng_state(rng)
    return sum(losses) / len(losses)


def train(model: torch.nn.Module, dataset: Dataset, cfg: TrainConfig, out_dir: str | Path,
          run_config: dict[str, Any], teacher_ema_decay: float | None = None, val_dataset: Dataset | None = None,
          evaluate: Callable[[torch.nn.Module, int], dict[str, float]] | None = None,
          select: tuple[str, str] | None = None, resume: bool = True) -> dict[str, Any]:
    """Train ``model`` for ``cfg.steps`` optimizer steps; returns the final metrics.

    ``run_config`` (plain data) is stored in every checkpoint so the model can be rebuilt.
    ``evaluate(ema_model, step)`` runs closed-loop evaluation every ``cfg.eval_every`` steps and at
    the end, after the checkpoint of that step is written (a failing evaluation loses nothing);
    ``select = (metric, "max" | "min")`` keeps the best evaluated checkpoint as ``checkpoints/best.*``
    beside ``latest.*``. Each save writes the training state (``.pt``) and the inference file
    (``.safetensors``: EMA weights and config). With ``resume``, an existing
    ``out_dir/checkpoints/latest.pt`` is continued.
    """
    is_main = True  # rank 0 of a distributed run
    out_dir = Path(out_dir)
    ckpt_path = out_dir / "checkpoints" / "latest.pt"
    device = resolve_device(cfg.device)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    torch.manual_seed(cfg.seed)
    model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    ema = EMA(model, max_decay=cfg.ema_max_decay, power=cfg.ema_power)
    # the consistency targets' teacher: the online weights (None), or an EMA at a constant decay from step 0
    teacher_ema = EMA(model, max_decay=teacher_ema_decay, warmup=False) if teacher_ema_decay is not None else None

    if select is not None and select[1] not in ("max", "min"):
        raise ValueError(f"select must be (metric, 'max' | 'min'), got {select!r}")
    start, best = 0, None
    if resume and ckpt_path.exists():
        state = load_checkpoint(ckpt_path, map_location=device)
        load_state_strict(model, state["model"], f"checkpoint {ckpt_path} (model)")
        ema.load_state_dict(state["ema"])
        if teacher_ema is not None:
            if state.get("teacher_ema") is None:
                raise ValueError(f"{ckpt_path} was trained without an EMA teacher; cannot resume with teacher=ema")
            teacher_ema.load_state_dict(state["teacher_ema"])
        opt.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
        start = int(state["step"])
        best = state.get("best")
        print(f"resuming {ckpt_path} at step {start}")

    logger = RunLogger(out_dir, run_config, wandb_mode=cfg.wandb, project=cfg.wandb_project,
                       name=out_dir.name, enabled=is_main)

    def checkpoint(step: int, metrics: dict[str, Any], path: Path = ckpt_path) -> None:
        if not is_main:
            return
        save_checkpoint(path, {
            "config": run_config, "step": step, "model": model.state_dict(), "ema": ema.state_dict(),
            "teacher_ema": teacher_ema.state_dict() if teacher_ema is not None else None,
            "optimizer": opt.state_dict(), "rng": torch.get_rng_state(), "metrics": metrics,
            "train_config": dataclasses.asdict(cfg), "best": best})
        save_weights(path.with_suffix(".safetensors"), ema.module.state_dict(), run_config, step)

    metrics: dict[str, Any] = {}
    bar = None
    if cfg.progress and is_main and start < cfg.steps:
        from tqdm import tqdm
        bar = tqdm(total=cfg.steps, initial=start, desc="train", dynamic_ncols=True)
    t_last, sums, n_sum = time.perf_counter(), {}, 0
    for step, batch in zip(range(start, cfg.steps), batch_loader(dataset, cfg, start, device)):
        batch = _to_device(batch, device)
        lr = cfg.lr_at(step)
        for g in opt.param_groups:
            g["lr"] = lr
        loss, info = model.compute_loss(batch, teacher=teacher_ema.module if teacher_ema is not None else None)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss is {loss.item()} at step {step}; last metrics {metrics}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            info["grad_norm"] = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip).item()
        opt.step()
        ema.update(model)
        if teacher_ema is not None:
            teacher_ema.update(model)
        for k, v in info.items():
            sums[k] = sums.get(k, 0.0) + float(v)
        n_sum += 1

        done = step + 1
        if done % cfg.log_every == 0 or done == cfg.steps:
            now = time.perf_counter()
            metrics = {f"train/{k}": v / n_sum for k, v in sums.items()}
            metrics.update({"train/lr": lr, "train/steps_per_s": n_sum / (now - t_last)})
            t_last, sums, n_sum = now, {}, 0
            if val_dataset is not None and len(val_dataset) and (done % cfg.val_every == 0 or done == cfg.steps):
                metrics["val/loss"] = validation_loss(ema.module, val_dataset, cfg.batch_size, device)
            logger.log(metrics, done)
            if bar is not None:
                bar.set_postfix(loss=f"{metrics['train/loss']:.4f}", refresh=False)
        evaluating = evaluate is not None and ((cfg.eval_every and done % cfg.eval_every == 0) or done == cfg.steps)
        if done % cfg.ckpt_every == 0 or done == cfg.steps or evaluating:
            checkpoint(done, metrics)
        if evaluating:
            ev = evaluate(ema.module, done)
            metrics.update(ev)
            logger.log(ev, done)
            if select is not None and select[0] in ev:
                value = float(ev[select[0]])
                if best is None or (value > best["value"] if select[1] == "max" else value < best["value"]):
                    best = {"metric": select[0], "value": value, "step": done}
                    checkpoint(done, metrics, ckpt_path.with_name("best.pt"))
                    checkpoint(done, metrics)  # latest records the best so far (exact resume of the selection)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    logger.close()
    return metrics
