from __future__ import annotations

import pytest
import torch

from shortcut_policy.core import EMA, TimeStepEmbedding


def test_ema_warmup_and_constant_decay():
    net = torch.nn.Linear(2, 2)
    ema = EMA(net, max_decay=0.9999, power=0.75)
    assert ema.decay(1) == pytest.approx(1 - 2 ** -0.75)
    assert ema.decay(10 ** 9) == 0.9999
    const = EMA(net, max_decay=0.999, warmup=False)  # the reference's teacher: 0.999 from the first update
    assert const.decay(1) == const.decay(500) == 0.999


def test_ema_tracks_weights_and_round_trips():
    net = torch.nn.Linear(2, 2)
    ema = EMA(net, max_decay=0.5, warmup=False)
    before = ema.module.weight.clone()
    with torch.no_grad():
        net.weight.add_(1.0)
    ema.update(net)
    torch.testing.assert_close(ema.module.weight, before + 0.5)
    other = EMA(torch.nn.Linear(2, 2), max_decay=0.5, warmup=False)
    other.load_state_dict(ema.state_dict())
    assert other.step == 1
    torch.testing.assert_close(other.module.weight, ema.module.weight)
    assert not any(p.requires_grad for p in ema.module.parameters())


def test_embedding_depends_on_d():
    emb = TimeStepEmbedding(32, d_embedding="log2")
    t = torch.full((3,), 0.25)
    a = emb(t, torch.full((3,), 1 / 128))
    b = emb(t, torch.full((3,), 1 / 2))
    assert a.shape == (3, 32) and not torch.allclose(a, b)
    assert not torch.allclose(emb(torch.zeros(3), torch.full((3,), 0.5)), b)


def test_embedding_none_ignores_d_and_errors():
    emb = TimeStepEmbedding(16, d_embedding="none")
    t = torch.rand(4)
    torch.testing.assert_close(emb(t, torch.ones(4)), emb(t, torch.full((4,), 0.01)))
    with pytest.raises(ValueError, match="d_embedding"):
        TimeStepEmbedding(16, d_embedding="scaled")  # not a d code
    with pytest.raises(ValueError, match="shape"):
        TimeStepEmbedding(16)(torch.rand(4), torch.rand(3))


def test_unit_d_code_keeps_the_d_features_slow():
    """"unit" feeds d unscaled: every d feature moves at most 1 per unit of d, where "linear" (d on
    the t scale) moves up to t_scale = 1000; both still tell d = 0 from d = 1/16."""
    from torch.func import jvp

    d = torch.linspace(0, 1, 33)
    for kind, bound in (("unit", 1.0), ("linear", 1000.0)):
        emb = TimeStepEmbedding(16, d_embedding=kind)
        feats = lambda dd: emb.d_freq(emb.d_code(dd))  # noqa: E731
        slope = jvp(feats, (d,), (torch.ones_like(d),))[1].abs().max().item()
        assert slope <= bound * (1 + 1e-5) and slope > bound / 2
        t = torch.full((2,), 0.5)
        assert not torch.allclose(emb(t, torch.zeros(2)), emb(t, torch.full((2,), 1 / 16)))
