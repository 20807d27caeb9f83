"""Offline step-count diagnostics of checkpoints on held-out demonstrations (no simulator); see --help.

    python scripts/diagnose.py --checkpoint runs/A/checkpoints/latest.pt runs/B/checkpoints/latest.pt --names A B
"""
from shortcut_policy.eval.cli import diagnose_main

if __name__ == "__main__":
    diagnose_main()
