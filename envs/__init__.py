"""Simulated tasks behind one runner interface: ``make_runner(name, **kwargs).run(act_fn)``.

Importing ``envs`` loads numpy only; a suite's simulator (gym-pusht, MuJoCo) is imported when
its runner is made, so a missing optional dependency fails there with the install command.
"""
from __future__ import annotations

from typing import Callable

from .base import ActFn, EnvRunner, RolloutResult

__all__ = ["ActFn", "EnvRunner", "RolloutResult", "make_runner", "register_runner", "runner_names"]


def _pusht_keypoints(**kwargs) -> EnvRunner:
    from .pusht import PushTRunner

    return PushTRunner(**kwargs)


def _pusht_image(**kwargs) -> EnvRunner:
    from .pusht import PushTImageRunner

    return PushTImageRunner(**kwargs)


def _robosuite(**kwargs) -> EnvRunner:
    from .robosuite import RobosuiteRunner

    return RobosuiteRunner(**kwargs)


def _adroit_door(**kwargs) -> EnvRunner:
    from .adroit import AdroitDoorRunner

    return AdroitDoorRunner(**kwargs)


def _metaworld(**kwargs) -> EnvRunner:
    from .metaworld import MetaWorldRunner

    return MetaWorldRunner(**kwargs)


_RUNNERS: dict[str, Callable[..., EnvRunner]] = {"pusht_keypoints": _pusht_keypoints, "pusht_image": _pusht_image,
                                                 "robosuite": _robosuite, "adroit_door": _adroit_door,
                                                 "metaworld": _metaworld}


def register_runner(name: str, factory: Callable[..., EnvRunner]) -> None:
    """Add a runner factory under ``name`` (import the simulator inside ``factory``, not at module level)."""
    if name in _RUNNERS:
        raise ValueError(f"runner {name!r} is already registered")
    _RUNNERS[name] = factory


def runner_names() -> list[str]:
    return sorted(_RUNNERS)


def make_runner(name: str, **kwargs) -> EnvRunner:
    """Build the runner registered as ``name`` with its keyword arguments (e.g. seeds, max_episode_steps)."""
    if name not in _RUNNERS:
        raise ValueError(f"unknown env runner {name!r}; known runners: {', '.join(runner_names())}")
    return _RUNNERS[name](**kwargs)
