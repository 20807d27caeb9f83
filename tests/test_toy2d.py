"""The paper's Figure 2 as a test: on a multimodal 2-D distribution, one shortcut step lands on the
modes, one flow-matching step lands between them."""
from __future__ import annotations

import torch

from shortcut_policy.core import ShortcutObjective
from shortcut_policy.eval.toy2d import gaussian_ring, sliced_wasserstein, train_toy


def _sw_at(objective, net, steps):
    data = gaussian_ring(1000, generator=torch.Generator().manual_seed(11))
    x0 = torch.randn(1000, 2, generator=torch.Generator().manual_seed(12))
    return sliced_wasserstein(objective.sample(net, x0, steps), data)


def test_one_step_shortcut_beats_one_step_flow_matching():
    torch.set_num_threads(1)
    sc, fm = ShortcutObjective(128, 0.25), ShortcutObjective(128, 0.0)
    net_sc = train_toy(sc, steps=300, batch_size=128, width=64, seed=0)
    net_fm = train_toy(fm, steps=300, batch_size=128, width=64, seed=0)
    sc1, fm1 = _sw_at(sc, net_sc, 1), _sw_at(fm, net_fm, 1)
    fm128 = _sw_at(fm, net_fm, 128)
    # one flow step collapses toward the mean of the ring (radius 2): far from the data
    assert fm1 > 0.6
    # one shortcut step is at least 2.5x closer, and within reach of 128 flow steps
    assert sc1 * 2.5 < fm1, (sc1, fm1)
    assert sc1 < fm128 + 0.25, (sc1, fm128)
