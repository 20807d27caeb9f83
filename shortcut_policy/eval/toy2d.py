"""The paper's Figure 2 in miniature: a 2-D multimodal distribution, where one Euler step of
flow matching lands on the mean between modes while one shortcut step lands on the modes.

`train_toy` trains the small MLP with a given objective; `sliced_wasserstein` measures how far
samples are from the data.
"""
from __future__ import annotations

import math

import torch

from ..core.ema import EMA
from ..core.objective import ShortcutObjective
from ..nets.mlp import MLPVelocity
from ..utils import save_figure


def gaussian_ring(n: int, n_modes: int = 8, radius: float = 2.0, std: float = 0.08,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """n points from a mixture of ``n_modes`` Gaussians on a circle: (n, 2)."""
    k = torch.randint(0, n_modes, (n,), generator=generator)
    ang = 2 * math.pi * k.float() / n_modes
    centres = radius * torch.stack([ang.cos(), ang.sin()], dim=1)  # (n, 2)
    return centres + std * torch.randn(n, 2, generator=generator)


def sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, n_proj: int = 256, seed: int = 0) -> float:
    """Sliced 1-Wasserstein distance between two equal-size point clouds (n, D)."""
    if a.shape != b.shape:
        raise ValueError(f"point clouds must have equal shapes, got {tuple(a.shape)} and {tuple(b.shape)}")
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(a.shape[1], n_proj, generator=g, dtype=a.dtype)
    dirs = dirs / dirs.norm(dim=0, keepdim=True)
    pa, _ = (a @ dirs).sort(dim=0)  # (n, P)
    pb, _ = (b @ dirs).sort(dim=0)
    return (pa - pb).abs().mean().item()


def train_toy(objective: ShortcutObjective, steps: int = 400, batch_size: int = 256, lr: float = 1e-3,
              teacher: str = "online", seed: int = 0, width: int = 128, progress: bool = False) -> MLPVelocity:
    """Train the toy MLP; d is ignored by the network when the objective is flow-only."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    net = MLPVelocity(2, width=width, d_embedding="none" if objective.flow_only else "log2",
                      max_inference_steps=objective.max_steps)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.0)
    ema = EMA(net, max_decay=0.99, warmup=False) if teacher == "ema" else None
    it = range(steps)
    if progress:
        from tqdm import tqdm
        it = tqdm(it, desc="toy", leave=False)
    for _ in it:
        x1 = gaussian_ring(batch_size, generator=g)
        loss, _ = objective.loss(net, x1, teacher=ema.module if ema else None, generator=g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if ema:
            ema.update(net)
    return net.eval()


TOY_DOC = """The paper's Figure 2 on a ring of 8 Gaussians: shortcut vs flow matching at 1, 2, 4, 128 calls.

    python scripts/toy2d.py --out docs/toy2d.png

Writes the picture and a results file beside it (kind "toy") with sliced Wasserstein distances to the data.
"""


def main(argv: list[str] | None = None) -> None:
    from .. import cli
    from ..results import result_doc, write_result

    ap = cli.parser(TOY_DOC)
    ap.add_argument("--out", default="docs/toy2d.png")
    ap.add_argument("--train-steps", type=int, default=1000, help="optimizer steps per model")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n", type=int, default=2000, help="samples per panel")
    args = ap.parse_args(argv)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = [1, 2, 4, 128]
    methods = {"shortcut": ShortcutObjective(128, 0.25), "flow matching": ShortcutObjective(128, 0.0)}
    data = gaussian_ring(args.n, generator=torch.Generator().manual_seed(args.seed + 1))
    x0 = torch.randn(args.n, 2, generator=torch.Generator().manual_seed(args.seed + 2))  # same noise everywhere
    fig, axes = plt.subplots(2, len(counts), figsize=(3 * len(counts), 6.4), sharex=True, sharey=True)
    steps: dict[str, dict[str, float]] = {str(n): {} for n in counts}
    for row, (name, obj) in enumerate(methods.items()):
        net = train_toy(obj, steps=args.train_steps, seed=args.seed, progress=True)
        for col, n in enumerate(counts):
            x = obj.sample(net, x0, n)
            sw = sliced_wasserstein(x, data)
            steps[str(n)][name] = round(sw, 4)
            ax = axes[row, col]
            ax.scatter(data[:, 0], data[:, 1], s=1, c="0.8")
            ax.scatter(x[:, 0], x[:, 1], s=1, c="C0" if row == 0 else "C3")
            ax.set_title(f"{name}, {n} call{'s' * (n > 1)}\nSW={sw:.3f}", fontsize=9)
            ax.set_xlim(-3, 3)
            ax.set_ylim(-3, 3)
            ax.set_aspect("equal")
    doc = result_doc("toy", "toy2d_ring8", "toy2d", steps, train_steps=args.train_steps, metric="sliced_w1")
    fig.suptitle(f"grey: data; {doc['command']} ({doc['date']})", fontsize=8)
    fig.tight_layout()
    out = save_figure(fig, args.out)
    write_result(out.with_suffix(".json"), doc)
