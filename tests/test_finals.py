"""Final-state summaries of closed-loop episodes (shortcut_policy/eval/finals.py, scripts/final_poses.py)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from shortcut_policy.eval.cli import finals_main
from shortcut_policy.eval.finals import collect, format_finals, summarize_finals
from shortcut_policy.results import ResultError, read_result, result_doc, write_result


def sweep_file(path, pos, ang, cov, best=None, n="1"):
    finals = {"position_error_px": list(pos), "angle_error_deg": list(ang), "coverage": list(cov)}
    best = list(best if best is not None else np.minimum(np.asarray(cov) / 0.95, 1.0))
    row = {"score": float(np.mean(best)), "success": float(np.mean(np.asarray(cov) > 0.95)),
           "episode_scores": best, "episode_finals": finals}
    write_result(path, result_doc("sweep", "pusht_lowdim", "m", {n: row}, episodes=len(pos), seeds=[0, len(pos) - 1]))
    return path


def test_failures_are_split_by_the_part_of_the_pose_they_miss():
    # 6 successes within 2 px / 1 deg; failures: 2 in place but turned, 1 turned right but off, 1 off in both
    pos = [0.5, 1.0, 1.5, 2.0, 1.0, 0.8, 1.0, 1.2, 30.0, 40.0]
    ang = [0.2, -0.5, 1.0, 0.3, -0.8, 0.1, 15.0, -20.0, 0.5, 90.0]
    cov = [0.97, 0.96, 0.99, 0.98, 0.96, 0.97, 0.80, 0.75, 0.60, 0.10]
    best = [1.0] * 6 + [0.95, 0.92, 0.7, 0.3]
    f = {"position_error_px": np.array(pos), "angle_error_deg": np.array(ang), "coverage": np.array(cov),
         "best_score": np.array(best)}
    s = summarize_finals(f)
    assert s["success"] == 0.6 and s["successes"]["n"] == 6 and s["failures"]["n"] == 4
    fl = s["failures"]
    assert fl["position_only"] == 0.5 and fl["angle_only"] == 0.25 and fl["neither"] == 0.25 and fl["both_within"] == 0
    assert fl["came_close"] == 0.5  # best score >= 0.9
    assert fl["median_angle_error_deg"] == pytest.approx(17.5)  # |angle|: 15, 20, 0.5, 90
    assert s["success_p90"]["position_error_px"] == pytest.approx(float(np.percentile(pos[:6], 90)), abs=0.01)
    table = format_finals({"m": {"1": s}})
    assert "| m | 1 | 0.60 |" in table


def test_script_writes_summary_and_plot_and_refuses_files_without_final_states(tmp_path, capsys):
    rng = np.random.default_rng(0)
    a = sweep_file(tmp_path / "a.json", rng.uniform(0, 50, 40), rng.uniform(-90, 90, 40), rng.uniform(0.5, 1.0, 40))
    b = sweep_file(tmp_path / "b.json", rng.uniform(0, 5, 40), rng.uniform(-5, 5, 40), rng.uniform(0.9, 1.0, 40))
    out = tmp_path / "finals.json"
    finals_main(["--results", str(a), str(b), "--names", "A", "B", "--out", str(out)])
    doc = read_result(out)
    assert doc["kind"] == "finals" and set(doc["steps"]["1"]) == {"A", "B"}
    assert doc["steps"]["1"]["B"]["success"] > doc["steps"]["1"]["A"]["success"]
    assert (tmp_path / "finals.png").stat().st_size > 10_000
    assert "| A | 1 |" in capsys.readouterr().out
    # an evaluation from before final states were recorded: refused by file and count
    old = json.loads(a.read_text())
    del old["steps"]["1"]["episode_finals"]
    (tmp_path / "old.json").write_text(json.dumps(old))
    with pytest.raises(SystemExit, match=r"old.json: no step count has episode_finals"):
        finals_main(["--results", str(tmp_path / "old.json")])
    with pytest.raises(ResultError, match=r"a.json: no entry for 16 calls"):
        collect([read_result(a)], ["A"], [16], sources=[str(a)])
    with pytest.raises(SystemExit, match="--names has 1 entries for 2 files"):
        finals_main(["--results", str(a), str(b), "--names", "A"])
