"""scripts/losses.py: final training losses of runs, averaged over the last logged values."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_final_losses_average_the_last_entries_and_name_missing_runs(tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    rows = [{"step": s, "train/loss": 1.0 * s, "train/loss_flow": 2.0 * s} for s in (10, 20, 30)]
    rows.insert(1, {"step": 20, "val/loss": 9.0})  # other entries are skipped
    (run / "metrics.jsonl").write_text("\n".join(map(json.dumps, rows)) + "\n")
    out = tmp_path / "l.json"
    p = subprocess.run([sys.executable, str(ROOT / "scripts/losses.py"), "--runs", str(run), "--last", "2",
                        "--out", str(out)], capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    doc = json.loads(out.read_text())
    assert doc["kind"] == "losses"
    r = doc["runs"]["r"]
    assert r["steps"] == [20, 30]
    assert r["loss"] == pytest.approx(25.0) and r["loss_flow"] == pytest.approx(50.0)
    bad = subprocess.run([sys.executable, str(ROOT / "scripts/losses.py"), "--runs", str(tmp_path / "none")],
                         capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode != 0 and "no metrics.jsonl" in bad.stderr


def test_a_curve_keeps_every_logged_value_and_plots_it(tmp_path):
    runs = []
    for name, scale in (("a", 1.0), ("b", 100.0)):
        run = tmp_path / name
        run.mkdir()
        rows = [{"step": s, "train/loss": 1.0, "train/loss_interval": scale * s} for s in (50, 100, 150)]
        (run / "metrics.jsonl").write_text("\n".join(map(json.dumps, rows)) + "\n")
        runs.append(str(run))
    out = tmp_path / "curves.json"
    p = subprocess.run([sys.executable, str(ROOT / "scripts/losses.py"), "--runs", *runs, "--curve",
                        "train/loss_interval", "--out", str(out)], capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    doc = json.loads(out.read_text())
    assert doc["curve"] == "train/loss_interval"
    assert doc["curves"] == {"a": [[50, 50.0], [100, 100.0], [150, 150.0]],
                             "b": [[50, 5000.0], [100, 10000.0], [150, 15000.0]]}
    assert (tmp_path / "curves.png").stat().st_size > 1000
    bad = subprocess.run([sys.executable, str(ROOT / "scripts/losses.py"), "--runs", runs[0], "--curve",
                          "train/loss_consistency", "--out", str(tmp_path / "x.json")], capture_output=True, text=True,
                         cwd=ROOT)
    assert bad.returncode != 0 and "no train/loss_consistency entries" in bad.stderr
