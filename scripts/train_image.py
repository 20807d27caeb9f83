"""Train an image model (Hydra entry point; configs/image.yaml). Any field can be overridden:

    python scripts/train_image.py                                 # tiny DiT, MNIST, shortcut objective
    python scripts/train_image.py objective=flow                  # flow-matching baseline, same code
    python scripts/train_image.py out_dir=runs/mnist-a train.steps=4000   # rerun the same command to resume
"""
from __future__ import annotations

import hydra
from omegaconf import DictConfig, OmegaConf

from shortcut_policy.image.run import run_image_training


@hydra.main(config_path="../configs", config_name="image", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run = OmegaConf.to_container(cfg, resolve=True)
    out_dir, _ = run_image_training(run)
    print(f"done: checkpoint {out_dir}/checkpoints/latest.pt")


if __name__ == "__main__":
    main()
