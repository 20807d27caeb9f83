"""scripts/report.py: the step-count table of a task's results folders (other kinds skipped, missing files
named) and the manifest of every results file."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _write(root: Path, name: str, payload: dict) -> None:
    path = root / "pusht_lowdim" / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload))


def _sweep(score: float, **extra) -> dict:
    entry = {"score": score, "success": 0.1, "latency_ms_p50": 10.0, "latency_ms_p99": 12.0, "control_rate_hz": 800.0}
    return {"kind": "sweep", "task": "pusht_lowdim", "method": "m", "command": "c", "machine": "x", "date": "d",
            "steps": {"1": entry}, **extra}


def _report(root, *args):
    return subprocess.run([sys.executable, str(ROOT / "scripts/report.py"), "--results", str(root), *args],
                          capture_output=True, text=True, cwd=ROOT, env={"PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg"})


def test_report_tables_sweeps_and_names_missing_files(tmp_path):
    _write(tmp_path, "main/a", _sweep(0.75, about="today's defaults", budget="quick", train_seed=0))
    _write(tmp_path, "diagnostics/d", {"kind": "diagnostics", "task": "pusht_lowdim", "method": "diagnostics",
                                       "command": "c", "machine": "x", "date": "d", "steps": {"1": {"a": {"to_ref": 1.0}}}})
    ok = _report(tmp_path, "--task", "pusht_lowdim")
    assert ok.returncode == 0, ok.stderr
    table = (tmp_path / "pusht_lowdim" / "report.md").read_text()
    assert "| main/a | 0.750 / 0.10 |" in table and "today's defaults" in table and "diagnostics/d" not in table
    bad = _report(tmp_path, "--task", "pusht_lowdim", "--files", "main/a", "diagnostics/d", "main/nosuch")
    assert bad.returncode != 0 and "['diagnostics/d', 'main/nosuch']" in bad.stderr
    broken = tmp_path / "pusht_lowdim" / "main" / "broken.json"
    broken.write_text(json.dumps({"task": "pusht_lowdim", "steps": {}}))
    bad = _report(tmp_path, "--task", "pusht_lowdim")
    assert bad.returncode != 0 and "broken.json: missing keys" in bad.stderr


def test_plot_files_and_manifest(tmp_path):
    _write(tmp_path, "main/a", _sweep(0.75))
    _write(tmp_path, "recipe/b", _sweep(0.5, overrides=["objective.max_steps=128"], superseded_by="main/a"))
    ok = _report(tmp_path, "--task", "pusht_lowdim", "--plot-files", "recipe/b")
    assert ok.returncode == 0, ok.stderr
    table = (tmp_path / "pusht_lowdim" / "report.md").read_text()
    assert "| main/a |" in table and "| recipe/b |" in table  # the table keeps every file
    assert (tmp_path / "pusht_lowdim" / "report.png").stat().st_size > 0
    ok = _report(tmp_path, "--manifest")
    assert ok.returncode == 0, ok.stderr
    manifest = (tmp_path / "MANIFEST.md").read_text()
    assert "| pusht_lowdim/recipe/b.json | sweep |" in manifest and "superseded by main/a" in manifest
    assert "`objective.max_steps=128`" in manifest


def test_outcome_bars_for_tasks_with_several_answers(tmp_path):
    from shortcut_policy.eval.sweep import plot_outcomes

    res = {"shortcut": {"steps": {"1": {"outcome_shares": {"left": 0.5, "right": 0.3, "neither": 0.2}}}},
           "flow": {"steps": {"1": {"outcome_shares": {"left": 0.1, "neither": 0.9}}, "16": {"score": 1.0}}}}
    plot_outcomes(res, str(tmp_path / "o.png"))
    assert (tmp_path / "o.png").stat().st_size > 1000
    from shortcut_policy.envs.base import RolloutResult

    r = RolloutResult(seeds=[1, 2, 3, 4, 5], scores=[1, 0, 1, 1, 0], successes=[1, 0, 1, 1, 0], lengths=[5] * 5,
                      outcomes=["push", "push", "door", "door", "door"])
    assert r.outcome_shares() == {"door": 0.6, "push": 0.4}
    assert r.outcome_success() == pytest.approx({"door": 2 / 3, "push": 0.5})  # a multi-task run's per-task success
    plot_outcomes({"mt": {"steps": {"1": {"outcome_shares": r.outcome_shares(),
                                          "outcome_success": r.outcome_success()}}}}, str(tmp_path / "mt.png"))
    assert (tmp_path / "mt.png").stat().st_size > 0
    with pytest.raises(ValueError, match="no results with outcome_shares"):
        plot_outcomes({"x": {"steps": {"1": {"score": 0.5}}}}, str(tmp_path / "none.png"))
