"""Image-model entry points: train (``shortcut-train-image``, Hydra), sample grids, evaluate (FD in the
evaluator classifier's features) and train that evaluator. Flags follow ``shortcut_policy.cli``."""
from __future__ import annotations

import math
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from .. import cli
from ..results import result_doc, write_result
from ..utils import save_figure


@hydra.main(config_path="pkg://shortcut_policy.configs", config_name="image", version_base="1.3")
def train_main(cfg: DictConfig) -> None:
    """Train an image model (configs/image.yaml): ``shortcut-train-image objective=flow_image train.steps=4000``."""
    from .run import run_image_training

    out_dir, _ = run_image_training(OmegaConf.to_container(cfg, resolve=True))
    print(f"done: checkpoint {out_dir}/checkpoints/latest.pt")


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
    save_figure(fig, path, dpi=100)


SAMPLE_DOC = """Sample grids from a trained image model at several numbers of network calls, all from the SAME
noise, and a latent interpolation at one call.

    python scripts/sample_image.py --checkpoint runs/mnist-shortcut/checkpoints/latest.pt \\
        --num-inference-steps 1 2 4 8 16 32 64 128 --out docs/mnist --prefix shortcut-

Writes <out>/<prefix>steps<N>.png (rows x classes grid per count), <out>/<prefix>steps.png (one row per
count, same noise and class per column) and <out>/<prefix>interp.png: x0 = cos(a) n1 + sin(a) n2 for a in
[0, pi/2], the variance-preserving mix of two noises, decoded in one call.
"""


def sample_main(argv: list[str] | None = None) -> None:
    ap = cli.parser(SAMPLE_DOC)
    ap.add_argument("--checkpoint", required=True)
    cli.add_calls_arg(ap, "default 1 2 4 ... 128")
    ap.add_argument("--rows", type=int, default=6, help="samples per class in each grid")
    ap.add_argument("--cfg-scale", type=float, default=None, help="default: the training scale")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="docs/mnist")
    ap.add_argument("--prefix", default="")
    ap.add_argument("--interp-points", type=int, default=9)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    counts = args.num_inference_steps or [1, 2, 4, 8, 16, 32, 64, 128]
    from .run import load_image_model

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
    for s in counts:
        x = to_display(model.sample(num_inference_steps=s, labels=labels, cfg_scale=args.cfg_scale, noise=noise))
        save_image(out / f"{args.prefix}steps{s}.png", tile(x, args.rows, cols),
                   f"{kind}, {s} step{'s' if s > 1 else ''} (step {run['checkpoint']['step']})")
        first_rows.append(x[:cols])
        print(f"wrote {out / f'{args.prefix}steps{s}.png'}")
    save_image(out / f"{args.prefix}steps.png", tile(np.concatenate(first_rows), len(counts), cols),
               f"{kind}: rows = {', '.join(map(str, counts))} calls, same noise")
    print(f"wrote {out / f'{args.prefix}steps.png'}")

    # latent interpolation at one step: variance-preserving mix of two noises, for every class
    g = torch.Generator().manual_seed(args.seed + 1)
    n1, n2 = (torch.randn((1, *model.cfg.shape), generator=g) for _ in range(2))
    angles = torch.linspace(0, math.pi / 2, args.interp_points)
    rows = []
    for k in range(cols):
        x0 = torch.cos(angles)[:, None, None, None] * n1 + torch.sin(angles)[:, None, None, None] * n2
        lab = torch.full((len(angles),), k) if model.cfg.num_classes else None
        rows.append(to_display(model.sample(num_inference_steps=1, labels=lab, cfg_scale=args.cfg_scale, noise=x0)))
    save_image(out / f"{args.prefix}interp.png", tile(np.concatenate(rows), cols, len(angles)),
               f"{kind}, 1 step: x0 = cos(a) n1 + sin(a) n2, a = 0..pi/2")
    print(f"wrote {out / f'{args.prefix}interp.png'}")


EVAL_DOC = """Evaluate an image model: Frechet distance in the evaluator classifier's feature space (not FID: no
Inception weights here) and the classifier's accuracy on class-conditional samples, per number of calls.

    python scripts/train_image_classifier.py --data data/mnist.npz --out runs/mnist-classifier/classifier.pt
    python scripts/eval_image.py --checkpoint runs/mnist-shortcut/checkpoints/latest.pt \\
        --classifier runs/mnist-classifier/classifier.pt --n-samples 1000 --out docs/results/mnist/main/shortcut.json

Writes a results file (kind "image") and re-plots every image result beside it into <dir>/<task>.png.
"""


def eval_main(argv: list[str] | None = None) -> None:
    from ..train.run import training_command
    from .data import load_mnist, make_image_dataset
    from .eval import evaluate_image_model, load_classifier, plot_results
    from .run import load_image_model

    ap = cli.parser(EVAL_DOC)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--classifier", required=True)
    ap.add_argument("--data", default=None, help="MNIST npz with the test images (default: the model's training data)")
    ap.add_argument("--task", default="mnist", help="task name of the results file")
    cli.add_calls_arg(ap, "default 1 2 4 ... 128")
    ap.add_argument("--n-samples", type=int, default=1000)
    ap.add_argument("--cfg-scale", type=float, default=None, help="default: the training scale")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--method", default=None, help="default: the objective kind (shortcut / flow)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, run = load_image_model(args.checkpoint)
    clf, clf_info = load_classifier(args.classifier)
    if args.data is not None:
        test, train = load_mnist(args.data, "test"), load_mnist(args.data, "train", limit=args.n_samples)
    else:
        data = {**run["image_data"], "limit": None}
        test, train = make_image_dataset(data, "test"), make_image_dataset({**data, "limit": args.n_samples}, "train")
    method = args.method or model.cfg.objective.kind
    res = evaluate_image_model(model, clf, test, args.num_inference_steps or [1, 2, 4, 8, 16, 32, 64, 128],
                               n_samples=args.n_samples, seed=args.seed, cfg_scale=args.cfg_scale, real=train)
    out = Path(args.out)
    write_result(out, result_doc(
        "image", args.task, method, res["steps"], train_steps=run["checkpoint"]["step"],
        train_command=training_command(args.checkpoint, run), n_samples=args.n_samples, sample_seed=args.seed,
        cfg_scale=model.cfg.cfg_scale if args.cfg_scale is None else args.cfg_scale,
        guidance="only at the flow level d = 1/M (M calls; every call for flow matching)",
        metric="Frechet distance in the penultimate features of the evaluator CNN (not FID) vs the "
               f"{len(test)} test images; accuracy = evaluator's agreement with the requested class",
        classifier_test_accuracy=clf_info["test_accuracy"], real_fd=res.get("real_fd")))
    import json

    results = {}
    for p in sorted(out.parent.glob("*.json")):
        d = json.loads(p.read_text())
        if d.get("kind") == "image" and d.get("task") == args.task:
            results[d["method"]] = d
    print(f"wrote {plot_results(results, out.parent / f'{args.task}.png')}")


CLASSIFIER_DOC = """Train the evaluator's small CNN classifier on the image data (a few minutes on a CPU).

    python scripts/train_image_classifier.py --data data/mnist.npz --out runs/mnist-classifier/classifier.pt
"""


def classifier_main(argv: list[str] | None = None) -> None:
    from ..utils import provenance
    from .data import load_mnist
    from .eval import save_classifier, train_classifier

    ap = cli.parser(CLASSIFIER_DOC)
    ap.add_argument("--data", default="data/mnist.npz",
                    help="MNIST npz (x_train, y_train, x_test, y_test): datasets/download_mnist.py writes it")
    ap.add_argument("--out", default="runs/mnist-classifier/classifier.pt")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    train, test = load_mnist(args.data, "train"), load_mnist(args.data, "test")
    clf, acc = train_classifier(train, test, epochs=args.epochs, seed=args.seed)
    path = save_classifier(args.out, clf, acc, {"data": args.data, "epochs": args.epochs, **provenance()})
    print(f"classifier test accuracy {acc:.4f} ({len(test)} test images); saved {path}")
