"""Final training losses of one or more runs, from their metrics.jsonl, as a results file.

    python scripts/losses.py --runs runs/A runs/B --last 5 --out docs/results/pusht_lowdim-train-losses.json

Per run: the mean of the last ``--last`` logged values of every train/loss* key, and the steps they
cover (flow and consistency parts separately for the shortcut objective).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from shortcut_policy.utils import provenance, write_result


def final_losses(metrics_path: Path, last: int) -> dict:
    rows = [r for r in map(json.loads, metrics_path.read_text().splitlines()) if "train/loss" in r][-last:]
    if not rows:
        raise SystemExit(f"{metrics_path}: no train/loss entries")
    keys = sorted({k for r in rows for k in r if k.startswith("train/loss")})
    return {"steps": [rows[0]["step"], rows[-1]["step"]],
            **{k.split("/", 1)[1]: sum(r[k] for r in rows) / len(rows) for k in keys}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", nargs="+", required=True, help="run directories (out_dir of scripts/train.py)")
    ap.add_argument("--last", type=int, default=5, help="how many of the last logged values to average")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    runs = {}
    for d in args.runs:
        path = Path(d) / "metrics.jsonl"
        if not path.exists():
            raise SystemExit(f"no metrics.jsonl in {d}")
        runs[Path(d).name] = final_losses(path, args.last)
        print(Path(d).name, {k: round(v, 6) if isinstance(v, float) else v for k, v in runs[Path(d).name].items()})
    if args.out:
        write_result(args.out, {"method": "train-losses", **provenance(), "last": args.last, "runs": runs})


if __name__ == "__main__":
    main()
