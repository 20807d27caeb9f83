"""Paired comparison of results files (shortcut_policy.eval.compare, scripts/compare.py) and
merging step counts into an existing results file (scripts/eval.py --merge)."""
from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from shortcut_policy.eval.compare import episode_scores, format_comparison, paired_difference

REPO = Path(__file__).resolve().parents[1]


def result(method, per_step, seeds=(100000, 100004), **extra):
    """A results file as scripts/eval.py writes it, from {steps: episode scores}."""
    steps = {str(n): {"score": float(np.mean(s)), "success": 0.0, "episode_scores": list(map(float, s))}
             for n, s in per_step.items()}
    return {"task": "pusht_lowdim", "method": method, "episodes": len(next(iter(per_step.values()))),
            "seeds": list(seeds), "steps": steps, **extra}


def test_paired_difference_matches_hand_computation():
    a = result("a", {1: [0.9, 0.8, 0.7, 1.0, 0.6]})
    b = result("b", {1: [0.8, 0.8, 0.5, 0.9, 0.6]})
    r = paired_difference([a], [b], 1)
    d = np.array([0.1, 0.0, 0.2, 0.1, 0.0])
    assert r["diff"] == pytest.approx(d.mean())
    assert r["sem_episodes"] == pytest.approx(d.std(ddof=1) / math.sqrt(5))
    assert (r["wins"], r["losses"]) == (3, 0)
    assert r["a_mean"] == pytest.approx(0.8) and r["b_mean"] == pytest.approx(0.72)
    assert "sem_seeds" not in r  # one training seed per side: no between-seed error to report


def test_pairing_removes_shared_episode_difficulty():
    """Two policies that differ by a constant on wildly varying episodes: the paired SE is ~0 while
    the SE of either mean is large. This is the point of pairing."""
    rng = np.random.default_rng(0)
    hard = rng.uniform(0.2, 1.0, 50)
    r = paired_difference([result("a", {1: hard})], [result("b", {1: hard - 0.05})], 1)
    assert r["diff"] == pytest.approx(0.05)
    assert r["sem_episodes"] < 1e-9
    assert hard.std() / math.sqrt(50) > 0.02


def test_training_seeds_are_averaged_and_their_spread_reported():
    a = [result("a", {1: [0.9, 0.9, 0.9]}), result("a", {1: [0.7, 0.7, 0.7]})]
    b = [result("b", {1: [0.6, 0.6, 0.6]}), result("b", {1: [0.6, 0.6, 0.6]})]
    r = paired_difference(a, b, 1)
    assert r["a_seed_means"] == pytest.approx([0.9, 0.7]) and r["diff"] == pytest.approx(0.2)
    # sqrt(var([0.9, 0.7]) / 2 + 0) = sqrt(0.02 / 2) = 0.1
    assert r["sem_seeds"] == pytest.approx(0.1)
    table = format_comparison([r], "A", "B")
    assert "| 1 | 0.800 | 0.600 | +0.200" in table and "0.100" in table


def test_refuses_unpaired_or_incomplete_results():
    a = result("a", {1: [0.9, 0.8]})
    with pytest.raises(ValueError, match="different episode seeds"):
        paired_difference([a], [result("b", {1: [0.9, 0.8]}, seeds=(0, 1))], 1)
    with pytest.raises(KeyError, match="no entry for 2 steps"):
        paired_difference([a], [result("b", {1: [0.9, 0.8]})], 2)
    old = result("old", {1: [0.9, 0.8]})
    del old["steps"]["1"]["episode_scores"]
    with pytest.raises(KeyError, match="--merge"):
        episode_scores(old, 1)
    with pytest.raises(ValueError, match="at least one"):
        paired_difference([], [a], 1)


def test_compare_script(tmp_path):
    fa, fb = tmp_path / "a.json", tmp_path / "b.json"
    fa.write_text(json.dumps(result("shortcut", {1: [1.0, 0.8, 0.6], 2: [1.0, 1.0, 1.0]}, seeds=(0, 2))))
    fb.write_text(json.dumps(result("flow", {1: [0.5, 0.8, 0.6], 4: [1.0, 1.0, 1.0]}, seeds=(0, 2))))
    out = tmp_path / "cmp.json"
    p = subprocess.run([sys.executable, str(REPO / "scripts/compare.py"), "--a", str(fa), "--b", str(fb),
                        "--out", str(out)], capture_output=True, text=True, cwd=REPO)
    assert p.returncode == 0, p.stderr
    assert "| steps | shortcut | flow |" in p.stdout and "+0.167" in p.stdout
    written = json.loads(out.read_text())
    assert list(written["steps"]) == ["1"]  # only the step count both sides have
    assert written["task"] == "pusht_lowdim" and written["method"] == "compare:shortcut-vs-flow"
    assert written["steps"]["1"]["diff"] == pytest.approx(1 / 6)
    bad = subprocess.run([sys.executable, str(REPO / "scripts/compare.py"), "--a", str(fa), "--b",
                          str(tmp_path / "missing.json")], capture_output=True, text=True, cwd=REPO)
    assert bad.returncode != 0 and "no such results file" in bad.stderr


def _eval_module():
    spec = importlib.util.spec_from_file_location("eval_script", REPO / "scripts/eval.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_merge_adds_step_counts_and_keeps_the_original_command():
    merge = _eval_module().merge_results
    base = dict(checkpoint="runs/x/latest.pt", train_steps=4000, weights="ema")
    old = result("m", {2: [0.5, 0.5], 4: [0.7, 0.7]}, command="python scripts/eval.py A", **base)
    new = result("m", {1: [0.1, 0.3], 2: [0.6, 0.6]}, command="python scripts/eval.py B", machine="cpu",
                 date="2026-11-22", **base)
    m = merge(old, new)
    assert list(m["steps"]) == ["1", "2", "4"]
    assert m["steps"]["2"]["score"] == pytest.approx(0.6) and m["steps"]["4"]["score"] == pytest.approx(0.7)
    assert m["command"] == "python scripts/eval.py A"
    assert m["merges"][0]["command"] == "python scripts/eval.py B" and m["merges"][0]["steps"] == [1, 2]
    other = dict(new, checkpoint="runs/y/latest.pt")
    with pytest.raises(SystemExit, match="checkpoint differs"):
        merge(old, other)
    # a file written before --noise-scale existed sampled at scale 1: it merges with 1, not with 0.5
    assert merge(old, dict(new, noise_scale=1.0))["steps"]["1"]["score"] == pytest.approx(0.2)
    with pytest.raises(SystemExit, match="noise_scale differs"):
        merge(old, dict(new, noise_scale=0.5))
