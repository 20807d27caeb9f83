"""Export to TorchScript / ONNX: same actions as eager on the same noise, metadata and input checks."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from shortcut_policy.deploy.export import ChunkGraph, export_policy, verify_export
from shortcut_policy.deploy.export_format import sidecar_path
from shortcut_policy.deploy.runtime import ExportedPolicy, ExportError
from shortcut_policy.core.config import objective_config
from shortcut_policy.policy import PolicyConfig, ShortcutPolicy

TINY = {"net": "unet1d", "net_kwargs": {"down_dims": [16, 32], "emb_dim": 32}}
# two keys, one LeRobot-style name with a dot and one 2-D: every key becomes its own graph input
SHAPE_META = {"obs": {"observation.state": {"shape": [5]}, "points": {"shape": [3, 2]}}, "action": {"shape": [2]}}


def tiny_policy(kind: str = "shortcut", fit: bool = True) -> ShortcutPolicy:
    cfg = PolicyConfig(shape_meta=SHAPE_META, horizon=8, n_obs_steps=2, n_action_steps=4,
                       objective=objective_config({"kind": kind}), **TINY)
    p = ShortcutPolicy(cfg)
    if fit:
        g = torch.Generator().manual_seed(0)
        p.normalizer.fit({"observation.state": torch.randn(100, 5, generator=g) * 10 + 3,
                          "points": torch.randn(100, 3, 2, generator=g) * 50,
                          "action": torch.rand(100, 2, generator=g) * 512})
    return p.eval()


def obs_batch(rng: np.random.Generator, b: int) -> dict[str, np.ndarray]:
    return {"observation.state": (rng.standard_normal((b, 2, 5)) * 10 + 3).astype(np.float32),
            "points": (rng.standard_normal((b, 2, 3, 2)) * 50).astype(np.float32)}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tracing and exporting on a busy CPU with several intra-op threads is many times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def shortcut_policy() -> ShortcutPolicy:
    torch.manual_seed(0)
    return tiny_policy()


@pytest.fixture(scope="module")
def ts_export(shortcut_policy, tmp_path_factory):
    path = tmp_path_factory.mktemp("ts") / "tiny_2step.pt"
    export_policy(shortcut_policy, path, 2, checkpoint="tiny.pt")
    return path


def eager_chunk(policy: ShortcutPolicy, obs: dict[str, np.ndarray], noise: np.ndarray, steps: int) -> np.ndarray:
    """Eager predict_action_chunk whose generator's first draw is exactly ``noise``."""
    orig = policy.objective.sample
    policy.objective.sample = lambda model, x0, n, cond, **kw: orig(model, torch.from_numpy(noise), n, cond, **kw)
    try:
        return policy.predict_action_chunk(obs, steps).numpy()
    finally:
        del policy.objective.sample


@pytest.mark.parametrize("steps", [1, 3])
def test_torchscript_matches_eager_on_the_same_noise(shortcut_policy, tmp_path, steps):
    path = tmp_path / f"p{steps}.pt"
    meta = export_policy(shortcut_policy, path, steps)
    assert meta["num_inference_steps"] == steps and meta["backend"] == "torchscript"
    report = verify_export(shortcut_policy, path, batch_sizes=(1, 3), trials=2)
    assert report["ok"] and report["max_abs_err_normalized"] < 1e-5, report
    # and independently of verify_export: a hand-made comparison at batch 2
    exported = ExportedPolicy.load(path)
    rng = np.random.default_rng(1)
    obs = obs_batch(rng, 2)
    noise = rng.standard_normal((2, 8, 2)).astype(np.float32)
    got = exported.predict_action_chunk(obs, noise)
    want = eager_chunk(shortcut_policy, obs, noise, steps)
    assert got.shape == (2, 4, 2)
    np.testing.assert_allclose(got, want, atol=1e-3, rtol=0)  # pixels; float32 at 512 resolves ~6e-5


def test_onnx_matches_eager_on_the_same_noise(shortcut_policy, tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    path = tmp_path / "p2.onnx"
    export_policy(shortcut_policy, path, 2)
    report = verify_export(shortcut_policy, path, batch_sizes=(1, 3), trials=2)
    assert report["ok"] and report["max_abs_err_normalized"] < 1e-4, report
    exported = ExportedPolicy.load(path, threads=1)
    rng = np.random.default_rng(2)
    obs = obs_batch(rng, 3)
    noise = rng.standard_normal((3, 8, 2)).astype(np.float32)
    np.testing.assert_allclose(exported.predict_action_chunk(obs, noise), eager_chunk(shortcut_policy, obs, noise, 2),
                               atol=1e-2, rtol=0)
    assert sidecar_path(path).is_file() and json.loads(sidecar_path(path).read_text())["backend"] == "onnx"


def test_verify_export_fails_for_a_different_policy(shortcut_policy, ts_export):
    torch.manual_seed(123)
    other = tiny_policy()  # other random weights, same normalizer
    with pytest.raises(AssertionError, match="differs from eager"):
        verify_export(other, ts_export, batch_sizes=(1,), trials=1)
    report = verify_export(other, ts_export, batch_sizes=(1,), trials=1, raise_on_fail=False)
    assert not report["ok"] and report["max_abs_err"] > 1e-3


def test_ddpm_network_exports_with_ddim_and_refuses_ddpm(tmp_path):
    p = tiny_policy("ddpm")
    with pytest.raises(ValueError, match="fresh noise"):
        ChunkGraph(p, 10)  # the configured sampler is ddpm
    path = tmp_path / "ddim4.pt"
    meta = export_policy(p, path, 4, sampler="ddim")
    assert meta["sampler"] == "ddim"
    assert verify_export(p, path, batch_sizes=(2,), trials=1)["max_abs_err_normalized"] < 1e-5


def test_export_refuses_unfitted_normalizer_and_bad_steps(tmp_path):
    with pytest.raises(ValueError, match="not fitted"):
        export_policy(tiny_policy(fit=False), tmp_path / "x.pt", 1)
    with pytest.raises(ValueError, match="num_inference_steps must be in 1..16"):
        export_policy(tiny_policy(), tmp_path / "x.pt", 0)
    with pytest.raises(ValueError, match="suffix"):
        export_policy(tiny_policy(), tmp_path / "x.bin", 1)


def test_metadata_is_complete_and_names_the_source(ts_export):
    meta = json.loads(sidecar_path(ts_export).read_text())
    for key in ("shape_meta", "action_dim", "horizon", "n_obs_steps", "n_action_steps", "num_inference_steps",
                "source_checkpoint",
                "train_step", "torch_version", "date", "input_order"):
        assert key in meta, key
    shapes = tuple(meta[k] for k in ("action_dim", "horizon", "n_obs_steps", "n_action_steps"))
    assert shapes == (2, 8, 2, 4)
    assert meta["shape_meta"]["obs"]["points"] == {"shape": [3, 2], "type": "low_dim"}
    assert meta["input_order"] == ["obs.observation.state", "obs.points", "noise"]
    assert meta["inputs"]["obs.points"] == ["B", 2, 3, 2]
    assert meta["source_checkpoint"] == "tiny.pt" and meta["torch_version"] == torch.__version__


def test_input_shape_and_nan_errors(ts_export):
    p = ExportedPolicy.load(ts_export)
    good = obs_batch(np.random.default_rng(0), 1)
    with pytest.raises(ExportError, match="must be a dict"):
        p.predict_action_chunk(np.zeros((1, 2, 5)))
    with pytest.raises(ExportError, match=r"\['points'\] has shape \(1, 2, 6\), expected \(B, To, 3, 2\)"):
        p.predict_action_chunk({**good, "points": np.zeros((1, 2, 6))})
    with pytest.raises(ExportError, match=r"missing 'points'"):
        p.predict_action_chunk({"observation.state": good["observation.state"]})
    with pytest.raises(ExportError, match="exactly n_obs_steps = 2"):
        p.predict_action_chunk({k: np.concatenate([v, v], axis=1) for k, v in good.items()})
    with pytest.raises(ExportError, match="noise must have shape"):
        p.predict_action_chunk(good, noise=np.zeros((1, 16, 2)))
    bad = {k: v.copy() for k, v in good.items()}
    bad["observation.state"][0, 1, 3] = np.nan
    with pytest.raises(ExportError, match=r"\['observation.state'\] contains NaN or inf \(first at index \[0, 1, 3\]\)"):
        p.predict_action_chunk(bad)
    noise = np.zeros((1, *p.noise_shape), dtype=np.float32)
    noise[0, 2, 1] = np.inf
    with pytest.raises(ExportError, match="noise contains NaN or inf"):
        p.predict_action_chunk(good, noise=noise)


def test_default_noise_is_seeded(ts_export):
    obs = obs_batch(np.random.default_rng(3), 1)
    a = ExportedPolicy.load(ts_export, seed=7).predict_action_chunk(obs)
    b = ExportedPolicy.load(ts_export, seed=7).predict_action_chunk(obs)
    c = ExportedPolicy.load(ts_export, seed=8).predict_action_chunk(obs)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    p = ExportedPolicy.load(ts_export, seed=8)
    p.predict_action_chunk(obs)
    p.reseed(7)  # restarts the noise stream without reloading
    np.testing.assert_array_equal(p.predict_action_chunk(obs), a)


def test_sidecar_checks(ts_export, tmp_path):
    side = sidecar_path(ts_export)
    good = json.loads(side.read_text())
    copy = tmp_path / "copy.pt"
    copy.write_bytes(ts_export.read_bytes())
    # no sidecar: the copy embedded in the artifact is used
    assert ExportedPolicy.load(copy).metadata["num_inference_steps"] == 2
    # a sidecar missing a key
    sidecar_path(copy).write_text(json.dumps({k: v for k, v in good.items() if k != "horizon"}))
    with pytest.raises(ExportError, match=r"lacks the keys \['horizon'\]"):
        ExportedPolicy.load(copy)
    # a sidecar of another export
    sidecar_path(copy).write_text(json.dumps({**good, "num_inference_steps": 4}))
    with pytest.raises(ExportError, match=r"does not belong.*'num_inference_steps'"):
        ExportedPolicy.load(copy)
    # extra keys (the verification report added by scripts/export.py) are fine
    sidecar_path(copy).write_text(json.dumps({**good, "verification": {"ok": True}}))
    assert ExportedPolicy.load(copy).metadata["verification"] == {"ok": True}
    with pytest.raises(ValueError, match="suffix"):
        ExportedPolicy.load(tmp_path / "policy.zip")
    with pytest.raises(FileNotFoundError):
        ExportedPolicy.load(tmp_path / "missing.pt")


def test_artifacts_run_without_the_package(shortcut_policy, ts_export, tmp_path):
    """The files need torch (TorchScript) or onnxruntime (ONNX) only, not shortcut_policy."""
    onnx_path = None
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401

        onnx_path = tmp_path / "p.onnx"
        export_policy(shortcut_policy, onnx_path, 2)
    except ImportError:
        pass
    code = textwrap.dedent(f"""
        import sys, numpy as np, torch
        m = torch.jit.load({str(ts_export)!r})
        chunk, seq = m(torch.zeros(1, 2, 5), torch.zeros(1, 2, 3, 2), torch.zeros(1, 8, 2))
        assert chunk.shape == (1, 4, 2) and seq.shape == (1, 8, 2)
        if {str(onnx_path)!r} != "None":
            import onnxruntime as ort
            s = ort.InferenceSession({str(onnx_path)!r}, providers=["CPUExecutionProvider"])
            out = s.run(None, {{"obs.observation.state": np.zeros((3, 2, 5), np.float32),
                               "obs.points": np.zeros((3, 2, 3, 2), np.float32), "noise": np.zeros((3, 8, 2), np.float32)}})
            assert out[0].shape == (3, 4, 2)
        assert not any(k.startswith("shortcut_policy") for k in sys.modules), "imported the package"
        print("ok")
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr
