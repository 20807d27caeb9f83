"""Merge results files of one checkpoint: step counts on the same seeds, episode shards on adjacent seeds; see --help.

    python scripts/merge_results.py runs/X/seeds0-199.json runs/X/seeds200-499.json --out runs/X/eval500.json
"""
from shortcut_policy.eval.cli import merge_main

if __name__ == "__main__":
    merge_main()
