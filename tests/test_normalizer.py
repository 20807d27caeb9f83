from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from shortcut_policy.policy.normalizer import Normalizer


@pytest.fixture
def data() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    obs = rng.normal(loc=[100.0, -3.0, 0.0], scale=[50.0, 0.01, 1.0], size=(200, 3))
    obs[:, 2] = 7.0  # a constant dimension
    action = rng.uniform(0, 512, size=(10, 20, 2))  # leading axes beyond one
    return {"obs": obs, "action": action}


def test_round_trip_float64(data):
    norm = Normalizer.from_data(data)
    for key, arr in data.items():
        x = torch.from_numpy(arr)
        y = norm.normalize(key, x)
        assert y.dtype == torch.float64 and y.shape == x.shape
        torch.testing.assert_close(norm.unnormalize(key, y), x, rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize("output_range", [(-1.0, 1.0), (0.0, 1.0)])
def test_limits_map_to_output_range(data, output_range):
    norm = Normalizer({"obs": 3, "action": 2}).fit(data, mode="limits", output_range=output_range)
    y = norm.normalize("action", torch.from_numpy(data["action"])).reshape(-1, 2)
    lo, hi = output_range
    torch.testing.assert_close(y.min(0).values, torch.full((2,), lo, dtype=torch.float64), atol=1e-6, rtol=0)
    torch.testing.assert_close(y.max(0).values, torch.full((2,), hi, dtype=torch.float64), atol=1e-6, rtol=0)
    # dim 1 sits at -3 with a spread of 0.06: float32 parameters cost ~1e-6 there, no more
    y_obs = norm.normalize("obs", torch.from_numpy(data["obs"]))
    torch.testing.assert_close(y_obs[:, 1].min(), torch.tensor(lo, dtype=torch.float64), atol=2e-5, rtol=0)
    torch.testing.assert_close(y_obs[:, 1].max(), torch.tensor(hi, dtype=torch.float64), atol=2e-5, rtol=0)


def test_gaussian_standardizes(data):
    norm = Normalizer.from_data(data, mode="gaussian")
    y = norm.normalize("obs", torch.from_numpy(data["obs"]))
    torch.testing.assert_close(y[:, :2].mean(0), torch.zeros(2, dtype=torch.float64), atol=1e-5, rtol=0)
    std = y[:, :2].std(0, unbiased=False)
    torch.testing.assert_close(std, torch.ones(2, dtype=torch.float64), atol=1e-5, rtol=0)
    assert torch.all(y[:, 2] == 0)  # constant dim centred, not divided by 0


@pytest.mark.parametrize("mode", ["limits", "gaussian"])
def test_constant_dim_is_safe_and_centred(data, mode):
    norm = Normalizer.from_data(data, mode=mode)
    x = torch.from_numpy(data["obs"])
    y = norm.normalize("obs", x)
    assert torch.isfinite(y).all()
    assert torch.all(y[:, 2] == 0.0)
    # a value off the constant is shifted, not blown up
    probe = x[:1].clone()
    probe[0, 2] = 8.0
    assert norm.normalize("obs", probe)[0, 2].item() == pytest.approx(1.0)
    torch.testing.assert_close(norm.unnormalize("obs", y), x)
    # a dimension the data never moved unnormalizes to its value whatever the network says
    noisy = y + 0.3 * torch.randn_like(y)
    back = norm.unnormalize("obs", noisy)
    assert torch.all(back[:, 2] == x[0, 2]) and not torch.allclose(back[:, 0], x[:, 0])


def test_state_dict_into_unfitted_reproduces(data):
    fitted = Normalizer.from_data(data)
    fresh = Normalizer({"obs": 3, "action": 2})
    assert not fresh.is_fitted
    fresh.load_state_dict(fitted.state_dict())
    assert fresh.is_fitted
    x = torch.randn(4, 5, 3)
    torch.testing.assert_close(fresh.normalize("obs", x), fitted.normalize("obs", x), rtol=0, atol=0)
    # and it lives inside a parent's state_dict, and loads through the parent
    parent, other = nn.Module(), nn.Module()
    parent.normalizer, other.normalizer = fitted, Normalizer({"obs": 3, "action": 2})
    assert {"normalizer.fields.obs.scale", "normalizer.fitted"} <= set(parent.state_dict())
    other.load_state_dict(parent.state_dict())
    assert other.normalizer.is_fitted
    restored = other.normalizer.unnormalize("obs", x)
    torch.testing.assert_close(restored, fitted.unnormalize("obs", x), rtol=0, atol=0)
    # an unfitted checkpoint stays unfitted
    blank = Normalizer({"obs": 3, "action": 2})
    blank.load_state_dict(Normalizer({"obs": 3, "action": 2}).state_dict())
    assert not blank.is_fitted


def test_load_state_dict_with_other_dims_raises(data):
    with pytest.raises(RuntimeError, match="size mismatch"):
        Normalizer({"obs": 4, "action": 2}).load_state_dict(Normalizer.from_data(data).state_dict())


def test_leading_shapes_dtypes_and_dicts(data):
    norm = Normalizer.from_data(data)
    x = torch.randn(2, 3, 4, 2) * 100 + 256
    flat = norm.normalize("action", x.reshape(-1, 2)).reshape(x.shape)
    torch.testing.assert_close(norm.normalize("action", x), flat)
    half = norm.normalize("action", x.half())
    assert half.dtype == torch.float16
    torch.testing.assert_close(half.float(), flat, atol=2e-3, rtol=2e-3)
    out = norm.normalize_dict({"action": x, "obs": torch.zeros(3)})
    assert set(out) == {"action", "obs"}
    back = norm.unnormalize_dict(out)
    torch.testing.assert_close(back["action"], x, atol=1e-3, rtol=1e-5)


def test_errors(data):
    unfitted = Normalizer({"obs": 3, "action": 2})
    with pytest.raises(RuntimeError, match="not fitted"):
        unfitted.normalize("obs", torch.zeros(3))
    norm = Normalizer.from_data(data)
    with pytest.raises(KeyError, match="img"):
        norm.normalize("img", torch.zeros(3))
    with pytest.raises(ValueError, match="last axis 3"):
        norm.normalize("obs", torch.zeros(5, 2))
    with pytest.raises(TypeError):
        norm.normalize("obs", torch.zeros(3, dtype=torch.int64))
    with pytest.raises(KeyError, match="must equal"):
        Normalizer({"obs": 3}).fit(data)
    with pytest.raises(ValueError, match="mode"):
        Normalizer.from_data(data, mode="minmax")
    bad = {**data, "obs": data["obs"].copy()}
    bad["obs"][3, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        Normalizer.from_data(bad)
    with pytest.raises(ValueError, match="last axis"):
        Normalizer({"obs": 4, "action": 2}).fit(data)
    with pytest.raises(ValueError, match="positive integer"):
        Normalizer({"obs": 0})


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_input_on_cpu_or_cuda_module(data):
    norm = Normalizer.from_data(data)
    x = torch.randn(4, 3, dtype=torch.float64)
    expected = norm.normalize("obs", x)
    torch.testing.assert_close(norm.normalize("obs", x.cuda()).cpu(), expected)  # module on CPU
    y = norm.cuda().normalize("obs", x.cuda().bfloat16())
    assert y.device.type == "cuda" and y.dtype == torch.bfloat16
    torch.testing.assert_close(y.double().cpu(), expected, atol=2e-2, rtol=2e-2)
