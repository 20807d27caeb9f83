"""MeanFlow: the identity's target in float64 on flows whose average velocity is known in closed form,
the objective's batch, and a policy trained and sampled with it."""
from __future__ import annotations

import math

import pytest
import torch

from shortcut_policy.core.config import MeanFlowConfig, make_objective, objective_config
from shortcut_policy.core.meanflow import MeanFlowObjective, identity_terms, meanflow_target


def _batch(n=7, dim=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = torch.rand(n, generator=g, dtype=torch.float64) * 0.6
    d = torch.rand(n, generator=g, dtype=torch.float64) * (1 - t)
    x = torch.randn(n, dim, generator=g, dtype=torch.float64)
    return x, t, d


def test_target_equals_the_true_average_velocity_of_a_time_only_flow():
    """v(x, t) = t: the average over [t, t + d] is t + d / 2."""
    x, t, d = _batch()
    u_true = lambda x, t, d: (t + d / 2)[:, None].expand_as(x)  # noqa: E731
    v = t[:, None].expand_as(x).clone()
    u, target = meanflow_target(u_true, x, t, d, v)
    assert torch.allclose(target, u, atol=1e-12) and torch.allclose(u, (t + d / 2)[:, None].expand_as(x))


@pytest.mark.parametrize("a", [-1.3, 0.7])
def test_target_equals_the_true_average_velocity_of_a_linear_flow(a):
    """v(x, t) = a x: x moves as x e^{a (tau - t)}, so u = x (e^{a d} - 1) / d (and a x at d = 0)."""
    x, t, d = _batch()
    d[0] = 0.0

    def u_true(x, t, d):
        ratio = torch.where(d > 0, torch.expm1(a * d) / torch.where(d > 0, d, 1.0), torch.full_like(d, a))
        return x * ratio[:, None]

    u, target = meanflow_target(u_true, x, t, d, a * x)
    assert torch.allclose(target, u, atol=1e-10)


def test_a_wrong_average_is_not_its_own_target():
    """The identity has teeth: the instantaneous velocity is not the average of a curved flow."""
    x, t, d = _batch()
    wrong = lambda x, t, d: (t + 0 * d)[:, None].expand_as(x)  # noqa: E731  (v at the start, for v(t) = t)
    u, target = meanflow_target(wrong, x, t, d, t[:, None].expand_as(x).clone())
    assert (target - u).abs().max() > 0.05


def test_identity_terms_split_the_bracket():
    """Each term is its own derivative, and together they rebuild meanflow_target's bracket."""
    x, t, d = _batch()
    a = torch.randn(3, 3, dtype=torch.float64)
    fn = lambda x, t, d: torch.tanh(x @ a) * (1 + t[:, None] ** 2) + 3 * d[:, None] ** 2  # noqa: E731
    v = torch.randn_like(x)
    u_out, parts = identity_terms(fn, x, t, d, v)
    torch.testing.assert_close(u_out, fn(x, t, d))
    torch.testing.assert_close(parts["du/dd"], (6 * d[:, None]).expand_as(x))
    torch.testing.assert_close(parts["du/dt"], torch.tanh(x @ a) * 2 * t[:, None])
    u, target = meanflow_target(fn, x, t, d, v)
    bracket = parts["v.du/dx"] + parts["du/dt"] - parts["du/dd"]
    torch.testing.assert_close(target, v + d[:, None] * bracket)


def test_times_intervals_and_config():
    obj = MeanFlowObjective(16, interval_fraction=0.25)
    t, d = obj.times(400, torch.Generator().manual_seed(0))
    assert ((t >= 0) & (t + d <= 1 + 1e-12)).all()
    assert (d > 0).sum() == 100 and (d[100:] == 0).all()
    assert obj.kind == "meanflow" and obj.samplers == ("meanflow",) and obj.default_inference_steps == 1
    assert obj.net_d_embedding == "unit" and obj.sweep_inference_steps() == [1, 2, 4, 8, 16]
    assert isinstance(make_objective({"kind": "meanflow"}), MeanFlowObjective)
    assert objective_config({"kind": "meanflow", "interval_fraction": 0.5}) == MeanFlowConfig(interval_fraction=0.5)
    with pytest.raises(ValueError, match="interval_fraction"):
        objective_config({"kind": "meanflow", "interval_fraction": 0.0})
    with pytest.raises(ValueError, match="do not apply to kind 'meanflow'"):
        objective_config({"kind": "meanflow", "consistency_weight": 4.0})


def test_grid_fraction_puts_that_share_of_the_intervals_on_the_sampler_grid():
    """grid_fraction = 0.5: half the interval rows are the cells a 1, 2, ..., M-step sampler steps
    through (d = 2^-j, every level drawn, t a multiple of d); the rest are logit-normal as before."""
    obj = MeanFlowObjective(16, interval_fraction=0.25, grid_fraction=0.5, grid_max_steps=None)
    t, d = obj.times(4000, torch.Generator().manual_seed(0))
    grid_t, grid_d = t[:500], d[:500]
    assert set(grid_d.tolist()) == {1.0, 0.5, 0.25, 0.125, 0.0625}  # every level, d = 1 included
    assert torch.equal(torch.remainder(grid_t, grid_d), torch.zeros(500, dtype=torch.float64))
    assert (grid_t + grid_d <= 1).all() and (grid_t[grid_d == 1.0] == 0).all()
    free_d = d[500:1000]
    assert ((free_d > 0) & (free_d < 1)).all() and len(set(free_d.tolist())) == 500  # continuous draws
    assert (d[1000:] == 0).all()
    # the paper's draws no grid rows, and the logit-normal almost never reaches a one-step interval
    t0, d0 = MeanFlowObjective(16, grid_fraction=0.0).times(4000, torch.Generator().manual_seed(0))
    assert (d0 > 0.9).sum() < 5 and (d[:500] == 1.0).sum() > 60
    assert objective_config({"kind": "meanflow", "grid_fraction": 0.5}).grid_fraction == 0.5
    assert make_objective({"kind": "meanflow", "grid_fraction": 0.5}).grid_fraction == 0.5
    with pytest.raises(ValueError, match="grid_fraction"):
        objective_config({"kind": "meanflow", "grid_fraction": 1.5})


def test_the_default_meanflow_recipe_trains_the_one_step_jump_on_two_half_jumps():
    """The default (yaml, typed config and class agree): half the interval rows are the one-step jump,
    trained on two half jumps; the image recipe keeps the measured grid-free MeanFlow."""
    from tests.test_configs import _compose

    want = {"grid_fraction": 0.5, "grid_target": "consistency", "grid_max_steps": 1}
    composed = _compose("train", ["objective=meanflow"])["objective"]
    for obj in (make_objective(composed), make_objective({"kind": "meanflow"}), MeanFlowObjective(16)):
        assert {k: obj.describe()[k] for k in want} == want
    t, d = make_objective(composed).times(400, torch.Generator().manual_seed(0))
    assert (t[:50] == 0).all() and (d[:50] == 1).all() and (d[50:100] < 1).all() and (d[100:] == 0).all()
    assert _compose("image", ["objective=meanflow_image"])["objective"]["grid_fraction"] == 0.0


def test_grid_max_steps_keeps_the_grid_rows_on_the_coarse_samplers_jumps():
    """grid_max_steps = 2: the grid rows are only the jumps of the 1- and 2-step samplers (d = 1 from 0,
    d = 1/2 from 0 or 1/2), both drawn; 1: every grid row is the one-step jump. Other values are refused."""
    t, d = MeanFlowObjective(16, interval_fraction=0.25, grid_fraction=0.5, grid_max_steps=2).times(
        4000, torch.Generator().manual_seed(0))
    assert set(zip(t[:500].tolist(), d[:500].tolist())) == {(0.0, 1.0), (0.0, 0.5), (0.5, 0.5)}
    assert ((d[500:1000] > 0) & (d[500:1000] < 1)).all() and (d[1000:] == 0).all()
    t, d = MeanFlowObjective(16, 0.25, grid_fraction=0.5, grid_max_steps=1).times(400, torch.Generator().manual_seed(1))
    assert (t[:50] == 0).all() and (d[:50] == 1).all()
    obj = make_objective({"kind": "meanflow", "grid_fraction": 0.5, "grid_max_steps": 4})
    assert obj.grid_max_steps == 4 and obj.describe()["grid_max_steps"] == 4
    assert make_objective({"kind": "meanflow", "grid_max_steps": None}).grid_max_steps == 16  # every level up to M
    for bad in (3, 32, 0, True, 2.0):
        with pytest.raises(ValueError, match="grid_max_steps"):
            objective_config({"kind": "meanflow", "grid_max_steps": bad})


def test_d_embedding_reaches_the_network_and_refuses_codes_not_smooth_in_d():
    obj = make_objective({"kind": "meanflow", "d_embedding": "unit"})
    assert obj.net_d_embedding == "unit" and obj.describe()["d_embedding"] == "unit"
    assert make_objective({"kind": "meanflow"}).net_d_embedding == "unit"  # the default
    with pytest.raises(ValueError, match="d_embedding"):
        objective_config({"kind": "meanflow", "d_embedding": "log2"})  # not defined at d = 0


def test_loss_runs_the_jvp_on_the_interval_rows_only_and_equals_the_whole_batch_target():
    obj = MeanFlowObjective(16, interval_fraction=0.25, grid_fraction=0.0)  # the paper's: every interval on the JVP
    w = torch.randn(3, 3, dtype=torch.float64)
    calls = []

    def net(x, t, d, cond):  # a smooth function of every input, conditioned per row
        calls.append(x.shape[0])
        return torch.tanh(x @ w) * (1 + t[:, None]) + d[:, None] ** 2 + cond

    x1, cond = torch.randn(8, 3, dtype=torch.float64), torch.randn(8, 3, dtype=torch.float64)
    loss, info = obj.loss(net, x1, cond, generator=torch.Generator().manual_seed(3))
    assert sorted(calls) == [2, 6] and info["interval_share"] == 0.25
    g = torch.Generator().manual_seed(3)  # the same draws, the target computed on the whole batch at once
    x0 = torch.randn(x1.shape, generator=g, dtype=x1.dtype)
    t, d = obj.times(8, g)
    x_t = (1 - t[:, None]) * x0 + t[:, None] * x1
    u, target = meanflow_target(lambda x, tt, dd: net(x, tt, dd, cond), x_t, t, d, x1 - x0)
    err = (u - target).pow(2).mean(1)
    assert torch.allclose(loss, (err / (err + 1e-3)).mean(), atol=1e-12)  # the paper's adaptive weight
    assert math.isclose(info["loss_flow"], err[2:].mean().item(), rel_tol=1e-9)  # raw errors are what is logged


def test_flow_weight_mean_weights_the_flow_rows_as_flow_matching_does():
    """flow_weight "mean": the d = 0 rows' squared errors divided by their batch mean (flow matching's loss, up
    to a held constant), the interval rows still each by its own error; the default divides every row by its own."""
    w = torch.randn(3, 3, dtype=torch.float64)

    def net(x, t, d, cond):
        return torch.tanh(x @ w) * (1 + t[:, None]) + d[:, None] ** 2 + cond

    x1, cond = torch.randn(8, 3, dtype=torch.float64), torch.randn(8, 3, dtype=torch.float64)
    losses = {}
    for fw in ("adaptive", "mean"):
        obj = make_objective({"kind": "meanflow", "interval_fraction": 0.25, "grid_fraction": 0.0, "flow_weight": fw})
        assert obj.describe()["flow_weight"] == fw
        losses[fw], _ = obj.loss(net, x1, cond, generator=torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    x0 = torch.randn(x1.shape, generator=g, dtype=x1.dtype)
    t, d = obj.times(8, g)
    x_t = (1 - t[:, None]) * x0 + t[:, None] * x1
    u, target = meanflow_target(lambda x, tt, dd: net(x, tt, dd, cond), x_t, t, d, x1 - x0)
    err = (u - target).pow(2).mean(1)
    scale = torch.cat([err[:2] + 1e-3, (err[2:].mean() + 1e-3).expand(6)])
    assert torch.allclose(losses["mean"], (err / scale).mean(), atol=1e-12)
    assert torch.allclose(losses["adaptive"], (err / (err + 1e-3)).mean(), atol=1e-12)
    assert not torch.allclose(losses["mean"], losses["adaptive"], atol=1e-6)
    assert MeanFlowConfig.PRE_OPTION_VALUES["flow_weight"] == "adaptive"  # what checkpoints before it trained with
    with pytest.raises(ValueError, match="flow_weight"):
        objective_config({"kind": "meanflow", "flow_weight": "mse"})


def test_sampler_feeds_the_true_jump():
    obj = MeanFlowObjective(8)
    seen = []

    def net(x, t, d, cond):
        seen.append((t[0].item(), d[0].item()))
        return torch.zeros_like(x)

    obj.sample(net, torch.zeros(2, 3), 2)
    assert seen == [(0.0, 0.5), (0.5, 0.5)]


def test_a_meanflow_policy_trains_and_acts():
    _trained_policy()


def _trained_policy():
    from shortcut_policy.policy import PolicyConfig, ShortcutPolicy

    cfg = PolicyConfig(shape_meta={"obs": {"s": {"shape": [4]}}, "action": {"shape": [2]}}, horizon=8, n_obs_steps=2,
                       n_action_steps=4, net="unet1d", net_kwargs={"down_dims": [16, 32], "kernel_size": 3, "n_groups": 4},
                       objective={"kind": "meanflow"})
    p = ShortcutPolicy(cfg)
    p.normalizer.fit({"s": torch.randn(50, 4), "action": torch.randn(50, 2)})
    batch = {"obs": {"s": torch.randn(8, 2, 4)}, "action": torch.randn(8, 8, 2)}
    opt = torch.optim.Adam(p.parameters(), lr=1e-3)
    losses = []
    for _ in range(3):
        loss, info = p.compute_loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(info["loss"])
    assert all(math.isfinite(v) for v in losses) and info["interval_share"] == 0.25
    assert p.net.time_emb.d_embedding == "unit"
    p.eval()
    assert p.predict_action_chunk({"s": torch.randn(3, 2, 4)}).shape == (3, 4, 2)
    return p


def test_a_meanflow_checkpoint_from_before_d_embedding_loads_with_the_linear_code(tmp_path):
    from shortcut_policy.checkpoint import save_weights
    from shortcut_policy.policy import ShortcutPolicy

    p = _trained_policy()
    cfg = p.cfg.to_dict()
    added = ("d_embedding", "grid_fraction", "grid_target", "grid_max_steps")  # options newer than the checkpoint
    old = {**cfg, "objective": {k: v for k, v in cfg["objective"].items() if k not in added}}
    lin = ShortcutPolicy(type(p.cfg).from_dict({**old, "objective": {**old["objective"], "d_embedding": "linear"}}))
    lin.load_state_dict(p.state_dict())
    save_weights(tmp_path / "old.safetensors", lin.state_dict(), {"policy_config": old}, step=3)
    loaded, run = ShortcutPolicy.from_checkpoint(tmp_path / "old.safetensors")
    assert loaded.net.time_emb.d_embedding == "linear" and run["policy_config"]["objective"]["d_embedding"] == "linear"
    # and it trained without grid rows (the grid options' defaults changed after it)
    assert {k: run["policy_config"]["objective"][k] for k in added[1:]} == {
        "grid_fraction": 0.0, "grid_target": "identity", "grid_max_steps": None}
    assert loaded.objective.grid_fraction == 0.0 and loaded.objective.grid_max_steps == 16
    obs = {"s": torch.randn(3, 2, 4)}
    g = torch.Generator().manual_seed(1)
    want = lin.eval().predict_action_chunk(obs, generator=g)
    assert torch.equal(loaded.predict_action_chunk(obs, generator=torch.Generator().manual_seed(1)), want)


def test_a_meanflow_policy_exports_and_matches_eager(tmp_path):
    from shortcut_policy.deploy.export import export_policy, verify_export

    p = _trained_policy()
    path = tmp_path / "mf.pt"
    assert export_policy(p, path, num_inference_steps=1)["objective"] == "meanflow"
    report = verify_export(p, path, batch_sizes=(1, 3), trials=2)
    assert report["ok"] and report["max_abs_err_normalized"] < 1e-5, report


def test_a_meanflow_dit_trains_and_samples():
    from shortcut_policy.image import ImageModelConfig, ShortcutImageModel

    cfg = ImageModelConfig(channels=1, height=8, width=8, num_classes=2, net="dit",
                           net_kwargs={"patch_size": 4, "hidden_size": 16, "depth": 1, "num_heads": 2},
                           objective={"kind": "meanflow", "max_inference_steps": 8})
    model = ShortcutImageModel(cfg)
    batch = {"image": torch.randn(6, 1, 8, 8), "label": torch.tensor([0, 1, 0, 1, 0, 1])}
    loss, info = model.compute_loss(batch)
    loss.backward()
    assert math.isfinite(info["loss"]) and all(p.grad is not None for p in model.net.parameters() if p.requires_grad)
    x = model.sample(n=2, num_inference_steps=1, labels=torch.tensor([0, 1]))
    assert x.shape == (2, 1, 8, 8) and torch.isfinite(x).all()


def test_grid_target_consistency_trains_the_grid_rows_on_two_half_jumps_of_the_teacher():
    """grid_target = "consistency": the grid rows' target is the teacher's two half jumps (no JVP there),
    the other interval rows keep the identity's JVP target and the d = 0 rows v; the teacher is the
    online network unless one is given, and its condition is the batch's unless one is given."""
    obj = MeanFlowObjective(16, interval_fraction=0.5, grid_fraction=0.5, grid_target="consistency", grid_max_steps=None)
    assert obj.describe()["grid_target"] == "consistency"
    w = torch.randn(3, 3, dtype=torch.float64)

    def net(x, t, d, cond):
        return torch.tanh(x @ w) * (1 + t[:, None]) + d[:, None] ** 2 + cond

    x1, cond = torch.randn(16, 3, dtype=torch.float64), torch.randn(16, 3, dtype=torch.float64)
    teacher_calls = []

    def teacher(x, t, d, c):
        teacher_calls.append((x.shape[0], d.clone()))
        return 2 * net(x, t, d, c)

    loss, info = obj.loss(net, x1, cond, teacher=teacher, generator=torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)  # the same draws, each target built by hand
    x0 = torch.randn(x1.shape, generator=g, dtype=x1.dtype)
    t, d = obj.times(16, g)
    x_t = (1 - t[:, None]) * x0 + t[:, None] * x1
    nc, n = 4, 8  # 16 rows: 8 with an interval, half of those on the grid
    assert [c[0] for c in teacher_calls] == [nc, nc] and torch.equal(teacher_calls[0][1], d[:nc] / 2)
    h = (d[:nc] / 2)[:, None]
    v1 = teacher(x_t[:nc], t[:nc], d[:nc] / 2, cond[:nc])
    v2 = teacher(x_t[:nc] + h * v1, t[:nc] + d[:nc] / 2, d[:nc] / 2, cond[:nc])
    target = torch.cat([(v1 + v2) / 2, meanflow_target(lambda x, tt, dd: net(x, tt, dd, cond[nc:n]), x_t[nc:n],
                                                       t[nc:n], d[nc:n], (x1 - x0)[nc:n])[1], (x1 - x0)[n:]])
    err = (net(x_t, t, d, cond) - target).pow(2).mean(1)
    # the adaptive weight, except that the two-half-jump rows are weighted 4x against the flow rows' mean error
    scale = torch.cat([((err[n:].mean() + 1e-3) / 4).expand(nc), err[nc:] + 1e-3])
    assert torch.allclose(loss, (err / scale).mean(), atol=1e-12)
    assert not torch.allclose(loss, (err / (err + 1e-3)).mean(), atol=1e-6)
    assert torch.allclose(info["loss_consistency"], err[:nc].mean()) and torch.allclose(info["loss_interval"], err[nc:n].mean())
    # the grid rows of the one-step interval (t = 0, d = 1) are among them: what the identity never reaches
    assert (d[:nc] > 0).all() and torch.equal(torch.remainder(t[:nc], d[:nc]), torch.zeros(nc, dtype=torch.float64))
    # without a teacher the online network builds the targets: the loss differs from the 2x teacher's
    loss_online, _ = obj.loss(net, x1, cond, generator=torch.Generator().manual_seed(5))
    assert not torch.allclose(loss_online, loss)
    # the identity on the grid rows needs no teacher call
    teacher_calls.clear()
    MeanFlowObjective(16, 0.5, grid_fraction=0.5, grid_target="identity").loss(net, x1, cond, teacher=teacher, generator=torch.Generator().manual_seed(5))
    assert teacher_calls == []
    assert make_objective({"kind": "meanflow", "grid_fraction": 0.5, "grid_target": "consistency"}).grid_target == "consistency"
    with pytest.raises(ValueError, match="grid_target"):
        objective_config({"kind": "meanflow", "grid_target": "jvp"})
