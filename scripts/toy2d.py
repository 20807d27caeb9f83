"""The paper's Figure 2 on a ring of 8 Gaussians: shortcut vs flow matching at 1, 2, 4, 128 steps.

    python scripts/toy2d.py --out docs/toy2d.png

Writes the picture and a JSON beside it with sliced Wasserstein distances to the data.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from shortcut_policy.core import ShortcutObjective
from shortcut_policy.eval.toy2d import gaussian_ring, sliced_wasserstein, train_toy
from shortcut_policy.utils import provenance


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="docs/toy2d.png")
    ap.add_argument("--train-steps", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n", type=int, default=2000, help="samples per panel")
    args = ap.parse_args()

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps_list = [1, 2, 4, 128]
    methods = {"shortcut": ShortcutObjective(128, 0.25), "flow matching": ShortcutObjective(128, 0.0)}
    data = gaussian_ring(args.n, generator=torch.Generator().manual_seed(args.seed + 1))
    x0 = torch.randn(args.n, 2, generator=torch.Generator().manual_seed(args.seed + 2))  # same noise everywhere
    fig, axes = plt.subplots(2, len(steps_list), figsize=(3 * len(steps_list), 6.4), sharex=True, sharey=True)
    result = {"task": "toy2d_ring8", **provenance(), "train_steps": args.train_steps, "metric": "sliced_w1", "methods": {}}
    for row, (name, obj) in enumerate(methods.items()):
        net = train_toy(obj, steps=args.train_steps, seed=args.seed, progress=True)
        result["methods"][name] = {}
        for col, n in enumerate(steps_list):
            x = obj.sample(net, x0, n)
            sw = sliced_wasserstein(x, data)
            result["methods"][name][str(n)] = round(sw, 4)
            ax = axes[row, col]
            ax.scatter(data[:, 0], data[:, 1], s=1, c="0.8")
            ax.scatter(x[:, 0], x[:, 1], s=1, c="C0" if row == 0 else "C3")
            ax.set_title(f"{name}, {n} step{'s' * (n > 1)}\nSW={sw:.3f}", fontsize=9)
            ax.set_xlim(-3, 3); ax.set_ylim(-3, 3); ax.set_aspect("equal")
    fig.suptitle(f"grey: data; {result['command']} ({result['date']})", fontsize=8)
    fig.tight_layout()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result["methods"], indent=1))


if __name__ == "__main__":
    main()
