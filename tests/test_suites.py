"""The MuJoCo suites. robosuite: environments from robomimic env_args, seeded resets, scripted experts, generated
robomimic files (read back by our importer and, when installed, by robomimic itself), the task yaml
the importer writes, closed-loop runs with outcomes on the two-answer task. Adroit door and Meta-World:
seeded scenes, recorded starts, one-hot multi-task data and runners."""
from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("robosuite")  # the suites extra (scripts/setup.sh installs it)
pytest.importorskip("h5py")

from shortcut_policy.envs.robosuite import LOW_DIM_KEYS, RobosuiteEnv, RobosuiteRunner, make_robosuite  # noqa: E402

OLD_OSC = {  # a robosuite <= 1.4 part controller config, as old robomimic env_args hold it
    "type": "OSC_POSE", "input_max": 1, "input_min": -1, "output_max": [0.05, 0.05, 0.05, 0.5, 0.5, 0.5],
    "output_min": [-0.05, -0.05, -0.05, -0.5, -0.5, -0.5], "kp": 150, "damping": 1, "impedance_mode": "fixed",
    "kp_limits": [0, 300], "damping_limits": [0, 10], "position_limits": None, "orientation_limits": None,
    "uncouple_pos_ori": True, "control_delta": True, "interpolation": None, "ramp_ratio": 0.2}


def test_environment_from_old_robomimic_env_args():
    args = {"env_name": "Lift", "type": 1, "env_kwargs": {
        "robots": ["Panda"], "controller_configs": OLD_OSC, "control_freq": 20, "reward_shaping": False,
        "has_renderer": False, "has_offscreen_renderer": False, "use_camera_obs": False, "ignore_done": True}}
    env = RobosuiteEnv(env_args=json.dumps(args))  # robomimic stores env_args as a JSON string
    assert env.action_space.shape == (7,)
    ctrl = env.sim.robots[0].composite_controller.part_controllers["right"]
    assert type(ctrl).__name__ == "OperationalSpaceController" and ctrl.input_type == "delta"
    assert np.allclose(ctrl.kp[:3], 150)  # the old config's gains, not the default ones
    obs, _ = env.reset(seed=0)
    assert {k: v.shape for k, v in obs.items()} == {"robot0_eef_pos": (3,), "robot0_eef_quat": (4,),
                                                   "robot0_gripper_qpos": (2,), "object": (10,)}
    with pytest.raises(ValueError, match="env_name"):
        make_robosuite({"env_kwargs": {}})
    with pytest.raises(ValueError, match="robosuite cannot make 'Nope'"):
        make_robosuite({"env_name": "Nope", "type": 1, "env_kwargs": {}})


def test_a_seed_fixes_the_scene_and_seeds_differ():
    env = RobosuiteEnv(env_name="Lift")
    a, _ = env.reset(seed=7)
    env.step(np.ones(7) * 0.5)
    b, _ = env.reset(seed=7)
    c, _ = env.reset(seed=8)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.allclose(a["object"][:3], c["object"][:3])


def test_reset_to_a_recorded_state():
    env = RobosuiteEnv(env_name="Lift")
    env.reset(seed=3)
    for _ in range(5):
        env.step(np.array([0.5, 0, -0.5, 0, 0, 0, -1]))
    state = env.get_state()
    env.sim.sim.forward()  # positions consistent with the state (after a step they lag one integration)
    obs_then = env._obs(env.sim._get_observations(force_update=True))
    obs, _ = env.reset(seed=99, options={"state": state})
    assert np.allclose(obs["robot0_eef_pos"], obs_then["robot0_eef_pos"], atol=1e-6)
    assert np.allclose(obs["object"][:3], obs_then["object"][:3], atol=1e-6)


@pytest.mark.parametrize("task", ["Lift", "TwoCubeLift", "NutAssemblySquare"])
def test_scripted_expert_solves_the_task(task):
    from shortcut_policy.envs.robosuite_experts import run_episode

    env = RobosuiteEnv(env_name=task)
    rng = np.random.default_rng(0)
    sides = set()
    for seed in range(3):
        ep = run_episode(env, seed, 400 if task == "NutAssemblySquare" else 200, rng)
        assert ep["success"], (task, seed)
        sides.add(ep["side"])
        if task == "TwoCubeLift":  # the episode's outcome is the side the expert chose
            assert env.outcome() == ("left", "right")[ep["side"]]
        assert ep["data"]["actions"].shape == (ep["steps"], 7) and np.abs(ep["data"]["actions"]).max() <= 1
        if task == "NutAssemblySquare":  # the nut is turned square: the hand's yaw action is used
            assert np.abs(ep["data"]["actions"][:, 5]).max() > 0.05
            assert np.abs(ep["data"]["actions"][:, 3:5]).max() == 0


def test_generated_file_imports_with_a_simulated_task(tmp_path):
    from shortcut_policy.data.cli import main as import_main
    from shortcut_policy.data.robomimic import import_robomimic
    from shortcut_policy.envs.robosuite_experts import generate

    import yaml

    rep = generate("Lift", 4, tmp_path / "lift.hdf5", seed_start=0, progress=False)
    assert rep["demos"] == 4 and rep["expert_success"] == 1.0 and rep["env_steps_per_s"] > 0
    buf = import_robomimic(tmp_path / "lift.hdf5")
    assert buf.n_episodes == 4 and set(LOW_DIM_KEYS) <= set(buf.keys()) and buf["states"].ndim == 2
    assert json.loads(buf.attrs["env_args"])["env_name"] == "Lift"
    filters = buf.attrs["filters"]
    assert len(filters["valid"]) == 1 and sorted(filters["train"] + filters["valid"]) == [0, 1, 2, 3]
    # the demonstrations replay: the recorded first state gives the recorded first observation
    env = RobosuiteEnv(env_name="Lift")
    obs, _ = env.reset(seed=123, options={"state": buf["states"][0]})
    assert np.allclose(obs["object"], buf["object"][0], atol=1e-5)
    import_main(["robomimic", "--src", str(tmp_path / "lift.hdf5"), "--out", str(tmp_path / "lift.zarr"),
                 "--task-config", str(tmp_path / "task" / "lift.yaml")])
    task = yaml.safe_load((tmp_path / "task" / "lift.yaml").read_text())
    assert task["env"]["runner"] == "robosuite" and task["env"]["env_args"]["env_name"] == "Lift"
    assert sorted(task["env"]["obs_keys"]) == sorted(LOW_DIM_KEYS) and task["env"]["cameras"] == []
    try:  # robomimic's own reader, when installed
        import robomimic.utils.file_utils as FileUtils
    except Exception:
        return
    meta = FileUtils.get_env_metadata_from_dataset(str(tmp_path / "lift.hdf5"))
    assert meta["env_name"] == "Lift" and meta["type"] == 1


def test_runner_reports_success_and_two_cube_outcomes():
    runner = RobosuiteRunner(n_obs_steps=2, n_action_steps=4, max_episode_steps=12, seeds=[1, 2], env_name="TwoCubeLift")
    assert runner.observation_shapes()["object"] == ((20,), np.dtype(np.float32))

    def stay(obs, rows):  # hover: nothing lifted, the gripper far from both cubes
        return np.zeros((len(obs["object"]), 4, 7))

    res = runner.run(stay, progress=False)
    assert res.success == 0.0 and res.outcomes == ["neither", "neither"]
    assert res.to_dict()["outcome_shares"] == {"neither": 1.0}
    lift = RobosuiteRunner(max_episode_steps=8, seeds=[1], env_name="Lift")
    assert lift.run(lambda o, rows: np.zeros((1, 8, 7)), progress=False).outcomes is None


def test_robosuite_evaluations_hold_as_many_envs_as_the_memory_budget_allows(monkeypatch):
    """Without max_envs a robosuite evaluation builds no more envs than ENV_MEMORY_BUDGET_MB holds (one env per
    episode made 100 low-dim episodes 12 GB); the envs it builds take the waiting seeds in turn."""
    from shortcut_policy.envs import lockstep

    assert RobosuiteRunner(seeds=range(100)).envs_at_once(100) == 30
    assert RobosuiteRunner(seeds=range(100), cameras=["agentview"]).envs_at_once(100) == 6
    assert RobosuiteRunner(seeds=range(100), max_envs=50).envs_at_once(100) == 50
    assert RobosuiteRunner(seeds=range(10)).envs_at_once(10) == 10
    monkeypatch.setattr(lockstep, "ENV_MEMORY_BUDGET_MB", 300.0)  # two low-dim envs
    runner = RobosuiteRunner(max_episode_steps=8, seeds=[1, 2, 3], env_name="Lift")
    res = runner.run(lambda o, rows: np.zeros((len(o["object"]), 8, 7)), progress=False)
    assert len(runner._envs) == 2 and list(res.seeds) == [1, 2, 3] and (res.lengths == 8).all() and res.success == 0.0


def test_task_runner_observes_the_policys_low_dim_keys():
    """A robosuite task that names no obs_keys observes the policy's low-dim keys (a camera policy reads the robot's
    own state without the object's); keys the simulator cannot give are refused by name."""
    from shortcut_policy.shape_meta import ShapeMeta
    from shortcut_policy.task import TaskConfig, make_runner

    task = TaskConfig.from_dict({"name": "lift", "dataset": {"path": "x.zarr", "obs": ["robot0_eef_pos"], "action": "actions"},
                                 "env": {"runner": "robosuite", "env_name": "Lift", "max_episode_steps": 8}})
    meta = ShapeMeta.from_dict({"obs": {"robot0_eef_pos": {"shape": [3]}, "robot0_gripper_qpos": {"shape": [2]}},
                                "action": {"shape": [7]}})
    runner = make_runner(task, meta, n_episodes=1)
    assert sorted(runner.observation_shapes()) == ["robot0_eef_pos", "robot0_gripper_qpos"]
    bad = ShapeMeta.from_dict({"obs": {"robot0_eef_pos": {"shape": [3]}, "robot0_eef_vel": {"shape": [3]}},
                               "action": {"shape": [7]}})
    with pytest.raises((KeyError, ValueError), match="robot0_eef_vel"):
        make_runner(task, bad, n_episodes=1).observation_shapes()


# ----------------------------------------------------------------------------- Adroit door, Meta-World
def test_adroit_door_runner_from_seeded_resets_and_demo_states(shared_data):
    pytest.importorskip("gymnasium_robotics")
    import zarr

    from shortcut_policy.envs.adroit import AdroitDoorEnv, AdroitDoorRunner

    runner = AdroitDoorRunner(max_episode_steps=8, seeds=[0, 1])
    assert runner.observation_shapes() == {"obs": ((39,), np.dtype(np.float32))}
    res = runner.run(lambda o, rows: np.zeros((len(o["obs"]), 8, 28)), progress=False)
    assert res.success == 0.0 and res.lengths.tolist() == [8, 8]
    root = zarr.open_group(str(shared_data / "adroit" / "door_human_v0.zarr"), mode="r")
    env = AdroitDoorEnv()
    state = {k: root[f"meta/init_{k}"][0] for k in ("qpos", "qvel", "door_body_pos")}
    a, _ = env.reset(seed=0, options={"initial_state_dict": state})
    b, _ = env.reset(seed=5, options={"initial_state_dict": state})
    assert np.array_equal(a["obs"], b["obs"])  # a recorded state, whatever the seed


def test_metaworld_seeds_scenes_one_hot_tasks_and_scripted_data(tmp_path):
    pytest.importorskip("metaworld")
    from shortcut_policy.data.dataset import SequenceDataset
    from shortcut_policy.envs.metaworld import MetaWorldEnv, MetaWorldRunner, generate

    env = MetaWorldEnv(["push-v3", "drawer-open-v3"])
    a, _ = env.reset(seed=1, options={"task": "push-v3"})
    b, _ = env.reset(seed=1, options={"task": "push-v3"})
    c, _ = env.reset(seed=2, options={"task": "push-v3"})
    assert np.array_equal(a["obs"], b["obs"]) and not np.allclose(a["obs"], c["obs"])
    assert a["task_id"].tolist() == [1.0, 0.0]
    d, _ = env.reset(seed=1, options={"task": "drawer-open-v3"})
    assert d["task_id"].tolist() == [0.0, 1.0] and env.outcome() == "drawer-open-v3"
    with pytest.raises(ValueError, match="unknown Meta-World tasks"):
        MetaWorldEnv(["push-v2"])

    rep = generate(["push-v3", "drawer-open-v3"], 2, tmp_path / "mw.zarr", progress=False)
    assert rep["demos"] == 4 and all(t["expert_success"] > 0 for t in rep["tasks"].values())
    ds = SequenceDataset(tmp_path / "mw.zarr", ["obs", "task_id"], "action", val_ratio=0.0)
    assert ds.shape_meta.describe() == "obs (39,) low_dim, task_id (2,) low_dim -> action (4,)"
    ids = ds.replay_buffer["task_id"]
    assert set(map(tuple, ids.tolist())) == {(1.0, 0.0), (0.0, 1.0)}
    assert ds.attrs["tasks"] == ["push-v3", "drawer-open-v3"]

    runner = MetaWorldRunner(max_episode_steps=6, seeds=[5, 6, 7], tasks=["push-v3", "drawer-open-v3"])
    res = runner.run(lambda o, rows: np.zeros((len(o["obs"]), 8, 4)), progress=False)
    assert res.outcomes == ["push-v3", "drawer-open-v3", "push-v3"]  # seeds dealt to the tasks in turn
    with pytest.raises(ValueError, match="500"):
        MetaWorldRunner(max_episode_steps=600, tasks=["push-v3"])


def test_environment_speed_probe_counts_steps_and_resets():
    from shortcut_policy.envs.bench import steps_per_s
    from shortcut_policy.envs.metaworld import MetaWorldEnv

    made = []

    def make():
        made.append(MetaWorldEnv(["reach-v3"]))
        return made[-1]

    rate = steps_per_s(make, steps=30, warmup=5)
    assert rate > 0 and len(made) == 1


def test_memory_probe_measures_what_each_env_holds():
    import mmap

    from shortcut_policy.envs.bench import resident_mb_per_env

    class Holder:  # an "env" holding 40 MB (fresh pages, touched, so resident) from its first reset
        tasks = ("a", "b")

        def __init__(self):
            self.held, self.visited = [], []

        def reset(self, seed=None, options=None):
            self.visited.append(options["task"])
            m = mmap.mmap(-1, 20 * 2**20)  # 20 MB per task it has run, never memory an earlier test freed
            for i in range(0, len(m), mmap.PAGESIZE):  # touch every page, with no 20 MB temporary: a freed
                m[i] = 1                                  # one can stay resident in malloc's heap and count too
            self.held.append(m)

        def close(self):
            assert self.visited == ["a", "b"]  # every task was reset once
            for m in self.held:
                m.close()

    assert resident_mb_per_env(Holder, n=3) == pytest.approx(40.0, abs=4.0)
    with pytest.raises(ValueError, match="n must be >= 1"):
        resident_mb_per_env(Holder, n=0)


@pytest.mark.slow  # offscreen rendering (EGL or OSMesa) and a ResNet forward
def test_robosuite_camera_observations_feed_the_vision_encoder():
    import torch

    from shortcut_policy.policy import PolicyConfig, ShortcutPolicy

    env = RobosuiteEnv(env_name="Lift", cameras=["agentview"])
    a, _ = env.reset(seed=1)
    b, _ = env.reset(seed=2)
    img = a["agentview_image"]
    assert img.shape == (84, 84, 3) and img.dtype == np.uint8 and img.std() > 5
    assert not np.array_equal(img, b["agentview_image"])  # another seed, another scene
    meta = {"obs": {"agentview_image": {"shape": [84, 84, 3], "type": "rgb"}, "robot0_eef_pos": {"shape": [3]}},
            "action": {"shape": [7]}}
    p = ShortcutPolicy(PolicyConfig(shape_meta=meta, horizon=8, n_obs_steps=2, n_action_steps=4, net="unet1d",
                                    net_kwargs={"down_dims": [16, 32], "kernel_size": 3, "n_groups": 4}))
    p.normalizer.fit({"robot0_eef_pos": torch.randn(20, 3), "action": torch.randn(20, 7)})
    obs = {k: torch.from_numpy(np.stack([a[k], b[k]]))[None] for k in ("agentview_image", "robot0_eef_pos")}
    assert p.eval().predict_action_chunk(obs).shape == (1, 4, 7)


@pytest.mark.slow  # offscreen rendering
def test_camera_frames_after_steps_and_resets_show_the_scene():
    """Each step's frame stays the scene of its reset (a small arm motion), with two camera envs stepping in
    turn and after a second reset: an old scene's renderer freed under the live GL context, or one env
    rendering in another's context, turned every frame after the first into noise (mean difference ~180)."""
    envs = [RobosuiteEnv(env_name="Lift", cameras=["agentview"]) for _ in range(2)]
    first = [e.reset(seed=i)[0]["agentview_image"].astype(float) for i, e in enumerate(envs)]
    for _ in range(3):
        for e, f in zip(envs, first):
            frame = e.step(np.zeros(e.action_space.shape))[0]["agentview_image"].astype(float)
            assert np.abs(frame - f).mean() < 10
    again = envs[0].reset(seed=0)[0]["agentview_image"].astype(float)
    assert np.abs(again - first[0]).mean() < 1  # the same seed, the same scene
    frame = envs[0].step(np.zeros(envs[0].action_space.shape))[0]["agentview_image"].astype(float)
    assert np.abs(frame - again).mean() < 10
    for e in envs:
        e.close()


@pytest.mark.slow  # offscreen rendering, six hard resets
def test_a_camera_env_does_not_grow_with_resets():
    def rss_mb():
        with open("/proc/self/status") as f:
            return int(f.read().split("VmRSS:")[1].split()[0]) / 1024

    import gc

    env = RobosuiteEnv(env_name="Lift", cameras=["agentview"])
    env.reset(seed=0)
    first = rss_mb()
    gc.disable()  # the collector's own timing must not be what keeps the env small
    try:
        for seed in range(1, 7):  # each hard reset rebuilds the scene and its renderer
            env.reset(seed=seed)
            env.step(np.zeros(7))
        grown = rss_mb() - first
    finally:
        gc.enable()
        env.close()
    assert grown < 400, f"{grown:.0f} MB more after six resets"  # with the old scenes left behind: ~300 MB each
