"""Class-conditional image generation with the shared shortcut objective and sampler.

- ``config``: typed, validated model config (shape, classes, net preset, objective, guidance);
- ``data``: MNIST npz, a generic images + labels npz, a folder of images -> (C, H, W) in [-1, 1];
- ``model``: ``ShortcutImageModel`` (``compute_loss`` / ``sample``), the image twin of the policy;
- ``run``: Hydra run config -> the shared training loop; checkpoint -> model;
- ``eval``: a small classifier, Frechet distance in its feature space, accuracy on samples.
"""
from .config import ImageModelConfig
from .model import ShortcutImageModel

__all__ = ["ImageModelConfig", "ShortcutImageModel"]
