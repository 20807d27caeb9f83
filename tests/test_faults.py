"""The fault suite: every way a run, a file or an input can go wrong ends in an exact continuation or an
error that names the problem; nothing is silent and nothing is lost."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

from shortcut_policy.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from shortcut_policy.core.config import objective_config
from shortcut_policy.policy import PolicyConfig, ShortcutPolicy
from shortcut_policy.train.loop import TrainConfig, train
from shortcut_policy.train.run_dir import RunDirError, RunLock

from .conftest import REPO
from .test_train import ToyChunks

SHAPE_META = {"obs": {"state": {"shape": [5]}}, "action": {"shape": [2]}}
TINY = {"net": "unet1d", "net_kwargs": {"down_dims": [16, 32], "kernel_size": 3, "n_groups": 4}}


def make(seed=0, **objective):
    torch.manual_seed(seed)
    cfg = PolicyConfig(shape_meta=SHAPE_META, horizon=8, n_obs_steps=2, n_action_steps=4,
                       objective=objective_config({"kind": "shortcut", **objective}), **TINY)
    p = ShortcutPolicy(cfg)
    ds = ToyChunks(48)
    p.normalizer.fit({"state": ds.obs, "action": ds.act})
    return p, ds


def run_cfg(p, **train_fields):
    cfg = tcfg(**train_fields)
    return cfg, {"policy_config": p.cfg.to_dict(), "task": {"name": "toy"}, "train": cfg.__dict__.copy()}


def tcfg(steps=6, **kw):
    base = dict(steps=steps, batch_size=8, warmup_steps=2, log_every=2, val_every=2, ckpt_every=3, progress=False)
    return TrainConfig(**{**base, **kw})


# ----------------------------------------------------------------------------- bad settings
@pytest.mark.parametrize("field,value,match", [
    ("grad_clip", -1.0, "grad_clip must be > 0"), ("grad_clip", 0.0, "grad_clip must be > 0"),
    ("ckpt_every", 0, "ckpt_every must be >= 1"), ("log_every", -1, "log_every must be >= 1"),
    ("val_every", 0, "val_every must be >= 1"), ("eval_every", -1, "eval_every must be >= 0"),
    ("betas", (0.9, 1.5), "betas"), ("num_workers", -2, "num_workers"),
    ("steps", 2.5, "train.steps must be a whole number"), ("ckpt_every", 2.5, "ckpt_every must be a whole number"),
    ("batch_size", 2.5, "batch_size must be a whole number"), ("steps", 0, "steps"), ("batch_size", 0, "batch_size"),
    ("lr", 0.0, "lr"), ("lr", -1e-3, "lr"), ("weight_decay", -1e-6, "weight_decay"), ("warmup_steps", -1, "warmup_steps")])
def test_bad_train_settings_are_named(field, value, match):
    with pytest.raises(ValueError, match=match):
        tcfg(**{field: value})


# ----------------------------------------------------------------------------- the run directory
def test_resume_refuses_settings_that_change_the_run_and_accepts_the_rest(tmp_path):
    p, ds = make()
    cfg, run = run_cfg(p, steps=3)
    train(p, ds, cfg, tmp_path, run)
    for change, field in ((dict(seed=1), "train.seed"), (dict(lr=5e-4), "train.lr"), (dict(steps=9), "train.steps"),
                          (dict(batch_size=4), "train.batch_size")):
        p2, _ = make()
        cfg2, run2 = run_cfg(p2, **{"steps": 3, **change})
        with pytest.raises(RunDirError, match=rf"{field}: checkpoint .*, now "):
            train(p2, ds, cfg2, tmp_path, run2)
    p3, _ = make(max_inference_steps=8)
    cfg3, run3 = run_cfg(p3, steps=3)
    with pytest.raises(RunDirError, match="max_inference_steps: checkpoint 16, now 8"):
        train(p3, ds, cfg3, tmp_path, run3)
    p4, _ = make()
    cfg4, run4 = run_cfg(p4, steps=3, log_every=1, ckpt_every=1, num_threads=1)  # logging and threads may change
    run4["task"]["env"] = {"n_episodes": 7}  # and so may the simulator, which only evaluates
    train(p4, ds, cfg4, tmp_path, run4)


def test_resume_check_names_horizon_and_dataset_changes_and_lets_free_settings_change(tmp_path):
    from shortcut_policy.train.run_dir import check_resume

    p, _ = make()
    ckpt = tmp_path / "latest.pt"
    _, saved = run_cfg(p, steps=3)
    saved["task"] = {"name": "pusht", "horizon": 8, "dataset": {"path": "a.zarr", "obs_keys": ["state"], "val_ratio": 0.02}}
    now = json.loads(json.dumps(saved))
    check_resume(saved, now, ckpt)  # the same run
    for where, value, field in ((("policy_config", "horizon"), 16, "policy_config.horizon"),
                                (("task", "horizon"), 16, "task.horizon"),
                                (("task", "dataset", "path"), "b.zarr", "task.dataset.path"),
                                (("task", "dataset", "obs_keys"), ["state", "extra"], "task.dataset.obs_keys"),
                                (("task", "dataset", "val_ratio"), 0.1, "task.dataset.val_ratio")):
        changed = json.loads(json.dumps(saved))
        node = changed
        for k in where[:-1]:
            node = node[k]
        node[where[-1]] = value
        with pytest.raises(RunDirError, match=rf"{field}: checkpoint "):
            check_resume(saved, changed, ckpt)
    free = json.loads(json.dumps(saved))  # settings that never change the weights
    free["train"].update(val_every=7, eval_every=11, device="cpu", num_workers=2, wandb="offline",
                         wandb_project="other", progress=True)
    free.update(eval={"episodes": 3}, out_dir="elsewhere", provenance={"git": "abc"}, resume=True, hydra={"x": 1})
    free["task"]["env"] = {"n_episodes": 9}
    check_resume(saved, free, ckpt)


def test_restart_over_a_checkpoint_and_a_second_run_on_one_folder_are_refused(tmp_path):
    p, ds = make()
    cfg, run = run_cfg(p, steps=2)
    train(p, ds, cfg, tmp_path, run)
    before = (tmp_path / "checkpoints" / "latest.pt").read_bytes()
    with pytest.raises(RunDirError, match="resume=false would overwrite it"):
        train(p, ds, cfg, tmp_path, run, resume=False)
    assert (tmp_path / "checkpoints" / "latest.pt").read_bytes() == before
    with RunLock(tmp_path / "busy"):
        with pytest.raises(RunDirError, match=rf"in use by another training run \(pid {os.getpid()}\)"):
            train(p, ds, cfg, tmp_path / "busy", run)


def test_resume_cuts_metrics_back_to_the_checkpoint_and_removes_stale_temporaries(tmp_path):
    p, ds = make()
    cfg, run = run_cfg(p, steps=3)
    train(p, ds, cfg, tmp_path, run)
    metrics = tmp_path / "metrics.jsonl"
    with metrics.open("a") as f:  # a run that died after logging step 4 but before its checkpoint
        f.write(json.dumps({"step": 4, "train/loss": 9.0}) + "\n" + '{"step": 5, "train/lo')
    stale = tmp_path / "checkpoints" / ".latest.pt.abc123.tmp"
    stale.write_bytes(b"x" * 1000)  # what a kill during a checkpoint write leaves
    p2, _ = make()
    cfg2, run2 = run_cfg(p2, steps=3)
    train(p2, ds, cfg2, tmp_path, run2)  # the same run, resumed
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    assert steps == sorted(set(steps)) and max(steps) == 3  # the orphan lines are gone, no step twice
    assert not stale.exists()


def test_a_run_killed_before_its_first_checkpoint_starts_over_cleanly(tmp_path):
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 2, "train/loss": 9.0}) + "\n")  # logged, never saved
    stale = tmp_path / ".metrics.jsonl.abc123.tmp"
    stale.write_text("half a file")
    p, ds = make()
    cfg, run = run_cfg(p, steps=3)
    train(p, ds, cfg, tmp_path, run)
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == sorted({x["step"] for x in lines}) and all(x["train/loss"] != 9.0 for x in lines)
    assert not stale.exists()


def test_checkpoint_without_training_state_or_on_a_full_disk(tmp_path, monkeypatch):
    p, ds = make()
    cfg, run = run_cfg(p, steps=2)
    train(p, ds, cfg, tmp_path, run)
    path = tmp_path / "checkpoints" / "latest.pt"
    state = load_checkpoint(path)
    del state["optimizer"], state["format"]
    save_checkpoint(path, state)
    with pytest.raises(CheckpointError, match=r"lacks \['optimizer'\]"):
        train(make()[0], ds, cfg, tmp_path, run)

    def full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(CheckpointError, match="No space left on device.*previous file is intact"):
        save_checkpoint(tmp_path / "x.pt", {"a": 1})
    assert not list(tmp_path.glob(".x.pt*"))


def test_a_full_disk_while_writing_the_inference_file_or_the_metrics_is_named(tmp_path, monkeypatch):
    import safetensors.torch

    p, ds = make()
    cfg, run = run_cfg(p, steps=3)
    train(p, ds, cfg, tmp_path, run)
    ckpt = tmp_path / "checkpoints" / "latest.pt"
    before = ckpt.read_bytes()

    def full(*a, **k):
        raise OSError(28, "No space left on device")

    from shortcut_policy.checkpoint import save_weights

    weights = ckpt.with_suffix(".safetensors")
    weights_before = weights.read_bytes()
    monkeypatch.setattr(safetensors.torch, "save_file", full)
    with pytest.raises(CheckpointError, match=r"cannot write .*latest.safetensors: \[Errno 28\] No space left"):
        save_weights(weights, p.state_dict(), run, 3)
    monkeypatch.undo()
    assert ckpt.read_bytes() == before and weights.read_bytes() == weights_before
    assert not list(ckpt.parent.glob(".*.tmp"))

    # the inference file is written before the training state: a failure there leaves latest.pt a step behind,
    # so the resume repeats the steps and writes both (never a final latest.pt beside an old inference file)
    q, _ = make()
    qcfg, qrun = run_cfg(q, steps=6)
    calls = {"n": 0}
    import shortcut_policy.train.loop as loop

    real = loop.save_weights

    def fail_second(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise CheckpointError("cannot write x: [Errno 28] No space left on device")
        return real(*a, **k)

    monkeypatch.setattr(loop, "save_weights", fail_second)
    with pytest.raises(CheckpointError, match="No space left"):
        train(q, ds, qcfg, tmp_path / "b", qrun)
    assert load_checkpoint(tmp_path / "b" / "checkpoints" / "latest.pt")["step"] == 3  # not 6
    monkeypatch.undo()

    from shortcut_policy.train.logger import RunLogger

    log = RunLogger(tmp_path / "c", {})
    log.log({"train/loss": 1.0}, 1)

    class Full:
        def open(self, *a):
            raise OSError(28, "No space left on device")

    log.path = Full()
    with pytest.raises(OSError, match="cannot append step 2 to .*No space left on device.*the same command resumes"):
        log.log({"train/loss": 1.0}, 2)


def test_an_evaluation_that_did_not_finish_is_repeated_by_the_resume(tmp_path):
    p, ds = make()
    cfg, run = run_cfg(p, steps=4, eval_every=2)
    seen = []

    def evaluate(model, step):
        seen.append(step)
        if step == 4 and seen.count(4) == 1:
            raise KeyboardInterrupt  # the simulator crashed, or the user stopped it, during the final evaluation
        return {"eval/score@1": 0.1 * step}

    with pytest.raises(KeyboardInterrupt):
        train(p, ds, cfg, tmp_path, run, evaluate=evaluate, select=("eval/score@1", "max"))
    state = load_checkpoint(tmp_path / "checkpoints" / "latest.pt")
    assert state["step"] == 4 and state["eval_pending"]  # the weights of step 4 are kept
    p2, _ = make()
    metrics = train(p2, ds, cfg, tmp_path, run, evaluate=evaluate, select=("eval/score@1", "max"))
    assert seen == [2, 4, 4] and metrics["eval/score@1"] == pytest.approx(0.4)
    state = load_checkpoint(tmp_path / "checkpoints" / "latest.pt")
    assert not state["eval_pending"] and state["best"]["step"] == 4
    assert load_checkpoint(tmp_path / "checkpoints" / "best.pt")["step"] == 4
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if "eval/score@1" in x] == [2, 4]
    train(make()[0], ds, cfg, tmp_path, run, evaluate=evaluate)  # a finished run with its evaluation: nothing again
    assert seen == [2, 4, 4]


def test_other_data_at_the_same_path_is_refused_on_resume(tmp_path):
    from shortcut_policy.data.dataset import SequenceDataset
    from shortcut_policy.data.replay_buffer import ReplayBuffer
    from shortcut_policy.train.run_dir import check_resume

    from .formats import write_dp_zarr

    write_dp_zarr(tmp_path / "dp.zarr", lengths=(12, 10, 11))
    kw = dict(obs=["state"], action="action", horizon=8, n_obs_steps=2, n_action_steps=4, val_ratio=0.0)
    first = SequenceDataset(tmp_path / "dp.zarr", **kw).fingerprint()
    assert first == SequenceDataset(tmp_path / "dp.zarr", **kw).fingerprint()  # the same content, the same print
    buf = ReplayBuffer.from_path(tmp_path / "dp.zarr")
    data = {k: np.array(buf[k]) for k in buf.keys()}
    data["action"][5, 0] += 1.0  # one number of one demonstration, rewritten at the same path
    ReplayBuffer(data, buf.episode_ends).save(tmp_path / "other.zarr")
    second = SequenceDataset(tmp_path / "other.zarr", **kw).fingerprint()
    assert second["crc32"]["state"] == first["crc32"]["state"] and second["crc32"]["action"] != first["crc32"]["action"]
    saved = {"task": {"name": "t"}, "data": first}
    check_resume(saved, {"task": {"name": "t"}, "data": first}, tmp_path / "latest.pt")
    with pytest.raises(RunDirError, match=r"data.crc32.action: checkpoint \d+, now \d+[\s\S]*not the one this run "):
        check_resume(saved, {"task": {"name": "t"}, "data": second}, tmp_path / "latest.pt")
    check_resume({"task": {"name": "t"}}, {"task": {"name": "t"}, "data": second}, tmp_path / "latest.pt")  # older runs


def test_default_run_folders_of_runs_started_together_differ():
    code = ("import sys; sys.path.insert(0, {repo!r}); from hydra import compose, initialize_config_dir; "
            "initialize_config_dir(config_dir={cfg!r}, version_base=None); "
            "print(compose('train').out_dir)").format(repo=str(REPO), cfg=str(REPO / "configs"))
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) for _ in range(2)]
    dirs = [pr.communicate(timeout=120)[0].strip() for pr in procs]
    assert all(d.startswith("runs/pusht_lowdim-meanflow-") for d in dirs) and dirs[0] != dirs[1]


# ----------------------------------------------------------------------------- NaN and inf, inputs
def test_non_finite_weights_never_become_actions_or_metrics(tmp_path):
    from shortcut_policy.train.logger import RunLogger

    p, ds = make()
    obs = {"state": torch.randn(2, 2, 5)}
    with torch.no_grad():
        next(p.net.parameters()).fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="NaN or inf actions"):
        p.eval().predict_action_chunk(obs)
    log = RunLogger(tmp_path, {})
    with pytest.raises(FloatingPointError, match=r"\['train/loss'\] are NaN or inf at step 3"):
        log.log({"train/loss": float("nan")}, 3)
    assert not (tmp_path / "metrics.jsonl").exists() or "NaN" not in (tmp_path / "metrics.jsonl").read_text()


def test_nan_in_the_ema_weights_stops_the_run_before_its_checkpoint(tmp_path, monkeypatch):
    from shortcut_policy.core.ema import EMA

    real, calls = EMA.update, []

    def update(self, model):  # the EMA turns NaN after its third update (the online weights stay finite)
        real(self, model)
        calls.append(1)
        if len(calls) == 3:
            with torch.no_grad():
                next(self.module.parameters()).view(-1)[0] = float("nan")

    monkeypatch.setattr(EMA, "update", update)
    p, ds = make()
    cfg, run = run_cfg(p, steps=6, log_every=2, ckpt_every=2)
    with pytest.raises(FloatingPointError, match=r"the EMA weights hold NaN or inf at step 4 .* last checkpoint"):
        train(p, ds, cfg, tmp_path, run)
    state = load_checkpoint(tmp_path / "checkpoints" / "latest.pt")
    assert state["step"] == 2 and all(torch.isfinite(v).all() for v in state["ema"]["module"].values()
                                      if torch.is_tensor(v) and v.is_floating_point())
    assert "NaN" not in (tmp_path / "metrics.jsonl").read_text()


@pytest.mark.parametrize("suffix", [".onnx", ".pt"])
def test_an_exported_policy_refuses_to_return_nan_actions(tmp_path, suffix):
    pytest.importorskip("onnxruntime") if suffix == ".onnx" else None
    from shortcut_policy.deploy.export import export_policy
    from shortcut_policy.deploy.runtime import ExportedPolicy

    p, _ = make()
    p.eval()
    with torch.no_grad():  # a network whose last layer went NaN: the artifact computes NaN end to end
        list(p.net.parameters())[-1].fill_(float("nan"))
    export_policy(p, tmp_path / f"p{suffix}", 1)
    exported = ExportedPolicy.load(tmp_path / f"p{suffix}")
    with pytest.raises(FloatingPointError, match=rf"p{suffix} produced NaN or inf actions; refusing"):
        exported.predict_action_chunk({"state": np.zeros((1, 2, 5), dtype=np.float32)})


def test_an_export_that_fails_its_check_leaves_nothing_loadable(tmp_path, monkeypatch, capsys):
    from shortcut_policy.deploy import export as export_module
    from shortcut_policy.deploy.cli import export_main
    from shortcut_policy.deploy.runtime import ExportedPolicy

    p, ds = make()
    cfg, run = run_cfg(p, steps=1)
    train(p, ds, cfg, tmp_path / "run", run)
    real = export_module.verify_export

    def failing(*args, **kwargs):  # the artifact differs from eager (a backend bug, a bad optimization pass)
        report = real(*args, **kwargs)
        return {**report, "max_abs_err_normalized": 0.5, "ok": False}

    monkeypatch.setattr(export_module, "verify_export", failing)
    out = tmp_path / "p.pt"
    code = export_main(["--checkpoint", str(tmp_path / "run" / "checkpoints" / "latest.pt"), "--format", "torchscript",
                        "--out", str(out)])
    assert code == 1 and "FAILED verification" in capsys.readouterr().out
    assert not out.exists() and not (tmp_path / "p.pt.json").exists()
    assert (tmp_path / "p.pt.rejected").exists() and (tmp_path / "p.pt.rejected.json").exists()
    with pytest.raises(Exception, match="p.pt"):
        ExportedPolicy.load(out)


def test_observations_far_outside_the_training_range_are_flagged():
    p, _ = make()
    p.eval()
    far = {"state": torch.full((1, 2, 5), 1e6)}
    with pytest.warns(RuntimeWarning, match=r"observation\['state'\] is .* half-ranges .* extrapolates"):
        p.predict_action_chunk(far)
    import warnings

    with warnings.catch_warnings(record=True) as seen:  # once per key: a rollout's log is not flooded
        warnings.simplefilter("always")
        p.predict_action_chunk(far)
    assert not [w for w in seen if "half-ranges" in str(w.message)]
    p.reset()
    with pytest.warns(RuntimeWarning, match="half-ranges"):
        p.predict_action_chunk(far)


@pytest.mark.parametrize("suffix", [".onnx", ".pt"])
def test_an_exported_policy_flags_the_same_observations_as_eager(tmp_path, suffix):
    import warnings

    pytest.importorskip("onnxruntime") if suffix == ".onnx" else None
    from shortcut_policy.deploy.export import export_policy
    from shortcut_policy.deploy.runtime import ExportedPolicy

    p, ds = make()
    p.eval()
    export_policy(p, tmp_path / f"p{suffix}", 1)
    exported = ExportedPolicy.load(tmp_path / f"p{suffix}")
    field = p.normalizer.field("state")
    lo, hi = field.input_min.numpy(), field.input_max.numpy()
    centre, half = (lo + hi) / 2, (hi - lo) / 2
    for k, expect in ((2.5, False), (3.5, True)):  # just inside and just outside the threshold on one dimension
        obs = np.broadcast_to(centre, (1, 2, 5)).copy().astype(np.float32)
        obs[0, 1, 3] = centre[3] + k * half[3]
        said = []
        for run in (lambda o: p.predict_action_chunk({"state": torch.from_numpy(o)}),
                    lambda o: exported.predict_action_chunk({"state": o})):
            p.reset(), exported.reset()
            with warnings.catch_warnings(record=True) as seen:
                warnings.simplefilter("always")
                run(obs)
                run(obs)  # said once until reset()
            said.append(sum("half-ranges" in str(w.message) for w in seen))
        assert said == ([1, 1] if expect else [0, 0]), (k, said)


def test_select_action_after_a_batch_change_needs_a_reset():
    p, _ = make()
    p.eval()
    p.select_action({"state": torch.randn(1, 5)})
    with pytest.raises(ValueError, match="batch of 4 after 1 without reset"):
        p.select_action({"state": torch.randn(4, 5)})
    p.reset()
    assert p.select_action({"state": torch.randn(4, 5)}).shape == (4, 2)


def test_a_missing_chunk_of_a_foreign_store_is_said_aloud(tmp_path):
    import shutil

    from shortcut_policy.data.replay_buffer import ReplayBuffer

    from .formats import write_dp_zarr

    write_dp_zarr(tmp_path / "dp.zarr", lengths=(5, 3, 4))
    chunk = next(p for p in (tmp_path / "dp.zarr" / "data" / "state").iterdir() if not p.name.startswith("."))
    chunk.unlink()
    with pytest.warns(RuntimeWarning, match=r"data/state has 0 of its 1 chunks on disk"):
        ReplayBuffer.from_path(tmp_path / "dp.zarr", keys=["state"])
    own = tmp_path / "own.zarr"
    ReplayBuffer.from_path(tmp_path / "dp.zarr", keys=["action"]).save(own)
    victim = next(p for p in (own / "data" / "action").iterdir() if not p.name.startswith("."))
    shutil.copy(victim, tmp_path / "keep")
    victim.unlink()
    with pytest.raises(Exception, match="checksum"):  # this package's stores: an error
        ReplayBuffer.from_path(own)


def test_a_changed_or_truncated_chunk_of_this_packages_store_is_refused_by_name(tmp_path):
    import zarr

    from shortcut_policy.data.replay_buffer import DatasetError, ReplayBuffer

    rng = np.random.default_rng(0)
    buf = ReplayBuffer({"state": rng.normal(size=(12, 5)).astype(np.float32),
                        "action": rng.normal(size=(12, 2)).astype(np.float32)}, np.array([5, 12]))
    for case in ("flip", "truncate"):
        own = tmp_path / f"{case}.zarr"
        buf.save(own)
        if case == "flip":  # one bit of one number, rewritten through zarr so the chunk still decodes
            arr = zarr.open_array(str(own / "data" / "action"), mode="r+")
            values = np.asarray(arr[...])
            values.view(np.uint32)[3, 1] ^= 1 << 7
            arr[...] = values
            match = r"flip.zarr: data/action does not match the checksum recorded"
        else:  # a copy cut short: the chunk's bytes end half way
            chunk = next(p for p in (own / "data" / "action").iterdir() if not p.name.startswith("."))
            chunk.write_bytes(chunk.read_bytes()[: chunk.stat().st_size // 2])
            match = r"(cannot read data/action of .*truncate.zarr|truncate.zarr: data/action does not match)"
        with pytest.raises(DatasetError, match=match):
            ReplayBuffer.from_path(own)


def test_a_store_without_checksums_is_said_to_be_unverifiable_once(tmp_path):
    import warnings

    from shortcut_policy.data.diffusion_policy import import_dp_zarr
    from shortcut_policy.data.replay_buffer import ReplayBuffer

    from .formats import write_dp_zarr

    write_dp_zarr(tmp_path / "dp.zarr", lengths=(5, 3))
    write_dp_zarr(tmp_path / "dp2.zarr", lengths=(4, 4))
    with pytest.warns(RuntimeWarning, match=r"dp.zarr carries no checksums .*shortcut-import zarr --src"):
        ReplayBuffer.from_path(tmp_path / "dp.zarr", keys=["action"])
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        ReplayBuffer.from_path(tmp_path / "dp.zarr", keys=["action"])  # once per store and process
        ReplayBuffer.from_path(REPO / "datasets" / "pusht_lowdim.zarr")  # the shipped store carries them
        import_dp_zarr(tmp_path / "dp2.zarr", tmp_path / "copy.zarr")  # the importer makes the verified copy
        ReplayBuffer.from_path(tmp_path / "copy.zarr")
    assert not [w for w in seen if "checksums" in str(w.message)]


def test_damaged_array_metadata_names_the_store(tmp_path):
    from shortcut_policy.data.replay_buffer import DatasetError, ReplayBuffer

    from .formats import write_dp_zarr

    write_dp_zarr(tmp_path / "dp.zarr", lengths=(5, 3))
    meta = [p for p in (tmp_path / "dp.zarr" / "data" / "state").iterdir() if p.name in (".zarray", "zarr.json")]
    assert meta
    meta[0].write_text("{ not json")
    with pytest.raises(DatasetError, match=r"dp.zarr: the store's array metadata cannot be read"):
        ReplayBuffer.from_path(tmp_path / "dp.zarr", keys=["action"])


# ----------------------------------------------------------------------------- kill, terminate, resume
SCRIPT = textwrap.dedent("""
    import sys, torch
    sys.path.insert(0, {repo!r})
    from tests.test_faults import make, run_cfg
    from shortcut_policy.train.loop import train
    p, ds = make()
    cfg, run = run_cfg(p, steps=int(sys.argv[2]), ckpt_every=int(sys.argv[3]), log_every=1)
    print("started", flush=True)
    train(p, ds, cfg, sys.argv[1], run)
    torch.save(p.state_dict(), sys.argv[1] + "/final_weights.pt")
""")


def _launch(tmp_path, out, steps, ckpt_every):
    script = tmp_path / "run.py"
    script.write_text(SCRIPT.format(repo=str(REPO)))
    return subprocess.Popen([sys.executable, str(script), str(out), str(steps), str(ckpt_every)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _final(out):
    return torch.load(out / "final_weights.pt", weights_only=True)


def test_sigterm_checkpoints_and_the_same_command_finishes_bit_identically(tmp_path):
    ref = _launch(tmp_path, tmp_path / "ref", 40, 1000)
    assert ref.wait(timeout=300) == 0, ref.stderr.read()[-2000:]
    proc = _launch(tmp_path, tmp_path / "run", 40, 1000)
    assert proc.stdout.readline().strip() == "started"
    metrics = tmp_path / "run" / "metrics.jsonl"
    while not metrics.exists() or len(metrics.read_text().splitlines()) < 5:
        time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read()[-2000:]
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    assert "stopped by SIGTERM" in out
    step = load_checkpoint(tmp_path / "run" / "checkpoints" / "latest.pt")["step"]
    assert 5 <= step < 40  # the checkpoint of the step it stopped at, although ckpt_every is 1000
    again = _launch(tmp_path, tmp_path / "run", 40, 1000)
    assert again.wait(timeout=300) == 0, again.stderr.read()[-2000:]
    a, b = _final(tmp_path / "ref"), _final(tmp_path / "run")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_sigkill_at_random_moments_resumes_bit_identically(tmp_path):
    # 48 steps: on an idle machine a step takes a fraction of a second, and with 16 the third kill once came
    # after the run had finished (saved [10, 14, 16])
    n = 48
    ref = _launch(tmp_path, tmp_path / "ref", n, 2)
    assert ref.wait(timeout=300) == 0
    rng = np.random.default_rng(0)
    out = tmp_path / "run"
    saved = []
    for _ in range(3):
        proc = _launch(tmp_path, out, n, 2)
        start = saved[-1] if saved else 0
        # wait for two new logged lines and a checkpoint on disk, then kill at a random moment (the lines alone
        # can come before the first checkpoint: on one thread a step outlasts the random wait); the wait is long
        # because a loaded machine (two test workers beside a training) can take minutes to start a process
        deadline, logged, ckpt = time.time() + 600, 0, out / "checkpoints" / "latest.pt"
        while time.time() < deadline and proc.poll() is None:
            logged = (out / "metrics.jsonl").read_text().count("\n") if (out / "metrics.jsonl").exists() else 0
            if logged >= start + 2 and ckpt.is_file():
                break
            time.sleep(0.02)
        assert logged >= start + 2 and ckpt.is_file(), f"after 600 s: {logged} lines logged, checkpoint {ckpt.is_file()}"
        time.sleep(float(rng.uniform(0.0, 0.5)))  # now and then during a checkpoint write (one every 2 steps)
        proc.kill()
        proc.wait()
        saved.append(load_checkpoint(out / "checkpoints" / "latest.pt")["step"])
    assert saved[-1] < n and saved == sorted(saved) and saved[0] > 0, saved  # each kill landed mid-run
    final = _launch(tmp_path, out, n, 2)
    assert final.wait(timeout=300) == 0, final.stderr.read()[-2000:]
    a, b = _final(tmp_path / "ref"), _final(out)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not list((out / "checkpoints").glob(".*.tmp"))


# ----------------------------------------------------------------------------- several processes
DDP_SCRIPT = textwrap.dedent("""
    import os, sys, torch
    sys.path.insert(0, {repo!r})
    from shortcut_policy.train.loop import TrainConfig, train

    class Toy(torch.nn.Module):  # a deterministic loss: the data-parallel arithmetic alone
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.lin = torch.nn.Linear(5, 2)

        def compute_loss(self, batch, teacher=None):
            self.calls = getattr(self, "calls", 0) + 1
            if self.calls == int(os.environ.get("CRASH_AT", 0)):
                raise RuntimeError("crash")
            noise = float(os.environ.get("NOISE", 0)) * torch.randn_like(batch["y"])  # each rank's own stream
            loss = ((self.lin(batch["x"]) + noise - batch["y"]) ** 2).mean()
            return loss, {{"loss": loss.item()}}

    class Data(torch.utils.data.Dataset):
        def __init__(self):
            g = torch.Generator().manual_seed(1)
            self.x, self.y = torch.randn(64, 5, generator=g), torch.randn(64, 2, generator=g)
        def __len__(self):
            return 64
        def __getitem__(self, i):
            return {{"x": self.x[i], "y": self.y[i]}}

    model = Toy()
    cfg = TrainConfig(steps=5, batch_size=int(os.environ.get("BATCH", 16)), lr=1e-2, warmup_steps=1, log_every=1,
                      val_every=1, ckpt_every=int(os.environ.get("CKPT_EVERY", 5)), progress=False, device="cpu")
    train(model, Data(), cfg, sys.argv[1], {{"task": {{"name": "toy"}}}})
    assert not torch.distributed.is_initialized()  # the group is left before exit, by every rank
    if os.path.isdir("/proc/self/task"):  # and freed: no transport thread of it is live at exit
        names = [open(f"/proc/self/task/{{t}}/comm").read().strip() for t in os.listdir("/proc/self/task")]
        assert not [n for n in names if "gloo" in n], names
    if int(os.environ.get("RANK", "0")) == 0:
        torch.save(model.state_dict(), sys.argv[1] + "/final_weights.pt")
""")


def test_two_processes_with_half_batches_equal_one_process_with_the_whole(tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT.format(repo=str(REPO)))
    one = _torchrun(script, tmp_path / "one", 1, 0)
    assert one.returncode == 0, one.stderr[-2000:]
    two = _torchrun(script, tmp_path / "two", 2, 29517)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = _final(tmp_path / "one"), _final(tmp_path / "two")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert not torch.equal(a["lin.weight"], torch.nn.Linear(5, 2).weight)  # it trained
    state = load_checkpoint(tmp_path / "two" / "checkpoints" / "latest.pt")
    assert state["world_size"] == 2 and len(state["rng_ranks"]) == 2
    lines = (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 5  # rank 0 alone logs


def _torchrun(script, out, nproc, port, **env):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **{k: str(v) for k, v in env.items()}}
    cmd = ([sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--master_port={port}"]
           if nproc > 1 else [sys.executable])
    return subprocess.run(cmd + [str(script), str(out)], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_an_interrupted_two_process_run_resumes_exactly_in_every_rank(tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT.format(repo=str(REPO)))
    ref = _torchrun(script, tmp_path / "ref", 2, 29521, NOISE=0.5)
    assert ref.returncode == 0, ref.stderr[-2000:]
    crashed = _torchrun(script, tmp_path / "run", 2, 29522, NOISE=0.5, CRASH_AT=4, CKPT_EVERY=1)  # dies in step 4
    assert crashed.returncode != 0 and "crash" in crashed.stderr
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "latest.pt")["step"] == 3
    one = _torchrun(script, tmp_path / "run", 1, 0, NOISE=0.5, CKPT_EVERY=1)  # a resume by another world size
    assert one.returncode != 0 and "written by 2 process(es); resume it with as many (now 1)" in one.stderr
    resumed = _torchrun(script, tmp_path / "run", 2, 29523, NOISE=0.5, CKPT_EVERY=1)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = _final(tmp_path / "ref"), _final(tmp_path / "run")
    assert all(torch.equal(a[k], b[k]) for k in a)  # each rank continued its own noise stream
    odd = _torchrun(script, tmp_path / "odd", 2, 29524, BATCH=15)
    assert odd.returncode != 0 and "train.batch_size 15 must divide among 2 processes" in odd.stderr


def test_a_cpu_checkpoint_is_refused_on_cuda():
    from shortcut_policy.train.loop import _set_rng_state

    with pytest.raises(CheckpointError, match=r"x.pt was written without a CUDA RNG state \(a CPU run\)"):
        _set_rng_state({"cpu": torch.get_rng_state()}, torch.device("cuda"), "x.pt")
    _set_rng_state(torch.get_rng_state(), torch.device("cpu"), "old.pt")  # checkpoints before per-device states


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_the_cuda_rng_state_round_trips():
    from shortcut_policy.train.loop import _rng_state, _set_rng_state

    device = torch.device("cuda")
    state = _rng_state(device)
    first = torch.randn(4, device=device)
    _set_rng_state(state, device, "x.pt")
    assert torch.equal(first, torch.randn(4, device=device))
