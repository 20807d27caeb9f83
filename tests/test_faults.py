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
    ("batch_size", 2.5, "batch_size must be a whole number")])
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
    assert all(d.startswith("runs/pusht_lowdim-shortcut-") for d in dirs) and dirs[0] != dirs[1]


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


@pytest.mark.slow
def test_sigkill_at_random_moments_resumes_bit_identically(tmp_path):
    ref = _launch(tmp_path, tmp_path / "ref", 60, 2)
    assert ref.wait(timeout=300) == 0
    rng = np.random.default_rng(0)
    out = tmp_path / "run"
    for _ in range(4):
        proc = _launch(tmp_path, out, 60, 2)
        proc.stdout.readline()
        time.sleep(float(rng.uniform(0.2, 1.5)))  # now and then during a checkpoint write (one every 2 steps)
        proc.kill()
        proc.wait()
    final = _launch(tmp_path, out, 60, 2)
    assert final.wait(timeout=300) == 0, final.stderr.read()[-2000:]
    a, b = _final(tmp_path / "ref"), _final(out)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not list((out / "checkpoints").glob(".*.tmp"))


# ----------------------------------------------------------------------------- several processes
DDP_SCRIPT = textwrap.dedent("""
    import sys, torch
    sys.path.insert(0, {repo!r})
    from shortcut_policy.train.loop import TrainConfig, train

    class Toy(torch.nn.Module):  # a deterministic loss: the data-parallel arithmetic alone
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.lin = torch.nn.Linear(5, 2)

        def compute_loss(self, batch, teacher=None):
            loss = ((self.lin(batch["x"]) - batch["y"]) ** 2).mean()
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
    cfg = TrainConfig(steps=5, batch_size=16, lr=1e-2, warmup_steps=1, log_every=1, val_every=1, ckpt_every=5,
                      progress=False, device="cpu")
    train(model, Data(), cfg, sys.argv[1], {{"task": {{"name": "toy"}}}})
    import os
    if int(os.environ.get("RANK", "0")) == 0:
        torch.save(model.state_dict(), sys.argv[1] + "/final_weights.pt")
""")


def test_two_processes_with_half_batches_equal_one_process_with_the_whole(tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT.format(repo=str(REPO)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, str(script), str(tmp_path / "one")], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517",
                          str(script), str(tmp_path / "two")], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = _final(tmp_path / "one"), _final(tmp_path / "two")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert not torch.equal(a["lin.weight"], torch.nn.Linear(5, 2).weight)  # it trained
    state = load_checkpoint(tmp_path / "two" / "checkpoints" / "latest.pt")
    assert state["world_size"] == 2 and len(state["rng_ranks"]) == 2
    lines = (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 5  # rank 0 alone logs
