"""Paired comparison of two evaluations on the same episode seeds (and training seeds); see --help.

    python scripts/compare.py --a shortcut_s0.json shortcut_s1.json --b flow_s0.json flow_s1.json
"""
from shortcut_policy.eval.cli import compare_main

if __name__ == "__main__":
    compare_main()
