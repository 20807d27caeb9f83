"""The step-count table of a task (docs/results/<task>/report.md) or the manifest of all results files.

    python scripts/report.py --task pusht_lowdim
    python scripts/report.py --manifest
"""
from shortcut_policy.eval.report import report_main

if __name__ == "__main__":
    report_main()
