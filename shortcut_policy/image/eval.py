"""Image metrics without Inception weights: a small CNN classifier trained on the same data.

- Frechet distance (FD) between Gaussian fits of the classifier's penultimate features of generated
  samples and of test images. No Inception network can be fetched on these machines, so this is
  *not* FID: numbers compare models measured with the same classifier and sample count only.
- Accuracy: the classifier's agreement with the class each sample was asked for (overall and per
  class), i.e. whether class conditioning and guidance work.
FD of a finite sample is biased upwards (more so with fewer samples), so every comparison uses the
same sample count; ``real_fd`` reports the floor: the FD of that many *real* training images.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoint import CheckpointError, load_checkpoint, load_state_strict, save_checkpoint
from ..utils import save_figure
from .data import ImageDataset


class SmallCNN(nn.Module):
    """Two conv blocks and a 128-d feature layer: (B, C, H, W) in [-1, 1] -> (features (B, 128), logits (B, K))."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, feat_dim: int = 128):
        super().__init__()
        self.config = {"in_channels": in_channels, "num_classes": num_classes, "feat_dim": feat_dim}
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(7),  # any input size -> (B, 64, 7, 7); the identity for 28x28
        )
        self.fc = nn.Linear(64 * 49, feat_dim)
        self.out = nn.Linear(feat_dim, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.conv(x).flatten(1)  # (B, 3136)
        feats = F.relu(self.fc(h))  # (B, feat_dim)
        return feats, self.out(feats)  # (B, feat_dim), (B, K)


@torch.no_grad()
def classify(clf: SmallCNN, images: torch.Tensor, batch_size: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """images (N, C, H, W) in [-1, 1] (clamped) -> (features (N, F) float64, predicted class (N,))."""
    clf.eval()
    feats, preds = [], []
    for i in range(0, images.shape[0], batch_size):
        f, logits = clf(images[i:i + batch_size].float().clamp(-1, 1))
        feats.append(f.double().numpy())
        preds.append(logits.argmax(1).numpy())
    return np.concatenate(feats), np.concatenate(preds)


def train_classifier(train: ImageDataset, test: ImageDataset, epochs: int = 3, batch_size: int = 128,
                     lr: float = 1e-3, seed: int = 0, log: bool = True) -> tuple[SmallCNN, float]:
    """Fit the evaluator's classifier (Adam, cosine lr decay, 1-pixel random shifts); returns
    (classifier, test accuracy)."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    clf = SmallCNN(train.shape[0], train.num_classes)
    opt = torch.optim.Adam(clf.parameters(), lr=lr)
    n = len(train)
    per_epoch = max(1, n // batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * per_epoch)
    for epoch in range(epochs):
        clf.train()
        perm = torch.randperm(n, generator=g)
        for k in range(per_epoch):
            idx = perm[k * batch_size:(k + 1) * batch_size]
            x, y = train.images[idx], train.labels[idx]
            # shifts of up to 1 pixel: features that do not hinge on exact positions
            dx, dy = torch.randint(-1, 2, (2,), generator=g).tolist()
            x = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
            loss = F.cross_entropy(clf(x)[1], y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        acc = accuracy(clf, test)
        if log:
            print(f"classifier epoch {epoch + 1}/{epochs}: last batch loss {loss.item():.4f}, test accuracy {acc:.4f}")
    return clf.eval(), acc


def accuracy(clf: SmallCNN, data: ImageDataset) -> float:
    _, pred = classify(clf, data.images)
    return float((pred == data.labels.numpy()).mean())


def save_classifier(path: str | Path, clf: SmallCNN, test_accuracy: float, info: dict[str, Any]) -> Path:
    return save_checkpoint(path, {"config": {"classifier": clf.config, **info}, "model": clf.state_dict(),
                                  "step": 0, "test_accuracy": test_accuracy})


def load_classifier(path: str | Path) -> tuple[SmallCNN, dict[str, Any]]:
    state = load_checkpoint(path)
    if "classifier" not in state["config"]:
        raise CheckpointError(f"{path} is not an evaluator classifier checkpoint (no 'classifier' config)")
    clf = SmallCNN(**state["config"]["classifier"])
    load_state_strict(clf, state["model"], f"classifier {path}")
    return clf.eval(), {**state["config"], "test_accuracy": float(state["test_accuracy"])}


def gaussian_stats(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (F,) and covariance (F, F) of features (N, F), float64."""
    if feats.ndim != 2 or feats.shape[0] < 2:
        raise ValueError(f"need features of shape (N >= 2, F), got {feats.shape}")
    f = feats.astype(np.float64)
    return f.mean(0), np.cov(f, rowvar=False)


def _sqrt_psd(a: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, s2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)) between two Gaussians.

    tr((S1 S2)^(1/2)) = tr((S1^(1/2) S2 S1^(1/2))^(1/2)), a symmetric PSD matrix, so two symmetric
    eigendecompositions give it exactly (no general matrix square root, no scipy).
    """
    r1 = _sqrt_psd(s1)
    m = r1 @ s2 @ r1
    tr_cross = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    diff = mu1 - mu2
    return float(max(0.0, diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_cross))


def balanced_labels(n: int, num_classes: int) -> torch.Tensor:
    """0, 1, ..., K-1, 0, 1, ...: the requested classes of an evaluation batch (n,)."""
    return torch.arange(n) % num_classes


@torch.no_grad()
def generate(model, n: int, steps: int, labels: torch.Tensor | None, seed: int, cfg_scale: float | None = None,
             batch_size: int = 500) -> torch.Tensor:
    """n samples from fixed noise (seeded, identical for every step count), in batches: (n, C, H, W)."""
    noise = torch.randn((n, *model.cfg.shape), generator=torch.Generator().manual_seed(seed))
    out = []
    for i in range(0, n, batch_size):
        lab = None if labels is None else labels[i:i + batch_size]
        out.append(model.sample(num_inference_steps=steps, labels=lab, cfg_scale=cfg_scale, noise=noise[i:i + batch_size]).cpu())
    return torch.cat(out)


def evaluate_image_model(model, clf: SmallCNN, test: ImageDataset, steps: Sequence[int], n_samples: int = 1000,
                         seed: int = 0, cfg_scale: float | None = None, real: ImageDataset | None = None,
                         log: bool = True) -> dict[str, Any]:
    """FD and accuracy of ``n_samples`` class-balanced samples at each step count.

    Returns {"steps": {"N": {"fd", "accuracy", "per_class_accuracy", "seconds"}}, "real_fd": float | None}.
    """
    test_mu, test_s = gaussian_stats(classify(clf, test.images)[0])
    K = model.cfg.num_classes
    labels = balanced_labels(n_samples, K) if K else None
    out: dict[str, Any] = {"steps": {}}
    if real is not None:
        rf = classify(clf, real.images[:n_samples])[0]
        out["real_fd"] = frechet_distance(*gaussian_stats(rf), test_mu, test_s)
        if log:
            print(f"real images (n={min(n_samples, len(real))}): fd {out['real_fd']:.3f}")
    for s in steps:
        t0 = time.perf_counter()
        x = generate(model, n_samples, int(s), labels, seed, cfg_scale)
        feats, pred = classify(clf, x)
        res = {"fd": frechet_distance(*gaussian_stats(feats), test_mu, test_s)}
        if labels is not None:
            lab = labels.numpy()
            res["accuracy"] = float((pred == lab).mean())
            res["per_class_accuracy"] = [float((pred[lab == k] == k).mean()) for k in range(K)]
        res["seconds"] = time.perf_counter() - t0
        out["steps"][str(int(s))] = res
        if log:
            print(f"steps {s}: fd {res['fd']:.3f}" + (f", accuracy {res['accuracy']:.4f}" if labels is not None else "")
                  + f" ({res['seconds']:.0f} s)", flush=True)
    return out


def plot_results(results: dict[str, dict[str, Any]], out: str | Path) -> Path:
    """FD and accuracy vs number of steps, one line per method: {method: results-JSON dict}."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for method, res in sorted(results.items()):
        ks = sorted(res["steps"], key=int)
        xs = [int(k) for k in ks]
        axes[0].plot(xs, [res["steps"][k]["fd"] for k in ks], "o-", label=method)
        if all("accuracy" in res["steps"][k] for k in ks):
            axes[1].plot(xs, [res["steps"][k]["accuracy"] for k in ks], "o-", label=method)
    for ax, name in zip(axes, ("FD (classifier features, lower is better)", "accuracy on samples")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("network calls (steps)")
        ax.set_title(name, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].set_yscale("log")
    axes[0].legend()
    fig.tight_layout()
    return save_figure(fig, out, dpi=120)
