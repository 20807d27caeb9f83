"""Paired comparison of results files (shortcut_policy.eval.compare, scripts/compare.py) and
merging step counts and episode shards into one results file (shortcut_policy.results.merge_results, used by
scripts/eval.py --merge and scripts/merge_results.py)."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from shortcut_policy.eval.compare import (episode_scores, format_comparison, paired_difference, t_quantile, t_sf,
                                          welch)
from shortcut_policy.results import ResultError, merge_results

REPO = Path(__file__).resolve().parents[1]


def result(method, per_step, seeds=None, **extra):
    """A results file as scripts/eval.py writes it, from {steps: episode scores} (episode seeds from 100000)."""
    n = len(next(iter(per_step.values())))
    seeds = (100000, 100000 + n - 1) if seeds is None else seeds
    steps = {str(n): {"score": float(np.mean(s)), "success": 0.0, "episode_scores": list(map(float, s))}
             for n, s in per_step.items()}
    doc = {"kind": "sweep", "task": "pusht_lowdim", "method": method, "command": "python scripts/eval.py ...",
           "machine": "2-core CPU", "date": "2026-12-03", "episodes": len(next(iter(per_step.values()))),
           "seeds": list(seeds), "steps": steps}
    return {**doc, **extra}


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
    # Welch: one degree of freedom (only side a varies, two seeds), so the 95% interval is
    # 0.2 +- 12.706 * 0.1 and the p-value that of t = 2 on a Cauchy: 1 - 2 atan(2) / pi
    assert r["df_seeds"] == pytest.approx(1.0)
    assert r["ci95_seeds"] == pytest.approx([0.2 - 1.27062, 0.2 + 1.27062], abs=1e-4)
    assert r["p_seeds"] == pytest.approx(1 - 2 * math.atan(2) / math.pi)
    table = format_comparison([r], "A", "B")
    assert "| 1 | 0.800 | 0.600 | +0.200" in table and "0.100" in table and "-1.071 to +1.471 (p 0.30)" in table


@pytest.mark.parametrize("df,q975", [(1, 12.7062), (2, 4.3027), (3, 3.1824), (4, 2.7764), (10, 2.2281),
                                     (30, 2.0423), (1e7, 1.95996)])
def test_t_quantile_matches_tables(df, q975):
    assert t_quantile(0.975, df) == pytest.approx(q975, abs=1e-4)
    assert t_sf(t_quantile(0.975, df), df) == pytest.approx(0.05, abs=1e-9)


def test_t_tail_probabilities():
    assert t_sf(0.0, 3) == pytest.approx(1.0)
    assert t_sf(1.0, 1) == pytest.approx(0.5)  # Cauchy: P(|T| > 1) = 1/2
    assert t_sf(2.0, 5) == pytest.approx(0.101939, abs=1e-6)
    assert t_sf(-2.0, 5) == pytest.approx(t_sf(2.0, 5))
    assert t_sf(3.0, 2.5) < t_sf(3.0, 1.5)  # fractional df from Welch-Satterthwaite; heavier tails at fewer
    with pytest.raises(ValueError, match="0.5 < q < 1"):
        t_quantile(0.3, 4)
    with pytest.raises(ValueError, match="degrees of freedom"):
        t_sf(1.0, 0)


def test_welch_with_three_seeds_per_side():
    ma, mb = np.array([0.84, 0.86, 0.81]), np.array([0.81, 0.74, 0.78])
    w = welch(ma, mb)
    va, vb = ma.var(ddof=1) / 3, mb.var(ddof=1) / 3
    assert w["sem_seeds"] == pytest.approx(math.sqrt(va + vb))
    assert w["df_seeds"] == pytest.approx((va + vb) ** 2 / (va ** 2 / 2 + vb ** 2 / 2))
    lo, hi = w["ci95_seeds"]
    assert lo < 0.06 < hi and (hi - lo) / 2 > 1.96 * w["sem_seeds"]  # t, not normal: wider than 2 SE
    assert 0.0 < w["p_seeds"] < 1.0
    # the interval excludes 0 exactly when p < 0.05
    assert (lo > 0) == (w["p_seeds"] < 0.05)
    with pytest.raises(ValueError, match="two training seeds"):
        welch(ma[:1], mb)


def test_side_b_at_a_fixed_other_step_count(tmp_path):
    """One call of a against 100 steps of b (a DDPM baseline) on the same episodes."""
    a = result("shortcut", {1: [0.9, 0.8, 0.7], 2: [1.0, 1.0, 1.0]})
    b = result("ddpm", {100: [0.6, 0.8, 0.9]})
    r = paired_difference([a], [b], 1, b_steps=100)
    assert (r["steps"], r["b_steps"]) == (1, 100)
    assert r["diff"] == pytest.approx(0.8 - (0.6 + 0.8 + 0.9) / 3)
    assert (r["wins"], r["losses"]) == (1, 1)
    assert "| 1 vs 100 |" in format_comparison([r], "shortcut", "ddpm")
    with pytest.raises(KeyError, match="no entry for 1 steps"):
        paired_difference([a], [b], 1)  # without b_steps, b must have the same count
    fa, fb = tmp_path / "a.json", tmp_path / "b.json"
    fa.write_text(json.dumps(a)), fb.write_text(json.dumps(b))
    p = subprocess.run([sys.executable, str(REPO / "scripts/compare.py"), "--a", str(fa), "--b", str(fb),
                        "--b-steps", "100"], capture_output=True, text=True, cwd=REPO)
    assert p.returncode == 0, p.stderr
    assert "| 1 vs 100 |" in p.stdout and "| 2 vs 100 |" in p.stdout  # every count of a, against b's 100


def test_blocks_of_different_length_pair_on_their_common_seeds():
    long = result("a", {1: [0.9, 0.8, 0.7, 0.6]}, seeds=(100000, 100003))
    short = result("b", {1: [0.5, 0.5]}, seeds=(100001, 100002))  # a later evaluation on part of the block
    r = paired_difference([long], [short], 1)
    assert r["episodes"] == 2 and r["episode_seeds"] == [100001, 100002]
    assert math.isclose(r["diff"], ((0.8 - 0.5) + (0.7 - 0.5)) / 2)


def test_compare_script_names_the_episodes_it_paired(tmp_path):
    """A 500-episode side against a 300-episode one: the comparison file's seeds are the 300 paired."""
    fa, fb = tmp_path / "long.json", tmp_path / "short.json"
    fa.write_text(json.dumps(result("a", {1: [0.9, 0.8, 0.7, 0.6]}, seeds=(100000, 100003))))
    fb.write_text(json.dumps(result("b", {1: [0.5, 0.5]}, seeds=(100000, 100001))))
    out = tmp_path / "cmp.json"
    p = subprocess.run([sys.executable, str(REPO / "scripts/compare.py"), "--a", str(fa), "--b", str(fb),
                        "--out", str(out)], capture_output=True, text=True, cwd=REPO)
    assert p.returncode == 0, p.stderr
    written = json.loads(out.read_text())
    assert written["episodes"] == 2 and written["seeds"] == [100000, 100001]


def test_refuses_unpaired_or_incomplete_results():
    a = result("a", {1: [0.9, 0.8]})
    with pytest.raises(ValueError, match="different episode seeds .* none in common"):
        paired_difference([a], [result("b", {1: [0.9, 0.8]}, seeds=(0, 1))], 1)
    with pytest.raises(ValueError, match="not a range of consecutive episode seeds"):
        paired_difference([a], [result("b", {1: [0.9, 0.8]}, seeds=(100000, 100004))], 1)
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
    assert bad.returncode != 0 and "no results file at" in bad.stderr


def test_compare_script_with_training_seeds_writes_interval_and_plot(tmp_path):
    files = {}
    for name, scores in {"s0": [0.9, 0.8, 0.7], "s1": [0.8, 0.9, 0.8], "f0": [0.6, 0.7, 0.5], "f1": [0.7, 0.5, 0.6]}.items():
        files[name] = tmp_path / f"{name}.json"
        files[name].write_text(json.dumps(result(name, {1: scores, 2: [1.0, 0.9, 0.9]}, seeds=(0, 2))))
    out, png = tmp_path / "cmp.json", tmp_path / "plots" / "cmp.png"
    p = subprocess.run([sys.executable, str(REPO / "scripts/compare.py"), "--a", str(files["s0"]), str(files["s1"]),
                        "--b", str(files["f0"]), str(files["f1"]), "--names", "sc", "fm", "--out", str(out),
                        "--plot", str(png)], capture_output=True, text=True, cwd=REPO)
    assert p.returncode == 0, p.stderr
    assert "95% interval over training seeds (p)" in p.stdout and f"wrote {png}" in p.stdout
    row = json.loads(out.read_text())["steps"]["1"]
    assert row["a_seed_means"] == pytest.approx([0.8, 2.5 / 3]) and row["ci95_seeds"][0] < row["diff"] < row["ci95_seeds"][1]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_merge_adds_step_counts_and_keeps_the_original_command():
    base = dict(checkpoint="runs/x/latest.pt", train_steps=4000, weights="ema", sampler="shortcut")
    old = result("m", {2: [0.5, 0.5], 4: [0.7, 0.7]}, command="python scripts/eval.py A", **base)
    new = result("m", {1: [0.1, 0.3], 2: [0.6, 0.6]}, command="python scripts/eval.py B", machine="cpu",
                 date="2026-11-22", **base)
    m = merge_results(old, new)
    assert list(m["steps"]) == ["1", "2", "4"]
    assert m["steps"]["2"]["score"] == pytest.approx(0.6) and m["steps"]["4"]["score"] == pytest.approx(0.7)
    assert m["command"] == "python scripts/eval.py A"
    assert m["merges"][0]["command"] == "python scripts/eval.py B" and m["merges"][0]["steps"] == [1, 2]
    with pytest.raises(ResultError, match="checkpoint differs"):
        merge_results(old, dict(new, checkpoint="runs/y/latest.pt"))
    with pytest.raises(ResultError, match="sampler differs"):
        merge_results(old, dict(new, sampler="ddim"))
    with pytest.raises(ResultError, match="n_action_steps differs"):  # shortcut-eval --n-action-steps
        merge_results(dict(old, n_action_steps=8), dict(new, n_action_steps=4))
    assert merge_results(dict(old, n_action_steps=8), dict(new, n_action_steps=8))["n_action_steps"] == 8


def shard(lo, scores, outcomes=None, **extra):
    """A one-call sweep of episodes from seed ``lo`` (successes: score > 0.95), optionally with outcomes."""
    s = np.asarray(scores, dtype=np.float64)
    row = {"score": float(s.mean()), "success": float((s > 0.95).mean()), "score_sem": float(s.std() / np.sqrt(len(s))),
           "latency_ms_p50": 5.0 + lo / 1e6, "latency_ms_p99": 6.0, "control_rate_hz": 1600.0,
           "episode_scores": list(map(float, s)), "episode_finals": {"coverage": list(map(float, s))}}
    if outcomes is not None:
        o = np.asarray(outcomes)
        row.update(episode_outcomes=list(outcomes),
                   outcome_shares={str(k): float((o == k).mean()) for k in np.unique(o)},
                   outcome_success={str(k): float((s[o == k] > 0.95).mean()) for k in np.unique(o)})
    return result("m", {1: scores}, seeds=(lo, lo + len(scores) - 1), checkpoint="runs/x/latest.pt", train_steps=3000,
                  weights="ema", sampler="shortcut", steps={"1": row}, command=f"eval --seed-start {lo}", **extra)


def test_merge_joins_adjacent_episode_shards_as_one_evaluation_of_all_episodes():
    rng = np.random.default_rng(0)
    scores = rng.uniform(0.5, 1.0, 12).round(4)
    outcomes = list(rng.choice(["drawer", "door", "button"], 12))
    full = shard(500, scores, outcomes)["steps"]["1"]
    first, second = shard(500, scores[:5], outcomes[:5]), shard(505, scores[5:], outcomes[5:])
    for m in (merge_results(first, second), merge_results(second, first)):  # either order: seeds in order
        assert m["episodes"] == 12 and m["seeds"] == [500, 511]
        row = m["steps"]["1"]
        assert row["episode_scores"] == full["episode_scores"] and row["episode_outcomes"] == outcomes
        assert row["episode_finals"]["coverage"] == full["episode_finals"]["coverage"]
        for key in ("score", "success", "score_sem"):
            assert row[key] == pytest.approx(full[key], abs=1e-4), key
        for key in ("outcome_shares", "outcome_success"):
            assert row[key] == pytest.approx(full[key]), key
        assert m["command"] == "eval --seed-start 500" and row["latency_ms_p50"] == first["steps"]["1"]["latency_ms_p50"]
        assert m["merges"][-1]["seeds"] == [505, 511] and m["merges"][-1]["episodes"] == 7
    # the joined file pairs with a 12-episode evaluation of another policy
    other = result("f", {1: list(scores - 0.1)}, seeds=(500, 511))
    assert paired_difference([merge_results(first, second)], [other], 1)["diff"] == pytest.approx(0.1)


def test_merge_refuses_shards_that_overlap_leave_a_gap_or_differ_in_counts():
    a = shard(500, [0.9, 0.8, 1.0])
    with pytest.raises(ResultError, match="adjacent"):
        merge_results(a, shard(504, [0.9, 0.8]))  # seed 503 missing
    with pytest.raises(ResultError, match="adjacent"):
        merge_results(a, shard(502, [0.9, 0.8]))  # 502 in both
    b = shard(503, [0.9, 0.8])
    b["steps"]["16"] = b["steps"]["1"]
    with pytest.raises(ResultError, match="same step counts"):
        merge_results(a, b)
    with pytest.raises(ResultError, match="checkpoint differs"):
        merge_results(a, dict(shard(503, [0.9]), checkpoint="runs/y/latest.pt"))
    with pytest.raises(ResultError, match="sweep"):
        merge_results(dict(a, kind="offline"), dict(shard(503, [0.9]), kind="offline"))
    c = shard(503, [0.9, 0.8])
    del c["steps"]["1"]["episode_scores"]
    with pytest.raises(ResultError, match="episode_scores is in one file only"):
        merge_results(a, c)


def test_merge_script_joins_shards_and_names_the_file_it_cannot_merge(tmp_path):
    files = []
    for lo, s in ((100, [0.9, 1.0]), (102, [0.2, 0.96, 0.5])):
        files.append(tmp_path / f"s{lo}.json")
        files[-1].write_text(json.dumps(shard(lo, s)))
    out = tmp_path / "all.json"
    p = subprocess.run([sys.executable, str(REPO / "scripts/merge_results.py"), str(files[1]), str(files[0]),
                        "--out", str(out)], capture_output=True, text=True, cwd=REPO)
    assert p.returncode == 0, p.stderr
    doc = json.loads(out.read_text())
    assert doc["seeds"] == [100, 104] and doc["steps"]["1"]["success"] == pytest.approx(0.4)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(shard(200, [0.5])))
    p = subprocess.run([sys.executable, str(REPO / "scripts/merge_results.py"), str(out), str(bad), "--out",
                        str(tmp_path / "x.json")], capture_output=True, text=True, cwd=REPO)
    assert p.returncode != 0 and str(bad) in p.stderr and "[200, 200]" in p.stderr and not (tmp_path / "x.json").exists()


def test_merge_script_keeps_chosen_counts_to_join_a_multi_count_file_with_a_shard(tmp_path):
    both = shard(100, [0.9, 1.0])
    both["steps"]["2"] = shard(100, [0.3, 0.4])["steps"]["1"]
    files = [tmp_path / "c1-c2.json", tmp_path / "c1.json"]
    files[0].write_text(json.dumps(both))
    files[1].write_text(json.dumps(shard(102, [0.2, 0.96, 0.5])))
    out = tmp_path / "c1_500.json"
    run = [sys.executable, str(REPO / "scripts/merge_results.py"), *map(str, files), "--out", str(out)]
    p = subprocess.run(run, capture_output=True, text=True, cwd=REPO)
    assert p.returncode != 0 and "same step counts" in p.stderr and not out.exists()  # without --steps: refused
    p = subprocess.run(run + ["--steps", "1"], capture_output=True, text=True, cwd=REPO)
    assert p.returncode == 0, p.stderr
    doc = json.loads(out.read_text())
    assert list(doc["steps"]) == ["1"] and doc["dropped_steps"] == [2] and doc["seeds"] == [100, 104]
    assert doc["steps"]["1"]["episode_scores"] == [0.9, 1.0, 0.2, 0.96, 0.5]
    assert doc["steps"]["1"]["score"] == pytest.approx((0.9 + 1.0 + 0.2 + 0.96 + 0.5) / 5, abs=1e-4)
    # the 2-call row evaluated later on the same 5 seeds: merged back, no longer listed as dropped
    two = shard(100, [0.3, 0.4, 0.5, 0.6, 0.7])
    back = merge_results(doc, {**two, "steps": {"2": two["steps"]["1"]}})
    assert list(back["steps"]) == ["1", "2"] and "dropped_steps" not in back
    assert "dropped_steps" not in merge_results(shard(100, [0.9, 1.0]), shard(102, [0.5]))
    p = subprocess.run(run + ["--steps", "2"], capture_output=True, text=True, cwd=REPO)
    assert p.returncode != 0 and str(files[1]) in p.stderr and "[2]-step" in p.stderr
