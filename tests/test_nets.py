"""Action-chunk networks: shapes, conditioning on t/d/cond, batch independence, errors, export."""
from __future__ import annotations

import warnings

import pytest
import torch

from shortcut_policy.nets import ACTION_NETS, ActionTransformer, ConditionalUnet1D, make_action_net

A, COND, T = 3, 5, 8  # action_dim, cond_dim, horizon of the tiny nets


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny nets run fastest on one thread; extra threads only contend on a shared CI machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_unet(**kw) -> ConditionalUnet1D:
    args = dict(action_dim=A, cond_dim=COND, down_dims=(8, 16, 32), kernel_size=3, n_groups=4, emb_dim=16)
    return ConditionalUnet1D(**{**args, **kw})


def tiny_transformer(**kw) -> ActionTransformer:
    args = dict(action_dim=A, cond_dim=COND, horizon=T, n_cond_tokens=2, n_layer=2, n_head=2, n_emb=16)
    return ActionTransformer(**{**args, **kw})


def cond_shape(net: torch.nn.Module, B: int) -> tuple[int, ...]:
    if isinstance(net, ActionTransformer) and net.n_cond_tokens > 1:
        return (B, net.n_cond_tokens, net.cond_dim)
    return (B, net.cond_dim)


def inputs(net: torch.nn.Module, B: int = 3, horizon: int = T, dtype=torch.float64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, horizon, net.action_dim, generator=g, dtype=dtype)  # (B, T, A)
    t = torch.rand(B, generator=g, dtype=dtype)  # (B,)
    d = 2.0 ** -torch.randint(0, 8, (B,), generator=g).to(dtype)  # (B,) dyadic
    cond = torch.randn(cond_shape(net, B), generator=g, dtype=dtype) if net.cond_dim else None
    return x, t, d, cond


def perturbed(net: torch.nn.Module, scale: float = 0.1, seed: int = 1) -> torch.nn.Module:
    """Add noise to every parameter: zero-initialised layers otherwise hide every input at init."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return net


BUILDERS = {"unet": tiny_unet, "transformer": tiny_transformer}


@pytest.fixture(params=sorted(BUILDERS))
def kind(request) -> str:
    return request.param


def build(kind: str, **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    return perturbed(BUILDERS[kind](**kw).double()).eval()


@pytest.mark.parametrize("B", [1, 4])
def test_output_shape(kind, B):
    net = build(kind)
    out = net(*inputs(net, B))
    assert out.shape == (B, T, A)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("horizon", [4, 12, 16])
def test_unet_takes_every_multiple_of_its_downsampling(horizon):
    net = build("unet")  # 3 levels: horizon must be a multiple of 4
    assert net(*inputs(net, 2, horizon)).shape == (2, horizon, A)


@pytest.mark.parametrize("horizon", [2, 6, 10])
def test_unet_rejects_a_horizon_it_cannot_halve(horizon):
    net = build("unet")
    with pytest.raises(ValueError, match="multiple of 4"):
        net(*inputs(net, 2, horizon))


def test_gradients_reach_every_parameter(kind):
    net = build(kind).train()
    net(*inputs(net)).pow(2).sum().backward()
    dead = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead, f"no gradient reached {dead}"


@pytest.mark.parametrize("d_embedding", ["log2"])
def test_d_changes_the_output(kind, d_embedding):
    net = build(kind, d_embedding=d_embedding)
    x, t, d, cond = inputs(net)
    out_fine = net(x, t, torch.full_like(d, 1 / 128), cond)
    out_coarse = net(x, t, torch.full_like(d, 1 / 2), cond)
    # every example must see d, not just the batch on average
    assert ((out_fine - out_coarse).abs().amax(dim=(1, 2)) > 1e-6).all()


def test_d_is_ignored_without_a_d_embedding(kind):
    net = build(kind, d_embedding="none")
    x, t, d, cond = inputs(net)
    out = net(x, t, torch.full_like(d, 1 / 128), cond)
    assert torch.equal(out, net(x, t, torch.full_like(d, 1 / 2), cond))
    assert torch.equal(out, net(x, t, None, cond))


def test_d_is_required_with_a_d_embedding(kind):
    net = build(kind)
    x, t, _, cond = inputs(net)
    with pytest.raises(ValueError, match="pass d"):
        net(x, t, None, cond)


def test_t_changes_the_output(kind):
    net = build(kind)
    x, t, d, cond = inputs(net)
    delta = net(x, t, d, cond) - net(x, (t + 0.25) % 1.0, d, cond)
    assert (delta.abs().amax(dim=(1, 2)) > 1e-6).all()


def test_cond_changes_the_output(kind):
    net = build(kind)
    x, t, d, cond = inputs(net)
    delta = net(x, t, d, cond) - net(x, t, d, cond + 1.0)
    assert (delta.abs().amax(dim=(1, 2)) > 1e-6).all()


def test_every_observation_token_is_attended():
    net = build("transformer")
    x, t, d, cond = inputs(net)
    out = net(x, t, d, cond)
    for s in range(net.n_cond_tokens):
        moved = cond.clone()
        moved[:, s] += 1.0
        assert (net(x, t, d, moved) - out).abs().amax() > 1e-6, f"token {s} is ignored"


def test_examples_do_not_depend_on_each_other(kind):
    net = build(kind)
    x, t, d, cond = inputs(net, B=4)
    out = net(x, t, d, cond)  # (4, T, A)
    for i in range(4):
        alone = net(x[i:i + 1], t[i:i + 1], d[i:i + 1], cond[i:i + 1])
        torch.testing.assert_close(alone[0], out[i], rtol=0, atol=1e-10)
    # change example 1 entirely: examples 0, 2 and 3 stay put
    x2, t2, d2, cond2 = x.clone(), t.clone(), d.clone(), cond.clone()
    x2[1] += 1.0
    t2[1] = (t2[1] + 0.5) % 1.0
    d2[1] = 1.0 if d2[1] < 1 else 0.5
    cond2[1] -= 1.0
    out2 = net(x2, t2, d2, cond2)
    keep = [0, 2, 3]
    torch.testing.assert_close(out2[keep], out[keep], rtol=0, atol=1e-10)
    assert (out2[1] - out[1]).abs().amax() > 1e-6


def test_transformer_output_is_zero_at_init():
    net = tiny_transformer()  # adaLN-Zero: gates and head start at zero
    assert torch.equal(net(*inputs(net, dtype=torch.float32)), torch.zeros(3, T, A))


def test_transformer_takes_one_condition_vector_as_one_token():
    net = build("transformer", n_cond_tokens=1)
    x, t, d, cond = inputs(net)  # cond (B, COND)
    torch.testing.assert_close(net(x, t, d, cond), net(x, t, d, cond[:, None]), rtol=0, atol=0)


@pytest.mark.parametrize("kind_", ["unet", "transformer"])
def test_unconditional_nets(kind_):
    net = build(kind_, cond_dim=0)
    x, t, d, cond = inputs(net)
    assert cond is None and net(x, t, d).shape == x.shape
    with pytest.raises(ValueError, match="cond_dim=0"):
        net(x, t, d, torch.zeros(3, COND, dtype=x.dtype))


BAD_CALLS = {
    # name: (change to the good inputs, words the error must contain)
    "x 2-D": (lambda x, t, d, c: (x[0], t, d, c), "x must have shape"),
    "x wrong action_dim": (lambda x, t, d, c: (x[..., :2], t, d, c), "action_dim=3"),
    "t (B, 1)": (lambda x, t, d, c: (x, t[:, None], d, c), "t must have shape"),
    "t wrong batch": (lambda x, t, d, c: (x, t[:2], d, c), "t must have shape"),
    "t integer": (lambda x, t, d, c: (x, (t * 100).long(), d, c), "float"),
    "d wrong batch": (lambda x, t, d, c: (x, t, d[:2], c), "d must have shape"),
    "cond missing": (lambda x, t, d, c: (x, t, d, None), "needs cond"),
    "cond wrong width": (lambda x, t, d, c: (x, t, d, c[..., :2]), "cond must have shape"),
    "cond wrong batch": (lambda x, t, d, c: (x, t, d, c[:2]), "cond must have shape"),
}


@pytest.mark.parametrize("case", sorted(BAD_CALLS))
def test_bad_inputs_raise(kind, case):
    change, words = BAD_CALLS[case]
    net = build(kind)
    with pytest.raises(ValueError, match=words):
        net(*change(*inputs(net)))


def test_transformer_rejects_a_wrong_horizon_or_token_count():
    net = build("transformer")  # horizon 8, 2 observation tokens
    x, t, d, cond = inputs(net)
    with pytest.raises(ValueError, match="horizon=8"):
        net(torch.cat([x, x], dim=1), t, d, cond)
    with pytest.raises(ValueError, match="n_cond_tokens=2"):
        net(x, t, d, cond[:, 0])  # one vector for a two-token net is ambiguous
    with pytest.raises(ValueError, match="n_cond_tokens=2"):
        net(x, t, d, torch.cat([cond, cond], dim=1))


def test_unet_rejects_per_step_condition_tokens():
    net = build("unet")
    x, t, d, cond = inputs(net)
    with pytest.raises(ValueError, match="flatten"):
        net(x, t, d, cond[:, None])


@pytest.mark.parametrize("build_bad, words", [
    (lambda: tiny_unet(n_groups=3), "multiple of n_groups"),
    (lambda: tiny_unet(kernel_size=4), "odd"),
    (lambda: tiny_unet(down_dims=()), "at least one level"),
    (lambda: tiny_unet(d_embedding="cubic"), "d_embedding"),
    (lambda: tiny_transformer(n_emb=18, n_head=4), "multiple of n_head"),
    (lambda: tiny_transformer(horizon=0), "horizon"),
    (lambda: tiny_transformer(p_drop=1.0), "p_drop"),
    (lambda: tiny_transformer(max_inference_steps=100), "power of two"),
])
def test_bad_constructor_arguments_raise(build_bad, words):
    with pytest.raises(ValueError, match=words):
        build_bad()


def test_factory_builds_presets_and_lists_names_on_error():
    assert set(ACTION_NETS) >= {"unet1d", "unet1d_small", "transformer", "transformer_small"}
    small = make_action_net("unet1d_small", action_dim=2, cond_dim=4)
    assert isinstance(small, ConditionalUnet1D) and small.down_dims == (64, 128, 256)
    assert make_action_net("unet1d", action_dim=2, cond_dim=4, down_dims=(16, 32), n_groups=4).down_dims == (16, 32)
    tr = make_action_net("transformer_small", action_dim=2, cond_dim=4, horizon=16)
    assert isinstance(tr, ActionTransformer) and len(tr.blocks) == 4
    with pytest.raises(ValueError, match="unet1d_small"):
        make_action_net("unet2d", action_dim=2, cond_dim=4)
    with pytest.raises(ValueError, match="fixes"):
        make_action_net("unet1d_small", action_dim=2, cond_dim=4, down_dims=(8, 16))


@pytest.mark.slow  # the first torch.export in a process spends 5-10 s warming up dynamo
def test_export_with_dynamic_batch(kind):
    net = build(kind).float()
    example = inputs(net, B=2, dtype=torch.float32)  # B=2: export specialises a batch of 1
    batch = torch.export.Dim("batch", min=1, max=512)
    program = torch.export.export(net, example, dynamic_shapes=tuple({0: batch} for _ in example))
    for B in (1, 5):
        args = inputs(net, B=B, dtype=torch.float32, seed=B)
        torch.testing.assert_close(program.module()(*args), net(*args))


def test_jit_trace_matches_eager(kind):
    net = build(kind).float()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # trace is deprecated upstream and warns on the shape checks
        traced = torch.jit.trace(net, inputs(net, B=2, dtype=torch.float32))
    args = inputs(net, B=5, dtype=torch.float32, seed=5)
    torch.testing.assert_close(traced(*args), net(*args))
