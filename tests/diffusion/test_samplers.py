"""Samplers against the maths: the exact denoiser of Gaussian data, DDIM vs DDPM, guidance."""

import math

import pytest
import torch

from ldmkit.diffusion import (
    SAMPLERS,
    as_denoiser,
    classifier_free_guidance,
    get_sampler,
    make_schedule,
    make_timesteps,
    sample_ddim,
    sample_ddpm,
)

MU, S = 0.7, 0.4  # data ~ N(MU, S^2) in every dimension


def gaussian_denoiser(sched):
    """E[x0 | x_t] for x0 ~ N(MU, S^2): the exact posterior mean, a linear function of x_t."""

    def denoise(x_t, t):
        ab = sched.alpha_bar_at(t)
        gain = ab**0.5 * S**2 / (ab * S**2 + 1 - ab)
        return MU + gain * (x_t - ab**0.5 * MU)

    return denoise


def marginal_sample(sched, t, n, gen):
    """x_t ~ q(x_t) = N(sqrt(ab) MU, ab S^2 + 1 - ab), the exact start for any sampler."""
    ab = sched.alpha_bar_at(t)
    return ab**0.5 * MU + (ab * S**2 + 1 - ab) ** 0.5 * torch.randn(n, 1, 4, 4, generator=gen, dtype=torch.float64)


CASES = [  # sampler, steps, spacing; ancestral ones need all the steps of the chain
    ("ddpm", 1000, "leading"),
    ("ddim", 200, "linspace"),  # first order: 3% low in std at 50 steps, 1% at 200
    ("euler", 200, "karras"),
    ("euler_a", 200, "karras"),
    ("heun", 25, "karras"),
    ("dpmpp_2m", 20, "karras"),
    ("dpmpp_2m_sde", 50, "karras"),
]


def test_every_registered_sampler_is_covered():
    consistency = {"lcm", "tcd"}  # they need a consistency function, not a posterior mean: test_consistency.py
    assert {name for name, _, _ in CASES} | consistency == set(SAMPLERS)


@pytest.mark.parametrize("name,steps,spacing", CASES)
def test_exact_gaussian_denoiser_gives_the_data_distribution(name, steps, spacing):
    sched = make_schedule()
    timesteps = make_timesteps(sched, steps, spacing)
    gen = torch.Generator().manual_seed(0)
    x = marginal_sample(sched, float(timesteps[0]), 1024, gen)  # 16k values
    out = get_sampler(name)(gaussian_denoiser(sched), x, sched, timesteps, gen=gen)
    assert out.mean().item() == pytest.approx(MU, rel=0.03)
    assert out.std().item() == pytest.approx(S, rel=0.03)


def test_ddim_inversion_then_sampling_returns_x():
    """eta = 0 DDIM is an ODE solver: run it from x at t = 0 up to t = 999, then back to t = 0."""
    sched = make_schedule()
    denoise = gaussian_denoiser(sched)
    forward = torch.arange(1000, dtype=torch.float64)  # every timestep, ascending
    x0 = MU + S * torch.randn(64, 1, 4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x = x0
    for t, s in zip(forward[:-1], forward[1:]):  # ascending DDIM steps: t -> s > t
        a_t, a_s = sched.alpha_bar_at(float(t)), sched.alpha_bar_at(float(s))
        x0_hat = denoise(x, float(t))
        eps = (x - a_t**0.5 * x0_hat) / (1 - a_t) ** 0.5
        x = a_s**0.5 * x0_hat + (1 - a_s) ** 0.5 * eps
    back = sample_ddim(denoise, x, sched, forward.flip(0))  # lands on t = 0, where it started
    assert (back - x0).abs().max().item() < 0.05 * S  # first-order error both ways; a fresh sample is ~S away


def test_ddim_eta1_every_step_equals_ddpm_with_the_same_noise():
    sched = make_schedule(kind="linear", beta_start=1e-4, beta_end=0.02)
    timesteps = make_timesteps(sched, 1000, "leading")
    model_denoise = as_denoiser(lambda x, t: torch.tanh(x) * (1 + t / 1000), sched, "eps")
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    ddpm = sample_ddpm(model_denoise, x, sched, timesteps, gen=torch.Generator().manual_seed(3))
    ddim = sample_ddim(model_denoise, x, sched, timesteps, gen=torch.Generator().manual_seed(3), eta=1.0)
    torch.testing.assert_close(ddim, ddpm, rtol=1e-9, atol=1e-9)


def test_ddpm_with_skipped_steps_equals_ddim_eta1_too():
    sched = make_schedule()
    timesteps = make_timesteps(sched, 37, "trailing")
    denoise = gaussian_denoiser(sched)
    x = torch.randn(3, 1, 2, 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    a = sample_ddpm(denoise, x, sched, timesteps, gen=torch.Generator().manual_seed(5))
    b = sample_ddim(denoise, x, sched, timesteps, gen=torch.Generator().manual_seed(5), eta=1.0)
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_a_seed_gives_the_same_sample(name):
    sched = make_schedule()
    timesteps = make_timesteps(sched, 8, "trailing")
    x = torch.randn(1, 2, 4, 4, generator=torch.Generator().manual_seed(6))
    run = lambda: get_sampler(name)(gaussian_denoiser(sched), x, sched, timesteps, gen=torch.Generator().manual_seed(7))  # noqa: E731
    assert torch.equal(run(), run())


def toy_model(x, t, context=None, scale=None):
    """A stand-in network whose output depends on x, t and the conditioning."""
    return torch.tanh(x * context.view(-1, 1, 1, 1)) + 0.001 * t + scale.view(-1, 1, 1, 1)


def test_guidance_at_scale_1_equals_the_conditional_output():
    x = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(8))
    cond = {"context": torch.tensor([0.5, 1.5, -1.0]), "scale": torch.tensor([1.0, 2.0, 3.0])}
    uncond = {"context": torch.zeros(3), "scale": torch.zeros(3)}
    guided = classifier_free_guidance(toy_model, cond, uncond, scale=1.0)
    torch.testing.assert_close(guided(x, 500.0), toy_model(x, 500.0, **cond))


def test_guidance_extrapolates_linearly_and_makes_one_batched_call():
    calls = []

    def model(x, t, **cond):
        calls.append(x.shape[0])
        return toy_model(x, t, **cond)

    x = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(9))
    cond = {"context": torch.tensor([1.0, 2.0]), "scale": torch.tensor([1.0, -1.0])}
    uncond = {"context": torch.tensor([0.3, 0.3]), "scale": torch.tensor([0.0, 0.0])}
    out = classifier_free_guidance(model, cond, uncond, scale=7.5)(x, 10.0)
    assert calls == [4]
    c, u = toy_model(x, 10.0, **cond), toy_model(x, 10.0, **uncond)
    torch.testing.assert_close(out, u + 7.5 * (c - u))


def test_guidance_rescale_matches_the_conditional_std():
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(10))
    cond = {"context": torch.tensor([1.0, 2.0]), "scale": torch.tensor([0.5, 0.5])}
    uncond = {"context": torch.tensor([0.2, 0.2]), "scale": torch.tensor([0.0, 0.0])}
    c = toy_model(x, 0.0, **cond)
    out = classifier_free_guidance(toy_model, cond, uncond, scale=9.0, rescale=1.0)(x, 0.0)
    torch.testing.assert_close(out.std(dim=(1, 2, 3)), c.std(dim=(1, 2, 3)))
    plain = classifier_free_guidance(toy_model, cond, uncond, scale=9.0)(x, 0.0)
    half = classifier_free_guidance(toy_model, cond, uncond, scale=9.0, rescale=0.5)(x, 0.0)
    torch.testing.assert_close(half, 0.5 * out + 0.5 * plain)


def test_bad_sampler_input_is_refused():
    with pytest.raises(ValueError, match="unknown sampler 'euler_b'; choose one of .*'ddim'"):
        get_sampler("euler_b")
    sched = make_schedule()
    with pytest.raises(ValueError, match="at least 2 timesteps"):
        sample_ddim(gaussian_denoiser(sched), torch.zeros(1), sched, torch.tensor([500.0]))
    with pytest.raises(ValueError, match="strictly descending"):
        sample_ddim(gaussian_denoiser(sched), torch.zeros(1), sched, torch.tensor([10.0, 20.0, -1.0]))
    with pytest.raises(ValueError, match="guidance scale must be >= 0, got -1"):
        classifier_free_guidance(toy_model, {}, {}, scale=-1)
    with pytest.raises(ValueError, match="variance must be 'small' or 'large'"):
        sample_ddpm(gaussian_denoiser(sched), torch.zeros(1), sched, torch.tensor([1.0, -1.0]), variance="tiny")


def test_zero_terminal_snr_v_model_samples_from_pure_noise():
    """With alpha_bar_T = 0, x_T is pure noise and only a v (or x0) model is defined there;
    every sampler must stay finite from t = T - 1."""
    sched = make_schedule(zero_terminal_snr=True)
    x = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(11))

    def v_model(x_t, t):  # the exact v of data fixed at 0.5: v = sqrt(ab) eps - sqrt(1-ab) x0
        ab = sched.alpha_bar_at(t)
        eps = (x_t - ab**0.5 * 0.5) / (1 - ab) ** 0.5
        return ab**0.5 * eps - (1 - ab) ** 0.5 * 0.5

    denoise = as_denoiser(v_model, sched, "v")
    for name in SAMPLERS:
        out = get_sampler(name)(denoise, x, sched, make_timesteps(sched, 10, "trailing"),
                                gen=torch.Generator().manual_seed(0))
        assert torch.isfinite(out).all(), name
        assert out.sub(0.5).abs().max().item() < 1e-3 * (1 if name != "ddpm" else 100), name
    assert math.isinf(sched.sigma_at(999))
