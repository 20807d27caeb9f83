"""Evaluate a checkpoint per number of network calls (closed loop, or offline without a simulator): `shortcut-eval`.

    python scripts/eval.py --checkpoint runs/X/checkpoints/latest.pt --out runs/X/eval.json
"""
from shortcut_policy.eval.cli import main

if __name__ == "__main__":
    main()
