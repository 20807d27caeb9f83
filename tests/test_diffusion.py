"""DDPM/DDIM baseline: schedule math, step counts, exact answers with an oracle network, and what the
objective answers about its own samplers and step counts."""
from __future__ import annotations

import math

import pytest
import torch

from shortcut_policy.core.diffusion import (
    DiffusionObjective,
    inference_timesteps,
    make_betas,
    t_to_timestep,
    timestep_to_t,
)

K = 100


class Oracle(torch.nn.Module):
    """Exact denoiser when the data is a single point x_star (shape of one example).

    eps = (x_k - sqrt(abar_k) x_star) / sqrt(1 - abar_k). Records every call's t, d and eps.
    """

    def __init__(self, obj: DiffusionObjective, x_star: torch.Tensor):
        super().__init__()
        self.obj, self.x_star = obj, x_star
        self.ts, self.ds, self.eps = [], [], []

    def forward(self, x, t, d, cond):
        k = t_to_timestep(t, self.obj.num_train_timesteps)  # (B,)
        abar = self.obj.alphas_cumprod[k].to(x.dtype).view(-1, *([1] * (x.ndim - 1)))
        eps = (x - abar.sqrt() * self.x_star) / (1 - abar).sqrt()
        self.ts.append(t.clone())
        self.ds.append(d.clone())
        self.eps.append(eps.clone())
        return eps


class Counter(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x, t, d, cond):
        self.calls += 1
        return torch.zeros_like(x)


def _x_star(shape=(4, 3), dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    return (torch.rand(shape, generator=g, dtype=dtype) * 1.6 - 0.8)  # inside the clip range


# ------------------------------------------------------------------ schedules
def test_alphas_cumprod_strictly_decreasing_in_unit_interval():
    abar = DiffusionObjective().alphas_cumprod
    assert torch.all(abar[1:] < abar[:-1]) and torch.all((abar > 0) & (abar < 1))


def test_cosine_schedule_matches_closed_form():
    obj = DiffusionObjective(num_train_timesteps=K)
    f = lambda s: math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    # every beta but the last is below the 0.999 cap, so the product telescopes to the closed form
    assert torch.all(obj.betas[:-1] < 0.999)
    for k in (0, 10, 50, 98):
        assert obj.alphas_cumprod[k].item() == pytest.approx(f((k + 1) / K) / f(0), rel=1e-9)
    assert obj.betas[-1] == pytest.approx(0.999)  # f(1) = 0: the last beta hits the cap
    assert torch.equal(make_betas(K), obj.betas)


def test_trailing_inference_timesteps():
    for n in (1, 2, 3, 7, 10, 33, 100):
        ks = inference_timesteps(K, n)
        assert len(ks) == n and ks[0] == K - 1 and all(a > b for a, b in zip(ks, ks[1:])) and ks[-1] >= 0
    assert inference_timesteps(K, K) == list(range(K - 1, -1, -1))
    assert inference_timesteps(K, 10) == [99, 89, 79, 69, 59, 49, 39, 29, 19, 9]


def test_t_mapping_endpoints_and_round_trip():
    k = torch.arange(K)
    t = timestep_to_t(k, K)
    assert t[K - 1].item() == 0.0  # noisiest step is pure noise
    assert t[0].item() == pytest.approx(1 - 1 / K)
    assert torch.all((t >= 0) & (t <= 1))
    assert torch.equal(t_to_timestep(t.float(), K), k)


# ------------------------------------------------------------- network calls
@pytest.mark.parametrize("method,steps", [("ddpm", 100), ("ddpm", 10), ("ddim", 1), ("ddim", 3),
                                          ("ddim", 10), ("ddim", 100)])
def test_sampler_calls_model_exactly_steps_times(method, steps):
    obj = DiffusionObjective(sampler=method)
    model = Counter()
    out = obj.sample(model, torch.randn(2, 5, 3), steps, generator=torch.Generator().manual_seed(0))
    assert model.calls == steps
    assert out.shape == (2, 5, 3)


def test_loss_calls_model_once_and_ignores_teacher():
    obj = DiffusionObjective()
    model, teacher = Counter(), Counter()
    loss, info = obj.loss(model, torch.randn(8, 4, 2), teacher=teacher, teacher_cond="ignored")
    assert model.calls == 1 and teacher.calls == 0
    # the logged loss stays a detached tensor (the training loop reads it only when it logs)
    assert loss.ndim == 0 and set(info) == {"loss"} and info["loss"].ndim == 0 and not info["loss"].requires_grad
    assert info["loss"] == loss.detach()


# ----------------------------------------------------------- oracle answers
@pytest.mark.parametrize("steps", [1, 2, 7, 10, 100])
def test_ddim_recovers_the_single_data_point(steps):
    obj = DiffusionObjective(sampler="ddim")
    x_star = _x_star()
    model = Oracle(obj, x_star)
    x0 = torch.randn((6, *x_star.shape), dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    out = obj.sample(model, x0, steps)
    torch.testing.assert_close(out, x_star.expand_as(out), atol=1e-9, rtol=0)
    # DDIM moves along the oracle's straight path: the implied noise never changes
    for eps in model.eps[1:]:
        torch.testing.assert_close(eps, model.eps[0], atol=1e-9, rtol=0)


@pytest.mark.parametrize("steps", [1, 10, 100])
def test_ddpm_recovers_the_single_data_point(steps):
    obj = DiffusionObjective(sampler="ddpm")
    x_star = _x_star()
    model = Oracle(obj, x_star)
    x0 = torch.randn((6, *x_star.shape), dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    out = obj.sample(model, x0, steps, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(out, x_star.expand_as(out), atol=1e-9, rtol=0)


@pytest.mark.parametrize("steps", [100, 10])
def test_ddpm_intermediate_marginals_are_correct(steps):
    """With exact x0 a DDPM step keeps the marginals, so every visited x_k must be distributed as
    sqrt(abar_k) x* + sqrt(1 - abar_k) N(0, 1): the implied noise stays standard normal. Trailing
    spacing starts at k = K-1, where pure noise is the right marginal."""
    obj = DiffusionObjective(sampler="ddpm")
    x_star = torch.tensor([0.5], dtype=torch.float64)
    model = Oracle(obj, x_star)
    x0 = torch.randn((4000, 1), dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    obj.sample(model, x0, steps, generator=torch.Generator().manual_seed(4))
    for eps in model.eps:
        assert abs(eps.mean().item()) < 0.06
        assert abs(eps.std().item() - 1.0) < 0.06


def test_ddpm_is_reproducible_with_a_generator():
    obj = DiffusionObjective(sampler="ddpm", clip_range=1e9)
    model = lambda x, t, d, c: 0.1 * x  # noqa: E731
    x0 = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
    a = obj.sample(model, x0, 10, generator=torch.Generator().manual_seed(5))
    b = obj.sample(model, x0, 10, generator=torch.Generator().manual_seed(5))
    c = obj.sample(model, x0, 10, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_ddim_is_deterministic_and_the_objective_says_which_samplers_are():
    model = lambda x, t, d, c: 0.1 * x  # noqa: E731
    x0 = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
    obj = DiffusionObjective(sampler="ddpm")
    assert torch.equal(obj.sample(model, x0, 10, generator=torch.Generator().manual_seed(1), sampler="ddim"),
                       obj.sample(model, x0, 10, generator=torch.Generator().manual_seed(2), sampler="ddim"))
    assert obj.deterministic("ddim") and not obj.deterministic("ddpm") and not obj.deterministic()
    assert obj.samplers == ("ddpm", "ddim") and DiffusionObjective(sampler="ddim").samplers == ("ddim", "ddpm")
    assert obj.default_inference_steps == K and DiffusionObjective(sampler="ddim").default_inference_steps == 10
    assert obj.sweep_inference_steps() == [1, 2, 4, 5, 10, 20, 25, 50, 100]
    assert obj.sweep_inference_steps("ddim") == [1, 2, 4, 8, 10, 16, 32, 64]
    obj.check_inference_steps(3, "ddim")
    with pytest.raises(ValueError, match="divide num_train_timesteps=100"):
        obj.check_inference_steps(3)


def test_predicted_x0_is_clipped():
    x_star = torch.full((2,), 3.0, dtype=torch.float64)  # outside the clip range of 1
    x0 = torch.randn(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    clipped = DiffusionObjective(sampler="ddim")
    assert torch.allclose(clipped.sample(Oracle(clipped, x_star), x0, 10), torch.ones(4, 2, dtype=torch.float64))


# ------------------------------------------------------------------- loss
def test_loss_is_zero_for_the_oracle_and_positive_otherwise():
    obj = DiffusionObjective()
    x_star = _x_star()
    x1 = x_star.expand(16, *x_star.shape).clone()
    loss, info = obj.loss(Oracle(obj, x_star), x1, generator=torch.Generator().manual_seed(0))
    assert loss.item() < 1e-20 and info["loss"] == loss.item()
    wrong, _ = obj.loss(lambda x, t, d, c: torch.zeros_like(x), x1, generator=torch.Generator().manual_seed(0))
    assert wrong.item() > 1e-2


def test_loss_backpropagates_into_the_model():
    lin = torch.nn.Linear(3, 3)
    model = lambda x, t, d, c: lin(x)  # noqa: E731
    loss, _ = DiffusionObjective().loss(model, torch.randn(5, 2, 3))
    loss.backward()
    assert lin.weight.grad is not None and lin.weight.grad.abs().sum() > 0


def test_t_and_d_passed_to_the_model_are_consistent_between_loss_and_sample():
    obj = DiffusionObjective()
    x_star = torch.zeros(2)
    model = Oracle(obj, x_star)
    obj.loss(model, torch.zeros(2000, 2), generator=torch.Generator().manual_seed(0))
    t_loss = model.ts[0]
    assert t_loss.dtype == torch.float32 and torch.all((t_loss >= 0) & (t_loss <= 1))
    assert torch.all(model.ds[0] == 1.0)
    model.ts.clear()
    obj.sample(model, torch.randn(3, 2), K, generator=torch.Generator().manual_seed(0))
    t_sample = torch.stack([t[0] for t in model.ts])  # one t per step, k = 99 .. 0
    assert t_sample[0].item() == 0.0 and torch.all(t_sample[1:] > t_sample[:-1])
    assert all(torch.all(d == 1.0) for d in model.ds)
    # the same k gives bit-identical t in the loss and in the sampler
    k_loss = t_to_timestep(t_loss, K)
    assert torch.equal(t_loss, t_sample[K - 1 - k_loss])
    assert len(set(k_loss.tolist())) > 90  # k is drawn over the whole range


def test_image_shaped_inputs():
    obj = DiffusionObjective(sampler="ddim")
    x_star = _x_star((3, 4, 4))  # (C, H, W)
    model = Oracle(obj, x_star)
    x1 = x_star.expand(2, 3, 4, 4).clone()
    loss, _ = obj.loss(model, x1)
    assert loss.item() < 1e-20
    out = obj.sample(model, torch.randn(2, 3, 4, 4, dtype=torch.float64), 5)
    assert out.shape == (2, 3, 4, 4)
    torch.testing.assert_close(out, x1, atol=1e-9, rtol=0)
    out = obj.sample(model, torch.randn(2, 3, 4, 4, dtype=torch.float64), 5, sampler="ddpm",
                     generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, x1, atol=1e-9, rtol=0)


# -------------------------------------------------------------- bad input
@pytest.mark.parametrize("kwargs,match", [
    ({"sampler": "euler"}, "sampler"),
    ({"num_train_timesteps": 0}, "num_train_timesteps"),
    ({"clip_range": 0.0}, "clip_range"),
])
def test_bad_config_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DiffusionObjective(**kwargs)


def test_bad_sample_arguments_raise():
    obj = DiffusionObjective()
    x0 = torch.randn(2, 3)
    with pytest.raises(ValueError, match="num_inference_steps"):
        obj.sample(Counter(), x0, 0, sampler="ddim")
    with pytest.raises(ValueError, match="num_inference_steps"):
        obj.sample(Counter(), x0, K + 1, sampler="ddim")
    with pytest.raises(TypeError, match="num_inference_steps"):
        obj.sample(Counter(), x0, 2.0, sampler="ddim")
    with pytest.raises(ValueError, match="divide"):
        obj.sample(Counter(), x0, 3, sampler="ddpm")
    with pytest.raises(ValueError, match="sampler"):
        obj.sample(Counter(), x0, 10, sampler="dpm")
    with pytest.raises(ValueError, match="x0"):
        obj.sample(Counter(), torch.zeros(2, 3, dtype=torch.long), 10)
    with pytest.raises(ValueError, match="shape of x"):
        obj.sample(lambda x, t, d, c: x[:, :1], x0, 10)


def test_bad_loss_arguments_raise():
    obj = DiffusionObjective()
    # NaN data is not tested in the loss (a GPU would wait for that read each step): it makes the loss NaN,
    # which the training loop names with its step
    assert torch.isnan(obj.loss(lambda x, t, d, c: x, torch.tensor([[0.0, float("nan")]]))[0])
    with pytest.raises(ValueError, match="x1"):
        obj.loss(Counter(), torch.zeros(0, 3))
    with pytest.raises(ValueError, match="shape of x"):
        obj.loss(lambda x, t, d, c: x.sum(-1), torch.zeros(4, 3))


def test_describe_rebuilds_the_objective():
    obj = DiffusionObjective(num_train_timesteps=50, sampler="ddim")
    cfg = obj.describe()
    assert cfg.pop("kind") == "diffusion"
    assert "betas" not in cfg and "alphas_cumprod" not in cfg
    rebuilt = DiffusionObjective(**cfg)
    assert rebuilt.describe() == obj.describe()
    assert torch.equal(rebuilt.alphas_cumprod, obj.alphas_cumprod)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_data_with_a_cpu_generator_matches_cpu():
    obj = DiffusionObjective(sampler="ddpm", clip_range=1e9)
    model = lambda x, t, d, c: 0.1 * x  # noqa: E731
    x0 = torch.randn(3, 4, dtype=torch.float64)
    cpu = obj.sample(model, x0, 10, generator=torch.Generator().manual_seed(0))
    gpu = obj.sample(model, x0.cuda(), 10, generator=torch.Generator().manual_seed(0))
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu)
    loss, _ = obj.loss(model, x0.cuda(), generator=torch.Generator().manual_seed(0))
    assert loss.device.type == "cuda"
