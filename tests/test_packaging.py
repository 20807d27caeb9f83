"""The package as a user installs it: a wheel built from the repository, installed into a fresh virtualenv
outside it, trains and evaluates PushT with nothing from the checkout (configs, the PushT data and the
environments come from the wheel; nothing is installed under a generic top-level name)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run(cmd, cwd, timeout=900, env=None):
    p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    assert p.returncode == 0, f"{' '.join(map(str, cmd))}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p.stdout


@pytest.mark.wheel
def test_wheel_installed_outside_the_repository_trains_and_evaluates(tmp_path):
    pytest.importorskip("gym_pusht")
    # build from a copy: setuptools writes build/ and *.egg-info beside the sources
    src = tmp_path / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".git", ".venv", "build", "dist", "runs", "*.egg-info",
                                                             "__pycache__", ".pytest_cache", "outputs", "wandb"))
    dist = tmp_path / "dist"
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(src)], cwd=tmp_path)
    wheel = next(dist.glob("shortcut_policy-*.whl"))
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)], cwd=tmp_path)
    py, bin_ = venv / "bin" / "python", venv / "bin"
    # torch first and pinned (a CPU wheel here; unpinned it would pull a CUDA build), as README says
    run([str(py), "-m", "pip", "install", "-q", f"torch=={__import__('torch').__version__.split('+')[0]}"], cwd=tmp_path)
    run([str(py), "-m", "pip", "install", "-q", f"{wheel}[pusht]"], cwd=tmp_path)
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    names = run([str(py), "-c", "import importlib.util as u; print([n for n in ('envs', 'configs', 'datasets') "
                 "if u.find_spec(n)])"], cwd=work, env=env)
    assert names.strip() == "[]"  # the repository's top-level folders live inside the package
    out = work / "run"
    run([str(bin_ / "shortcut-train"), "train.steps=3", "train.batch_size=8", "train.warmup_steps=1",
         "train.progress=false", "policy=unet1d", "policy.net_kwargs.down_dims=[16,32]", f"out_dir={out}"],
        cwd=work, env=env)
    assert (out / "checkpoints" / "latest.safetensors").is_file()
    run([str(bin_ / "shortcut-eval"), "--checkpoint", str(out / "checkpoints" / "latest.pt"), "--num-inference-steps",
         "1", "--episodes", "1", "--no-progress", "--out", str(work / "eval.json")], cwd=work, env=env)
    res = json.loads((work / "eval.json").read_text())
    assert res["kind"] == "sweep" and res["task"] == "pusht_lowdim" and 0.0 <= res["steps"]["1"]["score"] <= 1.0
