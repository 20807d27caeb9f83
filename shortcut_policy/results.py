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

import numpy as np

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


SAME_RUN_KEYS = ("kind", "task", "method", "checkpoint", "train_steps", "weights", "sampler", "n_action_steps")


def merge_results(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """``old`` with ``new`` added: new step counts on the same episodes, or new episodes for the same
    step counts.

    Same seed range: ``new``'s step entries are added (replacing the same step counts). Adjacent seed
    ranges (``new`` starts right after ``old`` ends, or ends right before it starts) with the same step
    counts: the episodes are joined (:func:`join_episodes`), so an evaluation can be extended or run in
    shards. Refuses files of another checkpoint, training step, weights, sampler or number of executed
    actions per chunk, and seed ranges that overlap or leave a gap: their rows would not be comparable.
    The original command stays in ``command``; each merge is listed under ``merges``.
    """
    for key in SAME_RUN_KEYS:
        if old.get(key) != new.get(key):
            raise ResultError(f"merge: {key} differs between the existing file ({old.get(key)!r}) and this "
                              f"evaluation ({new.get(key)!r}); write to another file")
    if (old.get("episodes"), old.get("seeds")) != (new.get("episodes"), new.get("seeds")):
        if _adjacent(old, new) or _adjacent(new, old):
            return join_episodes(old, new)
        raise ResultError(f"merge: the existing file was evaluated on {old.get('episodes')} episodes, seeds "
                          f"{old.get('seeds')}, this evaluation on {new.get('episodes')}, seeds {new.get('seeds')}: "
                          "step counts merge on the same seeds and episodes join on adjacent ranges; write to "
                          "another file")
    merged = dict(old)
    steps = {**old.get("steps", {}), **new["steps"]}
    merged["steps"] = {k: steps[k] for k in sorted(steps, key=int)}
    _set_dropped(merged, old, new)
    merged["merges"] = list(old.get("merges", [])) + [
        {"command": new["command"], "machine": new["machine"], "date": new["date"],
         "steps": sorted(map(int, new["steps"]))}]
    return merged


def select_steps(doc: dict[str, Any], counts: list[int], source: str = "results") -> dict[str, Any]:
    """``doc`` with only these step counts (each must be in it), so that a file evaluated at several counts
    can be joined with a shard evaluated at some of them. The counts the evaluation ran but the file no
    longer holds are listed under ``dropped_steps``."""
    rows = {int(k): v for k, v in doc.get("steps", {}).items()}
    missing = sorted(set(counts) - set(rows))
    if missing:
        raise ResultError(f"{source}: no {missing}-step entries to keep (it has {sorted(rows)})")
    out = dict(doc)
    out["steps"] = {str(c): rows[c] for c in sorted(set(counts))}
    _set_dropped(out, doc)
    return out


def _set_dropped(doc: dict[str, Any], *sources: dict[str, Any]) -> None:
    """``doc["dropped_steps"]``: the counts the sources' evaluations ran (their steps and their own dropped
    counts) that ``doc`` does not hold; absent when none."""
    ran = set().union(*(set(map(int, s["steps"])) | set(s.get("dropped_steps", [])) for s in sources))
    dropped = ran - set(map(int, doc["steps"]))
    doc.pop("dropped_steps", None)
    if dropped:
        doc["dropped_steps"] = sorted(dropped)


def seed_range(doc: dict[str, Any]) -> tuple[int, int]:
    """(first, last) episode seed of a sweep (its episodes run on consecutive seeds)."""
    seeds, n = doc.get("seeds"), doc.get("episodes")
    if (not isinstance(seeds, (list, tuple)) or len(seeds) != 2 or not isinstance(n, int)
            or int(seeds[1]) - int(seeds[0]) + 1 != n):
        raise ResultError(f"{doc.get('method', '?')}: seeds {seeds} with {n} episodes is not a range of consecutive "
                          "episode seeds")
    return int(seeds[0]), int(seeds[1])


def _adjacent(first: dict[str, Any], second: dict[str, Any]) -> bool:
    return seed_range(first)[1] + 1 == seed_range(second)[0]


# per-episode lists in seed order: joined by concatenation
EPISODE_LISTS = ("episode_scores", "episode_outcomes")


def join_episodes(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """One sweep of two evaluations of the same checkpoint and step counts on adjacent seed ranges
    (in either order): the episodes of both, in seed order.

    Score, success, per-outcome shares and success are episode-weighted means of the two (exact: each
    is a mean over episodes); ``score_sem`` is recomputed from the joined ``episode_scores``; the
    per-episode lists are concatenated. Latency is a property of the network, not of the episodes:
    the earlier range's figures stay, and the other file's are listed in its ``merges`` entry.
    """
    if a.get("kind") != "sweep" or b.get("kind") != "sweep":
        raise ResultError(f"merge: episodes join only closed-loop sweeps (kind 'sweep'), got {a.get('kind')!r} and "
                          f"{b.get('kind')!r}")
    if _adjacent(b, a):
        a, b = b, a
    if not _adjacent(a, b):
        raise ResultError(f"merge: seeds {a.get('seeds')} and {b.get('seeds')} are not adjacent ranges")
    if set(a["steps"]) != set(b["steps"]):
        raise ResultError(f"merge: joining episodes needs the same step counts in both files, got "
                          f"{sorted(a['steps'], key=int)} and {sorted(b['steps'], key=int)}; evaluate the missing "
                          "counts on the other range first")
    na, nb = a["episodes"], b["episodes"]
    steps: dict[str, Any] = {}
    for k in sorted(a["steps"], key=int):
        ra, rb = a["steps"][k], b["steps"][k]
        row = dict(ra)
        for key in ("score", "success"):
            row[key] = round((ra[key] * na + rb[key] * nb) / (na + nb), 4)
        for key in EPISODE_LISTS:
            if (key in ra) != (key in rb):
                raise ResultError(f"merge: {k}-step entry: {key} is in one file only; cannot join")
            if key in ra:
                if len(ra[key]) != na or len(rb[key]) != nb:
                    raise ResultError(f"merge: {k}-step entry: {key} has {len(ra[key])} and {len(rb[key])} items for "
                                      f"{na} and {nb} episodes")
                row[key] = list(ra[key]) + list(rb[key])
        if "episode_scores" in row:
            x = np.asarray(row["episode_scores"], dtype=np.float64)
            row["score_sem"] = round(float(x.std() / np.sqrt(len(x))), 4)
        if "episode_finals" in ra or "episode_finals" in rb:
            fa, fb = ra.get("episode_finals"), rb.get("episode_finals")
            if fa is None or fb is None or set(fa) != set(fb):
                raise ResultError(f"merge: {k}-step entry: episode_finals differ in their keys; cannot join")
            row["episode_finals"] = {f: list(fa[f]) + list(fb[f]) for f in fa}
        if "outcome_shares" in ra or "outcome_shares" in rb:
            row.update(_join_outcomes(ra, rb, na, nb, k))
        steps[k] = row
    joined = dict(a)
    joined.update(steps=steps, episodes=na + nb, seeds=[a["seeds"][0], b["seeds"][1]])
    _set_dropped(joined, a, b)
    joined["merges"] = list(a.get("merges", [])) + list(b.get("merges", [])) + [
        {"command": b["command"], "machine": b["machine"], "date": b["date"], "episodes": nb, "seeds": b["seeds"],
         "latency_ms_p50": {k: v.get("latency_ms_p50") for k, v in b["steps"].items()}}]
    return joined


def _join_outcomes(ra: dict[str, Any], rb: dict[str, Any], na: int, nb: int, k: str) -> dict[str, Any]:
    """Episode-weighted outcome shares and per-outcome success of two shards."""
    for r in (ra, rb):
        if "outcome_shares" not in r or "outcome_success" not in r:
            raise ResultError(f"merge: {k}-step entry: outcome shares are in one file only; cannot join")
    counts = {o: ra["outcome_shares"].get(o, 0.0) * na + rb["outcome_shares"].get(o, 0.0) * nb
              for o in sorted(set(ra["outcome_shares"]) | set(rb["outcome_shares"]))}
    shares = {o: c / (na + nb) for o, c in counts.items()}
    success = {o: (ra["outcome_success"].get(o, 0.0) * ra["outcome_shares"].get(o, 0.0) * na
                   + rb["outcome_success"].get(o, 0.0) * rb["outcome_shares"].get(o, 0.0) * nb) / counts[o]
               for o in counts if counts[o] > 0}
    return {"outcome_shares": shares, "outcome_success": success}
