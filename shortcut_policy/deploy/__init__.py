"""Deployment: export to TorchScript / ONNX, a real-time control loop, latency helpers.

``runtime`` (``ExportedPolicy``) and ``control`` import numpy only, so a robot computer can run an
ONNX export without torch; ``export`` needs torch and the policy code. Names are resolved lazily
so that importing one part does not import the others.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ExportedPolicy": "runtime", "ExportError": "runtime",
    "export_policy": "export", "verify_export": "export", "ChunkGraph": "export",
    "RealTimeController": "control", "ControllerConfig": "control", "ensemble_weights": "control",
    "choose_steps": "control", "measure_step_latencies": "control", "RealClock": "control", "FakeClock": "control",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
