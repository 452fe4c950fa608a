"""Classifier and CLIP guidance as denoiser wrappers, against the maths: the eps formula
eps' = eps - sqrt(1 - a_t) s grad log p(y | x_t) on models with known gradients (eps-, x0- and
v-prediction alike), gradients only inside the wrapper, and every sampler drawing from the tilted
distribution p(x0) l(x0) when the guiding score is exact."""

import math

import pytest
import torch

from ldmkit.diffusion import SAMPLERS, as_denoiser, make_schedule, make_timesteps, sample, v_from_x0_eps, x0_from_eps
from ldmkit.diffusion.classifier_guidance import classifier_guidance, clip_guidance, gradient_guidance

MEANS = torch.tensor([1.5, -1.0, 0.25], dtype=torch.float64)  # the classes' centres (every dimension)


def gaussian_logits(x: torch.Tensor, t) -> torch.Tensor:
    """logits_k = -|x - mu_k|^2 / 2: grad_x log p(y | x) = mu_y - sum_k p_k mu_k, in closed form."""
    centres = MEANS.to(x.dtype).view(1, -1, 1, 1, 1)
    return -0.5 * ((x[:, None] - centres) ** 2).flatten(2).sum(-1)                # (B, K)


def expected_gradient(x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    p = gaussian_logits(x, 0).softmax(-1)                                         # (B, K)
    return (MEANS[labels] - p @ MEANS).view(-1, 1, 1, 1).expand_as(x)


def eps_model(x, t):
    return 0.3 * x + 0.1 * math.cos(t / 300)


def model_predicting(prediction: str, sched):
    """The same network as eps_model, written as an eps-, x0- or v-predictor."""

    def model(x, t):
        a = sched.alpha_bar_at(t)
        eps = eps_model(x, t)
        x0 = x0_from_eps(x, eps, a)
        return {"eps": eps, "x0": x0, "v": v_from_x0_eps(x0, eps, a)}[prediction]

    return model


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
@pytest.mark.parametrize("t", [5.0, 400.0, 731.5, 999.0])
def test_the_guided_x0_is_the_eps_formula(prediction, t):
    sched, scale = make_schedule(), 2.5
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 2, 3, 3, generator=gen, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 1])
    denoise = as_denoiser(model_predicting(prediction, sched), sched, prediction)
    guided = classifier_guidance(denoise, gaussian_logits, labels, sched, scale)
    a = sched.alpha_bar_at(t)
    eps = eps_model(x, t) - (1 - a) ** 0.5 * scale * expected_gradient(x, labels)  # eps' (Dhariwal & Nichol)
    with torch.no_grad():
        torch.testing.assert_close(guided(x, t), (x - (1 - a) ** 0.5 * eps) / a**0.5)
        assert torch.equal(classifier_guidance(denoise, gaussian_logits, labels, sched, 0.0)(x, t), denoise(x, t))


def test_gradients_are_on_inside_the_wrapper_only():
    sched = make_schedule()
    classifier = torch.nn.Linear(2 * 9, 3).double()
    logits = lambda x, t: classifier(x.flatten(1))
    guided = classifier_guidance(as_denoiser(eps_model, sched), logits, torch.tensor([2, 0]), sched, 4.0)
    x = torch.randn(2, 2, 3, 3, dtype=torch.float64)
    with torch.no_grad():
        out = guided(x, 500.0)
        assert not torch.is_grad_enabled()
    assert not out.requires_grad and all(p.grad is None for p in classifier.parameters())
    assert not guided(x.requires_grad_(), 500.0).requires_grad  # detached even where the caller has gradients
    with pytest.raises(ValueError, match="2 labels for a batch of 3"):
        guided(torch.randn(3, 2, 3, 3, dtype=torch.float64), 500.0)
    with pytest.raises(ValueError, match=">= 0"):
        classifier_guidance(as_denoiser(eps_model, sched), logits, torch.tensor([0]), sched, -1.0)


def test_clip_guidance_takes_the_gradient_through_the_denoiser():
    """With x0_hat = sqrt(a) x_t and similarity -|x0 - m|^2 / 2, grad_x_t = sqrt(a) (m - x0): so
    x0' = x0 + s (1 - a) (m - x0)."""
    sched, scale, m = make_schedule(), 0.8, 0.6
    denoise = lambda x, t: sched.alpha_bar_at(t) ** 0.5 * x
    guided = clip_guidance(denoise, lambda x0: -0.5 * ((x0 - m) ** 2).flatten(1).sum(1), sched, scale)
    x = torch.randn(3, 1, 2, 2, dtype=torch.float64)
    for t in (10.0, 500.0, 990.0):
        a = sched.alpha_bar_at(t)
        with torch.no_grad():
            torch.testing.assert_close(guided(x, t), denoise(x, t) + scale * (1 - a) * (m - denoise(x, t)))


M, R = 2.0, 1.0  # a likelihood l(x0) = exp(-(x0 - M)^2 / (2 R^2)) tilting data x0 ~ N(0, 1)
TILTED_MEAN, TILTED_STD = M / (1 + R**2), (R**2 / (1 + R**2)) ** 0.5


def exact_score(x_t, x0, t, sched):
    """log E[l(x0) | x_t] for x0 ~ N(0, 1): x0 | x_t ~ N(sqrt(a) x_t, 1 - a), so up to a constant
    -(M - sqrt(a) x_t)^2 / (2 (R^2 + 1 - a)); its gradient is the exact guidance (scale 1)."""
    a = sched.alpha_bar_at(t)
    return (-((M - a**0.5 * x_t) ** 2) / (2 * (R**2 + 1 - a))).flatten(1).sum(1)


CASES = [("ddpm", 1000, "leading"), ("ddim", 200, "linspace"), ("euler", 200, "karras"),
         ("euler_a", 200, "karras"), ("heun", 25, "karras"), ("dpmpp_2m", 20, "karras"),
         ("dpmpp_2m_sde", 50, "karras")]


@pytest.mark.parametrize("name,steps,spacing", CASES)
def test_every_sampler_draws_the_tilted_distribution_under_exact_guidance(name, steps, spacing):
    """p(x0) l(x0) = N(M / (1 + R^2), R^2 / (1 + R^2)): the guided sampler returns its mean and std."""
    assert {n for n, _, _ in CASES} | {"lcm", "tcd"} == set(SAMPLERS)  # consistency samplers: tested below
    sched = make_schedule()
    timesteps = make_timesteps(sched, steps, spacing)
    a = sched.alpha_bar_at(float(timesteps[0]))
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(1024, 1, 4, 4, generator=gen, dtype=torch.float64)
    x = a**0.5 * TILTED_MEAN + (a * TILTED_STD**2 + 1 - a) ** 0.5 * noise  # the tilted q(x_t), exactly
    eps_of_gaussian = lambda x_t, t: (1 - sched.alpha_bar_at(t)) ** 0.5 * x_t  # the exact eps of N(0, 1) data
    wrapper = lambda denoise: gradient_guidance(denoise, lambda x_t, x0, t: exact_score(x_t, x0, t, sched), sched, 1.0)
    out = sample(eps_of_gaussian, x, sched, sampler=name, timesteps=timesteps, gen=gen, denoiser_wrapper=wrapper)
    assert abs(out.mean().item() - TILTED_MEAN) < 0.03
    assert abs(out.std().item() / TILTED_STD - 1) < 0.04


@pytest.mark.parametrize("name", ["lcm", "tcd"])
def test_consistency_samplers_run_guided(name):
    sched = make_schedule()
    eps_of_gaussian = lambda x_t, t: (1 - sched.alpha_bar_at(t)) ** 0.5 * x_t
    labels = torch.zeros(64, dtype=torch.long)
    x = torch.randn(64, 1, 2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    runs = {scale: sample(eps_of_gaussian, x, sched, sampler=name, steps=4, gen=torch.Generator().manual_seed(1),
                          denoiser_wrapper=lambda d, s=scale: classifier_guidance(d, gaussian_logits, labels, sched, s))
            for scale in (0.0, 3.0)}
    assert runs[3.0].mean() > runs[0.0].mean() + 0.2  # towards class 0's centre, +1.5
