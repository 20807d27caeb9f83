"""Export a trained policy at a fixed step count to a file that runs without this package.

The exported graph is a pure function of its inputs, one per observation key of the policy's
``shape_meta`` (in its order) and the noise,

    obs.<key>  (B, n_obs_steps, *shape)  raw observation history (pixels, metres: not normalized;
                                          float32 for low-dim keys, uint8 (H, W, 3) for rgb keys)
    noise      (B, horizon, action_dim)  the sampler's initial Gaussian noise x0

and returns two outputs,

    action_chunk    (B, n_action_steps, action_dim)  raw actions to execute (what the controller uses)
    action_sequence (B, horizon, action_dim)         the whole predicted horizon, raw

Normalization, the observation encoder, the ``num_inference_steps`` network calls of the sampler (its step
schedule unrolled, every t and d a constant) and unnormalization are all inside. Taking the noise
as an input keeps the graph deterministic, so an export can be checked against eager
``predict_action_chunk`` on the same noise (``verify_export``), and the caller decides how noise
is drawn (``ExportedPolicy`` draws it with a seeded numpy generator).

Two backends, chosen by the file suffix:
- ``.pt`` / ``.ts``: TorchScript by ``torch.jit.trace`` (needs torch, not this package);
- ``.onnx``: ONNX (opset 17, the TorchScript-based exporter) for ONNX Runtime (needs neither).

Next to the artifact, ``<artifact>.json`` holds the metadata (shapes, step count, source
checkpoint, training step, versions, date); the same JSON is embedded in the artifact
(TorchScript extra file / ONNX ``metadata_props``) so a loader can tell when a sidecar belongs
to another export.

Samplers that draw fresh noise inside the loop (DDPM) are refused: their graph would not be a
function of the inputs. A DDPM-trained network exports with the deterministic DDIM sampler
(``sampler="ddim"``); the objective says which of its samplers are deterministic.
"""
from __future__ import annotations

import datetime
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..policy import ShortcutPolicy

from .export_format import FORMAT_VERSION, METADATA_FILE, OUTPUT_NAMES, backend_for, input_names, sidecar_path

ONNX_OPSET = 17


class ChunkGraph(nn.Module):
    """(*obs, noise) -> (action_chunk, action_sequence) for one policy at a fixed step count; the obs
    tensors come in the policy's shape_meta key order.

    It calls the policy's own encoder, sampler and normalizer, so the traced graph is the eager
    computation with the Python loop unrolled, not a re-implementation that could drift from it.
    Only the input checks of ``predict_action_chunk`` (NaN tests, dict handling) are left out:
    they are data-dependent branches a trace cannot keep, and ``ExportedPolicy`` does them.
    """

    def __init__(self, policy: ShortcutPolicy, num_inference_steps: int, sampler: str | None = None):
        super().__init__()
        cfg, objective = policy.cfg, policy.objective
        self.sampler = objective.check_sampler(sampler)
        if not objective.deterministic(self.sampler):
            deterministic = [s for s in objective.samplers if objective.deterministic(s)]
            raise ValueError(f"the {self.sampler!r} sampler draws fresh noise at every step, so its graph is not a "
                             f"function of (obs, noise); export this network with sampler={deterministic[0]!r}"
                             if deterministic else f"no deterministic sampler for a {objective.kind!r} policy")
        if not policy.normalizer.is_fitted:
            raise ValueError("the policy's normalizer is not fitted: export a trained policy "
                             "(ShortcutPolicy.from_checkpoint); the artifact must carry the normalization")
        # check the count now (not inside the trace), with the objective's own error message
        objective.check_inference_steps(num_inference_steps, self.sampler)
        self.policy = policy
        self.obs_keys = policy.shape_meta.keys
        self.num_inference_steps = int(num_inference_steps)
        self.start = cfg.n_obs_steps - 1
        self.n_action_steps = cfg.n_action_steps

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        p = self.policy
        obs, noise = dict(zip(self.obs_keys, inputs[:-1])), inputs[-1]  # {key: (B, To, *shape)}, (B, H, A)
        cond = p.encode_obs(obs)  # (B, cond_dim)
        naction = p.objective.sample(p.net, noise, self.num_inference_steps, cond, sampler=self.sampler)  # (B, H, A)
        seq = p.normalizer.unnormalize("action", naction)  # (B, H, A)
        return seq[:, self.start:self.start + self.n_action_steps], seq  # (B, n_action_steps, A), (B, H, A)


def export_metadata(policy: ShortcutPolicy, num_inference_steps: int, backend: str, sampler: str,
                    checkpoint: str | Path | None = None, run: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a loader needs to check inputs and what a reader needs to trace the file back."""
    cfg = policy.cfg
    sm = policy.shape_meta
    meta: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "backend": backend,
        "shape_meta": sm.to_dict(),
        "action_dim": cfg.action_dim,
        "horizon": cfg.horizon,
        "n_obs_steps": cfg.n_obs_steps,
        "n_action_steps": cfg.n_action_steps,
        "num_inference_steps": int(num_inference_steps),
        "objective": cfg.objective.kind,
        "sampler": sampler,
        "net": cfg.net,
        "inputs": {**{name: ["B", cfg.n_obs_steps, *sm.obs[k].shape]
                      for name, k in zip(input_names(sm.keys), sm.keys)},
                   "noise": ["B", cfg.horizon, cfg.action_dim]},
        "input_order": input_names(sm.keys),
        "outputs": {"action_chunk": ["B", cfg.n_action_steps, cfg.action_dim],
                    "action_sequence": ["B", cfg.horizon, cfg.action_dim]},
        "chunk_start": cfg.n_obs_steps - 1,
        "source_checkpoint": None if checkpoint is None else str(checkpoint),
        "train_step": None if run is None else run.get("checkpoint", {}).get("step"),
        "torch_version": torch.__version__,
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
    }
    # the eager policy's out-of-range warning, which the traced graph does not keep: ExportedPolicy repeats it
    meta["obs_range_check"] = {
        "threshold": float(policy.OUT_OF_RANGE),
        "fields": {k: {name: getattr(policy.normalizer.field(k), name).detach().cpu().double().reshape(-1).tolist()
                       for name in ("scale", "center", "output_center")} for k in sm.low_dim_keys}}
    task = (run or {}).get("task", {})
    if isinstance(task, dict) and task.get("name"):
        meta["task"] = task["name"]
    if backend == "onnx":
        meta["onnx_opset"] = ONNX_OPSET
    return meta


def example_inputs(policy: ShortcutPolicy, batch: int, seed: int = 0) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Inputs inside the data range (low-dim keys uniform within their fitted limits, images uniform
    uint8), so tracing and verification run the real path."""
    cfg, sm = policy.cfg, policy.shape_meta
    g = torch.Generator().manual_seed(seed)  # draws on the host (the same on every device), moved to the policy's
    dev = policy.device
    obs = {}
    for key, spec in sm.obs.items():
        lead = (batch, cfg.n_obs_steps)
        if spec.type == "rgb":
            obs[key] = torch.randint(0, 256, (*lead, *spec.shape), generator=g, dtype=torch.uint8).to(dev)
        else:
            field = policy.normalizer.field(key)
            lo, hi = field.input_min.float(), field.input_max.float()  # (D,), on the policy's device
            u = torch.rand(*lead, spec.dim, generator=g).to(dev)
            obs[key] = (lo + u * (hi - lo)).reshape(*lead, *spec.shape)
    noise = torch.randn(batch, cfg.horizon, cfg.action_dim, generator=g)  # (B, H, A)
    return obs, noise.to(dev)


def export_policy(policy: ShortcutPolicy, path: str | Path, num_inference_steps: int, sampler: str | None = None,
                  checkpoint: str | Path | None = None, run: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write ``path`` (backend from its suffix) and ``<path>.json``; returns the metadata.

    ``run``: the run config returned by ``ShortcutPolicy.from_checkpoint`` (task and training step go
    into the metadata).

    The graph accepts any batch size B (traced at B=2 with the batch axis dynamic).
    """
    path = Path(path)
    backend = backend_for(path)
    policy = policy.eval()
    graph = ChunkGraph(policy, num_inference_steps, sampler).eval()
    meta = export_metadata(policy, num_inference_steps, backend, graph.sampler, checkpoint, run)
    meta_json = json.dumps(meta, indent=1)
    obs, noise = example_inputs(policy, batch=2)
    example = (*[obs[k] for k in graph.obs_keys], noise)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), warnings.catch_warnings():
        # the nets' shape checks compare traced sizes with Python ints; the trace keeps the sizes
        # symbolic where it matters (batch) and verify_export checks other batch sizes
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        # torch 2.13 marks torch.jit deprecated; it still works and needs nothing beyond torch at
        # load time. The ONNX path is the one that does not depend on it.
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.jit")
        if backend == "torchscript":
            traced = torch.jit.trace(graph, example, check_trace=False)
            traced = torch.jit.freeze(traced)  # parameters become constants: no module attributes left
            torch.jit.save(traced, str(path), _extra_files={METADATA_FILE: meta_json})
        else:
            _export_onnx(graph, example, path, meta)
    sidecar_path(path).write_text(meta_json + "\n")
    return meta


def _export_onnx(graph: ChunkGraph, example: tuple[torch.Tensor, ...], path: Path,
                 meta: dict[str, Any]) -> None:
    try:
        import onnx
    except ImportError as e:
        raise ImportError(f"ONNX export needs the onnx package ({e}); install it with: "
                          "pip install 'shortcut-policy[deploy]'") from e
    names = meta["input_order"]
    dynamic = {name: {0: "batch"} for name in (*names, *OUTPUT_NAMES)}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        # dynamo=False: the TorchScript-based exporter needs no onnxscript and handles the
        # unrolled loop as plain straight-line code
        torch.onnx.export(graph, example, str(path), input_names=list(names),
                          output_names=list(OUTPUT_NAMES), dynamic_axes=dynamic, opset_version=ONNX_OPSET,
                          do_constant_folding=True, dynamo=False)
    model = onnx.load(str(path))
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_FILE, json.dumps(meta, indent=1)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def verify_export(policy: ShortcutPolicy, path: str | Path, batch_sizes: tuple[int, ...] = (1, 3),
                  trials: int = 3, atol: float = 1e-4, seed: int = 0, raise_on_fail: bool = True,
                  loaded: Any = None) -> dict[str, Any]:
    """Compare the exported file with eager ``predict_action_chunk`` on the same noise.

    ``loaded``: the file already loaded as an ``ExportedPolicy`` (saves building a second ONNX
    Runtime session, seconds for a many-step graph).

    Observations are drawn inside the normalizer's fitted range, noise from N(0, 1), for each
    batch size (the graph's batch axis is dynamic, so B=1 and B=3 both test it); the eager
    policy's x0 is replaced by the same noise. Returns a report with

    - ``max_abs_err``: largest |exported - eager| over the chunk, in raw action units;
    - ``max_abs_err_normalized``: the same over the whole horizon in the policy's normalized
      action units (data range [-1, 1]). The tolerance ``atol`` applies to this one: a raw error
      of 1e-4 on PushT's 0..512 pixels is below float32 resolution (6e-5 at 512), so kernels that
      merely sum in another order (ONNX Runtime) would fail a raw test by round-off alone.

    Raises ``AssertionError`` above ``atol`` when ``raise_on_fail``.
    """
    from .runtime import ExportedPolicy

    exported = loaded if loaded is not None else ExportedPolicy.load(path)
    meta = exported.metadata
    policy = policy.eval()
    graph = ChunkGraph(policy, meta["num_inference_steps"], meta["sampler"]).eval()
    scale = policy.normalizer.field("action").scale.detach().cpu().double().numpy()  # (A,)
    start, n = meta["chunk_start"], meta["n_action_steps"]
    raw_errs, norm_errs = [], []
    for b in batch_sizes:
        for k in range(trials):
            obs, noise = example_inputs(policy, b, seed=seed + 1000 * b + k)
            with torch.no_grad():
                eager_seq = _eager_sequence(policy, graph, obs, noise).cpu().double().numpy()  # (B, H, A)
            chunk, seq = exported.predict({k: v.cpu().numpy() for k, v in obs.items()}, noise.cpu().numpy())
            raw_errs.append(float(np.abs(chunk - eager_seq[:, start:start + n]).max()))
            norm_errs.append(float((np.abs(seq - eager_seq) * scale).max()))
    worst = max(norm_errs)
    report = {"path": str(path), "backend": meta["backend"], "num_inference_steps": meta["num_inference_steps"],
              "max_abs_err": max(raw_errs), "max_abs_err_normalized": worst, "atol_normalized": atol,
              "ok": bool(worst <= atol), "cases": len(raw_errs), "batch_sizes": list(batch_sizes)}
    if raise_on_fail and not report["ok"]:
        raise AssertionError(f"exported {meta['backend']} policy {path} differs from eager predict_action_chunk by "
                             f"{worst:.3g} normalized action units > atol {atol} (raw {max(raw_errs):.3g})")
    return report


def _eager_sequence(policy: ShortcutPolicy, graph: ChunkGraph, obs: dict[str, torch.Tensor], noise: torch.Tensor
                    ) -> torch.Tensor:
    """Eager ``predict_action_sequence`` with its x0 set to ``noise``.

    ``predict_action_sequence`` draws x0 with ``torch.randn(shape, generator=g)``; a generator
    cannot be told to return a given tensor, so x0 is substituted by temporarily wrapping the
    objective's sampler. Everything else (input checks, encoding, the steps, unnormalization)
    runs exactly as in eager deployment.
    """
    objective = policy.objective
    original = objective.sample

    def sample_from_noise(model, x0, steps, cond, generator=None, **kw):
        if x0.shape != noise.shape:
            raise RuntimeError(f"eager x0 {tuple(x0.shape)} does not match the export noise {tuple(noise.shape)}")
        return original(model, noise.to(x0), steps, cond, **kw)

    shadowed = "sample" in vars(objective)  # an instance attribute already (a test's wrapper)
    objective.sample = sample_from_noise
    try:
        return policy.predict_action_sequence(obs, graph.num_inference_steps, sampler=graph.sampler)
    finally:
        if shadowed:
            objective.sample = original
        else:
            del objective.sample  # back to the class method
