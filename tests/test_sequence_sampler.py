from __future__ import annotations

import numpy as np
import pytest

from shortcut_policy.data.replay_buffer import ReplayBuffer
from shortcut_policy.data.sequence_sampler import (
    SequenceSampler,
    create_indices,
    downsample_mask,
    get_val_mask,
)

LENGTHS = (4, 1, 7, 3)


@pytest.fixture
def buffer() -> ReplayBuffer:
    """Each step records its episode and its step within the episode."""
    rb = ReplayBuffer.create_empty()
    for e, n in enumerate(LENGTHS):
        rb.add_episode({
            "episode": np.full(n, e),
            "step": np.arange(n),
            "x": np.stack([np.full(n, float(e)), np.arange(n, dtype=float)], axis=1),  # (n, 2)
        })
    return rb


def _reference_windows(lengths, s, pad_before, pad_after, mask=None):
    """Every (episode, step-in-episode) window, by direct enumeration with clamping."""
    pad_before, pad_after = min(pad_before, s - 1), min(pad_after, s - 1)
    out = []
    for e, n in enumerate(lengths):
        if mask is not None and not mask[e]:
            continue
        for start in range(-pad_before, n - s + pad_after + 1):
            out.append((e, [min(max(start + j, 0), n - 1) for j in range(s)]))
    return out


@pytest.mark.parametrize("s,pad_before,pad_after", [(1, 0, 0), (3, 0, 0), (3, 2, 1), (4, 1, 3), (2, 5, 5)])
def test_windows_match_reference(buffer, s, pad_before, pad_after):
    sampler = SequenceSampler(buffer, s, pad_before, pad_after)
    ref = _reference_windows(LENGTHS, s, pad_before, pad_after)
    assert len(sampler) == len(ref)
    for i, (episode, steps) in enumerate(ref):
        w = sampler.sample_sequence(i)
        assert w["episode"].tolist() == [episode] * s  # never crosses into a neighbour
        assert w["step"].tolist() == steps
        assert w["x"].shape == (s, 2)
        np.testing.assert_array_equal(w["x"][:, 1], steps)


def test_edges_repeat_that_episodes_frames(buffer):
    sampler = SequenceSampler(buffer, 5, pad_before=2, pad_after=3, keys=["episode", "step"])
    episode2 = [sampler.sample_sequence(i) for i in range(len(sampler))
                if sampler.sample_sequence(i)["episode"][0] == 2]
    # first window: two copies of episode 2's first frame, then its steps 0..2
    assert episode2[0]["step"].tolist() == [0, 0, 0, 1, 2]
    # last window: episode 2's last steps, then its last frame repeated
    assert episode2[-1]["step"].tolist() == [5, 6, 6, 6, 6]
    assert len(episode2) == 7 - 5 + 2 + 3 + 1


def test_count_formula():
    ends = np.cumsum([10, 20, 3])
    idx = create_indices(ends, sequence_length=16, pad_before=1, pad_after=7)
    # per episode max(0, L - S + pad_before + pad_after + 1)
    assert len(idx) == (10 - 16 + 9) + (20 - 16 + 9) + 0
    assert idx.dtype == np.int64 and idx.shape[1] == 4
    # real steps and their place in the window always have the same length
    np.testing.assert_array_equal(idx[:, 1] - idx[:, 0], idx[:, 3] - idx[:, 2])


def test_episode_mask(buffer):
    mask = np.array([False, True, True, False])
    sampler = SequenceSampler(buffer, 2, 1, 1, episode_mask=mask)
    seen = {int(sampler.sample_sequence(i)["episode"][0]) for i in range(len(sampler))}
    assert seen == {1, 2}
    assert len(sampler) == len(_reference_windows(LENGTHS, 2, 1, 1, mask))
    assert len(SequenceSampler(buffer, 2, episode_mask=np.zeros(4, bool))) == 0
    with pytest.raises(ValueError, match="episode_mask"):
        SequenceSampler(buffer, 2, episode_mask=np.ones(3, bool))
    with pytest.raises(ValueError, match="episode_mask"):
        SequenceSampler(buffer, 2, episode_mask=np.ones(4, int))


def test_sampler_errors_and_copies(buffer):
    with pytest.raises(KeyError, match="img"):
        SequenceSampler(buffer, 2, keys=["x", "img"])
    with pytest.raises(ValueError, match="sequence_length"):
        SequenceSampler(buffer, 0)
    with pytest.raises(ValueError, match="pad_before"):
        SequenceSampler(buffer, 2, pad_before=-1)
    sampler = SequenceSampler(buffer, 2)
    with pytest.raises(IndexError):
        sampler.sample_sequence(len(sampler))
    w = sampler.sample_sequence(0)
    w["x"][:] = -1.0
    assert (buffer["x"] >= 0).all()  # windows are copies


def test_val_mask_counts_and_determinism():
    m = get_val_mask(206, 0.02, seed=42)
    assert m.dtype == np.bool_ and m.shape == (206,) and m.sum() == 4
    assert get_val_mask(10, 0.01, seed=0).sum() == 1  # at least one
    assert get_val_mask(2, 0.9, seed=0).sum() == 1  # at least one training episode left
    assert get_val_mask(1, 0.5, seed=0).sum() == 0
    assert get_val_mask(50, 0.0, seed=0).sum() == 0
    np.testing.assert_array_equal(m, get_val_mask(206, 0.02, seed=42))
    assert not np.array_equal(m, get_val_mask(206, 0.02, seed=43))
    # Diffusion Policy's draw, so seeds select the same episodes as its configs
    expected = np.zeros(206, bool)
    expected[np.random.default_rng(42).choice(206, size=4, replace=False)] = True
    np.testing.assert_array_equal(m, expected)
    with pytest.raises(ValueError, match="val_ratio"):
        get_val_mask(10, 1.0)


def test_downsample_mask():
    mask = np.zeros(20, bool)
    mask[::2] = True
    small = downsample_mask(mask, 4, seed=1)
    assert small.sum() == 4 and not (small & ~mask).any()
    np.testing.assert_array_equal(small, downsample_mask(mask, 4, seed=1))
    same = downsample_mask(mask, None)
    np.testing.assert_array_equal(same, mask)
    assert same is not mask
    np.testing.assert_array_equal(downsample_mask(mask, 100), mask)
    with pytest.raises(ValueError):
        downsample_mask(mask.astype(int), 3)
