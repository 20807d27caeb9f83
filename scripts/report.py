"""Collect results files (docs/results/<task>-<method>.json) into one markdown table and one plot.

    python scripts/report.py --task pusht_lowdim --out docs/results/pusht_lowdim.md

Every row keeps the command, machine and date of the run that produced it.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from shortcut_policy.eval.sweep import plot_sweeps


def _rows(runs: dict, steps: list[int], cell) -> list[str]:
    """One markdown row per method; ``cell(result_at_step)`` formats a step's entry, '-' where absent."""
    out = []
    for name, d in runs.items():
        cells = [cell(d["steps"][str(s)]) if str(s) in d["steps"] else "-" for s in steps]
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="pusht_lowdim")
    ap.add_argument("--results", default="docs/results")
    ap.add_argument("--out", default=None, help="markdown path (default <results>/<task>.md); plot beside it")
    ap.add_argument("--methods", nargs="*", default=None, help="file stems to include, in order (default all)")
    ap.add_argument("--plot-methods", nargs="*", default=None,
                    help="methods drawn in the plot (default: every method in the table; a dozen stays readable)")
    args = ap.parse_args()

    files = sorted(Path(args.results).glob(f"{args.task}-*.json"))
    runs = {}
    for f in files:
        d = json.loads(f.read_text())
        steps = d.get("steps")
        if (d.get("method") == "latency" or not isinstance(steps, dict)
                or not all(str(k).isdigit() and "score" in v for k, v in steps.items())):
            continue  # latency, deployment, diagnostics and comparison files: other layouts
        runs[f.stem[len(args.task) + 1:]] = d
    if args.methods:
        missing = [m for m in args.methods if m not in runs]
        if missing:
            raise SystemExit(f"no step-count results for {missing} in {args.results} (expected "
                             f"{args.task}-<method>.json written by scripts/eval.py)")
        runs = {m: runs[m] for m in args.methods}
    if not runs:
        raise SystemExit(f"no results for task {args.task!r} in {args.results}")
    steps = sorted({int(s) for d in runs.values() for s in d["steps"]})
    lines = [f"# {args.task}: score / success per number of network calls per chunk", "",
             "| method | " + " | ".join(str(s) for s in steps) + " |", "|---|" + "---|" * len(steps)]
    lines += _rows(runs, steps, lambda r: f"{r['score']:.3f} / {r['success']:.2f}")
    lines += ["", "Chunk latency, batch 1, median ms (p99), measured during the closed-loop runs:", "",
              "| method | " + " | ".join(str(s) for s in steps) + " |", "|---|" + "---|" * len(steps)]
    lines += _rows(runs, steps, lambda r: f"{r['latency_ms_p50']:.1f} ({r['latency_ms_p99']:.1f})")
    lines += ["", "| method | train steps | episodes | training command |", "|---|---|---|---|"]
    lines += [f"| {n} | {d.get('train_steps', '?')} | {d.get('episodes', '?')} | `{d.get('train_command')}` |"
              for n, d in runs.items()]
    lines += ["", "Evaluations (command, machine, date):", ""]
    for name, d in runs.items():
        lines.append(f"- **{name}**: `{d['command']}`; {d['machine']}; {d['date']}; seeds {d.get('seeds')}")
    out = Path(args.out or Path(args.results) / f"{args.task}.md")
    out.write_text("\n".join(lines) + "\n")
    plotted = runs
    if args.plot_methods:
        missing = [m for m in args.plot_methods if m not in runs]
        if missing:
            raise SystemExit(f"--plot-methods {missing} are not in the table")
        plotted = {m: runs[m] for m in args.plot_methods}
    plot_sweeps(plotted, str(out.with_suffix(".png")),
                title=f"{args.task}: {len(plotted)} of {len(runs)} methods; every row in {out.name}")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
