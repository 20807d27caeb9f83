"""The paper's Figure 2 on a ring of 8 Gaussians: shortcut vs flow matching at 1, 2, 4, 128 calls.

    python scripts/toy2d.py --out docs/toy2d.png
"""
from shortcut_policy.eval.toy2d import main

if __name__ == "__main__":
    main()
