"""Run an exported policy (TorchScript or ONNX) with its metadata checked: no training code needed.

This module imports numpy only; torch is imported for a TorchScript file and onnxruntime for an
ONNX file, when one is loaded. A deployment machine can therefore run an ``.onnx`` export with
numpy + onnxruntime alone.

    policy = ExportedPolicy.load("exports/pusht_1step.onnx")
    chunk = policy.predict_action_chunk(obs_history)   # {key: (B, n_obs_steps, *shape)} -> (B, n_action_steps, A)
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ..shape_meta import ShapeMeta, ShapeMetaError
from .export_format import (FORMAT_VERSION, METADATA_FILE, OUTPUT_NAMES, REQUIRED_METADATA, backend_for,
                            input_names, sidecar_path)


class ExportError(ValueError):
    """An exported file, its metadata or an input does not fit (the message says which and how)."""


def _check_metadata(meta: Any, source: str) -> dict[str, Any]:
    if not isinstance(meta, dict):
        raise ExportError(f"{source}: metadata must be a JSON object, got {type(meta).__name__}")
    missing = [k for k in REQUIRED_METADATA if k not in meta]
    if missing:
        raise ExportError(f"{source}: metadata lacks the keys {missing}; re-export with scripts/export.py")
    if meta["format_version"] != FORMAT_VERSION:
        raise ExportError(f"{source}: export format version {meta['format_version']} is not supported by this "
                          f"loader (version {FORMAT_VERSION}); re-export with this version of the package")
    for key in ("action_dim", "horizon", "n_obs_steps", "n_action_steps", "num_inference_steps"):
        v = meta[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ExportError(f"{source}: metadata {key!r} must be a positive integer, got {v!r}")
    try:
        sm = ShapeMeta.from_dict(meta["shape_meta"])
    except ShapeMetaError as e:
        raise ExportError(f"{source}: metadata shape_meta: {e}") from None
    if meta["input_order"] != input_names(sm.keys):
        raise ExportError(f"{source}: metadata input_order {meta['input_order']} does not follow shape_meta's keys")
    return meta


class ExportedPolicy:
    """A fixed-step-count policy loaded from an export; numpy in, numpy out.

    Args (through ``load``):
        path: the artifact; ``.pt``/``.ts`` = TorchScript, ``.onnx`` = ONNX Runtime.
        seed: seed of the numpy generator that draws the initial noise when none is given.
        threads: intra-op threads of the ONNX Runtime session (None = its default). For
            TorchScript set ``torch.set_num_threads`` yourself (it is process-wide).
    """

    def __init__(self, path: Path, metadata: dict[str, Any], runner: Any, seed: int = 0):
        self.path = path
        self.metadata = metadata
        self.backend = metadata["backend"]
        self._runner = runner
        self._seed, self._rng = seed, np.random.default_rng(seed)
        m = metadata
        self.shape_meta = ShapeMeta.from_dict(m["shape_meta"])
        self.n_obs_steps = m["n_obs_steps"]
        self.noise_shape = (m["horizon"], m["action_dim"])
        self.chunk_shape = (m["n_action_steps"], m["action_dim"])
        check = m.get("obs_range_check") or {}  # absent in exports written before it existed
        self._range_threshold = check.get("threshold")
        self._range_fields = {k: tuple(np.asarray(f[n], dtype=np.float64) for n in ("scale", "center", "output_center"))
                              for k, f in (check.get("fields") or {}).items()}
        self._range_warned: set[str] = set()

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, path: str | Path, seed: int = 0, threads: int | None = None) -> "ExportedPolicy":
        path = Path(path)
        backend = backend_for(path)
        if not path.is_file():
            raise FileNotFoundError(f"no exported policy at {path}")
        if backend == "torchscript":
            runner, embedded = _load_torchscript(path)
        else:
            runner, embedded = _load_onnx(path, threads)
        meta = _read_metadata(path, embedded)
        if meta["backend"] != backend:
            raise ExportError(f"{path}: the metadata says backend {meta['backend']!r} but the suffix says "
                              f"{backend!r}; was the file renamed?")
        return cls(path, meta, runner, seed)

    # ------------------------------------------------------------------ inference
    def check_obs(self, obs: Any) -> dict[str, np.ndarray]:
        """{key: (B, n_obs_steps, *shape)} with the policy's keys, shapes and dtypes, low-dim keys finite
        -> contiguous arrays (low-dim float32, rgb uint8) in input order; errors name the problem."""
        try:
            obs = self.shape_meta.check_obs(obs, n_lead=2, lead_names=("B", "To"), where="observation history")
        except ShapeMetaError as e:
            raise ExportError(str(e)) from None
        out = {}
        for key, x in obs.items():
            spec = self.shape_meta.obs[key]
            arr = np.ascontiguousarray(x, dtype=spec.dtype)
            if arr.shape[1] != self.n_obs_steps:
                raise ExportError(f"observation history [{key!r}] holds {arr.shape[1]} steps (shape {arr.shape}); "
                                  f"this export takes exactly n_obs_steps = {self.n_obs_steps}")
            if arr.shape[0] < 1:
                raise ExportError("observation history has batch size 0")
            if spec.type == "low_dim" and not np.isfinite(arr).all():
                bad = np.argwhere(~np.isfinite(arr))[0].tolist()
                raise ExportError(f"observation history [{key!r}] contains NaN or inf (first at index {bad}); "
                                  "check the sensors before acting on this observation")
            self._check_range(key, arr)
            out[key] = arr
        return out

    def _check_range(self, key: str, arr: np.ndarray) -> None:
        """The eager policy's warning: a low-dim value more than the threshold's half-ranges from the
        training data's centre (in the normalizer's units) is passed on, said once per key until ``reset()``."""
        if key not in self._range_fields or key in self._range_warned or not arr.size:
            return
        scale, center, out_center = self._range_fields[key]
        worst = float(np.abs((arr.reshape(*arr.shape[:2], -1) - center) * scale + out_center).max())
        if worst > self._range_threshold:
            self._range_warned.add(key)
            warnings.warn(f"observation[{key!r}] is {worst:.3g} half-ranges from the training data's centre (beyond "
                          f"{self._range_threshold}): the policy {self.path.name} extrapolates (said once per key "
                          "until reset())", RuntimeWarning, stacklevel=4)

    def reset(self) -> None:
        """Start of an episode: the out-of-range warning may be said again."""
        self._range_warned = set()

    def check_noise(self, noise: Any, batch: int) -> np.ndarray:
        arr = np.asarray(noise, dtype=np.float32)
        want = (batch, *self.noise_shape)
        if arr.shape != want:
            raise ExportError(f"noise must have shape (B, horizon, action_dim) = {want}, got {arr.shape}")
        if not np.isfinite(arr).all():
            raise ExportError("noise contains NaN or inf")
        return np.ascontiguousarray(arr)

    def predict(self, obs: Any, noise: Any) -> tuple[np.ndarray, np.ndarray]:
        """Both outputs: (action_chunk (B, n_action_steps, A), action_sequence (B, horizon, A))."""
        obs = self.check_obs(obs)
        batch = next(iter(obs.values())).shape[0]
        noise = self.check_noise(noise, batch)
        chunk, seq = self._runner([obs[k] for k in self.shape_meta.keys], noise)
        if not (np.isfinite(chunk).all() and np.isfinite(seq).all()):
            raise FloatingPointError(f"{self.path} produced NaN or inf actions; refusing to return them")
        return chunk, seq

    def predict_action_chunk(self, obs_history: Any, noise: Any | None = None) -> np.ndarray:
        """{key: (B, n_obs_steps, *shape)} raw -> (B, n_action_steps, action_dim) raw actions.

        ``noise`` (B, horizon, action_dim): the sampler's initial noise; drawn from this policy's
        seeded generator when None.
        """
        obs = self.check_obs(obs_history)
        if noise is None:
            batch = next(iter(obs.values())).shape[0]
            noise = self._rng.standard_normal((batch, *self.noise_shape), dtype=np.float32)
        return self.predict(obs, noise)[0]

    def reseed(self, seed: int) -> None:
        """Restart the noise generator (e.g. per episode) without reloading the file: an ONNX
        Runtime session of a many-step graph takes seconds to build (graph optimization)."""
        self._seed, self._rng = seed, np.random.default_rng(seed)

    def __call__(self, obs: dict[str, np.ndarray], rows: np.ndarray | None = None) -> np.ndarray:
        """The runners' / controller's ``ActFn``: {key: (B, To, *shape)}, rows -> (B, n_action_steps, A).
        With ``rows`` (a runner's (episode seed, chunk index) per row), row i's noise comes from
        (the seed, rows[i]) alone, so it does not depend on the rest of the batch."""
        if rows is None:
            return self.predict_action_chunk(obs)
        noise = np.stack([np.random.default_rng([self._seed, *map(int, r)]).standard_normal(self.noise_shape,
                                                                                               dtype=np.float32)
                          for r in np.asarray(rows, dtype=np.int64)])
        return self.predict_action_chunk(obs, noise)

    def __repr__(self) -> str:
        m = self.metadata
        return (f"ExportedPolicy({str(self.path)!r}, backend={self.backend}, num_inference_steps={m['num_inference_steps']}, "
                f"{self.shape_meta.describe()}, chunk {self.chunk_shape})")


def _read_metadata(path: Path, embedded: str | None) -> dict[str, Any]:
    """The sidecar ``<path>.json``, checked against the copy embedded in the artifact."""
    side = sidecar_path(path)
    emb = None
    if embedded:
        try:
            emb = json.loads(embedded)
        except json.JSONDecodeError as e:
            raise ExportError(f"{path}: the embedded metadata is not valid JSON ({e})") from e
    if side.is_file():
        try:
            meta = json.loads(side.read_text())
        except json.JSONDecodeError as e:
            raise ExportError(f"{side}: not valid JSON ({e})") from e
        meta = _check_metadata(meta, str(side))
        if emb is not None:
            # the sidecar may gain keys after export (the verification report); the embedded ones must agree
            differ = sorted(k for k in emb if k in meta and meta[k] != emb[k])
            missing = sorted(set(emb) - set(meta))
            if differ or missing:
                raise ExportError(f"{side} does not belong to {path.name}: keys {differ + missing} differ from the "
                                  "metadata embedded in the artifact (a sidecar of another export?)")
        return meta
    if emb is None:
        raise ExportError(f"{path}: no metadata: neither {side.name} next to it nor an embedded copy")
    return _check_metadata(emb, f"{path} (embedded metadata)")


def _load_torchscript(path: Path):
    try:
        import torch
    except ImportError as e:
        raise ImportError(f"a TorchScript export ({path.name}) needs torch ({e}); export to .onnx to run "
                          "without torch") from e
    extra = {METADATA_FILE: ""}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.jit")  # see export.py
        module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    module.eval()

    def run(obs: list[np.ndarray], noise: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with torch.inference_mode():
            chunk, seq = module(*[torch.from_numpy(o) for o in obs], torch.from_numpy(noise))
        return chunk.numpy(), seq.numpy()

    return run, extra[METADATA_FILE] or None


def _load_onnx(path: Path, threads: int | None):
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise ImportError(f"an ONNX export ({path.name}) needs onnxruntime ({e}); install it with: "
                          "pip install 'shortcut-policy[deploy]'") from e
    opts = ort.SessionOptions()
    if threads is not None:
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    if names != list(OUTPUT_NAMES):
        raise ExportError(f"{path}: outputs {names}, expected {list(OUTPUT_NAMES)}; not an export of this package?")
    embedded = session.get_modelmeta().custom_metadata_map.get(METADATA_FILE)
    names = [i.name for i in session.get_inputs()]

    def run(obs: list[np.ndarray], noise: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        chunk, seq = session.run(list(OUTPUT_NAMES), dict(zip(names, [*obs, noise])))
        return chunk, seq

    return run, embedded
