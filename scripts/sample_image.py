"""Sample grids from an image model at several numbers of calls, from the same noise; see --help.

    python scripts/sample_image.py --checkpoint runs/M/checkpoints/latest.pt --out docs/mnist --prefix shortcut-
"""
from shortcut_policy.image.cli import sample_main

if __name__ == "__main__":
    sample_main()
