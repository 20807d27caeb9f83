"""Offline step-count diagnostics (shortcut_policy.eval.consistency) on a policy with a known flow."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from shortcut_policy.eval.consistency import (by_step_count, format_diagnostics, meanflow_terms, pick_windows,
                                              step_diagnostics, target_range, velocity_error_by_step)
from shortcut_policy.core.config import objective_config
from shortcut_policy.policy import PolicyConfig, ShortcutPolicy


class Contract(nn.Module):
    """Velocity -x: Euler with N steps maps x0 to x0 (1 - 1/N)^N, so each step count lands elsewhere."""

    def __init__(self):
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(1))  # the policy reads its device from a parameter

    def forward(self, x, t, d, cond):
        return -x


def policy_with(net: nn.Module, kind: str = "flow") -> ShortcutPolicy:
    cfg = PolicyConfig(shape_meta={"obs": {"s": {"shape": [3]}}, "action": {"shape": [2]}}, horizon=4,
                       n_obs_steps=2, n_action_steps=2,
                       objective=objective_config({"kind": kind}), net="unet1d",
                       net_kwargs={"down_dims": [8, 16], "emb_dim": 16})
    p = ShortcutPolicy(cfg)
    g = torch.Generator().manual_seed(0)
    p.normalizer.fit({"s": torch.randn(50, 3, generator=g), "action": torch.rand(50, 2, generator=g) * 100})
    p.net = net
    return p


def windows(n=5):
    g = torch.Generator().manual_seed(1)
    return [{"obs": {"s": torch.randn(2, 3, generator=g)}, "action": torch.rand(4, 2, generator=g) * 100}
            for _ in range(n)]


def test_known_flow_gives_the_expected_distances():
    p, ws, K = policy_with(Contract()), windows(), 4
    res = step_diagnostics(p, ws, steps_list=[1, 2], ref_steps=8, n_noise=K, seed=3)
    x0 = torch.randn((len(ws) * K, 4, 2), generator=torch.Generator().manual_seed(3))
    un = lambda x: p.normalizer.unnormalize("action", x).reshape(len(ws), K, 4, 2)  # noqa: E731
    ref = un(x0 * (1 - 1 / 8) ** 8)
    one = un(torch.zeros_like(x0))  # one Euler step of -x from x0 lands exactly on 0
    two = un(x0 * 0.25)
    r = res["steps"]
    assert r["1"]["to_ref"] == pytest.approx(float(((one - ref) ** 2).mean().sqrt()), rel=1e-5)
    assert r["2"]["to_ref"] == pytest.approx(float(((two - ref) ** 2).mean().sqrt()), rel=1e-5)
    assert r["8"]["to_ref"] == 0.0
    by_index = ((one - ref) ** 2).mean(dim=(0, 1, 3)).sqrt()  # per chunk position
    assert r["1"]["to_ref_by_index"] == pytest.approx(by_index.tolist(), abs=1e-4) and len(by_index) == 4
    assert float(torch.tensor(r["1"]["to_ref_by_index"]).pow(2).mean().sqrt()) == pytest.approx(r["1"]["to_ref"], rel=1e-3)
    assert r["1"]["spread"] == pytest.approx(0.0, abs=1e-4)  # every noise collapses to one chunk
    assert r["2"]["spread"] < r["8"]["spread"]
    demo = torch.stack([w["action"][:4] for w in ws])[:, None]
    assert r["2"]["to_demo"] == pytest.approx(float(((two - demo) ** 2).mean().sqrt()), rel=1e-5)
    assert r["2"]["to_demo_best"] <= r["2"]["to_demo"]
    # the N-step map is x0 (1 - 1/N)^N in normalized units, so its error against the 8-step sample
    # holds exactly ((1 - 1/N)^N - (7/8)^8) of the initial noise
    assert r["1"]["noise_leak"] == pytest.approx(-(7 / 8) ** 8, rel=1e-5)
    assert r["2"]["noise_leak"] == pytest.approx(0.25 - (7 / 8) ** 8, rel=1e-5)
    assert r["8"]["noise_leak"] == 0.0
    second_diff = lambda x: x[..., 2:, :] - 2 * x[..., 1:-1, :] + x[..., :-2, :]  # noqa: E731
    assert r["2"]["roughness"] == pytest.approx(float(second_diff(two).pow(2).mean().sqrt()), rel=1e-5)
    assert r["1"]["roughness"] == pytest.approx(0.0, abs=1e-3)  # one constant chunk per window: no jitter
    assert res["demo_roughness"] == pytest.approx(float(second_diff(demo).pow(2).mean().sqrt()), rel=1e-5)
    table = format_diagnostics({"m": res})
    assert "| m | 1 |" in table and f"{r['1']['noise_leak']:+.3f}" in table


def test_checkpoints_with_different_finest_counts_share_one_file():
    """One diagnose run over a max_steps-8 and a max_steps-16 checkpoint: each is sampled up to its own
    finest count and the results file lists a count under the checkpoints that have it."""
    p, ws = policy_with(Contract()), windows(3)
    res = {"m8": step_diagnostics(p, ws, steps_list=[1, 8], ref_steps=8, n_noise=2),
           "m16": step_diagnostics(p, ws, steps_list=[1, 8, 16], ref_steps=16, n_noise=2)}
    doc = by_step_count(res)
    assert list(doc) == ["1", "8", "16"]
    assert set(doc["1"]) == set(doc["8"]) == {"m8", "m16"} and set(doc["16"]) == {"m16"}
    assert doc["8"]["m8"]["to_ref"] == 0.0 and doc["8"]["m16"]["to_ref"] > 0.0
    assert doc["16"]["m16"] is res["m16"]["steps"]["16"]


def test_bad_input_is_named():
    p = policy_with(Contract())
    with pytest.raises(ValueError, match="at least one"):
        step_diagnostics(p, [], [1])
    with pytest.raises(ValueError, match="n_noise"):
        step_diagnostics(p, windows(), [1], n_noise=1)

    class Nan(Contract):
        def forward(self, x, t, d, cond):
            return torch.full_like(x, float("nan"))

    with pytest.raises(FloatingPointError, match="non-finite"):
        step_diagnostics(policy_with(Nan()), windows(), [1], ref_steps=2)
    with pytest.raises(ValueError, match="no windows"):
        pick_windows([], 3)
    assert len(pick_windows(list(range(10)), 4)) == 4 and len(pick_windows(list(range(3)), 9)) == 3


class Const(Contract):
    def __init__(self, c):
        super().__init__()
        self.c = c

    def forward(self, x, t, d, cond):
        return torch.full_like(x, self.c)


def test_target_range_counts_what_clipping_would_touch():
    wide = target_range(policy_with(Const(5.0)), windows(), threshold=4.0, n_noise=16)
    assert set(wide["levels"]) == {f"1/{2 ** j}" for j in range(7)}  # 2d = 1 .. 2/128
    assert all(r["target_beyond"] == 1.0 and r["target_max"] == 5.0 for r in wide["levels"].values())
    # level 2d = 1 starts at t = 0: x_mid = x0 + 2.5, beyond 4 with probability P(x0 > 1.5) + P(x0 < -6.5)
    assert 0.03 < wide["levels"]["1/1"]["mid_beyond"] < 0.11
    narrow = target_range(policy_with(Const(1.0)), windows(), threshold=4.0)
    assert all(r["target_beyond"] == 0.0 for r in narrow["levels"].values())
    # flow targets x1 - x0 (x1 normalized to [-1, 1]) are reported for scale, never 0 or 1 at |.| > 1
    assert 0.2 < target_range(policy_with(Const(1.0)), windows(), threshold=1.0)["flow_target_beyond"] < 0.9
    with pytest.raises(ValueError, match="threshold"):
        target_range(policy_with(Const(1.0)), windows(), threshold=0)


class SteepInD(Contract):
    """u = -x + 5 d: du/dd = 5 everywhere, du/dt = 0, v.du/dx = -v."""

    def forward(self, x, t, d, cond):
        return -x + 5 * d.view(-1, 1, 1)


def test_meanflow_terms_measure_each_derivative():
    terms = meanflow_terms(policy_with(SteepInD(), "meanflow"), windows(8), n_noise=16)
    for where in ("interval_rows", "one_step"):
        row = terms[where]
        assert row["du/dd"] == pytest.approx(5.0) and row["du/dt"] == 0.0
        assert row["v.du/dx"] == pytest.approx(row["v"], rel=1e-5)
    assert terms["interval_rows"]["rows"] == 32  # a quarter of 8 x 16 draws has an interval
    # at t = 0, d = 1 the target's extra part is -v - 5 and the target itself v + (-v - 5) = -5
    assert terms["one_step"]["target"] == pytest.approx(5.0) and terms["one_step"]["rows"] == 128
    with pytest.raises(ValueError, match="MeanFlow"):
        meanflow_terms(policy_with(Contract()), windows())


def test_velocity_error_by_step_matches_the_closed_form_of_known_velocities():
    p, ws = policy_with(Const(0.0)), windows(8)
    x1 = p.normalizer.normalize("action", torch.stack([w["action"] for w in ws]))
    m2 = float(x1.pow(2).mean())
    # u = 0: the error is E|x1 - x0|^2 = E x1^2 + 1 at every step
    flat = velocity_error_by_step(p, ws, steps=4, n_noise=64)
    assert [r["t"] for r in flat] == [0.0, 0.25, 0.5, 0.75] and all(r["d"] == 0.25 for r in flat)
    assert all(r["rows"] == 8 * 64 for r in flat)
    for r in flat:
        assert r["error"] == pytest.approx(m2 + 1, rel=0.1)
    # u = -x_t: the error is E|t x0 - (1 + t) x1|^2 = t^2 + (1 + t)^2 E x1^2, rising with t
    rising = velocity_error_by_step(policy_with(Contract()), ws, steps=8, n_noise=64)
    for r in rising:
        t = r["t"]
        assert r["error"] == pytest.approx(t * t + (1 + t) ** 2 * m2, rel=0.1)
    assert rising[-1]["error"] > 2 * rising[0]["error"]
    assert len(velocity_error_by_step(p, ws)) == p.objective.max_steps  # the objective's finest sampler by default
