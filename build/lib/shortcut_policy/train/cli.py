"""``shortcut-train``: train a policy (Hydra; the configs ship with the package, ``shortcut_policy.configs``).

    shortcut-train                                      # PushT low-dim shortcut policy, quick CPU budget
    shortcut-train objective=flow                       # the flow-matching baseline, same budget
    shortcut-train objective=ddpm policy=unet1d train=dp
    shortcut-train task=mine --config-dir my_configs    # a task yaml of your own (configs/task/mine.yaml)
    shortcut-train out_dir=runs/mine                    # rerun the same command to resume
"""
from __future__ import annotations

import hydra
from omegaconf import DictConfig, OmegaConf


@hydra.main(config_path="pkg://shortcut_policy.configs", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from .run import run_training

    out_dir, _ = run_training(OmegaConf.to_container(cfg, resolve=True))
    print(f"done: checkpoint {out_dir}/checkpoints/latest.pt")


if __name__ == "__main__":
    main()
