"""Final training losses of runs (their metrics.jsonl) as a results file; see --help.

    python scripts/losses.py --runs runs/A runs/B --last 5 --out losses.json
"""
from shortcut_policy.eval.cli import losses_main

if __name__ == "__main__":
    losses_main()
