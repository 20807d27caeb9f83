"""A run directory that nothing destroys: one run at a time, no silent restart over a finished run, a
resume that refuses a different run, a metrics file that matches the checkpoint, no stale temporaries.

- ``RunLock``: an exclusive ``fcntl`` lock on ``<out_dir>/.lock`` for the life of a run; a second run
  on the same folder stops at once with the holder's pid.
- ``resume=false`` on a folder that holds a checkpoint is refused (it would overwrite the checkpoint
  and append a second curve to metrics.jsonl): resume it, or choose another out_dir.
- ``check_resume``: a resume continues the run the checkpoint recorded. Every setting that changes
  the trajectory (task and data, policy, objective, seed, batch, optimizer, schedule, EMA, step
  count) must be equal, and so must the data's content (``data``: episodes, steps and a CRC-32 of each
  array, which ``SequenceDataset.fingerprint`` records); the differences are listed with both values. Settings that do not change
  the weights (logging, validation, evaluation and checkpoint periods, the task's simulator settings,
  device, threads, workers, wandb, progress bars) may change.
- ``machine_change``: a resume on another CPU model, vector extension, GPU or torch build is accepted
  but named: its kernels may round differently, so the continuation need not be the bit-for-bit twin
  of an uninterrupted run on the first machine (the main job, on the shipped PushT data, trains another
  policy from the same seed on an AMD EPYC than on an Intel Xeon: README). ``resumed_provenance``: the
  resumed run's checkpoints keep the command, machine and date of every earlier leg
  (``provenance.earlier``), so a run trained on two machines says so.
- ``truncate_metrics``: lines logged after the checkpoint's step (the run died before saving them)
  are dropped on resume, and all of them when a run died before its first checkpoint and starts
  over, so the curve has each step once.
- ``clean_stale_temporaries``: ``.<name>.*.tmp`` files left by a kill during an atomic write.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..utils import atomic_path, without_counts

# train.* fields that may differ between the run that wrote a checkpoint and the one resuming it
FREE_TRAIN_FIELDS = {"log_every", "val_every", "eval_every", "ckpt_every", "device", "num_threads", "num_workers",
                     "wandb", "wandb_project", "progress"}
# train.* fields added after checkpoints were first written: absent from an old checkpoint means this value
NEW_TRAIN_FIELDS = {"precision": "fp32", "compile": False}
# top-level run-config entries that never change the weights
FREE_RUN_KEYS = {"eval", "out_dir", "provenance", "resume", "hydra"}


class RunDirError(RuntimeError):
    """The run directory is busy, or holds another run (the message says what to do)."""


class RunLock:
    """Exclusive lock on ``<out_dir>/.lock`` (released when the process ends, even by SIGKILL)."""

    def __init__(self, out_dir: str | Path):
        self.path = Path(out_dir) / ".lock"
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise RunDirError(f"{self.path.parent} is in use by another training run (pid {holder}); wait for it "
                              "or choose another out_dir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing releases the lock
            self._fd = None


def refuse_restart(ckpt_path: Path, resume: bool) -> None:
    if not resume and ckpt_path.exists():
        raise RunDirError(f"{ckpt_path.parent.parent} already holds a run (checkpoint {ckpt_path}); resume=false would "
                          "overwrite it: resume it (resume=true) or choose another out_dir")


def clean_stale_temporaries(folder: Path) -> list[Path]:
    """Remove ``.<name>.*.tmp`` leftovers of interrupted atomic writes in ``folder`` (call with the lock held)."""
    removed = []
    if folder.is_dir():
        for p in folder.glob(".*.tmp"):
            if p.is_file():
                p.unlink()
                removed.append(p)
    return removed


def _diff(old: Any, new: Any, where: str, out: list[str]) -> None:
    if isinstance(old, dict) and isinstance(new, dict):
        for k in sorted(set(old) | set(new), key=str):
            _diff(old.get(k, "<absent>"), new.get(k, "<absent>"), f"{where}.{k}" if where else str(k), out)
    elif isinstance(old, (list, tuple)) and isinstance(new, (list, tuple)) and len(old) == len(new):
        for i, (a, b) in enumerate(zip(old, new)):
            _diff(a, b, f"{where}[{i}]", out)
    elif old != new:
        out.append(f"{where}: checkpoint {old!r}, now {new!r}")


def check_resume(saved: dict[str, Any], now: dict[str, Any], ckpt_path: Path) -> None:
    """Refuse to resume ``ckpt_path`` with a config that would change the run (see the module doc)."""
    def keep(cfg: dict[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in cfg.items() if k not in FREE_RUN_KEYS}
        if isinstance(out.get("train"), dict):
            out["train"] = {k: v for k, v in out["train"].items() if k not in FREE_TRAIN_FIELDS}
        if isinstance(out.get("task"), dict):  # the simulator only evaluates: its settings never change the weights
            out["task"] = {k: v for k, v in out["task"].items() if k != "env"}
        return json.loads(json.dumps(out, default=str))  # tuples as lists, as the checkpoint stored them

    old, new = keep(saved), keep(now)
    if isinstance(old.get("train"), dict):
        old["train"] = {**NEW_TRAIN_FIELDS, **old["train"]}
    if "data" not in old:  # checkpoints written before runs recorded their data's fingerprint
        new.pop("data", None)
    diffs: list[str] = []
    _diff(old, new, "", diffs)
    if diffs:
        shown = "\n  ".join(diffs[:12]) + (f"\n  ... and {len(diffs) - 12} more" if len(diffs) > 12 else "")
        data = ("\n(data.*: the dataset at task.dataset.path is not the one this run trained on)"
                if any(d.startswith("data") for d in diffs) else "")
        raise RunDirError(f"cannot resume {ckpt_path}: the config differs from the run it recorded in settings that "
                          f"change the training:\n  {shown}{data}\nresume with the recorded settings and data, or "
                          "start a new out_dir")


def machine_change(saved: dict[str, Any], now: str) -> str | None:
    """A warning's text when the machine that wrote a checkpoint (``saved["provenance"]["machine"]``, as
    ``utils.machine_description`` wrote it) is not ``now`` in the CPU model, vector extension, GPU or
    torch build; None when they match or the checkpoint recorded no machine. The core count and the
    thread count in the description are not compared: the thread count may be read before the run applies
    ``train.num_threads`` (a setting a resume may change), so it says nothing about the run's kernels."""
    recorded = (saved.get("provenance") or {}).get("machine")
    if not recorded:
        return None
    recorded, here = without_counts(recorded), without_counts(now)
    if recorded == here:
        return None
    return (f"the checkpoint was written on {recorded}; resuming on {here}. The run continues from its exact "
            "state, but another CPU model, vector extension, GPU or torch build may round differently, so the "
            "result may not be bit-identical to an uninterrupted run on the first machine")


def resumed_provenance(saved: dict[str, Any], now: dict[str, Any]) -> dict[str, Any]:
    """``now`` (the resuming run's config) with the checkpoint's provenance and its earlier legs under
    ``provenance.earlier``, oldest first; ``now`` unchanged when either side recorded none."""
    old, new = saved.get("provenance"), now.get("provenance")
    if not old or not new:
        return now
    leg = {k: v for k, v in old.items() if k != "earlier"}
    return {**now, "provenance": {**new, "earlier": [*old.get("earlier", []), leg]}}


def truncate_metrics(path: Path, step: int) -> int:
    """Drop metrics.jsonl lines after ``step`` (logged but not checkpointed); returns how many."""
    if not path.is_file():
        return 0
    lines = path.read_text().splitlines(keepends=True)
    kept = []
    for line in lines:
        try:
            if json.loads(line).get("step", 0) <= step:
                kept.append(line)
        except json.JSONDecodeError:  # a line cut by the kill
            continue
    if len(kept) != len(lines):
        with atomic_path(path) as tmp:
            tmp.write_text("".join(kept))
    return len(lines) - len(kept)
