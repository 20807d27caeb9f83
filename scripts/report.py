"""Collect results files (docs/results/<task>-<method>.json) into one markdown table and one plot.

    python scripts/report.py --task pusht_lowdim --out docs/results/pusht_lowdim.md

Every row keeps the command, machine and date of the run that produced it.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from shortcut_policy.eval.sweep import plot_sweeps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="pusht_lowdim")
    ap.add_argument("--results", default="docs/results")
    ap.add_argument("--out", default=None, help="markdown path (default <results>/<task>.md); plot beside it")
    ap.add_argument("--methods", nargs="*", default=None, help="file stems to include, in order (default all)")
    args = ap.parse_args()

    files = sorted(Path(args.results).glob(f"{args.task}-*.json"))
    runs = {}
    for f in files:
        d = json.loads(f.read_text())
        if d.get("method") == "latency":  # scripts/latency.py output, a different layout
            continue
        runs[f.stem[len(args.task) + 1:]] = d
    if args.methods:
        runs = {m: runs[m] for m in args.methods if m in runs}
    if not runs:
        raise SystemExit(f"no results for task {args.task!r} in {args.results}")
    steps = sorted({int(s) for d in runs.values() for s in d["steps"]})
    lines = [f"# {args.task}: score / success per number of network calls per chunk", "",
             "| method | train steps | episodes | " + " | ".join(str(s) for s in steps) + " |",
             "|---|---|---|" + "---|" * len(steps)]
    for name, d in runs.items():
        cells = []
        for s in steps:
            r = d["steps"].get(str(s))
            cells.append(f"{r['score']:.3f} / {r['success']:.2f}" if r else "-")
        lines.append(f"| {name} | {d.get('train_steps', '?')} | {d.get('episodes', '?')} | " + " | ".join(cells) + " |")
    lines += ["", "Chunk latency, batch 1, median ms (p99):", "",
              "| method | " + " | ".join(str(s) for s in steps) + " |", "|---|" + "---|" * len(steps)]
    for name, d in runs.items():
        cells = []
        for s in steps:
            r = d["steps"].get(str(s))
            cells.append(f"{r['latency_ms_p50']:.1f} ({r['latency_ms_p99']:.1f})" if r else "-")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "Runs (command, machine, date):", ""]
    for name, d in runs.items():
        lines.append(f"- **{name}**: `{d['command']}`; {d['machine']}; {d['date']}; seeds {d.get('seeds')}")
    out = Path(args.out or Path(args.results) / f"{args.task}.md")
    out.write_text("\n".join(lines) + "\n")
    plot_sweeps(runs, str(out.with_suffix(".png")), title=f"{args.task}: {len(runs)} methods; see {out.name}")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
