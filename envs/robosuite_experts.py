"""Scripted experts for the robosuite tasks, and a robomimic-format dataset made with them.

Each expert is a waypoint machine over the end-effector position with a proportional controller on the
OSC_POSE delta action (``a[:3] = clip(gain * (target - eef), -1, 1)``, no rotation, ``a[6]`` = -1 open /
+1 close). Per episode the expert draws its own style, so the demonstrations are not one deterministic
trajectory per start: approach height, gain (speed), how long it waits on the grasp, and Gaussian
action noise.

- Lift: above the cube, down, close, up.
- PickPlaceCan: the same onto the can, then carry it over its bin, lower, open, and retreat upward
  (robosuite's Can check wants the gripper about 7 cm away from the can).
- TwoCubeLift: Lift on the left or the right cube, chosen at random per episode (the two modes).
- NutAssemblySquare: the one expert that also turns the gripper (``a[5]``, yaw about the world z): it
  lines the fingers up across the nut's handle, grasps it, lifts it over the square peg, turns the nut
  square to the peg while carrying it (the hole clears the peg by 6.7 mm a side when square), centres
  the nut, not the gripper, over the peg, lowers it down the peg and lets go.

:func:`generate` runs an expert on seeded episodes, keeps the successful ones and writes them through
this package's robomimic exporter: ``states``, the low-dim observations (and camera images when asked),
``actions``, ``rewards``, ``dones``, ``env_args``, per-demo ``model_file`` and ``mask/train`` /
``mask/valid``.

    python scripts/generate_robosuite.py --task Lift --episodes 200 --out data/lift.hdf5
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

GRIPPER_OPEN, GRIPPER_CLOSE = -1.0, 1.0


@dataclass
class Style:
    """One episode's way of doing the task."""

    approach: float  # m above the object before descending
    gain: float  # proportional gain (speed)
    grasp_steps: int  # steps with the gripper closing before lifting
    noise: float  # std of the Gaussian noise on the translation action
    side: int = 0  # TwoCubeLift: 0 = left cube, 1 = right cube

    @classmethod
    def draw(cls, rng: np.random.Generator, n_sides: int = 1) -> Style:
        return cls(approach=float(rng.uniform(0.05, 0.14)), gain=float(rng.uniform(7.0, 13.0)),
                   grasp_steps=int(rng.integers(6, 13)), noise=float(rng.uniform(0.0, 0.08)),
                   side=int(rng.integers(n_sides)))


class Expert:
    """A scripted expert for one episode of ``env`` (a ``RobosuiteEnv``); call it once per step."""

    def __init__(self, env, rng: np.random.Generator):
        self.env, self.sim, self.rng = env, env.sim, rng
        name = env.env_name
        if name not in EXPERT_TASKS or (name == "NutAssemblySquare") != isinstance(self, SquareExpert):
            raise ValueError(f"no scripted expert for {name!r} here ({', '.join(EXPERT_TASKS)}; "
                             "make_expert picks the class)")
        self.name = name
        self.style = Style.draw(rng, n_sides=2 if name == "TwoCubeLift" else 1)
        self.phase, self.count = "above", 0
        self.carry_z = None

    # ---- scene
    def _eef(self) -> np.ndarray:
        return np.array(self.sim.sim.data.site_xpos[self.sim.robots[0].eef_site_id["right"]])

    def _object(self) -> np.ndarray:
        d = self.sim.sim.data
        if self.name == "Lift":
            return np.array(d.body_xpos[self.sim.cube_body_id])
        if self.name == "TwoCubeLift":
            return np.array(d.body_xpos[self.sim.cube_body_ids[self.style.side]])
        return np.array(d.body_xpos[self.sim.obj_body_id["Can"]])

    def _bin_target(self) -> np.ndarray:
        return np.array(self.sim.target_bin_placements[self.sim.object_to_id["can"]])

    # ---- control
    def _move(self, target: np.ndarray, grip: float) -> tuple[np.ndarray, float]:
        err = target - self._eef()
        a = np.zeros(7)
        a[:3] = np.clip(self.style.gain * err + self.rng.normal(0, self.style.noise, 3), -1, 1)
        a[6] = grip
        return a, float(np.linalg.norm(err))

    def __call__(self) -> np.ndarray:
        obj, s = self._object(), self.style
        self.count += 1
        if self.phase == "above":
            a, err = self._move(obj + [0, 0, s.approach], GRIPPER_OPEN)
            if err < 0.015:
                self.phase, self.count = "descend", 0
        elif self.phase == "descend":
            a, err = self._move(obj + [0, 0, -0.005], GRIPPER_OPEN)
            if err < 0.01 or self.count > 60:
                self.phase, self.count = "grasp", 0
        elif self.phase == "grasp":
            a, _ = self._move(obj + [0, 0, -0.005], GRIPPER_CLOSE)
            if self.count >= s.grasp_steps:
                self.phase, self.count = "lift", 0
                self.carry_z = obj[2] + (0.25 if self.name == "PickPlaceCan" else 0.12)
        elif self.phase == "lift":
            eef = self._eef()
            a, err = self._move(np.array([eef[0], eef[1], self.carry_z]), GRIPPER_CLOSE)
            if self.name == "PickPlaceCan" and err < 0.03:
                self.phase, self.count = "carry", 0
        elif self.phase == "carry":
            target = self._bin_target()
            a, err = self._move(np.array([target[0], target[1], self.carry_z]), GRIPPER_CLOSE)
            if err < 0.02:
                self.phase, self.count = "lower", 0
        elif self.phase == "lower":
            target = self._bin_target()
            a, err = self._move(np.array([target[0], target[1], target[2] + 0.12]), GRIPPER_CLOSE)
            if err < 0.02 or self.count > 40:
                self.phase, self.count = "release", 0
        elif self.phase == "release":
            a, _ = self._move(self._eef(), GRIPPER_OPEN)
            if self.count >= 8:
                self.phase, self.count = "retreat", 0
        else:  # retreat upward
            eef = self._eef()
            a, _ = self._move(np.array([eef[0], eef[1], self.carry_z + 0.05]), GRIPPER_OPEN)
        return a


def _wrap(angle: float, period: float) -> float:
    """``angle`` folded into [-period / 2, period / 2)."""
    return float((angle + period / 2) % period - period / 2)


class SquareExpert(Expert):
    """NutAssemblySquare (see the module doc): the waypoints of :class:`Expert` plus a yaw controller."""

    YAW_GAIN = 2.0  # a[5] per radian; a[5] = 1 turns the hand about 0.09 rad per step at 20 Hz
    CARRY_Z = 1.03  # eef height while carrying: the hanging nut clears the peg top (0.95)
    SEATED_Z = 0.86  # nut centre height that counts as down the peg (robosuite's check: below 0.87)

    def __init__(self, env, rng: np.random.Generator):
        super().__init__(env, rng)
        self.style.noise *= 0.25  # the hole clears the peg by millimetres
        self.style.approach = float(rng.uniform(0.04, 0.10))

    def _nut_body(self) -> int:
        return self.sim.obj_body_id[self.sim.nuts[0].name]

    def _handle(self) -> np.ndarray:
        return np.array(self.sim.sim.data.site_xpos[self.sim.object_site_ids[0]])

    def _nut(self) -> np.ndarray:
        return np.array(self.sim.sim.data.body_xpos[self._nut_body()])

    def _nut_yaw(self) -> float:
        w, x, y, z = self.sim.sim.data.body_xquat[self._nut_body()]
        return float(np.arctan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z)))

    def _closing_yaw(self) -> float:
        """Yaw of the line the fingers close along (the eef frame's x axis)."""
        m = self.sim.sim.data.site_xmat[self.sim.robots[0].eef_site_id["right"]].reshape(3, 3)
        return float(np.arctan2(m[1, 0], m[0, 0]))

    def _peg(self) -> np.ndarray:
        return np.array(self.sim.sim.data.body_xpos[self.sim.peg1_body_id])

    def _turn(self, a: np.ndarray, err: float) -> float:
        a[5] = np.clip(self.YAW_GAIN * err, -1, 1)
        return abs(err)

    def __call__(self) -> np.ndarray:
        s = self.style
        self.count += 1
        # across the handle: fingers close along the nut's y axis (a half turn is the same grasp)
        grasp_yaw_err = _wrap(self._nut_yaw() + np.pi / 2 - self._closing_yaw(), np.pi)
        if self.phase == "above":
            a, err = self._move(self._handle() + [0, 0, s.approach], GRIPPER_OPEN)
            yaw = self._turn(a, grasp_yaw_err)
            if err < 0.012 and yaw < 0.05:
                self.phase, self.count = "descend", 0
        elif self.phase == "descend":
            a, err = self._move(self._handle() + [0, 0, -0.002], GRIPPER_OPEN)
            self._turn(a, grasp_yaw_err)
            if err < 0.008 or self.count > 60:
                self.phase, self.count = "grasp", 0
        elif self.phase == "grasp":
            a, _ = self._move(self._handle() + [0, 0, -0.002], GRIPPER_CLOSE)
            if self.count >= s.grasp_steps:
                self.phase, self.count = "lift", 0
        else:
            eef, nut, peg = self._eef(), self._nut(), self._peg()
            over_peg = peg[:2] - (nut[:2] - eef[:2])  # where the eef goes so that the nut is centred
            square_err = _wrap(-self._nut_yaw(), np.pi / 2)  # the nut square to the peg
            if self.phase == "lift":
                a, err = self._move(np.array([eef[0], eef[1], self.CARRY_Z]), GRIPPER_CLOSE)
                if err < 0.03:
                    self.phase, self.count = "carry", 0
            elif self.phase == "carry":
                a, err = self._move(np.array([*over_peg, self.CARRY_Z]), GRIPPER_CLOSE)
                yaw = self._turn(a, square_err)
                if (err < 0.006 and yaw < 0.03) or self.count > 150:
                    self.phase, self.count = "lower", 0
            elif self.phase == "lower":
                a, _ = self._move(np.array([*over_peg, eef[2] - 0.05]), GRIPPER_CLOSE)
                self._turn(a, square_err)
                if nut[2] < self.SEATED_Z or self.count > 80:
                    self.phase, self.count = "release", 0
            elif self.phase == "release":
                a, _ = self._move(eef, GRIPPER_OPEN)
                if self.count >= 8:
                    self.phase, self.count = "retreat", 0
            else:
                a, _ = self._move(np.array([eef[0], eef[1], self.CARRY_Z]), GRIPPER_OPEN)
        return a


EXPERT_TASKS = ("Lift", "PickPlaceCan", "TwoCubeLift", "NutAssemblySquare")


def make_expert(env, rng: np.random.Generator) -> Expert:
    """The scripted expert for ``env``'s task."""
    return (SquareExpert if env.env_name == "NutAssemblySquare" else Expert)(env, rng)


def run_episode(env, seed: int, max_steps: int, rng: np.random.Generator) -> dict[str, Any]:
    """One expert episode from ``env.reset(seed=seed)``: observations, actions, states, success."""
    obs, _ = env.reset(seed=seed)
    expert = make_expert(env, rng)
    steps: dict[str, list] = {k: [] for k in [*obs, "actions", "states"]}
    success, t = False, 0
    for t in range(max_steps):
        steps["states"].append(env.get_state())
        for k, v in obs.items():
            steps[k].append(v)
        action = expert()
        steps["actions"].append(action.astype(np.float32))
        obs, _, success, _, _ = env.step(action)
        if success and expert.phase not in ("release", "carry", "lower"):
            # Lift: done once lifted; Can: robosuite's check passes only after the release and retreat
            break
    out = {k: np.stack(v) for k, v in steps.items()}
    out["next_obs_last"] = obs
    return {"data": out, "success": bool(success), "steps": t + 1, "side": expert.style.side,
            "model_file": env.sim.model.get_xml()}


def generate(task: str, episodes: int, out: str | Path, seed_start: int = 0, max_steps: int | None = None,
             cameras: tuple[str, ...] = (), image_size: int = 84, valid_ratio: float = 0.1,
             progress: bool = True, overwrite: bool = False) -> dict[str, Any]:
    """Run the expert until ``episodes`` successful demonstrations are collected (seeds from
    ``seed_start``; failures are counted and skipped) and write them as a robomimic HDF5 file."""
    from shortcut_policy.data.replay_buffer import ReplayBuffer, encode_strings
    from shortcut_policy.data.robomimic import NEXT_OBS_LAST, export_robomimic

    from .robosuite import LOW_DIM_KEYS, RobosuiteEnv

    max_steps = max_steps or (400 if task in ("PickPlaceCan", "NutAssemblySquare") else 200)
    env = RobosuiteEnv(env_name=task, cameras=cameras, image_size=image_size)
    rng = np.random.default_rng(seed_start)
    demos, tried, lengths, sides = [], 0, [], []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=episodes, desc=f"{task} expert", unit="demo")
    t0 = time.perf_counter()
    env_steps = 0
    while len(demos) < episodes:
        if tried >= 3 * episodes + 20:
            raise RuntimeError(f"the {task} expert succeeded in {len(demos)} of {tried} episodes; giving up")
        ep = run_episode(env, seed_start + tried, max_steps, rng)
        tried += 1
        env_steps += ep["steps"]
        if ep["success"]:
            demos.append(ep)
            lengths.append(ep["steps"])
            sides.append(ep["side"])
            if bar is not None:
                bar.update(1)
                bar.set_postfix(success=f"{len(demos) / tried:.2f}")
    elapsed = time.perf_counter() - t0
    if bar is not None:
        bar.close()
    obs_keys = [*LOW_DIM_KEYS, *(f"{c}_image" for c in cameras)]
    keys = [*obs_keys, "actions", "states"]
    n_valid = max(1, round(valid_ratio * len(demos)))
    order = np.random.default_rng(seed_start).permutation(len(demos))
    files, ends = encode_strings([d["model_file"] for d in demos])
    meta = {"model_file": files, "model_file_ends": ends,
            **{NEXT_OBS_LAST + k: np.stack([d["data"]["next_obs_last"][k] for d in demos]) for k in obs_keys}}
    attrs = {"obs_keys": obs_keys, "env_args": json.dumps(env.env_args),
             "filters": {"train": sorted(order[n_valid:].tolist()), "valid": sorted(order[:n_valid].tolist())}}
    buf = ReplayBuffer.from_episodes([{k: d["data"][k] for k in keys} for d in demos], meta=meta, attrs=attrs)
    path = export_robomimic(buf, out, overwrite=overwrite)
    env.close()
    report = {"env_name": task, "demos": len(demos), "episodes_tried": tried, "expert_success": len(demos) / tried,
              "steps_mean": float(np.mean(lengths)), "steps_max": int(np.max(lengths)),
              "env_steps_per_s": env_steps / elapsed, "cameras": list(cameras), "out": str(path)}
    if task == "TwoCubeLift":
        report["demos_per_side"] = {"left": int(np.sum(np.array(sides) == 0)), "right": int(np.sum(np.array(sides) == 1))}
    return report


GENERATE_DOC = """Scripted-expert demonstrations for a robosuite task, written as a robomimic HDF5 file (successful
episodes only; the expert's success rate and the environment's speed are printed and stored beside it).

    python scripts/generate_robosuite.py --task Lift --episodes 200 --out data/lift.hdf5
    python scripts/generate_robosuite.py --task TwoCubeLift --episodes 200 --out data/two_cube_lift.hdf5
    python scripts/generate_robosuite.py --task NutAssemblySquare --episodes 200 --out data/square.hdf5
    python scripts/generate_robosuite.py --task PickPlaceCan --episodes 200 --cameras agentview --out data/can_image.hdf5

Then: shortcut-import robomimic --src data/lift.hdf5 --out data/lift.zarr
      shortcut-train task=robosuite_lift task.dataset.path=data/lift.zarr
"""


def main(argv: list[str] | None = None) -> None:
    import argparse

    from shortcut_policy.results import result_doc, write_result

    ap = argparse.ArgumentParser(prog="generate_robosuite", description=GENERATE_DOC,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", required=True, choices=list(EXPERT_TASKS))
    ap.add_argument("--episodes", type=int, default=200, help="successful demonstrations to keep")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--seed-start", type=int, default=0, help="first reset seed (evaluation uses 100000 on)")
    ap.add_argument("--max-steps", type=int, default=None)
    ap.add_argument("--cameras", nargs="*", default=[], help="e.g. agentview (stored as agentview_image)")
    ap.add_argument("--image-size", type=int, default=84)
    ap.add_argument("--overwrite", action="store_true")
    ap.add_argument("--report", type=Path, default=None, help="results JSON (default: beside --out)")
    args = ap.parse_args(argv)
    rep = generate(args.task, args.episodes, args.out, args.seed_start, args.max_steps, tuple(args.cameras),
                   args.image_size, overwrite=args.overwrite)
    print(json.dumps(rep, indent=1))
    write_result(args.report or args.out.with_suffix(".json"),
                 result_doc("data", args.task, "scripted-expert", {}, **rep,
                            about=f"scripted {args.task} expert: success rate, steps, environment speed"))
