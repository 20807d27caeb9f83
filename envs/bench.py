"""Environment steps per second of the MuJoCo suites, with and without cameras, and the resident
memory each environment holds (a results file).

    python scripts/bench_envs.py --out docs/results/suites/data/env_speed.json

Speed: random actions from each action space, resets counted where an episode ends, a warm-up of 20
steps first (the first robosuite environment of a process compiles numba kernels for about 2 s).
Memory: the growth of the resident set (Linux ``/proc/self/statm``) while ``n`` more environments are
built and reset after a first one (so imports and one-time caches are not counted), each case in a new
process; a Meta-World env over several tasks is reset on each of them, since it keeps every task it
has run. This is what sizes an evaluation's ``max_envs``.
"""
from __future__ import annotations

import gc
import os
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


def resident_mb() -> float:
    """This process's resident set in MB (Linux)."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _reset_all(env: Any, seed: int) -> None:
    for task in getattr(env, "tasks", [None]):  # a multi-task env keeps each task it has run
        env.reset(seed=seed, options=None if task is None else {"task": task})


def resident_mb_per_env(make: Callable[[], Any], n: int = 4) -> float:
    """Resident memory (MB) each environment of ``make()`` holds once built and reset: the growth over
    ``n`` environments built after a first one, divided by ``n``."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    envs = [make()]
    try:
        _reset_all(envs[0], 0)
        gc.collect()
        before = resident_mb()
        for i in range(n):
            envs.append(make())
            _reset_all(envs[-1], i + 1)
        gc.collect()
        return (resident_mb() - before) / n
    finally:
        for env in envs:
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


def _memory_of_case(name: str, n: int) -> float:
    return resident_mb_per_env(memory_cases()[name], n)


def resident_mb_per_env_fresh(name: str, n: int) -> float:
    """``resident_mb_per_env`` of the memory case ``name`` in a new process: in one process the memory an
    earlier case freed is reused by the next without growing the resident set."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_memory_of_case, name, n).result()


def memory_cases() -> dict[str, Callable[[], Any]]:
    """The speed cases and the multi-task env that sizes ``metaworld_mt10``'s ``max_envs``."""
    from .metaworld import MetaWorldEnv

    return {**cases(), "Meta-World MT10, after all ten tasks": lambda: MetaWorldEnv("mt10")}


def main(argv: list[str] | None = None) -> None:
    from shortcut_policy import cli
    from shortcut_policy.results import result_doc, write_result

    ap = cli.parser(__doc__, "bench_envs")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--memory-envs", type=int, default=4, help="environments built per memory figure")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    rates, memory = {}, {}
    for name, make in cases().items():
        rates[name] = steps_per_s(make, args.steps)
        print(f"{name:38s} {rates[name]:8.1f} steps/s")
    for name in memory_cases():
        memory[name] = resident_mb_per_env_fresh(name, args.memory_envs)
        print(f"{name:38s} {memory[name]:8.1f} MB resident per env")
    if args.out:
        write_result(args.out, result_doc("data", "suites", "env-speed", {}, steps_per_s=rates, steps_timed=args.steps,
                                          resident_mb_per_env=memory, memory_envs=args.memory_envs,
                                          about="environment steps per second under random actions, and the "
                                                "resident memory each environment holds once built and reset"))
