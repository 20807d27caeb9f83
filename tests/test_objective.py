"""Invariants of the shortcut objective (float64, tiny tensors), per the objective note."""
from __future__ import annotations

import math

import pytest
import torch

from shortcut_policy.core import ShortcutObjective

M = 128
LEVELS = int(math.log2(M))


class Recorder:
    """Wraps a velocity function and records the (x, t, d) it is called with."""

    def __init__(self, fn):
        self.fn, self.calls = fn, []

    def __call__(self, x, t, d, cond):
        self.calls.append((x.detach().clone(), t.detach().clone(), d.detach().clone()))
        return self.fn(x, t, d, cond)


def test_consistency_target_equals_true_average_velocity_of_a_linear_ode():
    """dx/dt = a x: the average velocity over a jump d is x (e^{ad} - 1) / d; two half jumps of it
    must give exactly the one full jump, at every level."""
    a = -0.7
    obj = ShortcutObjective(M, 0.25)

    def avg_vel(x, t, d, cond):
        d_ = d.view(-1, 1)
        return x * torch.expm1(a * d_) / d_

    for k in range(LEVELS):
        d_full = 2.0 ** -k
        x = torch.randn(4, 3, dtype=torch.float64)
        t = torch.zeros(4, dtype=torch.float64)
        d_half = torch.full((4,), d_full / 2, dtype=torch.float64)
        target = obj.consistency_target(avg_vel, x, t, d_half, None)
        torch.testing.assert_close(target, avg_vel(x, t, 2 * d_half, None), rtol=1e-12, atol=1e-12)


def test_consistency_target_time_dependent_field():
    """dx/dt = 2t: average velocity over [t, t+d] is 2t + d."""
    obj = ShortcutObjective(M, 0.25)

    def avg_vel(x, t, d, cond):
        return (2 * t + d).view(-1, 1).expand_as(x)

    t = torch.tensor([0.0, 0.25, 0.5], dtype=torch.float64)
    d_half = torch.tensor([0.5, 0.125, 0.25], dtype=torch.float64)
    x = torch.randn(3, 2, dtype=torch.float64)
    target = obj.consistency_target(avg_vel, x, t, d_half, None)
    torch.testing.assert_close(target, avg_vel(x, t, 2 * d_half, None))


def test_constant_field_target_is_its_own_jump():
    obj = ShortcutObjective(M, 0.5)
    c = torch.tensor([0.3, -1.2], dtype=torch.float64)
    f = lambda x, t, d, cond: c.expand_as(x)  # noqa: E731
    x = torch.randn(6, 2, dtype=torch.float64)
    tgt = obj.consistency_target(f, x, torch.zeros(6, dtype=torch.float64), torch.full((6,), 0.25, dtype=torch.float64), None)
    torch.testing.assert_close(tgt, c.expand(6, 2))


def test_loss_is_zero_for_the_exact_shortcut_of_a_point_mass_and_positive_otherwise():
    xstar = torch.tensor([0.8, -0.4, 2.0], dtype=torch.float64)
    oracle = lambda x, t, d, cond: (xstar - x) / (1 - t).view(-1, 1)  # noqa: E731
    x1 = xstar.expand(64, 3).clone()
    obj = ShortcutObjective(M, 0.5)
    loss, info = obj.loss(oracle, x1, generator=torch.Generator().manual_seed(0))
    assert loss.item() < 1e-20 and info["loss_consistency"] < 1e-20 and info["consistency_share"] > 0
    wrong = lambda x, t, d, cond: (xstar - x) / (1 - t).view(-1, 1) + 0.1 * d.view(-1, 1)  # noqa: E731
    assert obj.loss(wrong, x1, generator=torch.Generator().manual_seed(0))[0].item() > 1e-6


def test_endpoint_parameterization_point_mass_and_one_call():
    """A network that returns x* everywhere is the exact endpoint model of a point mass at x*: zero
    loss at every level, and every step count lands on x* exactly (one call returns its output)."""
    xstar = torch.tensor([0.8, -0.4, 2.0], dtype=torch.float64)
    endpoint = lambda x, t, d, cond: xstar.expand_as(x)  # noqa: E731
    obj = ShortcutObjective(M, 0.5, parameterization="endpoint")
    loss, info = obj.loss(endpoint, xstar.expand(64, 3).clone(), generator=torch.Generator().manual_seed(0))
    assert loss.item() < 1e-20 and info["consistency_share"] > 0
    x0 = torch.randn(5, 3, dtype=torch.float64)
    for n in (1, 2, 4, 8, 128, 3):
        torch.testing.assert_close(obj.sample(endpoint, x0, n), xstar.expand(5, 3), rtol=0, atol=1e-12)
    # the same network read as a velocity is a constant field: one call lands at x0 + x*
    torch.testing.assert_close(ShortcutObjective(M, 0.5).sample(endpoint, x0, 1), x0 + xstar)


def test_endpoint_loss_is_the_error_of_the_data_estimate():
    """Flow part, endpoint network returning 0: x^ = 0, so the loss is mean |x1|^2 (the target x^ of the
    straight path is x1), whatever t was drawn; the velocity error would weight it by 1 / (1 - t)^2."""
    x1 = torch.randn(32, 4, dtype=torch.float64)
    rec = Recorder(lambda x, t, d, cond: torch.zeros_like(x))
    loss, _ = ShortcutObjective(M, 0.0, parameterization="endpoint").loss(rec, x1, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(loss, x1.pow(2).mean(), rtol=1e-12, atol=1e-12)
    (_, t, _), = rec.calls
    assert t.max() > 0.5  # late t drawn, so an unweighted velocity loss would differ
    with pytest.raises(ValueError, match="parameterization"):
        ShortcutObjective(M, 0.25, parameterization="landing")  # removed: it lost (docs/pusht.md)


def test_flow_part_target_is_x1_minus_x0_on_aligned_grid():
    obj = ShortcutObjective(M, 0.0)
    rec = Recorder(lambda x, t, d, cond: torch.zeros_like(x))
    x1 = torch.randn(32, 4, dtype=torch.float64)
    loss, info = obj.loss(rec, x1, generator=torch.Generator().manual_seed(3))
    (x_t, t, d), = rec.calls
    assert torch.all(d == 1 / M)
    assert torch.all((t * M) == (t * M).round()) and t.min() >= 0 and t.max() <= (M - 1) / M
    x0 = (x_t - t[:, None] * x1) / (1 - t[:, None])
    # zero prediction: the loss is the mean squared target, so the target is x1 - x0
    torch.testing.assert_close(loss, (x1 - x0).pow(2).mean(), rtol=1e-12, atol=1e-12)
    assert info["loss_consistency"] == 0.0 and info["consistency_share"] == 0.0


def test_consistency_part_grid_levels_and_teacher_use():
    torch.manual_seed(0)
    obj = ShortcutObjective(M, 0.5)
    student = Recorder(lambda x, t, d, cond: torch.zeros_like(x))
    teacher = Recorder(lambda x, t, d, cond: torch.ones_like(x))
    seen_levels = set()
    g = torch.Generator().manual_seed(1)
    for _ in range(50):
        student.calls.clear(); teacher.calls.clear()
        obj.loss(student, torch.randn(8, 2, dtype=torch.float64), teacher=teacher, generator=g)
        (_, t, d), = student.calls
        nb = int((d > 1 / M).sum())
        assert len(teacher.calls) == (2 if nb else 0)
        if not nb:
            continue
        (x_a, t_a, dh_a), (x_b, t_b, dh_b) = teacher.calls
        torch.testing.assert_close(dh_a * 2, d[:nb])  # half jumps of the student's step
        torch.testing.assert_close(t_b, t_a + dh_a)  # the second half starts at t + d (not t + 2d)
        torch.testing.assert_close(x_b, x_a + dh_a[:, None])  # teacher's own first jump
        full = d[:nb]
        assert torch.all(t[:nb] + full <= 1 + 1e-12)
        ratio = t[:nb] / full
        assert torch.all(ratio == ratio.round())  # t on the grid of the target step
        assert torch.all(d[nb:] == 1 / M)
        seen_levels.update((-torch.log2(full)).round().int().tolist())
    # per-example level sampling: small batches still see every level, not only d = 1
    assert seen_levels == set(range(LEVELS))


def test_small_batches_keep_the_consistency_share_on_average():
    obj = ShortcutObjective(M, 0.25)
    g = torch.Generator().manual_seed(0)
    counts = [obj.n_consistency(2, g) for _ in range(4000)]
    assert abs(sum(counts) / (2 * len(counts)) - 0.25) < 0.02


def test_levels_are_drawn_uniformly():
    obj = ShortcutObjective(M, 0.25)
    j = obj.sample_levels(20000, torch.Generator().manual_seed(0))
    assert j.min() == 0 and j.max() == LEVELS - 1
    shares = torch.bincount(j, minlength=LEVELS).float() / len(j)
    assert (shares - 1 / LEVELS).abs().max() < 0.02


def test_targets_carry_no_gradient_and_online_teacher_default():
    net = torch.nn.Linear(3, 3).double()
    calls = []

    def model(x, t, d, cond):
        calls.append(torch.is_grad_enabled())
        return net(x)

    obj = ShortcutObjective(8, 0.5)
    loss, _ = obj.loss(model, torch.randn(16, 3, dtype=torch.float64), generator=torch.Generator().manual_seed(0))
    loss.backward()
    # two teacher calls (online weights under no-grad) then the student call with grad
    assert calls == [False, False, True]
    assert net.weight.grad is not None


def test_condition_is_indexed_for_the_teacher():
    obj = ShortcutObjective(8, 0.5)
    seen = []

    def model(x, t, d, cond):
        seen.append(cond["obs"].shape[0])
        return torch.zeros_like(x)

    cond = {"obs": torch.randn(10, 5)}
    for _ in range(5):
        seen.clear()
        obj.loss(model, torch.randn(10, 2), cond=cond, generator=torch.Generator().manual_seed(0))
        if len(seen) == 3:
            assert seen[0] == seen[1] < 10 and seen[2] == 10
            break
    else:
        pytest.fail("no consistency examples drawn")


def test_consistency_weight_scales_only_the_consistency_examples():
    """Same draws, weight 1 vs 5: the loss is (sum of flow errors + w * sum of consistency errors) / B."""
    x1 = torch.randn(16, 2, dtype=torch.float64)
    # the model predicts 1 everywhere; the teacher (the same function) makes every consistency
    # target 1 too, so consistency errors are 0 and flow errors are (1 - (x1 - x0))^2
    ones = lambda x, t, d, cond: torch.ones_like(x)  # noqa: E731
    const = lambda x, t, d, cond: torch.full_like(x, 0.5) * (d.view(-1, 1) < 1 / 64) + 2.0 * (d.view(-1, 1) >= 1 / 64)  # noqa: E731,E501
    for model in (ones, const):
        l1, i1 = ShortcutObjective(M, 0.5).loss(model, x1, generator=torch.Generator().manual_seed(3))
        l5, i5 = ShortcutObjective(M, 0.5, consistency_weight=5.0).loss(model, x1, generator=torch.Generator().manual_seed(3))
        i1, i5 = ({k: float(v) for k, v in i.items()} for i in (i1, i5))  # logged values: 0-dim tensors, numbers
        nb = round(i1["consistency_share"] * 16)
        assert 0 < nb < 16 and i5["consistency_share"] == i1["consistency_share"]
        assert i5["loss_flow"] == pytest.approx(i1["loss_flow"]) and i5["loss_consistency"] == pytest.approx(i1["loss_consistency"])
        expect = ((16 - nb) * i1["loss_flow"] + 5.0 * nb * i1["loss_consistency"]) / 16
        assert l5.item() == pytest.approx(expect, rel=1e-12)
        assert l1.item() == pytest.approx(((16 - nb) * i1["loss_flow"] + nb * i1["loss_consistency"]) / 16, rel=1e-12)
    # with the step-dependent model the consistency errors are not 0, so the weight shows
    assert i1["loss_consistency"] > 0 and l5.item() > l1.item()


@pytest.mark.parametrize("kw, msg", [({"consistency_fraction": 1.0}, "consistency_fraction"),
                                     ({"consistency_weight": 0.0}, "consistency_weight"),
                                     ({"max_steps": 100}, "power of two")])
def test_bad_settings_are_named(kw, msg):
    with pytest.raises(ValueError, match=msg):
        ShortcutObjective(**kw)
