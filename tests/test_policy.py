"""Policy API: shapes, action queue, objectives behind one interface, dict observations checked
against shape_meta, input errors."""
from __future__ import annotations

import pytest
import torch

from shortcut_policy.core.config import objective_config
from shortcut_policy.policy import PolicyConfig, ShortcutPolicy
from shortcut_policy.shape_meta import ShapeMetaError

TINY = {"net": "unet1d", "net_kwargs": {"down_dims": [16, 32], "emb_dim": 32}}
SHAPE_META = {"obs": {"state": {"shape": [5]}}, "action": {"shape": [2]}}


def make_policy(kind="shortcut", shape_meta=SHAPE_META, **kw) -> ShortcutPolicy:
    cfg = PolicyConfig(shape_meta=shape_meta, horizon=8, n_obs_steps=2, n_action_steps=4,
                       objective=objective_config({"kind": kind, **kw}), **TINY)
    p = ShortcutPolicy(cfg)
    g = torch.Generator().manual_seed(0)
    data = {k: torch.randn(100, *v["shape"], generator=g) * 10 + 3 for k, v in shape_meta["obs"].items()}
    p.normalizer.fit({**data, "action": torch.rand(100, 2, generator=g) * 512})
    return p


def O(x):  # noqa: E743  a (B, T, 5) tensor as the policy's observation dict
    return {"state": x}


def batch(B=6, H=8):
    return {"obs": O(torch.randn(B, 2, 5) * 10 + 3), "action": torch.rand(B, H, 2) * 512}


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
    obs = O(torch.randn(3, 2, 5))
    chunk = p.predict_action_chunk(obs, 2 if kind != "ddpm" else 4)
    assert chunk.shape == (3, 4, 2)
    seq = p.predict_action_sequence(obs, 1, generator=torch.Generator().manual_seed(0))
    assert seq.shape == (3, 8, 2)


@pytest.mark.parametrize("steps", [1, 2, 3, 8])
def test_predict_calls_the_network_once_per_step_and_flow_uses_fixed_d(steps):
    for kind in ("shortcut", "flow"):
        p = make_policy(kind)
        counter = CallCounter(p.net)
        orig = p.objective.sample
        p.objective.sample = lambda model, x0, n, cond, **kw: orig(counter, x0, n, cond)
        p.predict_action_chunk(O(torch.randn(1, 2, 5)), steps)
        assert counter.n == steps
        if kind == "flow":
            assert all(torch.all(d == 1 / 128) for d in counter.ds)
        elif steps == 1:
            assert torch.all(counter.ds[0] == 1.0)


def test_chunk_starts_at_the_last_observed_step():
    p = make_policy()
    obs = O(torch.randn(2, 2, 5))
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    seq = p.predict_action_sequence(obs, 1, generator=g1)
    chunk = p.predict_action_chunk(obs, 1, generator=g2)
    torch.testing.assert_close(chunk, seq[:, 1:5])


def test_select_action_replans_every_n_action_steps_and_reset():
    p = make_policy()
    calls = []
    orig = p.predict_action_chunk
    p.predict_action_chunk = lambda obs, n=None: (calls.append(obs["state"].clone()), orig(obs, n))[1]
    first = torch.randn(2, 5)
    for i in range(9):
        a = p.select_action(O(first if i == 0 else torch.randn(2, 5)))
        assert a.shape == (2, 2)
    assert len(calls) == 3  # at steps 0, 4, 8
    # after a reset the history is the first observation repeated
    torch.testing.assert_close(calls[0][:, 0], first)
    torch.testing.assert_close(calls[0][:, 1], first)
    p.reset()
    p.select_action(O(torch.randn(2, 5)))
    assert len(calls) == 4


def test_actions_come_back_in_raw_units():
    p = make_policy()
    act = p.predict_action_chunk(O(torch.randn(64, 2, 5)), 4)
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
        p.compute_loss({"obs": O(torch.randn(2, 2, 5)), "action": torch.randn(2, 7, 2)})
    with pytest.raises(KeyError, match="action"):
        p.compute_loss({"obs": O(torch.randn(2, 2, 5))})
    with pytest.raises(ValueError, match="NaN"):
        p.predict_action_chunk(O(torch.full((1, 2, 5), float("nan"))))
    with pytest.raises(ShapeMetaError, match=r"observation\['state'\] has shape \(1, 2, 4\), expected \(B, To, 5\)"):
        p.predict_action_chunk(O(torch.randn(1, 2, 4)))
    with pytest.raises(ValueError, match="horizon"):
        PolicyConfig(shape_meta=SHAPE_META, horizon=8, n_obs_steps=2, n_action_steps=8)
    with pytest.raises(ValueError, match="objective.kind"):
        objective_config({"kind": "gan"})
    with pytest.raises(ValueError, match=r"objective must name its kind .*\['max_inference_steps'\]"):
        objective_config({"max_inference_steps": 8})  # no silent default kind: only old checkpoints get one
    with pytest.raises(ValueError, match="objective.parameterization"):
        objective_config({"kind": "shortcut", "parameterization": "epsilon"})
    with pytest.raises(ValueError, match=r"\['parameterization'\] do not apply to kind 'ddpm' \(fields of kind flow, shortcut\)"):
        objective_config({"kind": "ddpm", "parameterization": "endpoint"})  # would otherwise be ignored
    with pytest.raises(ValueError, match="consistency_weight"):
        objective_config({"kind": "shortcut", "consistency_weight": -1.0})
    with pytest.raises(ValueError, match=r"\['loss_space'\] do not apply to kind 'shortcut'"):
        objective_config({"kind": "shortcut", "loss_space": "endpoint"})  # a removed option is named
    with pytest.raises(ValueError, match=r"num_inference_steps must be in 1..16"):
        p.predict_action_chunk(O(torch.randn(1, 2, 5)), 32)
    with pytest.raises(TypeError, match=r"num_inference_steps must be an int, got 2.5"):
        p.predict_action_chunk(O(torch.randn(1, 2, 5)), 2.5)
    with pytest.raises(ValueError, match=r"samples with \('shortcut',\), got sampler='ddim'"):
        p.predict_action_chunk(O(torch.randn(1, 2, 5)), 1, sampler="ddim")


def test_observation_keys_shapes_and_dtypes_are_checked_against_shape_meta():
    sm = {"obs": {"observation.state": {"shape": [5]}, "points": {"shape": [3, 2]}}, "action": {"shape": [2]}}
    p = make_policy(shape_meta=sm)
    good = {"observation.state": torch.randn(2, 2, 5), "points": torch.randn(2, 2, 3, 2)}
    assert p.predict_action_chunk(good, 1).shape == (2, 4, 2)
    # a LeRobot-style key travels, dots included (the normalizer escapes it, the state dict keeps it)
    assert any("observation%2Estate" in k for k in p.state_dict())
    with pytest.raises(ShapeMetaError, match=r"missing 'points' \(B, To, 3, 2\)"):
        p.predict_action_chunk({"observation.state": good["observation.state"]})
    with pytest.raises(ShapeMetaError, match=r"unknown \['image'\] \(this policy would drop them\)"):
        p.predict_action_chunk({**good, "image": torch.zeros(2, 2, 8, 8, 3, dtype=torch.uint8)})
    with pytest.raises(ShapeMetaError, match=r"observation\['points'\] has shape \(2, 2, 6\), expected \(B, To, 3, 2\)"):
        p.predict_action_chunk({**good, "points": torch.randn(2, 2, 6)})
    with pytest.raises(ShapeMetaError, match=r"low_dim key: expected a float array .* got dtype int64"):
        p.predict_action_chunk({**good, "points": torch.zeros(2, 2, 3, 2, dtype=torch.int64)})
    with pytest.raises(ShapeMetaError, match="must be a dict"):
        p.predict_action_chunk(torch.randn(2, 2, 5))
    with pytest.raises(ShapeMetaError, match="leading axes"):
        p.predict_action_chunk({**good, "points": torch.randn(3, 2, 3, 2)})
    with pytest.raises(ShapeMetaError, match="holds 1 steps"):
        p.predict_action_chunk({k: v[:, :1] for k, v in good.items()})
    # numpy float64 is accepted and cast
    np_obs = {k: v.double().numpy() for k, v in good.items()}
    torch.testing.assert_close(p.predict_action_chunk(np_obs, 1, torch.Generator().manual_seed(0)),
                               p.predict_action_chunk(good, 1, torch.Generator().manual_seed(0)))


def test_a_longer_history_uses_its_newest_steps_and_training_wants_exactly_n_obs_steps():
    p = make_policy()
    hist = torch.randn(2, 5, 5) * 10 + 3  # 5 steps, the policy sees 2
    a = p.predict_action_chunk(O(hist), 1, torch.Generator().manual_seed(0))
    b = p.predict_action_chunk(O(hist[:, -2:]), 1, torch.Generator().manual_seed(0))
    torch.testing.assert_close(a, b)
    with pytest.raises(ShapeMetaError, match="exactly n_obs_steps = 2"):
        p.compute_loss({"obs": O(hist), "action": torch.rand(2, 8, 2)})


def test_low_dim_encoder_concatenates_keys_per_step_in_shape_meta_order():
    sm = {"obs": {"b": {"shape": [3, 2]}, "a": {"shape": [1]}}, "action": {"shape": [2]}}
    p = make_policy(shape_meta=sm)
    obs = {"a": torch.arange(2.0).reshape(1, 2, 1), "b": torch.arange(12.0).reshape(1, 2, 3, 2)}
    cond = p.obs_encoder(obs)
    assert cond.tolist() == [[0, 1, 2, 3, 4, 5, 0, 6, 7, 8, 9, 10, 11, 1]]  # step 0: b then a; step 1: b then a


@pytest.mark.parametrize("kind, param", [("shortcut", "endpoint"), ("flow", "endpoint")])
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
    obs = batch(B=3)["obs"]
    a = p.predict_action_sequence(obs, 1, generator=torch.Generator().manual_seed(0))
    b = p.predict_action_sequence(obs, 1, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, p.normalizer.unnormalize("action", torch.full((3, 8, 2), 0.25)))


def test_example_inputs_are_made_on_the_policys_device():
    """The latency probes' inputs (``example_obs``, export's ``example_inputs``) live where the network
    does: on a GPU, host-made observations shifted by the device's normalizer stats raised a device
    mismatch after a whole evaluation had run. The meta device stands in for a GPU here (its tensors
    refuse to mix with host tensors just as CUDA's do)."""
    from shortcut_policy.deploy.export import example_inputs
    sm = {"obs": {"state": {"shape": [5]}, "keypoint": {"shape": [3, 2]}}, "action": {"shape": [2]}}
    p = make_policy(shape_meta=sm)
    host = p.example_obs(batch=3)
    assert host["state"].shape == (3, 2, 5) and host["keypoint"].shape == (3, 2, 3, 2)
    mean = p.normalizer.field("state").input_mean.float()
    assert torch.allclose(host["state"][0, 0], mean)  # at the fitted mean, not at zero
    obs, noise = example_inputs(p, batch=3)
    lo, hi = p.normalizer.field("state").input_min, p.normalizer.field("state").input_max
    assert ((obs["state"] >= lo) & (obs["state"] <= hi)).all() and noise.shape == (3, 8, 2)
    p.to("meta")
    for o in (p.example_obs(batch=3), example_inputs(p, batch=3)[0]):
        assert {k: (v.device.type, tuple(v.shape)) for k, v in o.items()} == {
            "state": ("meta", (3, 2, 5)), "keypoint": ("meta", (3, 2, 3, 2))}
    assert example_inputs(p, batch=3)[1].device.type == "meta"


def test_executed_actions_per_chunk_can_be_changed_for_deployment():
    p = make_policy()
    p.eval()
    obs = O(torch.randn(3, 2, 5) * 10 + 3)
    full = p.predict_action_chunk(obs, 1, generator=torch.Generator().manual_seed(0))
    p.set_n_action_steps(2)
    part = p.predict_action_chunk(obs, 1, generator=torch.Generator().manual_seed(0))
    assert full.shape == (3, 4, 2) and part.shape == (3, 2, 2)
    assert torch.equal(part, full[:, :2])  # the same chunk, fewer of its actions executed
    calls, orig = [], p.predict_action_chunk
    p.predict_action_chunk = lambda *a, **k: calls.append(1) or orig(*a, **k)  # count replans in closed loop
    for n_act in (2, 4):
        p.set_n_action_steps(n_act)
        calls.clear()
        for _ in range(8):
            p.select_action({"state": torch.randn(3, 5)})
        assert len(calls) == 8 // n_act
    with pytest.raises(ValueError, match="horizon .8. must cover n_obs_steps - 1 \\+ n_action_steps .9."):
        p.set_n_action_steps(8)


def test_the_default_objective_is_meanflow_and_a_config_saved_without_one_loads_as_the_shortcut_model(tmp_path):
    from shortcut_policy.checkpoint import save_weights

    assert PolicyConfig(shape_meta=SHAPE_META, **TINY).objective.kind == "meanflow"  # as configs/train.yaml
    p = make_policy("shortcut")
    saved = {k: v for k, v in p.cfg.to_dict().items() if k != "objective"}  # written before the option existed
    save_weights(tmp_path / "old.safetensors", p.state_dict(), {"policy_config": saved}, step=1)
    loaded, run = ShortcutPolicy.from_checkpoint(tmp_path / "old.safetensors")
    assert run["policy_config"]["objective"]["kind"] == "shortcut" and loaded.cfg.objective.kind == "shortcut"
    obs = O(torch.randn(3, 2, 5) * 10 + 3)
    want = p.eval().predict_action_chunk(obs, generator=torch.Generator().manual_seed(2))
    assert torch.equal(loaded.predict_action_chunk(obs, generator=torch.Generator().manual_seed(2)), want)
