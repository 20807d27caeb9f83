"""Deployment: export to TorchScript / ONNX, a real-time control loop, its step budget, and a
simulated real-time evaluation.

``runtime`` (``ExportedPolicy``) and the loop (``clocks``, ``scheduling``, ``workers``,
``controller``, ``budget``) import numpy only, so a robot computer can run an ONNX export without
torch; ``export`` and ``realtime`` need torch and the policy code. Names are resolved lazily so that
importing one part does not import the others.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ExportedPolicy": "runtime", "ExportError": "runtime",
    "export_policy": "export", "verify_export": "export", "ChunkGraph": "export",
    "RealTimeController": "controller", "ControllerConfig": "controller", "ControlStats": "controller",
    "ensemble_weights": "scheduling", "ActionScheduler": "scheduling", "ObservationHistory": "scheduling",
    "ThreadedInference": "workers", "InlineInference": "workers",
    "choose_steps": "budget", "measure_step_latencies": "budget", "auto_steps": "budget",
    "RealClock": "clocks", "FakeClock": "clocks",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
