"""Sampler and dyadic schedule: exact grids, exact call counts, exact integration of known fields."""
from __future__ import annotations

import pytest
import torch

from shortcut_policy.core import sample, step_schedule
from shortcut_policy.core.schedule import dyadic_step_sizes


class Counting:
    """Constant velocity field c that records every call."""

    def __init__(self, c: torch.Tensor):
        self.c, self.calls = c, []

    def __call__(self, x, t, d, cond):
        self.calls.append((t.clone(), d.clone()))
        return self.c.expand_as(x)


@pytest.mark.parametrize("steps", list(range(1, 129)))
def test_schedule_sums_to_one_with_dyadic_jumps(steps):
    jumps = step_schedule(steps, 128)
    assert len(jumps) == steps and sum(jumps) == 128
    assert all(j & (j - 1) == 0 for j in jumps)  # every jump is a trained dyadic size
    assert jumps == sorted(jumps, reverse=True)


def test_schedule_examples_and_errors():
    assert step_schedule(3, 128) == [64, 32, 32]
    assert step_schedule(4, 8) == [2, 2, 2, 2]
    assert dyadic_step_sizes(4) == [1.0, 0.5, 0.25]
    for bad in (0, 129):
        with pytest.raises(ValueError, match="steps must be in 1..128"):
            step_schedule(bad, 128)
    with pytest.raises(ValueError, match="power of two"):
        step_schedule(2, 96)


@pytest.mark.parametrize("steps", [1, 2, 3, 4, 7, 8, 16, 32, 64, 100, 128])
def test_sampler_calls_network_exactly_n_times_on_the_grid(steps):
    c = torch.tensor([[0.5, -2.0]], dtype=torch.float64)
    f = Counting(c)
    x0 = torch.randn(3, 2, dtype=torch.float64)
    x1 = sample(f, x0, steps)
    assert len(f.calls) == steps
    # constant field: Euler is exact for every N
    torch.testing.assert_close(x1, x0 + c, rtol=0, atol=1e-12)
    ts = [float(t[0]) for t, _ in f.calls]
    ds = [float(d[0]) for _, d in f.calls]
    assert ts[0] == 0.0 and abs(ts[-1] + ds[-1] - 1.0) < 1e-12
    for a, b, da in zip(ts, ts[1:], ds):
        assert abs(a + da - b) < 1e-12  # each call starts where the last jump ended
    assert all((t * 128).is_integer() for t in ts)


def test_sampler_fixed_d_and_any_shape():
    f = Counting(torch.zeros(1, 1, 1, 1, dtype=torch.float64))
    x0 = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    out = sample(f, x0, 4, fixed_d=1 / 128)
    assert out.shape == x0.shape
    assert all(torch.all(d == 1 / 128) for _, d in f.calls)


def test_sampler_point_oracle_lands_on_the_point_for_every_budget():
    """For data concentrated at x*, the exact average velocity is (x* - x)/(1 - t) for every d."""
    xstar = torch.tensor([1.5, -0.25], dtype=torch.float64)

    def oracle(x, t, d, cond):
        return (xstar - x) / (1 - t)[:, None]

    x0 = torch.randn(5, 2, dtype=torch.float64)
    for steps in (1, 2, 3, 5, 64, 128):
        torch.testing.assert_close(sample(oracle, x0, steps), xstar.expand(5, 2), rtol=0, atol=1e-10)


def test_sampler_rejects_wrong_output_shape():
    with pytest.raises(ValueError, match="model returned shape"):
        sample(lambda x, t, d, c: x[:, :1], torch.zeros(2, 3), 1)


def test_default_step_counts_stop_at_what_the_sampler_can_take():
    from shortcut_policy.core.schedule import DYADIC_COUNTS, dyadic_counts
    from shortcut_policy.deploy.budget import DYADIC_STEPS

    assert dyadic_counts(16) == [1, 2, 4, 8, 16]
    assert dyadic_counts(100) == [1, 2, 4, 8, 16, 32, 64]  # DDIM over 100 training timesteps
    assert dyadic_counts(128) == list(DYADIC_COUNTS)
    assert DYADIC_STEPS == DYADIC_COUNTS  # the torch-free deployment copy agrees with the core one
