"""Train a policy (Hydra entry point). Configs live in configs/; any field can be overridden:

    python scripts/train.py                                  # PushT low-dim shortcut policy, quick budget
    python scripts/train.py objective=flow                   # the flow-matching baseline, same budget
    python scripts/train.py objective=ddpm policy=unet1d train=dp
    python scripts/train.py out_dir=runs/mine                # rerun the same command to resume
"""
from __future__ import annotations

import hydra
from omegaconf import DictConfig, OmegaConf

from shortcut_policy.train.run import run_training


@hydra.main(config_path="../configs", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run = OmegaConf.to_container(cfg, resolve=True)
    out_dir, metrics = run_training(run)
    print(f"done: checkpoint {out_dir}/checkpoints/latest.pt")


if __name__ == "__main__":
    main()
