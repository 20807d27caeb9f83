"""Property-based tests (hypothesis): the sequence sampler's windows and padding for any episode layout,
and the normalizer's round trip for any data."""
from __future__ import annotations

import numpy as np
import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from shortcut_policy.data.replay_buffer import ReplayBuffer  # noqa: E402
from shortcut_policy.data.sequence_sampler import SequenceSampler  # noqa: E402
from shortcut_policy.policy.normalizer import Normalizer  # noqa: E402


@settings(max_examples=60, deadline=None)
@given(lengths=st.lists(st.integers(1, 12), min_size=1, max_size=6), horizon=st.integers(1, 8),
       n_obs=st.integers(1, 4), n_act=st.integers(1, 8))
def test_windows_stay_in_their_episode_and_pad_with_its_edge_frames(lengths, horizon, n_obs, n_act):
    pad_before, pad_after = n_obs - 1, n_act - 1
    ends = np.cumsum(lengths)
    t = np.arange(ends[-1], dtype=np.float32)
    episode = np.repeat(np.arange(len(lengths)), lengths).astype(np.float32)
    buf = ReplayBuffer({"t": t[:, None], "ep": episode[:, None]}, ends)
    s = SequenceSampler(buf, horizon, pad_before, pad_after)
    starts = np.concatenate([[0], ends[:-1]])
    expected = sum(max(0, L - horizon + min(pad_before, horizon - 1) + min(pad_after, horizon - 1) + 1) for L in lengths)
    assert len(s) == expected
    if not len(s):
        return
    batch = s.sample_batch(np.arange(len(s)))
    for i in range(len(s)):
        w = s.sample_sequence(i)
        assert np.array_equal(w["t"], batch["t"][i])
        e = int(w["ep"][0, 0])
        assert (w["ep"] == e).all()  # never reaches into a neighbour
        ts = w["t"][:, 0]
        assert (np.diff(ts) >= 0).all() and (np.diff(ts) <= 1).all()  # consecutive, or repeated at the edges
        assert ts.min() >= starts[e] and ts.max() <= ends[e] - 1
        b0, b1, s0, s1 = (int(v) for v in s.indices[i])
        assert s0 <= min(pad_before, horizon - 1) and horizon - s1 <= min(pad_after, horizon - 1)
        assert (ts[:s0] == starts[e]).all() and (ts[s1:] == ends[e] - 1).all()  # padding repeats the edge frames
        assert np.array_equal(ts[s0:s1], np.arange(b0, b1))  # the real steps, in order


@settings(max_examples=60, deadline=None)
@given(shape=st.tuples(st.integers(2, 50), st.integers(1, 5)), scale=st.floats(1e-3, 1e4), offset=st.floats(-1e4, 1e4),
       mode=st.sampled_from(["limits", "gaussian"]), constant=st.booleans(), seed=st.integers(0, 2**16))
def test_normalizer_round_trip_and_range(shape, scale, offset, mode, constant, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g, dtype=torch.float64) * scale + offset
    if constant:
        x[:, 0] = offset  # a dimension that never moves
    norm = Normalizer({"x": shape[1:]}).fit({"x": x}, mode=mode)
    y = norm.normalize("x", x.float())
    assert torch.isfinite(y).all()
    if mode == "limits":
        # float32 holds x only to |x| * 2^-24; in normalized units that is |x| * 2^-24 * 2 / range, a few ulps of it
        spread = x.max(0).values - x.min(0).values
        ulps = torch.where(spread > 0, 8 * 2.0 ** -24 * x.abs().max(0).values * 2 / spread.clamp_min(1e-300), 0.0)
        slack = 1e-4 + ulps.float()  # per dimension; a constant one gets no float slack
        assert (y >= -1 - slack).all() and (y <= 1 + slack).all()
    back = norm.unnormalize("x", y).double()
    tol = 1e-5 * (abs(offset) + scale * 10) + 1e-6
    assert torch.allclose(back, x, atol=tol), (back - x).abs().max()
