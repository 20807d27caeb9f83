"""Image runs: a plain run config (what Hydra composes from configs/image.yaml) -> the shared training
loop; a checkpoint -> a model.

Run config layout:
    image_data:  kind (mnist | npz | folder), path, ... (see ``data.make_image_dataset``)
    image_model: net, net_kwargs, class_dropout, cfg_scale (shape and classes come from the data)
    objective:   ShortcutConfig / FlowConfig fields (core.config)
    train:       TrainConfig fields
    out_dir, resume
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import load_trained
from ..train.loop import TrainConfig, train
from ..core.config import teacher_ema_decay
from ..utils import provenance
from .config import ImageModelConfig
from .data import ImageDataset, make_image_dataset
from .model import ShortcutImageModel


def image_config_from_run(run: dict[str, Any], dataset: ImageDataset) -> ImageModelConfig:
    """Model config = the image_model group + the data's shape and class count + the objective."""
    model = dict(run.get("image_model") or {})
    C, H, W = dataset.shape
    num_classes = model.pop("num_classes", None)
    if num_classes is None:
        num_classes = dataset.num_classes
    return ImageModelConfig.from_dict({**model, "channels": C, "height": H, "width": W,
                                       "num_classes": int(num_classes), "objective": dict(run["objective"])})


def run_image_training(run: dict[str, Any]) -> tuple[Path, dict[str, Any]]:
    """Train the image model described by ``run``; returns (out_dir, final metrics)."""
    out_dir = Path(run["out_dir"])
    train_cfg = TrainConfig(**run["train"])
    if train_cfg.num_threads:  # before provenance(), which records the thread count
        torch.set_num_threads(train_cfg.num_threads)
    torch.manual_seed(train_cfg.seed)
    dataset = make_image_dataset(run["image_data"], "train")
    mcfg = image_config_from_run(run, dataset)
    model = ShortcutImageModel(mcfg)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"images: {len(dataset)} x {dataset.shape}, {mcfg.num_classes} classes; net {mcfg.net} "
          f"({n_params / 1e6:.2f}M parameters), objective {mcfg.objective.kind}, out_dir {out_dir}")
    full = {**run, "image_model_config": mcfg.to_dict(), "train": dataclasses.asdict(train_cfg),
            "provenance": run.get("provenance") or provenance()}
    metrics = train(model, dataset, train_cfg, out_dir, full, teacher_ema_decay=teacher_ema_decay(mcfg.objective), resume=run.get("resume", True))
    return out_dir, metrics


def load_image_model(path: str | Path, weights: str = "ema", device: str | torch.device = "cpu"
                     ) -> tuple[ShortcutImageModel, dict]:
    """Rebuild a trained image model from its checkpoint alone: (model, run config with
    ``run["checkpoint"]["step"]``). ``weights``: "ema" (default) or "online"."""
    return load_trained(lambda c: ShortcutImageModel(ImageModelConfig.from_dict(c)), path, "image_model_config",
                        weights, device, other_kind="a policy")
