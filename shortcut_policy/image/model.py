"""The image generative model: a DiT trained and sampled by the *core* shortcut objective and sampler.

The image twin of ``ShortcutPolicy``: ``compute_loss(batch, teacher)`` for the shared training loop,
``sample(n, num_inference_steps, labels, cfg_scale, ...)`` for generation. Classifier-free guidance follows the
shortcut reference: the null class is learned through label dropout; guidance is applied only at
the flow level d = 1/M, both inside the consistency targets (the teacher's flow-level half jumps,
so guidance is baked into every larger jump) and at inference (only when sampling with d = 1/M,
i.e. M steps; a flow-matching baseline is always at that level).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..core.guidance import guided_velocity
from ..core.sampler import VelocityFn, to_device
from ..nets.dit import make_image_net
from ..core.config import make_objective
from ..core.objective import EvalMode
from .config import ImageModelConfig


class ShortcutImageModel(nn.Module):
    """A class-conditional DiT trained and sampled by the core objective and sampler (module doc):
    ``compute_loss(batch, teacher)`` with batch {"image": (B, C, H, W) in [-1, 1], "label": (B,)}, and
    ``sample(n, num_inference_steps, labels, cfg_scale, generator, noise)``."""

    def __init__(self, cfg: ImageModelConfig):
        super().__init__()
        self.cfg = cfg
        self.objective = make_objective(cfg.objective)
        self.net = make_image_net(cfg.net, in_channels=cfg.channels, image_size=(cfg.height, cfg.width),
                                  num_classes=cfg.num_classes, d_embedding=self.objective.net_d_embedding,
                                  max_inference_steps=cfg.objective.max_inference_steps, **cfg.net_kwargs)
        self.null_class = cfg.num_classes

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def flow_level(self) -> float:
        """The smallest step d = 1/M: the only level where guidance is applied."""
        return 1.0 / self.cfg.objective.max_inference_steps

    def _null(self, labels: torch.Tensor) -> torch.Tensor:
        return torch.full_like(labels, self.null_class)

    def guided(self, net: VelocityFn, cfg_scale: float) -> VelocityFn:
        """``net`` with guidance at the flow level only (unchanged for scale 1 or an unconditional model)."""
        if self.cfg.num_classes == 0:
            return net
        return guided_velocity(net, cfg_scale, self._null, only_at_d=self.flow_level)

    # ------------------------------------------------------------------ training
    def _labels(self, batch: dict[str, torch.Tensor], B: int) -> torch.Tensor:
        if self.cfg.num_classes == 0:
            return torch.full((B,), self.null_class, dtype=torch.long, device=self.device)
        if "label" not in batch:
            raise KeyError(f"a class-conditional image model needs batch['label']; got keys {sorted(batch)} "
                           "(set image_model.num_classes=0 for an unconditional model)")
        labels = batch["label"].long()
        if labels.shape != (B,):
            raise ValueError(f"batch['label'] must have shape ({B},), got {tuple(labels.shape)}")
        return labels

    def compute_loss(self, batch: dict[str, torch.Tensor], teacher: "ShortcutImageModel | None" = None,
                     generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
        """batch: {"image": (B, C, H, W) in [-1, 1], "label": (B,) int}.

        ``teacher``: a model whose network builds the consistency targets (an EMA copy), or None
        for this model's own weights under no-grad. Labels are dropped to the null class with
        probability ``class_dropout``; the consistency examples keep their (possibly dropped) label
        for the teacher, whose flow-level calls are guided.
        """
        if "image" not in batch:
            raise KeyError(f"batch needs an 'image' entry, got keys {sorted(batch)}")
        x1 = batch["image"]
        if x1.ndim != 4 or tuple(x1.shape[1:]) != self.cfg.shape:
            raise ValueError(f"batch['image'] must have shape (B, {', '.join(map(str, self.cfg.shape))}), "
                             f"got {tuple(x1.shape)}")
        B = x1.shape[0]
        labels = self._labels(batch, B)  # (B,)
        if self.cfg.num_classes and self.cfg.class_dropout > 0:
            drop = to_device(torch.rand(B, generator=generator), labels.device) < self.cfg.class_dropout  # (B,)
            labels = torch.where(drop, self._null(labels), labels)
        teacher_net = EvalMode(self.net if teacher is None else teacher.net)
        teacher_fn = self.guided(teacher_net, self.cfg.cfg_scale)
        loss, info = self.objective.loss(self.net, x1, labels, teacher=teacher_fn, teacher_cond=labels,
                                         generator=generator)
        return loss, info

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def sample(self, n: int | None = None, num_inference_steps: int = 1, labels: torch.Tensor | None = None,
               cfg_scale: float | None = None, generator: torch.Generator | None = None,
               noise: torch.Tensor | None = None) -> torch.Tensor:
        """Generate images (n, C, H, W) in about [-1, 1] with ``num_inference_steps`` network calls (2x at
        the flow level when guided).

        labels: (n,) class indices; None = unconditional (the null class). cfg_scale: guidance scale
        (default: the training one); 0 = unconditional field, 1 = conditional without guidance.
        noise: the initial noise x0 (n, C, H, W), to compare step counts from the same noise.
        """
        if noise is None:
            if n is None:
                raise ValueError("pass n (number of images) or noise")
            noise = torch.randn((n, *self.cfg.shape), generator=generator)
        if tuple(noise.shape[1:]) != self.cfg.shape:
            raise ValueError(f"noise must have shape (n, {', '.join(map(str, self.cfg.shape))}), "
                             f"got {tuple(noise.shape)}")
        n = noise.shape[0]
        x0 = noise.to(self.device, torch.float32)
        if labels is None:
            labels = torch.full((n,), self.null_class, dtype=torch.long)
        labels = torch.as_tensor(labels, dtype=torch.long).to(self.device)
        if labels.shape != (n,):
            raise ValueError(f"labels must have shape ({n},), got {tuple(labels.shape)}")
        if self.cfg.num_classes == 0 and (labels != self.null_class).any():
            raise ValueError("this model is unconditional (num_classes=0); pass labels=None")
        if labels.numel() and (labels.min() < 0 or labels.max() > self.null_class):
            raise ValueError(f"labels must be in 0..{self.cfg.num_classes - 1} (or {self.null_class} = null)")
        scale = self.cfg.cfg_scale if cfg_scale is None else float(cfg_scale)
        self.objective.check_inference_steps(num_inference_steps)
        return self.objective.sample(self.guided(self.net, scale), x0, num_inference_steps, labels)
