"""Training loop: exact resume, atomic checkpoints with clear errors, rebuild from the file alone,
and a tiny PushT train-then-evaluate run."""
from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from shortcut_policy.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from shortcut_policy.core.config import objective_config
from shortcut_policy.policy import PolicyConfig, ShortcutPolicy
from shortcut_policy.train.loop import TrainConfig, _batch_indices, train

TINY = {"net": "unet1d", "net_kwargs": {"down_dims": [16, 32], "emb_dim": 32}}
SHAPE_META = {"obs": {"state": {"shape": [5], "type": "low_dim"}}, "action": {"shape": [2]}}


class ToyChunks(torch.utils.data.Dataset):
    def __init__(self, n=40):
        g = torch.Generator().manual_seed(0)
        self.obs = torch.randn(n, 8, 5, generator=g)
        self.act = self.obs[..., :2].cumsum(1) + 0.1 * torch.randn(n, 8, 2, generator=g)

    def __len__(self):
        return len(self.obs)

    def __getitem__(self, i):
        return {"obs": {"state": self.obs[i, :2]}, "action": self.act[i]}


def make(kind="shortcut", teacher="online"):
    cfg = PolicyConfig(shape_meta=SHAPE_META, horizon=8, n_obs_steps=2, n_action_steps=4,
                       objective=objective_config({"kind": kind, "teacher": teacher}), **TINY)
    p = ShortcutPolicy(cfg)
    ds = ToyChunks()
    p.normalizer.fit({"state": ds.obs, "action": ds.act})
    return p, ds, {"policy_config": cfg.to_dict(), "task": {"name": "toy"}}


def tcfg(steps, **kw):
    return TrainConfig(steps=steps, batch_size=8, warmup_steps=2, log_every=2, val_every=2, ckpt_every=3,
                       progress=False, **kw)


@pytest.mark.parametrize("teacher", ["online", "ema"])
def test_resume_reproduces_an_uninterrupted_run_exactly(tmp_path, teacher):
    torch.manual_seed(0)
    p1, ds, run = make(teacher=teacher)
    decay = 0.999 if teacher == "ema" else None
    train(p1, ds, tcfg(6), tmp_path / "a", run, teacher_ema_decay=decay, val_dataset=ds)
    torch.manual_seed(0)
    p2, _, _ = make(teacher=teacher)
    train(p2, ds, tcfg(3), tmp_path / "b", run, teacher_ema_decay=decay)
    p3, _, _ = make(teacher=teacher)  # a fresh process: new weights, resumed from the file
    train(p3, ds, tcfg(6), tmp_path / "b", run, teacher_ema_decay=decay)
    for (k, a), b in zip(p1.state_dict().items(), p3.state_dict().values()):
        assert torch.equal(a, b), k
    ea = load_checkpoint(tmp_path / "a/checkpoints/latest.pt")
    eb = load_checkpoint(tmp_path / "b/checkpoints/latest.pt")
    assert ea["step"] == eb["step"] == 6
    for k, v in ea["ema"]["module"].items():
        assert torch.equal(v, eb["ema"]["module"][k]), k
    lines = [json.loads(x) for x in (tmp_path / "a/metrics.jsonl").read_text().splitlines()]
    assert {"train/loss", "train/loss_flow", "train/loss_consistency", "val/loss"} <= set(lines[-1])


def test_a_resume_on_another_machine_is_named_and_kept_in_the_provenance(tmp_path):
    from shortcut_policy.train.run_dir import machine_change, resumed_provenance
    from shortcut_policy.utils import machine_description

    epyc = "2-core CPU (AMD EPYC (cpu family 26, model 2), x86_64, AVX512), torch 2.13.0+cpu, 1 threads"
    xeon = "2-core CPU (Intel(R) Xeon(R) Processor (cpu family 6, model 167), x86_64, AVX512), torch 2.13.0+cpu, 2 threads"
    note = machine_change({"provenance": {"machine": epyc}}, xeon)
    assert "AMD EPYC (cpu family 26, model 2)" in note and "model 167" in note and "may not be bit-identical" in note
    assert machine_change({"provenance": {"machine": epyc}}, epyc.replace("2.13.0", "2.14.1")) is not None
    # core and thread counts are the run's own settings, not another machine
    assert machine_change({"provenance": {"machine": epyc}}, epyc.replace("2-core", "16-core").replace("1 threads",
                                                                                                      "8 threads")) is None
    assert machine_change({}, xeon) is None  # checkpoints from before runs recorded their machine
    n = torch.get_num_threads()  # the thread count machine_description writes is not a change of machine
    before = machine_description()
    torch.set_num_threads(n + 1)
    try:
        assert machine_change({"provenance": {"machine": before}}, machine_description()) is None
    finally:
        torch.set_num_threads(n)
    for machine, noted in (("1-core CPU (no such CPU (cpu family 0, model 0), x86_64), torch 0.0, 1 threads", True),
                           (machine_description(), False)):
        torch.manual_seed(0)
        p, ds, run = make()
        run = {**run, "provenance": {"command": "x", "machine": machine, "date": "2026-12-07"}}
        train(p, ds, tcfg(3), tmp_path / str(noted), run)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            train(make()[0], ds, tcfg(5), tmp_path / str(noted), run)  # the resume: its checkpoint recorded `machine`
        said = [w for w in caught if "may not be bit-identical" in str(w.message)]
        assert len(said) == noted and all(issubclass(w.category, RuntimeWarning) for w in said), said
        # the resumed run's checkpoint names the resuming leg and keeps the first one's
        prov = load_checkpoint(tmp_path / str(noted) / "checkpoints/latest.pt")["config"]["provenance"]
        assert prov["earlier"] == [{"command": "x", "machine": machine, "date": "2026-12-07"}]
    # a third leg keeps both earlier ones, oldest first
    third = resumed_provenance({"provenance": {**prov, "machine": "B"}}, {"provenance": {"machine": "C"}})
    assert [leg["machine"] for leg in third["provenance"]["earlier"]] == [machine, "B"]
    assert resumed_provenance({}, {"provenance": {"machine": "C"}}) == {"provenance": {"machine": "C"}}


def test_bf16_autocast_trains_resumes_exactly_and_is_part_of_the_run(tmp_path):
    from shortcut_policy.train.run_dir import RunDirError

    torch.manual_seed(0)
    p1, ds, run = make()
    train(p1, ds, tcfg(6, precision="bf16", lr=1e-2), tmp_path / "a", run)
    torch.manual_seed(0)
    p0, _, _ = make()
    train(p0, ds, tcfg(6, lr=1e-2), tmp_path / "fp32", run)
    # autocast ran: the same seed and batches give other weights than fp32, yet close ones (bf16 rounding)
    diff = [(a - b).abs().max().item() for a, b in zip(p1.state_dict().values(), p0.state_dict().values())
            if a.is_floating_point()]
    assert 0 < max(diff) < 0.1 and all(v.dtype == torch.float32 for v in p1.parameters())
    losses = [json.loads(x)["train/loss"] for x in (tmp_path / "a/metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(losses))
    torch.manual_seed(0)
    p2, _, _ = make()
    train(p2, ds, tcfg(3, precision="bf16", lr=1e-2), tmp_path / "b", run)
    p3, _, _ = make()
    train(p3, ds, tcfg(6, precision="bf16", lr=1e-2), tmp_path / "b", run)
    for (k, a), b in zip(p1.state_dict().items(), p3.state_dict().values()):
        assert torch.equal(a, b), k
    bf16, fp32 = tcfg(2, precision="bf16"), tcfg(2)
    train(make()[0], ds, bf16, tmp_path / "c", {**run, "train": dataclasses.asdict(bf16)})
    with pytest.raises(RunDirError, match="train.precision: checkpoint 'bf16', now 'fp32'"):
        train(make()[0], ds, fp32, tmp_path / "c", {**run, "train": dataclasses.asdict(fp32)})
    old = {**run, "train": {k: v for k, v in dataclasses.asdict(fp32).items() if k not in ("precision", "compile")}}
    train(make()[0], ds, fp32, tmp_path / "d", old)  # a run recorded before these fields existed
    train(make()[0], ds, fp32, tmp_path / "d", {**run, "train": dataclasses.asdict(fp32)})  # resumes as fp32
    with pytest.raises(ValueError, match="train.precision must be one of"):
        tcfg(3, precision="fp16")


@pytest.mark.slow
def test_torch_compile_trains_the_same_model(tmp_path, monkeypatch):
    import torch._inductor.config as inductor

    # compiled code draws its noise with its own generator unless told to use torch's: with the same draws,
    # the compiled and the eager run must take the same steps up to the order of floating-point sums
    monkeypatch.setattr(inductor, "fallback_random", True)
    torch.manual_seed(0)
    p1, ds, run = make()
    train(p1, ds, tcfg(3, compile=True), tmp_path / "a", run)
    torch.manual_seed(0)
    p0, _, _ = make()
    train(p0, ds, tcfg(3), tmp_path / "b", run)
    assert list(p1.state_dict()) == list(p0.state_dict())  # the checkpoint's names do not change
    for k, a in p1.state_dict().items():
        assert torch.allclose(a, p0.state_dict()[k], atol=1e-5), k
    losses = [[json.loads(x)["train/loss"] for x in (tmp_path / d / "metrics.jsonl").read_text().splitlines()
               if "train/loss" in x] for d in ("a", "b")]
    assert np.allclose(losses[0], losses[1], rtol=1e-4)


def test_calibration_rate_ignores_lines_that_appeared_between_the_same_two_polls():
    from shortcut_policy.eval.headtohead import step_rate

    # a loaded machine: steps 5 and 10 were both first seen at t=1.0 (it once gave 10^7 steps/s and 100000 steps)
    assert step_rate({5: 1.0, 10: 1.0, 15: 2.0, 20: 3.0}) == pytest.approx(5.0)
    assert step_rate({5: 0.0, 10: 1.0}) == pytest.approx(5.0)
    assert step_rate({5: 1.0, 10: 1.0}) is None and step_rate({}) is None


def test_the_prepared_gpu_job_runs_its_steps_at_tiny_sizes_on_the_cpu(tmp_path):
    import os
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "OUT": str(tmp_path), "SMOKE": "1", "PY": sys.executable, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(["bash", "scripts/gpu_job.sh"], cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and "GPU JOB DONE" in r.stdout, r.stderr[-2000:]
    import tarfile

    with tarfile.open(tmp_path / "results.tar.gz") as tar:
        names = set(tar.getnames())
        summary = json.load(tar.extractfile("./summary.json"))
        flow = json.load(tar.extractfile("./flow-s0/eval_flow.json"))
    assert not any(n.endswith((".pt", ".safetensors")) for n in names)  # no checkpoints in the archive
    # every run trained the one calibrated step count; every evaluation ran on the same 2 episodes
    assert {j["status"] for j in summary["train"]} == {"done"} and summary["steps"] >= 10
    assert all(f"train.steps={summary['steps']}" in j["cmd"] for j in summary["train"])
    assert {(j["sampler"], j["n"]) for j in summary["eval"] if j["status"] == "done"} == {
        (m, n) for m in ("shortcut", "flow") for n in (1, 2, 4, 8, 16)}
    assert flow["episodes"] == 2 and flow["train_steps"] == summary["steps"] and flow["method"] == "flow"
    # the files name the commands a user would type, not the interpreter's -c
    assert flow["train_command"].startswith("shortcut-train objective=flow policy=unet1d_small train.seed=0")
    assert flow["command"].startswith("shortcut-eval --checkpoint ")
    with tarfile.open(tmp_path / "results.tar.gz") as tar:
        sc = json.load(tar.extractfile("./shortcut-s0/eval_shortcut.json"))
    assert sorted(sc["steps"], key=int) == ["1", "2", "4", "8", "16"] and len(sc["merges"]) == 4
    from shortcut_policy.policy import ShortcutPolicy
    for name in ("shortcut-s0", "flow-s0"):  # the fp16 weights load into a policy as an inference file
        p = ShortcutPolicy.from_checkpoint(tmp_path / f"{name}.fp16.safetensors")[0]
        assert next(p.parameters()).dtype == torch.float32


def test_ema_teacher_uses_its_constant_decay_from_the_first_update(tmp_path):
    # 3 updates at 0.999 keep the teacher at its initial weights (within 0.3% of how far the weights moved)
    torch.manual_seed(0)
    p, ds, run = make(teacher="ema")
    init = {k: v.clone() for k, v in p.state_dict().items()}
    train(p, ds, tcfg(3, lr=1e-2), tmp_path, run, teacher_ema_decay=0.999)
    teacher = load_checkpoint(tmp_path / "checkpoints/latest.pt")["teacher_ema"]["module"]
    moved = sum((p.state_dict()[k] - init[k]).norm() for k in teacher if k.startswith("net."))
    assert sum((teacher[k] - init[k]).norm() for k in teacher if k.startswith("net.")) / moved < 0.01


def test_batch_order_is_a_function_of_seed_and_step():
    a = _batch_indices(40, 8, 7, seed=3)
    assert torch.equal(a, _batch_indices(40, 8, 7, seed=3))
    epoch = torch.cat([_batch_indices(40, 8, s, seed=3) for s in range(5)])
    assert sorted(epoch.tolist()) == list(range(40))  # one epoch covers every sample once
    with pytest.raises(ValueError, match="fewer than one batch"):
        _batch_indices(4, 8, 0, seed=0)


def test_lr_schedule_warmup_then_cosine():
    c = TrainConfig(steps=100, lr=1.0, warmup_steps=10)
    assert c.lr_at(0) == pytest.approx(0.1) and c.lr_at(9) == pytest.approx(1.0)
    assert c.lr_at(55) == pytest.approx(0.5) and c.lr_at(100) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="lr_schedule"):
        TrainConfig(lr_schedule="step")


def test_checkpoint_errors_are_clear(tmp_path):
    p, ds, run = make()
    train(p, ds, tcfg(3), tmp_path, run)
    path = tmp_path / "checkpoints/latest.pt"
    assert not list(path.parent.glob("*.tmp"))  # atomic write leaves no temporary file
    data = path.read_bytes()
    (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_checkpoint(tmp_path / "trunc.pt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not a shortcut-policy checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
    # a checkpoint whose weights do not fit its config
    state = load_checkpoint(path)
    state["config"]["policy_config"]["net_kwargs"]["down_dims"] = [16, 64]
    save_checkpoint(tmp_path / "bad.pt", {k: v for k, v in state.items() if k != "format"})
    with pytest.raises(CheckpointError, match="shape mismatch"):
        ShortcutPolicy.from_checkpoint(tmp_path / "bad.pt")
    # a checkpoint written before shape_meta (a flat obs vector): named, not a bare KeyError
    state = load_checkpoint(path)
    pc = state["config"]["policy_config"]
    del pc["shape_meta"]
    pc.update(obs_dim=5, action_dim=2)
    save_checkpoint(tmp_path / "old.pt", {k: v for k, v in state.items() if k != "format"})
    with pytest.raises(CheckpointError, match="before shape_meta"):
        ShortcutPolicy.from_checkpoint(tmp_path / "old.pt")


def test_from_checkpoint_rebuilds_the_ema_policy(tmp_path):
    p, ds, run = make()
    train(p, ds, tcfg(4), tmp_path, run)
    loaded, info = ShortcutPolicy.from_checkpoint(tmp_path / "checkpoints/latest.pt")
    state = load_checkpoint(tmp_path / "checkpoints/latest.pt")
    ref, _, _ = make()
    ref.load_state_dict(state["ema"]["module"])
    obs = {"state": torch.randn(3, 2, 5)}
    out1 = loaded.predict_action_chunk(obs, 2, generator=torch.Generator().manual_seed(0))
    out2 = ref.eval().predict_action_chunk(obs, 2, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out1, out2)
    assert info["checkpoint"]["step"] == 4 and info["task"] == {"name": "toy"}
    assert loaded.shape_meta.keys == ["state"]
    # nothing is set on the module: the run config travels beside it
    assert not hasattr(loaded, "run_config") and not hasattr(loaded, "train_step")


def test_nan_loss_stops_training(tmp_path):
    p, ds, run = make()
    ds.act[0, 0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="loss is nan"):
        train(p, ds, TrainConfig(steps=10, batch_size=40, progress=False), tmp_path, run)


def test_a_non_finite_loss_is_named_at_its_step_and_never_checkpointed(tmp_path, monkeypatch):
    """The loss is checked on the device and read back only when the loop logs or saves: the error still
    names the first bad step and its value, and no checkpoint after it is written."""
    p, ds, run = make()
    real, calls = ShortcutPolicy.compute_loss, []

    def compute_loss(self, batch, teacher=None):  # step 3 (0-based) and every later one: inf, then nan
        loss, info = real(self, batch, teacher)
        calls.append(1)
        if len(calls) == 4:
            return loss * float("inf"), info
        return (loss * float("nan"), info) if len(calls) > 4 else (loss, info)

    monkeypatch.setattr(ShortcutPolicy, "compute_loss", compute_loss)
    cfg = TrainConfig(steps=12, batch_size=8, warmup_steps=2, log_every=6, ckpt_every=2, progress=False)
    with pytest.raises(FloatingPointError, match=r"loss is inf at step 3;"):
        train(p, ds, cfg, tmp_path, run)
    assert len(calls) == 4  # stopped before the save after step 3 (its 4th step), not at the log after step 5
    assert load_checkpoint(tmp_path / "checkpoints/latest.pt")["step"] == 2


def test_tiny_pusht_train_then_evaluate(tmp_path):
    pytest.importorskip("gym_pusht")
    from shortcut_policy.eval.sweep import sweep
    from shortcut_policy.task import TaskConfig, make_runner
    from shortcut_policy.train.run import run_training

    task = {"name": "pusht_lowdim",
            "dataset": {"path": str(Path(__file__).resolve().parents[1] / "datasets/pusht_lowdim.zarr"),
                        "obs": {"keypoint": "keypoint", "agent_pos": {"key": "state", "index": [0, 2]}},
                        "action": "action", "max_train_episodes": 90},
            "horizon": 16, "n_obs_steps": 2, "n_action_steps": 8,
            "env": {"runner": "pusht_keypoints", "max_episode_steps": 40, "seed_start": 100000, "n_episodes": 2}}
    run = {"task": task,
           "policy": {"net": "unet1d", "net_kwargs": {"down_dims": [16, 32, 64], "emb_dim": 32}},
           "objective": {"kind": "shortcut", "max_inference_steps": 8, "parameterization": "endpoint"},
           "train": {"steps": 4, "batch_size": 16, "warmup_steps": 1, "log_every": 2, "progress": False},
           "eval": {"episodes": 2, "num_inference_steps": [1]}, "out_dir": str(tmp_path)}
    out_dir, metrics = run_training(run)
    assert 0.0 <= metrics["eval/score@1"] <= 1.0
    policy, stored = ShortcutPolicy.from_checkpoint(out_dir / "checkpoints/latest.pt")
    assert stored["policy_config"]["shape_meta"] == {
        "obs": {"keypoint": {"shape": [9, 2], "type": "low_dim"}, "agent_pos": {"shape": [2], "type": "low_dim"}},
        "action": {"shape": [2]}}
    runner = make_runner(TaskConfig.from_dict(stored["task"]), policy.shape_meta)
    res = sweep(policy, runner, [1, 2], latency_iters=3, progress=False)
    assert set(res["steps"]) == {"1", "2"} and res["episodes"] == 2
    r = res["steps"]["1"]
    assert 0.0 <= r["score"] <= 1.0 and r["latency_ms_p50"] > 0 and r["control_rate_hz"] > 0
    # per-episode scores in seed order, consistent with the mean (the input of scripts/compare.py)
    assert len(r["episode_scores"]) == 2
    assert abs(sum(r["episode_scores"]) / 2 - r["score"]) < 1e-3

    # offline diagnostics of the same checkpoint, written in the results format
    from shortcut_policy.eval.cli import diagnose_main

    out = tmp_path / "diag.json"
    diagnose_main(["--checkpoint", str(out_dir / "checkpoints/latest.pt"), "--names", "tiny",
                   "--num-inference-steps", "1", "16", "--windows", "3", "--noise", "2", "--velocity-error-by-step",
                   "--out", str(out)])
    d = json.loads(out.read_text())
    # the reference defaults to the checkpoint's max_steps (8); counts above it are left out
    assert d["kind"] == "diagnostics" and d["task"] == "pusht_lowdim" and list(d["steps"]) == ["1", "8"]
    assert d["ref_steps"] == {"tiny": 8}
    assert d["demo_roughness"]["tiny"] > 0.0  # the demonstrations' own jitter, the yardstick for "roughness"
    assert d["steps"]["8"]["tiny"]["to_ref"] == 0.0 and d["steps"]["1"]["tiny"]["spread"] >= 0.0
    by_step = d["velocity_error_by_step"]["tiny"]  # one row per step of the reference (8-call) sampler
    assert [r["t"] for r in by_step] == [k / 8 for k in range(8)] and all(r["error"] > 0 for r in by_step)
    assert (tmp_path / "diag.png").stat().st_size > 0  # the error-by-step plot beside the file


def test_inference_file_best_checkpoint_and_permissions(tmp_path):
    """Every save writes the slim inference file (EMA weights + config, safetensors) beside the training
    state; the best evaluated checkpoint is kept beside the latest; files follow the umask."""
    import os
    import stat

    from shortcut_policy.checkpoint import load_weights

    p, ds, run = make()
    scores = iter([0.2, 0.7, 0.5])  # evaluated at steps 2, 4 and 6: the best is step 4
    evaluate = lambda policy, step: {"eval/score@1": next(scores)}  # noqa: E731
    old = os.umask(0o022)
    try:
        train(p, ds, tcfg(6, eval_every=2), tmp_path, run, evaluate=evaluate, select=("eval/score@1", "max"))
    finally:
        os.umask(old)
    ck = tmp_path / "checkpoints"
    assert sorted(f.name for f in ck.iterdir()) == ["best.pt", "best.safetensors", "latest.pt", "latest.safetensors"]
    assert load_checkpoint(ck / "best.pt")["step"] == 4 and load_checkpoint(ck / "latest.pt")["best"]["step"] == 4
    assert load_weights(ck / "best.safetensors")["step"] == 4
    assert (ck / "latest.safetensors").stat().st_size < 0.4 * (ck / "latest.pt").stat().st_size
    for f in ck.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o644, f  # group- and world-readable under umask 022
    # the inference file rebuilds the same policy as the training state
    a, run_a = ShortcutPolicy.from_checkpoint(ck / "latest.safetensors")
    b, _ = ShortcutPolicy.from_checkpoint(ck / "latest.pt")
    obs = {"state": torch.randn(3, 2, 5)}
    torch.testing.assert_close(a.predict_action_chunk(obs, 2, torch.Generator().manual_seed(0)),
                               b.predict_action_chunk(obs, 2, torch.Generator().manual_seed(0)))
    assert run_a["checkpoint"]["step"] == 6 and run_a["task"] == {"name": "toy"}
    with pytest.raises(CheckpointError, match="holds the ema weights only"):
        ShortcutPolicy.from_checkpoint(ck / "latest.safetensors", weights="online")
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="cannot read .* as safetensors"):
        ShortcutPolicy.from_checkpoint(tmp_path / "bad.safetensors")


def test_logger_sends_rollout_videos_to_wandb_as_videos(tmp_path, monkeypatch):
    import sys
    import types

    from shortcut_policy.train.logger import RunLogger

    logged = []
    fake = types.SimpleNamespace(
        init=lambda **kw: types.SimpleNamespace(log=lambda m, step: logged.append((step, m)), finish=lambda: None),
        Video=lambda path, format: ("video", path, format))
    monkeypatch.setitem(sys.modules, "wandb", fake)
    log = RunLogger(tmp_path, {"a": 1}, wandb_mode="offline")
    log.log({"eval/score@1": 0.5, "eval/video@1/0": str(tmp_path / "ep0.mp4")}, step=10)
    log.close()
    assert logged == [(10, {"eval/score@1": 0.5, "eval/video@1/0": ("video", str(tmp_path / "ep0.mp4"), "mp4")})]
    assert json.loads((tmp_path / "metrics.jsonl").read_text())["eval/video@1/0"].endswith("ep0.mp4")
    monkeypatch.setitem(sys.modules, "wandb", None)  # not installed: a clear error, not a traceback from inside
    with pytest.raises(ImportError, match=r"pip install 'shortcut-policy\[wandb\]'"):
        RunLogger(tmp_path, {}, wandb_mode="offline")
