"""Names shared by the exporter and the loader; numpy-free and torch-free so a deployment machine
can load an ONNX export without either the training code or torch."""
from __future__ import annotations

from pathlib import Path

FORMAT_VERSION = 2  # 2: one input per shape_meta observation key (1 had a single flat "obs")
SUFFIXES = {".pt": "torchscript", ".ts": "torchscript", ".onnx": "onnx"}
OUTPUT_NAMES = ("action_chunk", "action_sequence")
METADATA_FILE = "metadata.json"  # name of the copy embedded in the artifact
REQUIRED_METADATA = ("format_version", "backend", "shape_meta", "action_dim", "horizon", "n_obs_steps",
                     "n_action_steps", "chunk_start", "num_inference_steps", "objective", "sampler", "inputs",
                     "input_order", "outputs")


def input_names(obs_keys: list[str]) -> list[str]:
    """Graph input names: ``obs.<key>`` per observation key (shape_meta order), then ``noise``."""
    return [f"obs.{k}" for k in obs_keys] + ["noise"]


def backend_for(path: str | Path) -> str:
    """'torchscript' or 'onnx' from the file suffix; a clear error for anything else."""
    suffix = Path(path).suffix.lower()
    if suffix not in SUFFIXES:
        raise ValueError(f"cannot tell the export format of {str(path)!r} from its suffix {suffix!r}; "
                         f"use one of {sorted(SUFFIXES)} (.pt/.ts = TorchScript, .onnx = ONNX)")
    return SUFFIXES[suffix]


def sidecar_path(path: str | Path) -> Path:
    """``policy.onnx`` -> ``policy.onnx.json`` (the suffix is kept so two formats never share one)."""
    path = Path(path)
    return path.with_name(path.name + ".json")
