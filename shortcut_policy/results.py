"""Results files: one schema for every figure the project reports (docs/results/).

Every results JSON holds at least

    kind     what the file is (one of ``KINDS``)
    task     the task it measures ("pusht_lowdim", "mnist", ...)
    method   what was measured ("shortcut", "flow", "ddpm", a named variant, "latency", ...)
    command, machine, date   how, where and when it was made (``provenance``)
    steps    {"<network calls per chunk>": {...metrics}}: the step-count table (benchmarks format;
             ``{}`` for files with no step-count axis, e.g. data benchmarks)

and whatever else its kind records beside these keys. Files are written atomically.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .utils import atomic_path, provenance

KINDS = {
    "sweep": "closed-loop score / success and chunk latency per number of network calls (scripts/eval.py)",
    "offline": "action error against held-out demonstrations per number of network calls (scripts/eval.py)",
    "latency": "chunk latency per backend and number of network calls (scripts/latency.py)",
    "deploy": "the real-time controller driving a simulator in wall-clock time (scripts/deploy_sim.py)",
    "diagnostics": "offline step-count diagnostics of checkpoints (scripts/diagnose.py)",
    "finals": "where closed-loop episodes ended (PushT: the block's pose error) per method and number of calls "
              "(scripts/final_poses.py)",
    "comparison": "paired comparison of two evaluations on the same episodes (scripts/compare.py)",
    "losses": "final training losses of runs (scripts/losses.py)",
    "data": "data-path measurements: import speed, chunking, loader throughput (scripts/bench_data.py)",
    "training": "training speed: ms per optimizer step per objective, samples/s per process count "
                "(scripts/objective_cost.py, scripts/bench_processes.py)",
    "image": "image-model quality per number of network calls (scripts/eval_image.py)",
    "toy": "2-D toy distances per number of network calls (scripts/toy2d.py)",
}
REQUIRED = ("kind", "task", "method", "command", "machine", "date", "steps")


class ResultError(ValueError):
    """A results file does not follow the schema (the message names the file and what is missing)."""


def result_doc(kind: str, task: str | None, method: str, steps: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """A results document with this run's provenance (command, machine, date)."""
    return check_result({"kind": kind, "task": task, "method": method, **provenance(), "steps": steps, **fields})


def check_result(doc: Any, source: str = "results") -> dict[str, Any]:
    if not isinstance(doc, dict):
        raise ResultError(f"{source}: a results file is a JSON object, got {type(doc).__name__}")
    missing = [k for k in REQUIRED if k not in doc]
    if missing:
        raise ResultError(f"{source}: missing keys {missing} (schema: shortcut_policy/results.py)")
    if doc["kind"] not in KINDS:
        raise ResultError(f"{source}: unknown kind {doc['kind']!r}; kinds: {sorted(KINDS)}")
    steps = doc["steps"]
    if not isinstance(steps, dict) or not all(str(k).isdigit() for k in steps):
        raise ResultError(f"{source}: 'steps' must map numbers of network calls ('1', '2', ...) to entries")
    return doc


def write_result(path: str | os.PathLike, doc: dict[str, Any]) -> Path:
    """Check ``doc`` against the schema and write it (parents created, atomically); says where."""
    path = Path(path)
    check_result(doc, str(path))
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {path}")
    return path


def read_result(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ResultError(f"no results file at {path}")
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ResultError(f"{path}: not valid JSON ({e})") from e
    return check_result(doc, str(path))


def merge_results(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """``old`` with ``new``'s step entries added (replacing the same step counts).

    Refuses files of another checkpoint, training step, weights, sampler, seed range or number of
    executed actions per chunk: their rows would not be comparable. The original command stays in
    ``command``; each merge is listed under ``merges``.
    """
    for key in ("kind", "task", "method", "checkpoint", "train_steps", "weights", "sampler", "episodes", "seeds",
                "n_action_steps"):
        if old.get(key) != new.get(key):
            raise ResultError(f"merge: {key} differs between the existing file ({old.get(key)!r}) and this "
                              f"evaluation ({new.get(key)!r}); write to another file")
    merged = dict(old)
    steps = {**old.get("steps", {}), **new["steps"]}
    merged["steps"] = {k: steps[k] for k in sorted(steps, key=int)}
    merged["merges"] = list(old.get("merges", [])) + [
        {"command": new["command"], "machine": new["machine"], "date": new["date"],
         "steps": sorted(map(int, new["steps"]))}]
    return merged
