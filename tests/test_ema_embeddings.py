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
