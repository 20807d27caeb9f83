"""scripts/report.py: tables from step-count results files; other layouts skipped, missing methods named."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _write(d: Path, stem: str, payload: dict) -> None:
    (d / f"pusht_lowdim-{stem}.json").write_text(json.dumps(payload))


def _sweep(score: float) -> dict:
    entry = {"score": score, "success": 0.1, "latency_ms_p50": 10.0, "latency_ms_p99": 12.0, "control_rate_hz": 800.0}
    return {"task": "pusht_lowdim", "method": "m", "command": "c", "machine": "x", "date": "d", "steps": {"1": entry}}


def _report(tmp_path, *methods):
    return subprocess.run([sys.executable, str(ROOT / "scripts/report.py"), "--results", str(tmp_path),
                           "--out", str(tmp_path / "r.md"), "--methods", *methods],
                          capture_output=True, text=True, cwd=ROOT, env={"PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg"})


def test_report_tables_sweeps_and_names_missing_methods(tmp_path):
    _write(tmp_path, "a", _sweep(0.75))
    _write(tmp_path, "diagnostics", {"task": "pusht_lowdim", "method": "diagnostics", "steps": {"1": {"a": {"to_ref": 1.0}}}})
    ok = _report(tmp_path, "a")
    assert ok.returncode == 0, ok.stderr
    assert "0.750 / 0.10" in (tmp_path / "r.md").read_text()
    bad = _report(tmp_path, "a", "diagnostics", "nosuch")
    assert bad.returncode != 0
    assert "['diagnostics', 'nosuch']" in bad.stderr


def test_plot_methods_choose_the_plotted_subset(tmp_path):
    _write(tmp_path, "a", _sweep(0.75))
    _write(tmp_path, "b", _sweep(0.5))
    ok = _report(tmp_path, "a", "b", "--plot-methods", "b")
    assert ok.returncode == 0, ok.stderr
    table = (tmp_path / "r.md").read_text()
    assert "| a |" in table and "| b |" in table  # the table keeps every method
    assert (tmp_path / "r.png").stat().st_size > 0
    bad = _report(tmp_path, "a", "--plot-methods", "b")  # b is not in the table
    assert bad.returncode != 0 and "--plot-methods ['b']" in bad.stderr
