"""The head-to-head in one time budget: objectives x training seeds trained side by side on one device,
then every checkpoint evaluated on held-out seeds by parallel processes, the most wanted counts first.

    python scripts/headtohead.py --out runs/h2h-gpu --device cuda --train-seconds 240 --eval-seconds 220
    python scripts/headtohead.py --out runs/h2h-quick --device cpu --steps 3000 --batch-size 64 --train-jobs 2 \
        --objectives shortcut flow meanflow --eval-seconds 100000 --jobs 2

1. Training: ``--steps`` each; or, with ``--train-seconds``, a calibration first: every run trains
   ``--calib-steps`` at once, and the slowest run's steady rate (from the times its metrics lines
   appear) and ``--train-seconds`` fix the step count S, rounded down to ``--round-steps``. All runs
   then train exactly S steps (same network, batch and budget).
2. Evaluation: (run, sampler, network calls) jobs on ``--jobs`` processes, one call count each,
   ordered one call and DDPM-100 first, then 16, DDIM-10, 4, 8, 2; a job not started before the
   deadline is skipped and listed. Per-episode noise comes from (episode seed, chunk), so splitting an
   evaluation by call count leaves every episode as a single run would give it. Each run's files are
   merged into ``<run>/eval_<sampler>.json`` (``shortcut-eval --merge``'s rule).
3. ``summary.json``: S, the calibration rates, every command, what finished and what was skipped.
The GPU window (scripts/gpu_job.sh) runs this; a tiny version runs on the CPU in the tests. Every
child runs in the output folder with the package as installed (its console commands through ``python -c``), so a copy of
the package on PYTHONPATH (the device's) is the one it imports.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def entry(name: str, module: str, function: str = "main") -> list[str]:
    """A console command (pyproject's ``[project.scripts]``) run by this interpreter with the package it
    imports: its results and checkpoints record ``name`` and the arguments, a command a user can run."""
    return [sys.executable, "-c", f"import sys; sys.argv[0] = {name!r}; from {module} import {function}; {function}()"]


TRAIN = entry("shortcut-train", "shortcut_policy.train.cli")
EVAL = entry("shortcut-eval", "shortcut_policy.eval.cli")
LATENCY = entry("shortcut-latency", "shortcut_policy.deploy.cli", "latency_main")
# call counts per sampler, most wanted first (priority: lower runs first)
COUNTS = {"shortcut": [1, 16, 4, 8, 2], "meanflow": [1, 16, 4, 8, 2], "flow": [1, 16, 4, 8, 2],
          "ddpm": [100], "ddim": [10]}
PRIORITY = {1: 0, 100: 0, 16: 1, 10: 1, 4: 2, 8: 3, 2: 4}


def train_cmd(objective: str, seed: int, steps: int, out_dir: Path, a) -> list[str]:
    return [*TRAIN, f"objective={objective}", f"policy={a.policy}", f"train.seed={seed}",
            f"train.steps={steps}", f"train.batch_size={a.batch_size}", f"train.device={a.device}",
            "train.num_threads=1", "train.progress=false", f"train.ckpt_every={steps}",
            f"train.log_every={a.log_every}", f"out_dir={out_dir}", *a.override]


def metric_steps(path: Path) -> list[int]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(int(json.loads(line)["step"]))
        except (ValueError, KeyError):
            continue
    return out


def calibrate(runs: list[tuple[str, str, int]], a, root: Path, env: dict) -> dict[str, float]:
    """Steps per second of each run while all train at once, from when their metrics lines appear."""
    procs, seen = {}, {}
    (root / "calib").mkdir(parents=True, exist_ok=True)
    for name, obj, seed in runs:
        d = root / "calib" / name
        log = open(root / "calib" / f"{name}.log", "w")
        procs[name] = subprocess.Popen(train_cmd(obj, seed, a.calib_steps, d, a), cwd=root, stdout=log,
                                       stderr=subprocess.STDOUT, env=env)
        seen[name] = {}
    end = time.monotonic() + a.calib_timeout
    while time.monotonic() < end and any(max(seen[n], default=0) < a.calib_steps and p.poll() is None
                                         for n, p in procs.items()):
        time.sleep(0.2)
        for name, _, _ in runs:
            for s in metric_steps(root / "calib" / name / "metrics.jsonl"):
                seen[name].setdefault(s, time.monotonic())
    for p in procs.values():
        if p.poll() is None:
            p.kill()
    rates = {}
    for name, t in seen.items():
        rate = step_rate(t)
        if rate is None:
            raise SystemExit(f"calibration: run {name} logged {len(t)} metrics lines in {a.calib_timeout} s, seen at "
                             f"{len(set(t.values()))} distinct times; see {root / 'calib' / (name + '.log')}")
        rates[name] = rate
    return rates


def step_rate(first_seen: dict[int, float]) -> float | None:
    """Steps per second from {logged step: when its line was first seen}. Lines that appeared between the same
    two polls share a time, so the rate runs from the last step seen at the first time to the last step; None
    when every line was seen at one time (no interval to divide by)."""
    times = sorted(set(first_seen.values()))
    if len(times) < 2:
        return None
    start = max(s for s, t in first_seen.items() if t == times[0])
    end = max(first_seen)
    return (end - start) / (first_seen[end] - times[0])


def run_pool(jobs: list[dict], n_procs: int, start_deadline: float, hard_deadline: float, env: dict,
             cwd: Path) -> None:
    """Run jobs (dicts with cmd, log) on n_procs processes; none starts after start_deadline, and any still
    running at hard_deadline is killed. Each job gets status: done, failed (rc), killed or skipped."""
    waiting, running = list(jobs), []
    while waiting or running:
        now = time.monotonic()
        while waiting and len(running) < n_procs and now < start_deadline:
            j = waiting.pop(0)
            j["start"] = now
            j["proc"] = subprocess.Popen(j["cmd"], cwd=cwd, stdout=open(j["log"], "w"), stderr=subprocess.STDOUT,
                                         env=env)
            running.append(j)
        if now >= start_deadline:
            for j in waiting:
                j["status"] = "skipped"
            waiting = []
        for j in list(running):
            rc = j["proc"].poll()
            if rc is None and now > hard_deadline:
                j["proc"].kill()
                j["proc"].wait()
                rc = "killed"
            if rc is not None:
                j["status"] = "done" if rc == 0 else (rc if rc == "killed" else f"failed ({rc})")
                j["seconds"] = round(time.monotonic() - j["start"], 1)
                running.remove(j)
                what = " ".join(str(j[k]) for k in ("name", "sampler", "n") if k in j)
                print(f"  {what}: {j['status']} in {j['seconds']} s", flush=True)
                if j["status"] != "done":  # say why where the output comes back (a device's output tail)
                    tail = Path(j["log"]).read_text(errors="replace")[-600:] if Path(j["log"]).is_file() else ""
                    print("    " + tail.replace("\n", "\n    "), flush=True)
        time.sleep(0.2)
    for j in jobs:
        j.pop("proc", None)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--objectives", nargs="+", default=["shortcut", "flow", "meanflow", "ddpm"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--policy", default="unet1d_small")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--device", default="cuda", help="training device")
    ap.add_argument("--eval-device", default=None, help="the networks' device while evaluating (default: --device)")
    ap.add_argument("--calib-steps", type=int, default=300)
    ap.add_argument("--calib-timeout", type=float, default=120.0)
    ap.add_argument("--log-every", type=int, default=50)
    ap.add_argument("--train-seconds", type=float, default=None, help="the training phase's wall-clock budget")
    ap.add_argument("--steps", type=int, default=None, help="train this many steps (no calibration)")
    ap.add_argument("--train-jobs", type=int, default=None, help="trainings at once (default: all)")
    ap.add_argument("--round-steps", type=int, default=500)
    ap.add_argument("--max-steps", type=int, default=100000)
    ap.add_argument("--eval-seconds", type=float, required=True, help="no evaluation starts after this many seconds")
    ap.add_argument("--eval-grace", type=float, default=90.0, help="a started evaluation may run this much longer")
    ap.add_argument("--total-seconds", type=float, default=None,
                    help="hard end of the whole job: nothing starts after it minus --eval-grace, all stops at it")
    ap.add_argument("--episodes", type=int, default=500)
    ap.add_argument("--seed-start", type=int, default=200000, help="the held-out block (never used for a choice)")
    ap.add_argument("--jobs", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    ap.add_argument("--latency", action="store_true", help="also time one-call chunks of the first run (eager, compiled)")
    ap.add_argument("--override", nargs="*", default=[], help="more training overrides, key=value")
    a = ap.parse_args(argv)
    root = Path(a.out).resolve()
    root.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    runs = [(f"{obj}-s{seed}", obj, seed) for seed in a.seeds for obj in a.objectives]
    summary: dict = {"args": vars(a), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    t0 = time.monotonic()

    if (a.steps is None) == (a.train_seconds is None):
        raise SystemExit("give exactly one of --steps and --train-seconds")
    steps = a.steps
    if steps is None:
        rates = calibrate(runs, a, root, env)
        steps = int(min(rates.values()) * a.train_seconds) // a.round_steps * a.round_steps
        steps = max(a.round_steps, min(steps, a.max_steps))
        summary.update(calib_steps_per_s={k: round(v, 2) for k, v in rates.items()},
                       calib_seconds=round(time.monotonic() - t0, 1))
        print(f"calibration: {min(rates.values()):.1f}-{max(rates.values()):.1f} steps/s with {len(runs)} runs at "
              f"once -> {steps} steps each", flush=True)
    summary["steps"] = steps

    t1 = time.monotonic()
    jobs = [{"name": name, "phase": "train", "cmd": train_cmd(obj, seed, steps, root / name, a),
             "log": str(root / f"{name}.train.log")} for name, obj, seed in runs]
    end = t0 + (a.total_seconds or float("inf"))
    train_end = t1 + a.train_seconds * 1.5 + 60 if a.train_seconds else float("inf")
    run_pool(jobs, a.train_jobs or len(jobs), min(train_end, end - a.eval_grace), min(train_end, end - a.eval_grace),
             env, root)
    summary["train"] = [{k: j.get(k) for k in ("name", "cmd", "status", "seconds")} for j in jobs]
    summary["train_seconds"] = round(time.monotonic() - t1, 1)
    print(f"training: {summary['train_seconds']} s; " + ", ".join(f"{j['name']} {j['status']}" for j in jobs), flush=True)

    ev = []
    trained = {j["name"] for j in jobs if j["status"] == "done"}
    for name, obj, seed in runs:
        if name not in trained:
            continue
        for sampler in (["ddpm", "ddim"] if obj == "ddpm" else [obj]):
            for n in COUNTS[sampler]:
                cmd = [*EVAL, "--checkpoint", str(root / name / "checkpoints/latest.pt"),
                       "--device", a.eval_device or a.device, "--threads", "1", "--num-inference-steps", str(n),
                       "--episodes", str(a.episodes), "--seed-start", str(a.seed_start), "--latency-iters", "5",
                       "--no-progress", "--out", str(root / name / f"eval-{sampler}-{n}.json")]
                if obj == "ddpm":
                    cmd[cmd.index("--no-progress"):cmd.index("--no-progress")] = ["--sampler", sampler]
                ev.append({"name": name, "sampler": sampler, "n": n, "seed": seed, "cmd": cmd,
                           "log": str(root / name / f"eval-{sampler}-{n}.log")})
    ev.sort(key=lambda j: (PRIORITY.get(j["n"], 5), j["seed"]))
    if a.latency and trained:
        first = next(n for n, _, _ in runs if n in trained)
        lat = {"name": first, "sampler": "latency", "n": 1, "seed": -1, "log": str(root / "latency.log"),
               "cmd": [*LATENCY, "--checkpoint", str(root / first / "checkpoints/latest.pt"),
                       "--device", a.eval_device or a.device, "--threads", "1", "--num-inference-steps", "1",
                       "--backends", "eager", "compiled", "--out", str(root / "latency.json")]}
        ev.insert(sum(PRIORITY.get(j["n"], 5) == 0 for j in ev), lat)
    t2 = time.monotonic()
    run_pool(ev, a.jobs, min(t2 + a.eval_seconds, end - a.eval_grace), min(t2 + a.eval_seconds + a.eval_grace, end),
             env, root)
    summary["eval"] = [{k: j.get(k) for k in ("name", "sampler", "n", "cmd", "status", "seconds")} for j in ev]
    summary["eval_seconds"] = round(time.monotonic() - t2, 1)

    from ..results import merge_results, read_result, write_result
    for name, obj, _ in runs:
        for sampler in (["ddpm", "ddim"] if obj == "ddpm" else [obj]):
            files = [root / name / f"eval-{sampler}-{n}.json" for n in sorted(COUNTS[sampler])]
            docs = [read_result(f) for f in files if f.is_file()]
            if docs:
                merged = docs[0]
                for d in docs[1:]:
                    merged = merge_results(merged, d)
                write_result(root / name / f"eval_{sampler}.json", merged)
    done = sum(j["status"] == "done" for j in ev)
    summary["total_seconds"] = round(time.monotonic() - t0, 1)
    (root / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"evaluation: {done}/{len(ev)} jobs done in {summary['eval_seconds']} s; total {summary['total_seconds']} s",
          flush=True)


if __name__ == "__main__":
    main()
