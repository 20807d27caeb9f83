"""Paired comparison of two policies evaluated on the same episode seeds.

    python scripts/compare.py --a docs/results/pusht_lowdim-shortcut_long.json \\
        --b docs/results/pusht_lowdim-flow_long.json --steps 1 2
    # several training seeds per side: each side is averaged over its files episode by episode
    python scripts/compare.py --a runs/s0.json runs/s1.json --b runs/f0.json runs/f1.json --names shortcut flow
    # one side at a fixed other count: shortcut at 1 call against DDPM at 100 steps, same episodes
    python scripts/compare.py --a runs/s0.json --b runs/ddpm.json --steps 1 --b-steps 100

Prints, per step count, both means, the mean per-episode difference (a - b) with its standard error
over episodes, and how many episodes each side won; when each side has two or more training seeds,
also the standard error over training seeds with a Welch t 95% interval and p-value (seeds of the
two sides are independent runs). Needs results written with per-episode scores (scripts/eval.py;
older files can be completed with ``--merge``). ``--out`` writes the rows as JSON with the command
and machine; ``--plot`` draws every training seed's score and the difference with its interval.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from shortcut_policy.eval.compare import format_comparison, paired_difference, plot_comparison
from shortcut_policy.utils import provenance


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--a", nargs="+", required=True, help="results files of side a (one per training seed)")
    ap.add_argument("--b", nargs="+", required=True, help="results files of side b")
    ap.add_argument("--names", nargs=2, default=None, help="column names (default: the files' methods)")
    ap.add_argument("--steps", type=int, nargs="+", default=None,
                    help="step counts (default: every count present on both sides)")
    ap.add_argument("--b-steps", type=int, default=None,
                    help="evaluate side b at this one step count against each of a's (e.g. 100 for DDPM-100)")
    ap.add_argument("--out", default=None, help="write the comparison as JSON")
    ap.add_argument("--plot", default=None,
                    help="write a plot (PNG): score per training seed vs calls, and the difference with its interval")
    args = ap.parse_args()

    def load(paths):
        out = []
        for p in paths:
            if not Path(p).exists():
                raise SystemExit(f"no such results file: {p}")
            out.append(json.loads(Path(p).read_text()))
        return out

    a, b = load(args.a), load(args.b)
    names = args.names or [a[0].get("method", "a"), b[0].get("method", "b")]
    if args.steps:
        steps = args.steps
    else:
        common = set.intersection(*[set(r.get("steps", {})) for r in (a if args.b_steps else [*a, *b])])
        steps = sorted(map(int, common))
    if not steps:
        raise SystemExit("the two sides share no step count")
    try:
        rows = [paired_difference(a, b, n, b_steps=args.b_steps) for n in steps]
    except (KeyError, ValueError) as e:
        raise SystemExit(str(e.args[0] if e.args else e))
    print(format_comparison(rows, *names))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({
            "task": a[0].get("task"), "method": f"compare:{names[0]}-vs-{names[1]}", **provenance(),
            "a": args.a, "b": args.b, "names": names, "episodes": rows[0]["episodes"], "seeds": a[0].get("seeds"),
            "steps": {str(r["steps"]): r for r in rows}}, indent=1))
        print(f"wrote {args.out}")
    if args.plot:
        Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
        plot_comparison(rows, *names, args.plot, title=f"{a[0].get('task', '')}: {names[0]} vs {names[1]}, "
                        f"{rows[0]['episodes']} paired episodes; {provenance().get('date', '')}")
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
