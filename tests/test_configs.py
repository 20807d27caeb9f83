"""The Hydra configs under configs/ compose into runs the library accepts, for every group choice."""
from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from shortcut_policy.core.schedule import check_max_steps
from shortcut_policy.shape_meta import ShapeMeta
from shortcut_policy.task import TaskConfig
from shortcut_policy.train.loop import TrainConfig
from shortcut_policy.train.run import policy_config_from_run

CONFIGS = str(Path(__file__).resolve().parents[1] / "configs")
PUSHT_META = ShapeMeta.from_dict({"obs": {"keypoint": {"shape": [9, 2]}, "agent_pos": {"shape": [2]}},
                                  "action": {"shape": [2]}})


def _compose(name: str, overrides: list[str]) -> dict:
    with initialize_config_dir(config_dir=CONFIGS, version_base="1.3"):
        cfg = compose(name, overrides=overrides + ["out_dir=runs/test"])
    return OmegaConf.to_container(cfg, resolve=True)


@pytest.mark.parametrize("objective", ["shortcut", "flow", "ddpm", "ddim"])
@pytest.mark.parametrize("policy", ["unet1d_small", "unet1d", "transformer"])
@pytest.mark.parametrize("train", ["quick", "long", "dp"])
def test_policy_configs_compose_and_validate(objective, policy, train):
    run = _compose("train", [f"objective={objective}", f"policy={policy}", f"train={train}"])
    TaskConfig.from_dict(run["task"])
    cfg = policy_config_from_run(run, PUSHT_META)  # validates the objective and network fields
    assert cfg.objective.kind == objective
    TrainConfig(**run["train"])
    check_max_steps(run["objective"]["max_steps"])


def test_image_config_pins_its_own_objective():
    """The DiT shares objective/shortcut.yaml with the policies but keeps the recipe docs/mnist.md measured,
    whatever the policy defaults are; overrides on the command line still win."""
    policy_default = _compose("train", [])["objective"]
    for objective in ("shortcut", "flow"):
        obj = _compose("image", [f"objective={objective}"])["objective"]
        assert obj["kind"] == objective
        assert (obj["max_steps"], obj["consistency_weight"], obj["parameterization"]) == (128, 1.0, "velocity")
        others = {k: v for k, v in obj.items() if k not in ("max_steps", "consistency_weight", "parameterization")}
        base = _compose("train", [f"objective={objective}"])["objective"]
        assert others == {k: v for k, v in base.items() if k in others}
    assert _compose("image", ["objective.max_steps=16"])["objective"]["max_steps"] == 16
    assert policy_default["kind"] == "shortcut"
