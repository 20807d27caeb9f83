"""The image DiT: shapes, patchify round trip, presets, and that t, d and the class reach the output."""
from __future__ import annotations

import pytest
import torch

from shortcut_policy.nets import DIT_MODELS, make_image_net
from shortcut_policy.nets.dit import DiT, sincos_pos_embed_2d


def _perturb_zero_init(net: DiT) -> DiT:
    """adaLN-Zero starts with zero gates and head (output 0 whatever the input): move them off zero."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in net.parameters():
            if p.abs().max() == 0:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return net


def _inputs(B=4, C=1, H=28, W=28):
    return torch.randn(B, C, H, W), torch.rand(B), torch.full((B,), 1 / 128), torch.arange(B) % 10


def test_shapes_and_zero_init():
    net = make_image_net("dit_tiny", patch_size=4)
    x, t, d, y = _inputs()
    out = net(x, t, d, y)
    assert out.shape == x.shape
    assert torch.all(out == 0)  # adaLN-Zero: the untrained net predicts zero velocity
    assert 0.8e6 < sum(p.numel() for p in net.parameters()) < 1.2e6  # ~1M parameters for MNIST


def test_rectangular_rgb_and_learned_pos():
    net = DiT(in_channels=3, image_size=(8, 12), patch_size=2, hidden_size=32, depth=2, num_heads=2,
              num_classes=5, pos_embed="learned")
    out = _perturb_zero_init(net)(torch.randn(2, 3, 8, 12), torch.rand(2), torch.ones(2), torch.tensor([0, 5]))
    assert out.shape == (2, 3, 8, 12)
    x = torch.randn(2, 3, 8, 12)
    assert torch.equal(net.unpatchify(net.patchify(x)), x)


def test_sincos_pos_embed_distinct():
    pe = sincos_pos_embed_2d(16, 3, 4)
    assert pe.shape == (12, 16)
    assert torch.cdist(pe, pe).add(torch.eye(12)).min() > 0  # every position differs


def test_t_d_class_change_output():
    net = _perturb_zero_init(make_image_net("dit_tiny", patch_size=4)).eval()
    x, t, d, y = _inputs()
    base = net(x, t, d, y)
    assert not torch.allclose(base, net(x, t, torch.full_like(d, 0.5), y), atol=1e-5)  # d matters
    assert not torch.allclose(base, net(x, (t + 0.3) % 1, d, y), atol=1e-5)  # t matters
    assert not torch.allclose(base, net(x, t, d, (y + 1) % 10), atol=1e-5)  # class matters
    null = torch.full_like(y, net.null_class)
    assert torch.allclose(net(x, t, d, None), net(x, t, d, null))  # None = the null class


def test_flow_baseline_ignores_d():
    net = _perturb_zero_init(make_image_net("dit_tiny", d_embedding="none")).eval()
    x, t, d, y = _inputs()
    assert torch.allclose(net(x, t, d, y), net(x, t, torch.ones_like(d), y))


def test_presets_and_errors():
    assert {"dit_tiny", "dit_s", "dit_b"} <= set(DIT_MODELS)
    with torch.device("meta"):  # DiT-B's 135M parameters: check the architecture without allocating them
        b = make_image_net("dit_b", in_channels=3, image_size=32, patch_size=2)
    assert b.blocks[0].self_attn.n_head == 12 and len(b.blocks) == 12 and b.pos_embed.shape[-1] == 768
    with pytest.raises(ValueError, match="unknown image net"):
        make_image_net("dit_xxl")
    with pytest.raises(ValueError, match="fixes"):
        make_image_net("dit_tiny", hidden_size=64)
    with pytest.raises(ValueError, match="multiple of patch_size"):
        DiT(image_size=28, patch_size=3)
    net = make_image_net("dit_tiny")
    x, t, d, y = _inputs()
    with pytest.raises(ValueError, match="x must have shape"):
        net(torch.randn(2, 3, 28, 28), t[:2], d[:2], y[:2])
    with pytest.raises(ValueError, match="labels must be in"):
        net(x, t, d, torch.full_like(y, 11))


def test_unconditional_net():
    net = _perturb_zero_init(DiT(num_classes=0, hidden_size=32, depth=1, num_heads=2))
    x, t, d, _ = _inputs(2)
    assert net(x, t, d, None).shape == x.shape
    with pytest.raises(ValueError, match="labels must be in"):
        net(x, t, d, torch.tensor([0, 1]))


def test_class_embedding_not_negligible_at_init():
    # the class must be visible next to the (t, d) embedding from the start (DiT's std 0.02 made it ~50x
    # smaller, and a short MNIST run then ignored the class)
    net = make_image_net("dit_tiny")
    _, t, d, y = _inputs(8)
    c_norm = net.class_emb(y).norm(dim=1).mean()
    t_norm = net.time_emb(t, d).norm(dim=1).mean()
    assert c_norm > 0.3 * t_norm
