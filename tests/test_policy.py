"""Policy API: shapes, action queue, objectives behind one interface, input errors."""
from __future__ import annotations

import pytest
import torch

from shortcut_policy.policy import ObjectiveConfig, PolicyConfig, ShortcutPolicy

TINY = {"net": "unet1d", "net_kwargs": {"down_dims": [16, 32], "emb_dim": 32}}


def make_policy(kind="shortcut", **kw) -> ShortcutPolicy:
    cfg = PolicyConfig(obs_dim=5, action_dim=2, horizon=8, n_obs_steps=2, n_action_steps=4,
                       objective=ObjectiveConfig(kind=kind, **kw), **TINY)
    p = ShortcutPolicy(cfg)
    g = torch.Generator().manual_seed(0)
    p.normalizer.fit({"obs": torch.randn(100, 5, generator=g) * 10 + 3,
                      "action": torch.rand(100, 2, generator=g) * 512})
    return p


def batch(B=6, H=8):
    return {"obs": torch.randn(B, H, 5) * 10 + 3, "action": torch.rand(B, H, 2) * 512}


class CallCounter:
    def __init__(self, net):
        self.net, self.n, self.ds = net, 0, []

    def __call__(self, x, t, d, cond):
        self.n += 1
        self.ds.append(d.clone())
        return self.net(x, t, d, cond)


@pytest.mark.parametrize("kind", ["shortcut", "flow", "ddpm", "ddim"])
def test_loss_and_chunk_shapes(kind):
    p = make_policy(kind)
    loss, info = p.compute_loss(batch())
    loss.backward()
    assert torch.isfinite(loss) and "loss" in info
    obs = torch.randn(3, 2, 5)
    chunk = p.predict_action_chunk(obs, steps=2 if kind != "ddpm" else 4)
    assert chunk.shape == (3, 4, 2)
    seq = p.predict_action_sequence(obs, steps=1, generator=torch.Generator().manual_seed(0))
    assert seq.shape == (3, 8, 2)


@pytest.mark.parametrize("steps", [1, 2, 3, 8])
def test_predict_calls_the_network_once_per_step_and_flow_uses_fixed_d(steps):
    for kind in ("shortcut", "flow"):
        p = make_policy(kind)
        counter = CallCounter(p.net)
        orig = p.objective.sample
        p.objective.sample = lambda model, x0, n, cond, generator=None: orig(counter, x0, n, cond)
        p.predict_action_chunk(torch.randn(1, 2, 5), steps=steps)
        assert counter.n == steps
        if kind == "flow":
            assert all(torch.all(d == 1 / 128) for d in counter.ds)
        elif steps == 1:
            assert torch.all(counter.ds[0] == 1.0)


def test_chunk_starts_at_the_last_observed_step():
    p = make_policy()
    obs = torch.randn(2, 2, 5)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    seq = p.predict_action_sequence(obs, steps=1, generator=g1)
    chunk = p.predict_action_chunk(obs, steps=1, generator=g2)
    torch.testing.assert_close(chunk, seq[:, 1:5])


def test_select_action_replans_every_n_action_steps_and_reset():
    p = make_policy()
    calls = []
    orig = p.predict_action_chunk
    p.predict_action_chunk = lambda obs, steps=None: (calls.append(obs["obs"].clone()), orig(obs, steps))[1]
    first = torch.randn(2, 5)
    for i in range(9):
        a = p.select_action(first if i == 0 else torch.randn(2, 5))
        assert a.shape == (2, 2)
    assert len(calls) == 3  # at steps 0, 4, 8
    # after a reset the history is the first observation repeated
    torch.testing.assert_close(calls[0][:, 0], first)
    torch.testing.assert_close(calls[0][:, 1], first)
    p.reset()
    p.select_action(torch.randn(2, 5))
    assert len(calls) == 4


def test_actions_come_back_in_raw_units():
    p = make_policy()
    act = p.predict_action_chunk(torch.randn(64, 2, 5), steps=4)
    # normalized samples from an untrained network stay near [-1, 1] -> near the [0, 512] action range
    assert act.mean().item() > 50


def test_ema_teacher_network_builds_the_targets():
    p = make_policy("shortcut", consistency_fraction=0.5)
    teacher = make_policy("shortcut", consistency_fraction=0.5)
    n_calls = []
    teacher.net.register_forward_hook(lambda *a: n_calls.append(1))
    own = []
    p.net.register_forward_hook(lambda *a: own.append(1))
    for _ in range(3):
        p.compute_loss(batch(B=8), teacher=teacher)
    assert len(n_calls) == 6 and len(own) == 3  # two half jumps per batch by the teacher only


def test_bad_inputs_are_named():
    p = make_policy()
    with pytest.raises(ValueError, match="batch\\['action'\\] must have shape"):
        p.compute_loss({"obs": torch.randn(2, 8, 5), "action": torch.randn(2, 7, 2)})
    with pytest.raises(KeyError, match="action"):
        p.compute_loss({"obs": torch.randn(2, 8, 5)})
    with pytest.raises(ValueError, match="NaN"):
        p.predict_action_chunk(torch.full((1, 2, 5), float("nan")))
    with pytest.raises(ValueError, match="shape"):
        p.predict_action_chunk(torch.randn(1, 2, 4))
    with pytest.raises(ValueError, match="horizon"):
        PolicyConfig(horizon=8, n_obs_steps=2, n_action_steps=8)
    with pytest.raises(ValueError, match="objective.kind"):
        ObjectiveConfig(kind="gan")
    with pytest.raises(ValueError, match="objective.parameterization"):
        ObjectiveConfig(parameterization="epsilon")
    with pytest.raises(ValueError, match="applies to kind shortcut or flow"):
        ObjectiveConfig(kind="ddpm", parameterization="endpoint")
    with pytest.raises(ValueError, match="consistency_weight"):
        ObjectiveConfig(consistency_weight=-1.0)
    with pytest.raises(ValueError, match="objective.loss_space"):
        ObjectiveConfig(loss_space="x0")
    with pytest.raises(ValueError, match="has its own loss"):
        ObjectiveConfig(kind="ddim", loss_space="endpoint")  # would otherwise be ignored without a word


@pytest.mark.parametrize("kind, param", [("shortcut", "endpoint"), ("flow", "endpoint"), ("shortcut", "landing")])
def test_endpoint_policy_one_call_returns_the_network_output(kind, param):
    """An endpoint-parameterized policy's one-call chunk is the network's data estimate, unnormalized:
    the initial noise does not pass through the sample."""
    p = make_policy(kind, parameterization=param).eval()
    loss, _ = p.compute_loss(batch())
    loss.backward()
    assert torch.isfinite(loss)

    class Fixed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.full((1,), 0.25))

        def forward(self, x, t, d, cond):
            return self.w.expand_as(x)

    p.net = Fixed()
    obs = batch(B=3)["obs"][:, :2]
    a = p.predict_action_sequence(obs, steps=1, generator=torch.Generator().manual_seed(0))
    b = p.predict_action_sequence(obs, steps=1, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, p.normalizer.unnormalize("action", torch.full((3, 8, 2), 0.25)))


def test_noise_scale_scales_the_initial_noise_only():
    p = make_policy("shortcut").eval()
    seen = []

    class Identity(torch.nn.Module):  # velocity 0: the chunk is the initial noise, unnormalized
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x, t, d, cond):
            seen.append(x.clone())
            return torch.zeros_like(x)

    p.net = Identity()
    obs = batch(B=3)["obs"][:, :2]
    full = p.predict_action_sequence(obs, steps=1, generator=torch.Generator().manual_seed(4))
    p.set_noise_scale(0.5)
    half = p.predict_action_sequence(obs, steps=1, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(seen[1], seen[0] * 0.5)
    mid = p.normalizer.unnormalize("action", torch.zeros(1, 1, 2))
    torch.testing.assert_close(half - mid, (full - mid) * 0.5, atol=1e-3, rtol=1e-4)  # raw units ~500
    p.set_noise_scale(0)
    zero = p.predict_action_sequence(obs, steps=1)
    torch.testing.assert_close(zero, mid.expand_as(zero))
    for bad in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="noise_scale"):
            p.set_noise_scale(bad)
