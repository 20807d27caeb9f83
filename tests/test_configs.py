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
    if objective in ("shortcut", "flow"):
        check_max_steps(run["objective"]["max_inference_steps"])


def test_image_config_pins_its_own_objective():
    """The DiT's objectives sit on the policies' bases but keep the recipe docs/mnist.md measured (128 levels,
    consistency weight 1), whatever the policy defaults are; command-line overrides still win."""
    policy_default = _compose("train", [])["objective"]
    assert (policy_default["kind"], policy_default["max_inference_steps"], policy_default["grid_max_steps"]) == (
        "meanflow", 16, 1)
    shortcut = _compose("image", [])["objective"]
    assert (shortcut["kind"], shortcut["max_inference_steps"], shortcut["consistency_weight"]) == ("shortcut", 128, 1.0)
    flow = _compose("image", ["objective=flow_image"])["objective"]
    assert flow == {"kind": "flow", "max_inference_steps": 128, "parameterization": "velocity"}
    assert _compose("image", ["objective.max_inference_steps=16"])["objective"]["max_inference_steps"] == 16
    from shortcut_policy.image.config import ImageModelConfig

    for obj in (shortcut, flow):
        ImageModelConfig(objective=obj)  # each composes into a valid typed config


def test_objective_yamls_are_typed_configs_on_shared_bases():
    from shortcut_policy.core.config import DiffusionConfig, FlowConfig, ShortcutConfig, objective_config

    types = {"shortcut": ShortcutConfig, "flow": FlowConfig, "ddpm": DiffusionConfig, "ddim": DiffusionConfig}
    for name, cls in types.items():
        obj = _compose("train", [f"objective={name}"])["objective"]
        cfg = objective_config(obj)
        assert type(cfg) is cls and cfg.kind == name
    # the flow base keeps its own 128-point grid (the baseline's measured setting); shortcut overrides to 16
    assert _compose("train", ["objective=flow"])["objective"]["max_inference_steps"] == 128
    # MT10's MeanFlow recipe is the default with its three measured changes, nothing else
    from shortcut_policy.core.config import MeanFlowConfig

    mt10 = objective_config(_compose("train", ["objective=meanflow_mt10"])["objective"])
    assert mt10 == MeanFlowConfig(time_mu=0.0, time_sigma=1.6, flow_weight="mean")
    # so are PickPlaceCan's two recipes
    assert objective_config(_compose("train", ["objective=meanflow_can"])["objective"]) == MeanFlowConfig(flow_weight="mean")
    assert objective_config(_compose("train", ["objective=shortcut_can"])["objective"]) == ShortcutConfig(
        consistency_weight=1.0)
    assert objective_config(_compose("train", ["objective=meanflow"])["objective"]) == MeanFlowConfig()


TASK_RECIPES = {"metaworld_mt10": "meanflow_mt10", "robosuite_can": "meanflow_can"}


@pytest.mark.parametrize("task", sorted(p.stem for p in (Path(CONFIGS) / "task").glob("*.yaml")))
def test_a_task_trains_its_measured_recipe_unless_the_command_line_names_an_objective(task):
    from shortcut_policy.core.config import MeanFlowConfig, objective_config

    def objective(*overrides):
        run = _compose("train", [f"task={task}", "task.dataset.path=data/any.zarr", *overrides])
        return objective_config(run["objective"])

    recipe = TASK_RECIPES.get(task, "meanflow")
    assert objective() == objective_config(_compose("train", [f"objective={recipe}"])["objective"])
    # the command line wins over the task's choice, for the group and for one field
    assert objective("objective=meanflow") == MeanFlowConfig()
    assert objective("objective=flow").kind == "flow"
    assert objective("objective.flow_weight=adaptive", "objective.time_mu=0.4", "objective.time_sigma=1.0") == MeanFlowConfig()


@pytest.mark.parametrize("task", sorted(p.stem for p in (Path(CONFIGS) / "task").glob("*.yaml")))
def test_every_task_yaml_composes_into_a_task_config(task):
    run = _compose("train", [f"task={task}", "task.dataset.path=data/any.zarr"])
    cfg = TaskConfig.from_dict(run["task"])
    assert cfg.name == task
    cameras = run["task"]["env"].get("cameras") or []
    # a camera the simulator renders must be an observation the policy reads, and the reverse
    image_keys = [k for k in (run["task"]["dataset"]["obs"] or []) if isinstance(k, str) and k.endswith("_image")]
    assert sorted(f"{c}_image" for c in cameras) == sorted(image_keys)
