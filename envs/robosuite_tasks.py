"""robosuite tasks of this package: TwoCubeLift, a task with two equally good answers.

Two identical cubes lie on the table, mirrored left and right of the gripper's start (y = -0.12 and
+0.12 m, each jittered by 3 cm); lifting either one 4 cm is success. An expert picks one cube at random
per episode, so the demonstrations hold two clearly separated modes, and the average of the two (going
down between the cubes) grasps nothing. Imported by ``envs.robosuite`` (robosuite registers an
environment class when it is defined), never at package import.
"""
from __future__ import annotations

import numpy as np
from robosuite.environments.manipulation.lift import Lift
from robosuite.environments.manipulation.manipulation_env import ManipulationEnv
from robosuite.models.arenas import TableArena
from robosuite.models.objects import BoxObject
from robosuite.models.tasks import ManipulationTask
from robosuite.utils.observables import Observable, sensor
from robosuite.utils.placement_samplers import SequentialCompositeSampler, UniformRandomSampler
from robosuite.utils.transform_utils import convert_quat

CUBE_Y = 0.12  # m, left / right of the table centre
JITTER = 0.03  # m, uniform per axis
LIFT_HEIGHT = 0.04  # m above the table, robosuite Lift's success margin
SIDES = ("left", "right")


class TwoCubeLift(Lift):
    """Lift with two identical cubes (``cube_left``, ``cube_right``); success: either is lifted.

    ``object-state`` (robomimic's ``object``, 20-D): for each cube (left, then right) its position (3),
    quaternion (4, xyzw) and the vector from the gripper to it (3).
    """

    def _load_model(self):
        ManipulationEnv._load_model(self)
        xpos = self.robots[0].robot_model.base_xpos_offset["table"](self.table_full_size[0])
        self.robots[0].robot_model.set_base_xpos(xpos)
        arena = TableArena(table_full_size=self.table_full_size, table_friction=self.table_friction,
                           table_offset=self.table_offset)
        arena.set_origin([0, 0, 0])
        self.cubes = [BoxObject(name=f"cube_{side}", size=[0.021, 0.021, 0.021], rgba=[0.8, 0.2, 0.2, 1], rng=self.rng)
                      for side in SIDES]
        self.cube = self.cubes[0]  # Lift's visualisation helpers look for one cube
        self.placement_initializer = SequentialCompositeSampler(name="ObjectSampler")
        for cube, y in zip(self.cubes, (-CUBE_Y, CUBE_Y)):
            self.placement_initializer.append_sampler(UniformRandomSampler(
                name=f"{cube.name}_sampler", mujoco_objects=cube, x_range=[-JITTER, JITTER],
                y_range=[y - JITTER, y + JITTER], rotation=None, ensure_object_boundary_in_range=False,
                ensure_valid_placement=True, reference_pos=self.table_offset, z_offset=0.01, rng=self.rng))
        self.model = ManipulationTask(mujoco_arena=arena, mujoco_robots=[r.robot_model for r in self.robots],
                                      mujoco_objects=self.cubes)

    def _setup_references(self):
        ManipulationEnv._setup_references(self)
        self.cube_body_ids = [self.sim.model.body_name2id(c.root_body) for c in self.cubes]
        self.cube_body_id = self.cube_body_ids[0]

    def _setup_observables(self):
        observables = ManipulationEnv._setup_observables(self)
        if not self.use_object_obs:
            return observables
        pf = self.robots[0].robot_model.naming_prefix
        sensors = []
        for side, body in zip(SIDES, self.cube_body_ids):
            def pos(obs_cache, body=body):
                return np.array(self.sim.data.body_xpos[body])

            def quat(obs_cache, body=body):
                return convert_quat(np.array(self.sim.data.body_xquat[body]), to="xyzw")

            def to_cube(obs_cache, body=body):
                return np.array(self.sim.data.body_xpos[body]) - np.array(obs_cache.get(f"{pf}eef_pos", np.zeros(3)))

            for fn, name in ((pos, f"cube_{side}_pos"), (quat, f"cube_{side}_quat"),
                             (to_cube, f"gripper_to_cube_{side}_pos")):
                fn.__name__ = name
                sensors.append(sensor(modality="object")(fn))
        for s in sensors:
            observables[s.__name__] = Observable(name=s.__name__, sensor=s, sampling_rate=self.control_freq)
        return observables

    def cube_heights(self) -> np.ndarray:
        """(2,) each cube's height above the table top (left, right)."""
        table = self.model.mujoco_arena.table_offset[2]
        return np.array([self.sim.data.body_xpos[b][2] for b in self.cube_body_ids]) - table

    def _check_success(self):
        return bool((self.cube_heights() > LIFT_HEIGHT).any())

    def outcome(self) -> str:
        """Which answer the episode gave: the lifted cube's side, else the side of the cube nearest the
        gripper (within 6 cm in the table plane), else "neither" (e.g. between the two)."""
        heights = self.cube_heights()
        if (heights > LIFT_HEIGHT).any():
            return SIDES[int(np.argmax(heights))]
        eef = self.sim.data.site_xpos[self.robots[0].eef_site_id["right"]]
        d = [np.linalg.norm(self.sim.data.body_xpos[b][:2] - eef[:2]) for b in self.cube_body_ids]
        return SIDES[int(np.argmin(d))] if min(d) < 0.06 else "neither"
