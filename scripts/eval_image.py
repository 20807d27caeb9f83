"""Frechet distance and accuracy of an image model per number of calls, in an evaluator CNN's features.

    python scripts/eval_image.py --checkpoint runs/M/checkpoints/latest.pt --classifier clf.pt --out mnist.json
"""
from shortcut_policy.image.cli import eval_main

if __name__ == "__main__":
    eval_main()
