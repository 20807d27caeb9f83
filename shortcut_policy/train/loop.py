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

Several processes (``torchrun --nproc_per_node=N -m shortcut_policy.train ...``): every rank draws
the same seeded global batch and takes its contiguous share (batch_size / N each), the loss runs
through DistributedDataParallel (gloo on CPU, nccl on CUDA) around ``compute_loss``, the EMA follows
the unwrapped model, rank r seeds its noise with seed + r, and rank 0 alone logs, validates,
evaluates and writes checkpoints, which hold every rank's RNG state so a resume is exact in each.

The run directory (``run_dir``): one run at a time (a lock), no restart over a checkpoint without
``resume``, a resume refuses a config that would change the run, warns when it runs on another CPU
model, GPU or torch build (whose rounding may differ) and keeps the earlier legs' provenance,
metrics.jsonl is cut back to the checkpoint, SIGTERM checkpoints and exits (143), NaN or inf in the
loss or the EMA weights stops the run with the step named.

Between log steps a step reads nothing back from the device (a read makes the host wait for the GPU's
queue): logged values are summed as device tensors, and the loss's finiteness is recorded there and
checked whenever the loop logs or saves, so the first bad step is still named and never checkpointed.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from ..core.ema import EMA
from ..checkpoint import CheckpointError, load_checkpoint, load_state_strict, save_checkpoint, save_weights
from ..utils import machine_description, resolve_device
from .logger import RunLogger
from .run_dir import (RunDirError, RunLock, check_resume, clean_stale_temporaries, machine_change, refuse_restart,
                      resumed_provenance, truncate_metrics)


PRECISIONS = ("fp32", "bf16")


def autocast(device: torch.device, precision: str):
    """The loss's precision context: bf16 autocast (matrix products in bfloat16, reductions and losses in
    float32, on CPU and CUDA alike), or nothing for fp32."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def compiled(loss_fn: torch.nn.Module, enabled: bool) -> torch.nn.Module:
    """``torch.compile`` of the loss module when ``enabled`` (the wrapped model and its state dict keep
    their names, so checkpoints do not change)."""
    return torch.compile(loss_fn) if enabled else loss_fn


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
    precision: str = "fp32"  # "fp32" | "bf16": bf16 autocast of the loss (weights, optimizer and EMA stay fp32)
    compile: bool = False  # torch.compile the loss (network, objective and targets) before the first step

    def __post_init__(self):
        self.betas = tuple(self.betas)
        if self.precision not in PRECISIONS:
            raise ValueError(f"train.precision must be one of {PRECISIONS}, got {self.precision!r}")
        if not isinstance(self.compile, bool):
            raise ValueError(f"train.compile must be true or false, got {self.compile!r}")
        for name in ("steps", "batch_size", "warmup_steps", "log_every", "val_every", "eval_every", "ckpt_every",
                     "num_threads", "num_workers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not float(value).is_integer():
                raise ValueError(f"train.{name} must be a whole number, got {value!r}")
            setattr(self, name, int(value))
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"train.steps and train.batch_size must be >= 1, got {self.steps}, {self.batch_size}")
        if self.lr_schedule not in ("cosine", "constant"):
            raise ValueError(f"train.lr_schedule must be 'cosine' or 'constant', got {self.lr_schedule!r}")
        if self.lr <= 0 or self.weight_decay < 0 or self.warmup_steps < 0:
            raise ValueError("train.lr must be > 0 and train.weight_decay, train.warmup_steps >= 0")
        if self.num_workers < 0:
            raise ValueError(f"train.num_workers must be >= 0, got {self.num_workers}")
        for name in ("log_every", "val_every", "ckpt_every"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"train.{name} must be >= 1 (steps), got {getattr(self, name)}")
        if self.eval_every < 0:
            raise ValueError(f"train.eval_every must be >= 0 (0 = only at the end), got {self.eval_every}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"train.grad_clip must be > 0 (a norm) or null, got {self.grad_clip}")
        if not all(0.0 <= b < 1.0 for b in self.betas) or len(self.betas) != 2:
            raise ValueError(f"train.betas must be two numbers in [0, 1), got {list(self.betas)}")

    def lr_at(self, step: int) -> float:
        """Learning rate for optimizer step ``step`` (0-based): linear warm-up, then cosine to 0."""
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        if self.lr_schedule == "constant":
            return self.lr
        progress = (step - self.warmup_steps) / max(1, self.steps - self.warmup_steps)
        return self.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def make_optimizer(model: torch.nn.Module, device: torch.device, **kw) -> torch.optim.AdamW:
    """The training AdamW: the fused kernel on a GPU (one launch for all parameters); the CPU keeps the
    per-tensor update that every CPU result so far was trained with. A resumed run keeps the choice its
    checkpoint recorded (``load_state_dict`` restores each group's ``fused``)."""
    return torch.optim.AdamW(model.parameters(), fused=True if device.type == "cuda" else None, **kw)


def _batch_indices(n: int, batch_size: int, step: int, seed: int) -> torch.Tensor:
    """Indices of the batch at ``step``: epochs are seeded permutations, last partial batch dropped."""
    per_epoch = n // batch_size
    if per_epoch == 0:
        raise ValueError(f"dataset has {n} samples, fewer than one batch of {batch_size}")
    epoch, k = divmod(step, per_epoch)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    return perm[k * batch_size:(k + 1) * batch_size]


class StepBatches(Sampler):
    """The index batches of optimizer steps ``start .. steps - 1`` (``_batch_indices``), in order; rank
    ``rank`` of ``world`` processes takes its contiguous share of each global batch."""

    def __init__(self, n: int, batch_size: int, seed: int, start: int, steps: int, rank: int = 0, world: int = 1):
        if n < batch_size:
            raise ValueError(f"dataset has {n} samples, fewer than one batch of {batch_size}")
        self.n, self.batch_size, self.seed, self.start, self.steps = n, batch_size, seed, start, steps
        share = batch_size // world
        self.lo, self.hi = rank * share, (rank + 1) * share

    def __iter__(self):
        for step in range(self.start, self.steps):
            yield _batch_indices(self.n, self.batch_size, step, self.seed)[self.lo:self.hi].tolist()

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


def batch_loader(dataset: Dataset, cfg: TrainConfig, start: int, device: torch.device, rank: int = 0,
                 world: int = 1) -> DataLoader:
    """Batches (this rank's share) for steps ``start .. cfg.steps - 1``; see the module doc."""
    batches = StepBatches(len(dataset), cfg.batch_size, cfg.seed, start, cfg.steps, rank, world)
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


class _LossModule(torch.nn.Module):
    """``model.compute_loss`` as a forward, so DistributedDataParallel sees (and syncs) the backward."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch, teacher=None):
        return self.model.compute_loss(batch, teacher=teacher)


@dataclass
class Dist:
    """This process's place in a torchrun job (world 1 without torchrun)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owned: bool = False  # this process group was joined here, so ``close`` leaves it
    host: Any = None  # the group for host values (flags, logged means, objects): gloo beside an nccl group

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, device_type: str) -> Dist:
        """Read torchrun's RANK / WORLD_SIZE / LOCAL_RANK and join the process group (gloo on CPU, nccl on
        CUDA, after selecting this rank's GPU, which nccl's object collectives use); world 1 when they are
        absent. Beside an nccl group a gloo group carries the host values, so a stop flag or a logged mean
        never goes through the GPU (an nccl reduction of a host value is a copy in, a copy out and a wait)."""
        import os

        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world == 1:
            return cls()
        import torch.distributed as tdist

        local = int(os.environ.get("LOCAL_RANK", "0"))
        if device_type == "cuda":
            torch.cuda.set_device(local)
        owned = not tdist.is_initialized()
        if owned:
            # torch._dynamo, imported later (DistributedDataParallel imports it), takes references to every
            # process group that exists then and never drops them: the group would outlive ``close`` with its
            # transport threads live, and a rank could abort at exit ("terminate called without an active
            # exception"). Imported first, it holds none.
            import torch._dynamo  # noqa: F401

            tdist.init_process_group("nccl" if device_type == "cuda" else "gloo")
        host = tdist.new_group(backend="gloo") if tdist.get_backend() == "nccl" else None
        return cls(tdist.get_rank(), tdist.get_world_size(), local, owned, host)

    def close(self) -> None:
        """Leave a process group joined by ``from_env`` once every rank is done. A group left to the
        interpreter's exit can abort a rank whose transport threads are still live ("terminate called
        without an active exception"), failing a job that finished."""
        if self.host is not None:  # the gloo group of host values, also when the main group is not ours
            import torch.distributed as tdist

            tdist.destroy_process_group(self.host)
            self.host = None
        if self.owned:
            import torch.distributed as tdist

            tdist.barrier()
            tdist.destroy_process_group()
            self.owned = False

    def all_mean(self, values: dict[str, float]) -> dict[str, float]:
        if self.world == 1 or not values:
            return values
        import torch.distributed as tdist

        keys = sorted(values)
        t = torch.tensor([values[k] for k in keys], dtype=torch.float64)
        tdist.all_reduce(t, group=self.host)
        return {k: float(v) / self.world for k, v in zip(keys, t.tolist())}

    def any(self, flag: bool) -> bool:
        if self.world == 1:
            return flag
        import torch.distributed as tdist

        t = torch.tensor([int(flag)])
        tdist.all_reduce(t, group=self.host)
        return bool(t.item())

    def gather(self, obj: Any) -> list[Any]:
        if self.world == 1:
            return [obj]
        import torch.distributed as tdist

        out: list[Any] = [None] * self.world
        tdist.all_gather_object(out, obj, group=self.host)
        return out

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as tdist

            tdist.barrier(group=self.host)


def _rng_state(device: torch.device) -> dict[str, Any]:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: Any, device: torch.device, where: str) -> None:
    if isinstance(state, torch.Tensor):  # checkpoints before per-device RNG states
        state = {"cpu": state}
    torch.set_rng_state(state["cpu"].cpu())  # a checkpoint loaded onto a GPU carries its RNG states there
    if device.type == "cuda":
        if "cuda" not in state:
            raise CheckpointError(f"{where} was written without a CUDA RNG state (a CPU run): a resume on CUDA "
                                  "cannot be exact; resume on the CPU, or start a new out_dir")
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)


class _Stop:
    """SIGTERM (a scheduler's preemption, ``kill``): finish the step, checkpoint, exit with 143."""

    def __init__(self):
        self.requested = False
        self._old = None

    def __enter__(self) -> _Stop:
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.requested = True

    def __exit__(self, *exc) -> None:
        if self._old is not None:
            import signal

            signal.signal(signal.SIGTERM, self._old)


REQUIRED_STATE = ("model", "ema", "optimizer", "rng", "step")


def train(model: torch.nn.Module, dataset: Dataset, cfg: TrainConfig, out_dir: str | Path,
          run_config: dict[str, Any], teacher_ema_decay: float | None = None, val_dataset: Dataset | None = None,
          evaluate: Callable[[torch.nn.Module, int], dict[str, float]] | None = None,
          select: tuple[str, str] | None = None, resume: bool = True) -> dict[str, Any]:
    """Train ``model`` for ``cfg.steps`` optimizer steps; returns the final metrics.

    ``run_config`` (plain data) is stored in every checkpoint so the model can be rebuilt.
    ``evaluate(ema_model, step)`` runs closed-loop evaluation every ``cfg.eval_every`` steps and at
    the end, after the checkpoint of that step is written (a failing evaluation loses nothing, and one
    that did not finish, by an exception, a kill or SIGTERM, is repeated by the resume before training
    goes on);
    ``select = (metric, "max" | "min")`` keeps the best evaluated checkpoint as ``checkpoints/best.*``
    beside ``latest.*``. Each save writes the training state (``.pt``) and the inference file
    (``.safetensors``: EMA weights and config). With ``resume``, an existing
    ``out_dir/checkpoints/latest.pt`` is continued (``run_dir.check_resume`` says what may differ);
    without it, a folder holding a checkpoint is refused. Under torchrun every rank runs this with its
    shard of each batch (see the module doc).
    """
    device = resolve_device(cfg.device)
    dist = Dist.from_env(device.type)
    out_dir = Path(dist.gather(str(out_dir))[0])  # rank 0's (a default out_dir holds a timestamp)
    ckpt_path = out_dir / "checkpoints" / "latest.pt"
    if dist.world > 1 and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
        torch.cuda.set_device(device)
    if cfg.batch_size % dist.world:
        raise ValueError(f"train.batch_size {cfg.batch_size} must divide among {dist.world} processes")
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    torch.manual_seed(cfg.seed + dist.rank)  # each rank its own noise; rank 0 of any world is the 1-process run
    model.to(device).train()
    opt = make_optimizer(model, device, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    ema = EMA(model, max_decay=cfg.ema_max_decay, power=cfg.ema_power)
    # the consistency targets' teacher: the online weights (None), or an EMA at a constant decay from step 0
    teacher_ema = EMA(model, max_decay=teacher_ema_decay, warmup=False) if teacher_ema_decay is not None else None
    if select is not None and select[1] not in ("max", "min"):
        raise ValueError(f"select must be (metric, 'max' | 'min'), got {select!r}")

    with contextlib.ExitStack() as stack:
        if dist.main:
            stack.enter_context(RunLock(out_dir))
            refuse_restart(ckpt_path, resume)
            clean_stale_temporaries(ckpt_path.parent)
            clean_stale_temporaries(out_dir)
            if not ckpt_path.exists():  # a run killed before its first checkpoint starts over: so do its metrics
                truncate_metrics(out_dir / "metrics.jsonl", -1)
        dist.barrier()
        start, best, eval_pending, resumed_metrics = 0, None, False, None
        if resume and ckpt_path.exists():
            state = load_checkpoint(ckpt_path, map_location=device)
            missing = [k for k in REQUIRED_STATE if state.get(k) is None]
            if missing:
                raise CheckpointError(f"{ckpt_path} lacks {missing}: an inference-only or damaged file cannot resume "
                                      "a run (start a new out_dir; ShortcutPolicy.from_checkpoint still reads it)")
            check_resume(state["config"], run_config, ckpt_path)
            run_config = resumed_provenance(state["config"], run_config)
            load_state_strict(model, state["model"], f"checkpoint {ckpt_path} (model)")
            ema.load_state_dict(state["ema"])
            if teacher_ema is not None:
                if state.get("teacher_ema") is None:
                    raise ValueError(f"{ckpt_path} was trained without an EMA teacher; cannot resume with teacher=ema")
                teacher_ema.load_state_dict(state["teacher_ema"])
            opt.load_state_dict(state["optimizer"])
            ranks = state.get("rng_ranks") or [state["rng"]]
            if len(ranks) != dist.world:
                raise RunDirError(f"{ckpt_path} was written by {len(ranks)} process(es); resume it with as many "
                                  f"(now {dist.world}) so every rank continues its own random stream")
            _set_rng_state(ranks[dist.rank], device, str(ckpt_path))
            start = int(state["step"])
            best = state.get("best")
            eval_pending, resumed_metrics = bool(state.get("eval_pending")), state.get("metrics")
            if dist.main:
                dropped = truncate_metrics(out_dir / "metrics.jsonl", start)
                print(f"resuming {ckpt_path} at step {start}"
                      + (f" ({dropped} metrics lines after it dropped)" if dropped else ""))
                note = machine_change(state["config"], machine_description())
                if note:
                    warnings.warn(note, RuntimeWarning, stacklevel=2)
        result = _run(model, dataset, cfg, out_dir, ckpt_path, run_config, device, dist, opt, ema, teacher_ema,
                      val_dataset, evaluate, select, start, best, stack.enter_context(_Stop()), eval_pending,
                      resumed_metrics)
    dist.close()  # after the lock is released; a failed run leaves by its exception (torchrun stops the others)
    return result


def _run(model, dataset, cfg: TrainConfig, out_dir: Path, ckpt_path: Path, run_config, device, dist: Dist, opt, ema,
         teacher_ema, val_dataset, evaluate, select, start: int, best, stop: _Stop, eval_pending: bool = False,
         resumed_metrics: dict[str, Any] | None = None) -> dict[str, Any]:
    logger = RunLogger(out_dir, run_config, wandb_mode=cfg.wandb, project=cfg.wandb_project,
                       name=out_dir.name, enabled=dist.main)
    if dist.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        loss_fn = DistributedDataParallel(_LossModule(model), device_ids=[device.index] if device.type == "cuda" else None)
    else:
        loss_fn = _LossModule(model)
    loss_fn = compiled(loss_fn, cfg.compile)  # after DDP, as torch recommends

    def checkpoint(step: int, metrics: dict[str, Any], path: Path = ckpt_path, eval_pending: bool = False) -> None:
        rng_ranks = dist.gather(_rng_state(device))  # a collective: every rank calls it
        if dist.main:
            # the inference file first: if the training state cannot be written after it, the resume repeats
            # the steps and writes both again (the other order could leave a final .pt beside an old file)
            save_weights(path.with_suffix(".safetensors"), ema.module.state_dict(), run_config, step)
            save_checkpoint(path, {
                "config": run_config, "step": step, "model": model.state_dict(), "ema": ema.state_dict(),
                "teacher_ema": teacher_ema.state_dict() if teacher_ema is not None else None,
                "optimizer": opt.state_dict(), "rng": rng_ranks[0], "rng_ranks": rng_ranks, "metrics": metrics,
                "train_config": dataclasses.asdict(cfg), "best": best, "world_size": dist.world,
                "eval_pending": eval_pending})

    def run_evaluation(done: int) -> None:
        """Evaluate the EMA weights at step ``done`` (already checkpointed with ``eval_pending``), keep the
        best checkpoint, and record in ``latest.pt`` that this step's evaluation is done."""
        nonlocal best
        if dist.main:
            ev = evaluate(ema.module, done)
            metrics.update(ev)
            logger.log(ev, done)
            if select is not None and select[0] in ev:
                value = float(ev[select[0]])
                if best is None or (value > best["value"] if select[1] == "max" else value < best["value"]):
                    best = {"metric": select[0], "value": value, "step": done}
        best = dist.gather(best)[0]  # every rank records rank 0's selection
        if best is not None and best["step"] == done:
            checkpoint(done, metrics, ckpt_path.with_name("best.pt"))
        checkpoint(done, metrics)  # latest: the evaluation is done, and the best so far (exact resume of it)

    metrics: dict[str, Any] = dict(resumed_metrics or {})
    if eval_pending and evaluate is not None:  # the run stopped during this step's evaluation: do it now
        print(f"repeating the evaluation at step {start}, which did not finish")
        run_evaluation(start)
    bar = None
    if cfg.progress and dist.main and start < cfg.steps:
        from tqdm import tqdm
        bar = tqdm(total=cfg.steps, initial=start, desc="train", dynamic_ncols=True)
    t_last, sums, n_sum = time.perf_counter(), {}, 0
    # the first step whose loss was NaN or inf, and that loss, kept on the device: nothing is read back from
    # it between log steps (a read stalls a GPU until its queue drains); checked before every log and save
    bad_step = torch.full((), -1, dtype=torch.long, device=device)
    bad_loss = torch.zeros((), device=device)

    def check_finite(done: int) -> None:
        """Raise on every rank together (so none waits in a collective for one that left) if a loss so far
        was NaN or inf, naming the first such step of any rank, or if the EMA weights hold NaN or inf."""
        step_bad, value = torch.stack([bad_step.double(), bad_loss.double()]).tolist()
        bads = [b for b in dist.gather((int(step_bad), value)) if b[0] >= 0]
        if bads:
            step_bad, value = min(bads)
            raise FloatingPointError(f"loss is {value} at step {step_bad}; last metrics {metrics}")
        params = list(ema.module.named_parameters())
        finite = torch.stack([torch.isfinite(p).all() for _, p in params]).tolist()  # one read for all
        bad = [n for (n, _), ok in zip(params, finite) if not ok]
        if bad:
            raise FloatingPointError(f"the EMA weights hold NaN or inf at step {done} ({bad[:3]}); the last "
                                     f"checkpoint is the last finite state")

    for step, batch in zip(range(start, cfg.steps), batch_loader(dataset, cfg, start, device, dist.rank, dist.world)):
        batch = _to_device(batch, device)
        lr = cfg.lr_at(step)
        for g in opt.param_groups:
            g["lr"] = lr
        with autocast(device, cfg.precision):
            loss, info = loss_fn(batch, teacher_ema.module if teacher_ema is not None else None)
        first = (bad_step < 0) & ~torch.isfinite(loss.detach())
        bad_loss.copy_(torch.where(first, loss.detach().float(), bad_loss))
        bad_step.masked_fill_(first, step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            info["grad_norm"] = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip).detach()
        opt.step()
        ema.update(model)
        if teacher_ema is not None:
            teacher_ema.update(model)
        for k, v in info.items():  # numbers and 0-dim device tensors, summed where they are
            sums[k] = sums.get(k, 0.0) + (v.detach().double() if isinstance(v, torch.Tensor) else float(v))
        n_sum += 1

        done = step + 1
        evaluating = evaluate is not None and ((cfg.eval_every and done % cfg.eval_every == 0) or done == cfg.steps)
        stopping = dist.any(stop.requested)
        saving = done % cfg.ckpt_every == 0 or done == cfg.steps or evaluating or stopping
        logging = done % cfg.log_every == 0 or done == cfg.steps
        if logging or saving:
            check_finite(done)
        if logging:
            now = time.perf_counter()
            metrics = dist.all_mean({f"train/{k}": float(v) / n_sum for k, v in sums.items()})
            metrics.update({"train/lr": lr, "train/steps_per_s": n_sum / (now - t_last)})
            t_last, sums, n_sum = now, {}, 0
            if dist.main and val_dataset is not None and len(val_dataset) and (done % cfg.val_every == 0 or done == cfg.steps):
                metrics["val/loss"] = validation_loss(ema.module, val_dataset, cfg.batch_size, device)
            logger.log(metrics, done)
            if bar is not None:
                bar.set_postfix(loss=f"{metrics['train/loss']:.4f}", refresh=False)
        if saving:
            checkpoint(done, metrics, eval_pending=evaluating)  # a stop or crash before it ends repeats it
        if stopping:
            if bar is not None:
                bar.close()
            logger.close()
            print(f"stopped by SIGTERM after step {done}: checkpoint {ckpt_path} written; the same command resumes it")
            raise SystemExit(143)
        if evaluating:
            run_evaluation(done)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    logger.close()
    return metrics
