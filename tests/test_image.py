"""Image model: guidance math, the flow-level-only rule, data loading errors, FD, and a tiny
train -> checkpoint -> resume -> sample -> evaluate run through the shared training loop."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from shortcut_policy.core.guidance import guided_velocity
from shortcut_policy.core.objective import ShortcutObjective
from shortcut_policy.image import ImageModelConfig, ShortcutImageModel
from shortcut_policy.image.data import ImageDataError, load_folder, load_mnist, load_npz, make_image_dataset
from shortcut_policy.image.eval import (SmallCNN, evaluate_image_model, frechet_distance, gaussian_stats,
                                        train_classifier)
from shortcut_policy.image.run import load_image_model, run_image_training
from shortcut_policy.train.run_dir import RunDirError

K = 3  # classes of the toy field; the null class is K
M = 8  # smallest step 1/M in these tests


def label_field(x, t, d, labels):
    """A toy velocity field that is constant per class: v = label + 1 everywhere (null class -> K + 1)."""
    return (labels.to(x.dtype) + 1).view(-1, *([1] * (x.ndim - 1))).expand_as(x).clone()


def null_of(labels):
    return torch.full_like(labels, K)


def _xtdy(B=4, d=1 / M):
    return (torch.randn(B, 1, 2, 2, dtype=torch.float64), torch.zeros(B, dtype=torch.float64),
            torch.full((B,), d, dtype=torch.float64), torch.arange(B) % K)


# ---------------------------------------------------------------------------------------- guidance
def test_guidance_scale_identities():
    x, t, d, y = _xtdy()
    assert guided_velocity(label_field, 1.0, null_of) is label_field  # scale 1: no extra call at all
    v0 = guided_velocity(label_field, 0.0, null_of)(x, t, d, y)
    assert torch.equal(v0, label_field(x, t, d, null_of(y)))  # scale 0: the unconditional field
    w = 2.5
    vw = guided_velocity(label_field, w, null_of)(x, t, d, y)
    vc, vu = label_field(x, t, d, y), label_field(x, t, d, null_of(y))
    assert torch.allclose(vw, vu + w * (vc - vu))
    # a null request stays unconditional whatever the scale
    assert torch.equal(guided_velocity(label_field, w, null_of)(x, t, d, null_of(y)), vu)


def test_guidance_only_at_flow_level():
    x, t, _, y = _xtdy(6)
    d = torch.tensor([1 / M, 1 / 2, 1 / M, 1.0, 1 / 4, 1 / M], dtype=torch.float64)
    v = guided_velocity(label_field, 3.0, null_of, only_at_d=1 / M)(x, t, d, y)
    vc, vu = label_field(x, t, d, y), label_field(x, t, d, null_of(y))
    flow = d == 1 / M
    assert torch.allclose(v[flow], (vu + 3.0 * (vc - vu))[flow])
    assert torch.equal(v[~flow], vc[~flow])


def test_guidance_baked_into_teacher_target_only_at_smallest_level():
    obj = ShortcutObjective(max_steps=M, consistency_fraction=0.5)
    teacher = guided_velocity(label_field, 2.0, null_of, only_at_d=1 / M)
    x, t, _, y = _xtdy()
    vc, vu = label_field(x, t, t, y), label_field(x, t, t, null_of(y))
    # half jumps at the flow level: the target is the guided field
    tgt = obj.consistency_target(teacher, x, t, torch.full_like(t, 1 / M), y)
    assert torch.allclose(tgt, vu + 2.0 * (vc - vu))
    # half jumps above the flow level: the teacher is a shortcut already (guidance baked in), not re-guided
    tgt = obj.consistency_target(teacher, x, t, torch.full_like(t, 1 / 4), y)
    assert torch.equal(tgt, vc)


def _tiny_model(kind="shortcut", **kw) -> ShortcutImageModel:
    obj = {"kind": kind, "max_inference_steps": M, **({"consistency_fraction": 0.5} if kind == "shortcut" else {})}
    cfg = ImageModelConfig(channels=1, height=8, width=8, num_classes=kw.pop("num_classes", K), net="dit",
                           net_kwargs={"patch_size": 4, "hidden_size": 16, "depth": 1, "num_heads": 2},
                           objective=obj, **kw)
    return ShortcutImageModel(cfg)


def _spy(model: ShortcutImageModel) -> list:
    """Record (training mode, d, labels) of every network call."""
    calls = []
    model.net.register_forward_hook(lambda m, args, out: calls.append((m.training, args[2].clone(), args[3].clone())))
    return calls


@pytest.mark.parametrize("smallest", [True, False])
def test_compute_loss_guides_teacher_only_at_flow_level(smallest):
    # all consistency targets at 2d = 2/M (teacher half jumps at the flow level) or all at 2d = 1
    model = _tiny_model(class_dropout=0.0, cfg_scale=2.0)
    level = model.objective.n_levels - 1 if smallest else 0
    model.objective.sample_levels = lambda n, generator=None: torch.full((n,), level, dtype=torch.long)
    calls = _spy(model)
    batch = {"image": torch.rand(16, 1, 8, 8) * 2 - 1, "label": torch.arange(16) % K}
    loss, info = model.compute_loss(batch)
    loss.backward()
    assert info["consistency_share"] == 0.5
    teacher_calls = [c for c in calls if not c[0]]
    assert len(teacher_calls) == 2  # two half jumps, each one batched (conditional + null) call
    nulls = [(d, lab) for _, d, lab in teacher_calls if (lab == K).any()]
    if smallest:
        assert len(nulls) == 2 and all(torch.allclose(d[lab == K], torch.tensor(1 / M)) for d, lab in nulls)
    else:
        assert not nulls


def test_label_dropout_reaches_the_net():
    model = _tiny_model(class_dropout=0.5)
    calls = _spy(model)
    model.compute_loss({"image": torch.zeros(64, 1, 8, 8), "label": torch.zeros(64, dtype=torch.long)})
    train_labels = [lab for training, _, lab in calls if training][0]
    assert 10 < (train_labels == K).sum() < 54


def test_sampler_guides_only_at_flow_level():
    model = _tiny_model(cfg_scale=2.0).eval()
    calls = _spy(model)
    model.sample(2, num_inference_steps=4, labels=torch.tensor([0, 1]))
    assert len(calls) == 4 and all((lab != K).all() for _, _, lab in calls)  # larger jumps: guidance baked in
    calls.clear()
    model.sample(2, num_inference_steps=M, labels=torch.tensor([0, 1]))
    assert len(calls) == M and all((lab == K).sum() == 2 for _, _, lab in calls)  # flow level: guided
    # a flow-matching model is always at the flow level (d fixed to 1/M): guided at every step
    flow = _tiny_model("flow", cfg_scale=2.0).eval()
    calls = _spy(flow)
    flow.sample(2, num_inference_steps=2, labels=torch.tensor([0, 1]))
    assert len(calls) == 2 and all((lab == K).sum() == 2 for _, _, lab in calls)


def test_sample_same_noise_deterministic_and_unconditional():
    model = _tiny_model()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    noise = torch.randn(3, 1, 8, 8)
    a = model.sample(num_inference_steps=2, labels=torch.tensor([0, 1, 2]), noise=noise)
    assert torch.equal(a, model.sample(num_inference_steps=2, labels=torch.tensor([0, 1, 2]), noise=noise))
    assert model.sample(num_inference_steps=2, noise=noise).shape == (3, 1, 8, 8)  # labels None: unconditional
    uncond = _tiny_model(num_classes=0)
    loss, _ = uncond.compute_loss({"image": torch.zeros(4, 1, 8, 8)})
    assert torch.isfinite(loss)
    with pytest.raises(ValueError, match="unconditional"):
        uncond.sample(num_inference_steps=1, labels=torch.tensor([1]), noise=noise[:1])


def test_config_errors():
    with pytest.raises(ValueError, match="'shortcut', 'flow' or 'meanflow', got 'ddpm'"):
        ImageModelConfig(objective={"kind": "ddpm"})
    with pytest.raises(ValueError, match="class_dropout"):
        ImageModelConfig(class_dropout=1.5)
    with pytest.raises(ValueError, match="image_model.net"):
        ImageModelConfig(net="unet")
    with pytest.raises(ValueError, match="batch\\['image'\\] must have shape"):
        _tiny_model().compute_loss({"image": torch.zeros(2, 1, 9, 9), "label": torch.zeros(2, dtype=torch.long)})


# ---------------------------------------------------------------------------------------- data
def _write_npz(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


def test_npz_loading_and_errors(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (10, 28, 28), dtype=np.uint8)
    y = np.arange(10) % 10
    p = _write_npz(tmp_path / "m.npz", x_train=x, y_train=y, x_test=x[:4], y_test=y[:4])
    ds = load_mnist(p, "train")
    assert len(ds) == 10 and ds.shape == (1, 28, 28) and ds.num_classes == 10
    item = ds[3]
    assert item["image"].dtype == torch.float32 and item["label"].item() == 3
    assert -1.0 <= ds.images.min() and ds.images.max() <= 1.0
    assert torch.allclose(ds.images[0, 0], torch.from_numpy(x[0] / 127.5 - 1).float(), atol=1e-6)
    assert len(load_mnist(p, "test")) == 4

    with pytest.raises(ImageDataError, match="missing key"):
        load_npz(p, "images", "y_train")
    with pytest.raises(FileNotFoundError):
        load_mnist(tmp_path / "nope.npz")
    bad = _write_npz(tmp_path / "nan.npz", a=np.full((3, 4, 4), np.nan, np.float32), b=np.zeros(3, np.int64))
    with pytest.raises(ImageDataError, match="NaN"):
        load_npz(bad, "a", "b")
    bad = _write_npz(tmp_path / "shape.npz", a=np.zeros((3, 4), np.uint8), b=np.zeros(3, np.int64))
    with pytest.raises(ImageDataError, match="must have shape"):
        load_npz(bad, "a", "b")
    bad = _write_npz(tmp_path / "labels.npz", a=np.zeros((3, 4, 4), np.uint8), b=np.zeros(2, np.int64))
    with pytest.raises(ImageDataError, match="labels must have shape"):
        load_npz(bad, "a", "b")
    bad = _write_npz(tmp_path / "range.npz", a=np.full((3, 4, 4), 7.0, np.float32), b=np.zeros(3, np.int64))
    with pytest.raises(ImageDataError, match="in \\[0, 1\\]"):
        load_npz(bad, "a", "b")
    small = _write_npz(tmp_path / "small.npz", x_train=np.zeros((3, 8, 8), np.uint8), y_train=np.zeros(3, np.int64))
    with pytest.raises(ImageDataError, match="28x28"):
        load_mnist(small)
    pickled = tmp_path / "obj.npz"
    np.savez(pickled, a=np.array([{"x": 1}], dtype=object), b=np.zeros(1))
    with pytest.raises(ImageDataError, match="unpickling"):
        load_npz(pickled, "a", "b")
    # channels-last RGB floats in [0, 1]
    rgb = _write_npz(tmp_path / "rgb.npz", a=rng.random((5, 6, 8, 3)).astype(np.float32), b=np.arange(5))
    assert load_npz(rgb, "a", "b").shape == (3, 6, 8)


def test_folder_loading_and_errors(tmp_path):
    from PIL import Image

    for k, name in enumerate(["cat", "dog"]):
        (tmp_path / "data" / name).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.full((6, 5), 100 * k + i, np.uint8)).save(tmp_path / "data" / name / f"{i}.png")
    ds = load_folder(tmp_path / "data")
    assert len(ds) == 4 and ds.shape == (1, 6, 5) and ds.class_names == ["cat", "dog"]
    assert ds.labels.tolist() == [0, 0, 1, 1]
    assert torch.allclose(ds.images[2], torch.full((1, 6, 5), 100 / 127.5 - 1))
    assert len(make_image_dataset({"kind": "folder", "path": str(tmp_path / "data")})) == 4

    (tmp_path / "empty").mkdir()
    with pytest.raises(ImageDataError, match="no class subfolders"):
        load_folder(tmp_path / "empty")
    (tmp_path / "empty" / "a").mkdir()
    with pytest.raises(ImageDataError, match="hold no image files"):
        load_folder(tmp_path / "empty")
    Image.fromarray(np.zeros((7, 5), np.uint8)).save(tmp_path / "data" / "dog" / "big.png")
    with pytest.raises(ImageDataError, match="differ in size"):
        load_folder(tmp_path / "data")
    with pytest.raises(ValueError, match="image_data.kind"):
        make_image_dataset({"kind": "lmdb"})


def test_shared_mnist_keys(shared_data):
    ds = load_mnist(shared_data / "mnist" / "mnist.npz", "test", limit=100)
    assert ds.shape == (1, 28, 28) and len(ds) == 100 and 0 <= ds.labels.min() and ds.labels.max() <= 9


# ---------------------------------------------------------------------------------------- metrics
def test_frechet_distance():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4000, 8))
    mu, s = gaussian_stats(a)
    assert abs(frechet_distance(mu, s, mu, s)) < 1e-8  # identical sets
    b = a + 0.5
    c = a + 2.0
    fd_b = frechet_distance(*gaussian_stats(b), mu, s)
    fd_c = frechet_distance(*gaussian_stats(c), mu, s)
    assert fd_b == pytest.approx(8 * 0.25, rel=1e-6) and fd_c > fd_b  # a pure shift adds |shift|^2
    # closed form: N(0, I) vs N(m, 4 I) in F dims -> |m|^2 + F (1 + 4 - 2 * 2)
    F = 5
    m = np.full(F, 0.3)
    assert frechet_distance(np.zeros(F), np.eye(F), m, 4 * np.eye(F)) == pytest.approx(F * 0.09 + F)


# ---------------------------------------------------------------------------------------- end to end
def _toy_npz(tmp_path: Path, n: int = 64) -> Path:
    """Two classes of 8x8 images: a bright left half or a bright right half."""
    x = np.zeros((n, 8, 8), np.uint8)
    y = np.arange(n) % 2
    x[y == 0, :, :4] = 255
    x[y == 1, :, 4:] = 255
    return _write_npz(tmp_path / "toy.npz", x_train=x, y_train=y, x_test=x[:16], y_test=y[:16])


def _run(tmp_path, data, steps, kind="shortcut"):
    return {"image_data": {"kind": "npz", "path": str(data), "image_key": "x_train", "label_key": "y_train",
                           "test_image_key": "x_test", "test_label_key": "y_test"},
            "image_model": {"net": "dit", "net_kwargs": {"patch_size": 4, "hidden_size": 16, "depth": 1,
                                                         "num_heads": 2}, "class_dropout": 0.1, "cfg_scale": 1.5},
            "objective": {"kind": kind, "max_inference_steps": M,
                          **({"consistency_fraction": 0.25} if kind == "shortcut" else {})},
            "train": {"steps": steps, "batch_size": 16, "lr": 1e-3, "warmup_steps": 1, "log_every": 2,
                      "ckpt_every": 2, "num_threads": 1, "progress": False, "device": "cpu"},
            "out_dir": str(tmp_path / f"run-{kind}"), "resume": True}


def test_train_resume_sample_evaluate(tmp_path):
    data = _toy_npz(tmp_path)
    out, metrics = run_image_training(_run(tmp_path, data, 6))
    assert np.isfinite(metrics["train/loss"]) and "train/loss_consistency" in metrics
    ckpt = out / "checkpoints" / "latest.pt"
    out, _ = run_image_training(_run(tmp_path, data, 6))  # same out_dir and run: resumes at its end
    with pytest.raises(RunDirError, match="train.steps: checkpoint 6, now 8"):  # a longer schedule is another run
        run_image_training(_run(tmp_path, data, 8))
    model, run = load_image_model(ckpt)
    assert run["checkpoint"]["step"] == 6 and model.cfg.num_classes == 2 and model.cfg.shape == (1, 8, 8)
    lines = [json.loads(s) for s in (out / "metrics.jsonl").read_text().splitlines()]
    assert [s["step"] for s in lines if "train/loss" in s] == [2, 4, 6]
    noise = torch.randn(4, 1, 8, 8)
    for steps in (1, 2, M):
        x = model.sample(num_inference_steps=steps, labels=torch.tensor([0, 1, 0, 1]), noise=noise)
        assert x.shape == (4, 1, 8, 8) and torch.isfinite(x).all()

    train = make_image_dataset(_run(tmp_path, data, 1)["image_data"], "train")
    test = make_image_dataset(_run(tmp_path, data, 1)["image_data"], "test")
    clf, acc = train_classifier(train, test, epochs=1, batch_size=16, log=False)
    assert isinstance(clf, SmallCNN) and 0.0 <= acc <= 1.0
    res = evaluate_image_model(model, clf, test, [1, 2], n_samples=16, real=train, log=False)
    assert set(res["steps"]) == {"1", "2"} and res["real_fd"] >= 0
    assert all(len(r["per_class_accuracy"]) == 2 and r["fd"] >= 0 for r in res["steps"].values())


def test_flow_baseline_trains_through_loop(tmp_path):
    out, metrics = run_image_training(_run(tmp_path, _toy_npz(tmp_path), 2, kind="flow"))
    assert metrics["train/consistency_share"] == 0.0
    model, _ = load_image_model(out / "checkpoints" / "latest.pt")
    assert model.objective.flow_only and model.net.time_emb.d_embedding == "none"


@pytest.mark.slow
def test_scripts_sample_and_eval(tmp_path):
    """The two entry points on a toy run: grids at several step counts, interpolation, results JSON + plot."""
    import subprocess
    import sys

    from shortcut_policy.image.eval import save_classifier

    data = _toy_npz(tmp_path)
    run = _run(tmp_path, data, 2)
    out, _ = run_image_training(run)
    ckpt = out / "checkpoints" / "latest.pt"
    train = make_image_dataset(run["image_data"], "train")
    clf, acc = train_classifier(train, make_image_dataset(run["image_data"], "test"), epochs=1, batch_size=16,
                                log=False)
    save_classifier(tmp_path / "clf.pt", clf, acc, {})
    repo = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, str(repo / "scripts" / "sample_image.py"), "--checkpoint", str(ckpt), "--num-inference-steps",
                    "1", "2", str(M), "--rows", "1", "--interp-points", "3", "--out", str(tmp_path / "grids")],
                   check=True, cwd=repo)
    assert {p.name for p in (tmp_path / "grids").iterdir()} == {"steps1.png", "steps2.png", f"steps{M}.png",
                                                                 "steps.png", "interp.png"}
    res_path = tmp_path / "results" / "toy-shortcut.json"
    subprocess.run([sys.executable, str(repo / "scripts" / "eval_image.py"), "--checkpoint", str(ckpt),
                    "--classifier", str(tmp_path / "clf.pt"), "--num-inference-steps", "1", "2", "--n-samples", "16",
                    "--task", "toy", "--out", str(res_path)], check=True, cwd=repo)
    res = json.loads(res_path.read_text())
    assert res["kind"] == "image" and res["task"] == "toy" and res["method"] == "shortcut" and res["train_steps"] == 2
    assert set(res["steps"]) == {"1", "2"} and all("fd" in v and "accuracy" in v for v in res["steps"].values())
    assert (tmp_path / "results" / "toy.png").is_file()
