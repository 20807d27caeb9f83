"""Sample grids from a trained image model at several step counts, all from the SAME noise, and a latent
interpolation at one step.

    python scripts/sample_image.py --checkpoint runs/mnist-shortcut/checkpoints/latest.pt \
        --steps 1 2 4 8 16 32 64 128 --out docs/mnist --prefix shortcut-

Writes <out>/<prefix>steps<N>.png (rows x classes grid per step count), <out>/<prefix>steps.png (one row per
step count, same noise and class per column) and <out>/<prefix>interp.png: x0 = cos(a) n1 + sin(a) n2 for
a in [0, pi/2], the variance-preserving mix of two noises (cos^2 + sin^2 = 1 keeps x0 ~ N(0, I)),
decoded in one step.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import torch

from shortcut_policy.image.run import load_image_model


def to_display(x: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) in [-1, 1] -> (N, H, W) or (N, H, W, 3) in [0, 1]."""
    a = ((x.clamp(-1, 1) + 1) / 2).cpu().numpy()
    return a[:, 0] if a.shape[1] == 1 else a.transpose(0, 2, 3, 1)


def tile(images: np.ndarray, rows: int, cols: int, pad: int = 1) -> np.ndarray:
    """(rows*cols, H, W[, 3]) -> one mosaic image."""
    H, W = images.shape[1:3]
    shape = (rows * (H + pad) + pad, cols * (W + pad) + pad) + images.shape[3:]
    out = np.ones(shape, dtype=np.float32)
    for i, im in enumerate(images[:rows * cols]):
        r, c = divmod(i, cols)
        out[pad + r * (H + pad):pad + r * (H + pad) + H, pad + c * (W + pad):pad + c * (W + pad) + W] = im
    return out


def save_image(path: Path, mosaic: np.ndarray, title: str | None = None) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    h, w = mosaic.shape[:2]
    px = max(2.0, 640.0 / max(h, w))  # screen pixels per image pixel: about 640 px on the long side
    fig = plt.figure(figsize=(w * px / 100, h * px / 100 + (0.3 if title else 0.0)), dpi=100)
    ax = fig.add_axes((0, 0, 1, h * px / 100 / fig.get_figheight()))
    ax.imshow(mosaic, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.axis("off")
    if title:
        ax.set_title(title, fontsize=8)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--steps", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64, 128])
    ap.add_argument("--rows", type=int, default=6, help="samples per class in each grid")
    ap.add_argument("--cfg-scale", type=float, default=None, help="default: the training scale")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="docs/mnist")
    ap.add_argument("--prefix", default="")
    ap.add_argument("--interp-points", type=int, default=9)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, run = load_image_model(args.checkpoint)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    K = max(model.cfg.num_classes, 1)
    cols = K if model.cfg.num_classes else 10
    n = args.rows * cols
    noise = torch.randn((n, *model.cfg.shape), generator=torch.Generator().manual_seed(args.seed))
    labels = (torch.arange(n) % cols) if model.cfg.num_classes else None
    kind = model.cfg.objective.kind
    first_rows = []
    for s in args.steps:
        x = to_display(model.sample(steps=s, labels=labels, cfg_scale=args.cfg_scale, noise=noise))
        save_image(out / f"{args.prefix}steps{s}.png", tile(x, args.rows, cols),
                   f"{kind}, {s} step{'s' if s > 1 else ''} (step {run['checkpoint']['step']})")
        first_rows.append(x[:cols])
        print(f"wrote {out / f'{args.prefix}steps{s}.png'}")
    save_image(out / f"{args.prefix}steps.png", tile(np.concatenate(first_rows), len(args.steps), cols),
               f"{kind}: rows = {', '.join(map(str, args.steps))} steps, same noise")
    print(f"wrote {out / f'{args.prefix}steps.png'}")

    # latent interpolation at one step: variance-preserving mix of two noises, for every class
    g = torch.Generator().manual_seed(args.seed + 1)
    n1, n2 = (torch.randn((1, *model.cfg.shape), generator=g) for _ in range(2))
    angles = torch.linspace(0, math.pi / 2, args.interp_points)
    rows = []
    for k in range(cols):
        x0 = torch.cos(angles)[:, None, None, None] * n1 + torch.sin(angles)[:, None, None, None] * n2
        lab = torch.full((len(angles),), k) if model.cfg.num_classes else None
        rows.append(to_display(model.sample(steps=1, labels=lab, cfg_scale=args.cfg_scale, noise=x0)))
    save_image(out / f"{args.prefix}interp.png", tile(np.concatenate(rows), cols, len(angles)),
               f"{kind}, 1 step: x0 = cos(a) n1 + sin(a) n2, a = 0..pi/2")
    print(f"wrote {out / f'{args.prefix}interp.png'}")


if __name__ == "__main__":
    main()
