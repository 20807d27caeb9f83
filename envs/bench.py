"""Environment steps per second of the MuJoCo suites, with and without cameras (a results file).

    python scripts/bench_envs.py --out docs/results/suites/data/env_speed.json

Random actions from each action space, resets counted where an episode ends, a warm-up of 20 steps
first (the first robosuite environment of a process compiles numba kernels for about 2 s).
"""
from __future__ import annotations

import time
from typing import Any, Callable


def steps_per_s(make: Callable[[], Any], steps: int = 300, warmup: int = 20, seed: int = 0) -> float:
    """Environment steps per second of ``make()`` under uniform random actions."""
    env = make()
    try:
        env.action_space.seed(seed)
        env.reset(seed=seed)
        t0 = None
        for i in range(warmup + steps):
            if i == warmup:
                t0 = time.perf_counter()
            _, _, terminated, truncated, _ = env.step(env.action_space.sample())
            if terminated or truncated:
                env.reset()
        return steps / (time.perf_counter() - t0)
    finally:
        env.close()


def cases() -> dict[str, Callable[[], Any]]:
    from .adroit import AdroitDoorEnv
    from .metaworld import MetaWorldEnv
    from .robosuite import RobosuiteEnv

    return {
        "robosuite Lift, low-dim": lambda: RobosuiteEnv(env_name="Lift"),
        "robosuite PickPlaceCan, low-dim": lambda: RobosuiteEnv(env_name="PickPlaceCan"),
        "robosuite TwoCubeLift, low-dim": lambda: RobosuiteEnv(env_name="TwoCubeLift"),
        "robosuite Lift, agentview 84x84": lambda: RobosuiteEnv(env_name="Lift", cameras=["agentview"]),
        "Adroit door": lambda: AdroitDoorEnv(render_mode=None),
        "Meta-World push-v3": lambda: MetaWorldEnv(["push-v3"]),
    }


def main(argv: list[str] | None = None) -> None:
    from shortcut_policy import cli
    from shortcut_policy.results import result_doc, write_result

    ap = cli.parser(__doc__, "bench_envs")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    rates = {}
    for name, make in cases().items():
        rates[name] = steps_per_s(make, args.steps)
        print(f"{name:36s} {rates[name]:8.1f} steps/s")
    if args.out:
        write_result(args.out, result_doc("data", "suites", "env-speed", {}, steps_per_s=rates, steps_timed=args.steps,
                                          about="environment steps per second under random actions"))
