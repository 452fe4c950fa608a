"""IDDPM's learned variance against closed forms and torch.distributions: the interpolation's
ends are beta_tilde and beta, the KL term is the Gaussian KL, the decoder term is the mass of a
bin under the Gaussian, and the hybrid loss trains the variance channels only through L_vlb."""

import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from ldmkit.diffusion import diffusion_loss, make_schedule
from ldmkit.diffusion.learned_variance import (
    discretized_gaussian_log_likelihood,
    learned_log_variance,
    posterior_log_variance,
    vlb_bits,
)

SCHED = make_schedule(kind="linear")


def test_the_interpolation_ends_are_beta_tilde_and_beta():
    t = torch.tensor([1, 10, 500, 999])
    low = learned_log_variance(-torch.ones(4, 1), SCHED, t).flatten()
    high = learned_log_variance(torch.ones(4, 1), SCHED, t).flatten()
    ab = SCHED.alpha_bar
    beta_tilde = (1 - ab[t - 1]) / (1 - ab[t]) * SCHED.betas[t]
    torch.testing.assert_close(low.double(), beta_tilde.log(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(high.double(), SCHED.betas[t].log(), rtol=1e-5, atol=1e-5)
    assert posterior_log_variance(SCHED, torch.tensor([0])) == posterior_log_variance(SCHED, torch.tensor([1]))


def test_kl_term_is_the_gaussian_kl_in_bits():
    g = torch.Generator().manual_seed(0)
    x0, eps, v = (torch.randn(3, 2, 4, 4, generator=g) for _ in range(3))
    v = v.tanh()
    t = torch.tensor([5, 300, 999])
    ab = SCHED.alpha_bar.float()[t].view(-1, 1, 1, 1)
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * torch.randn(x0.shape, generator=g)
    got = vlb_bits(x0, x_t, t, eps, v, SCHED)
    ab_prev = SCHED.alpha_bar.float()[t - 1].view(-1, 1, 1, 1)
    beta = 1 - ab / ab_prev
    def mean_of(x0_):  # DDPM eq. 7
        return ab_prev.sqrt() * beta / (1 - ab) * x0_ + (1 - beta).sqrt() * (1 - ab_prev) / (1 - ab) * x_t
    x0_hat = (x_t - (1 - ab).sqrt() * eps) / ab.sqrt()
    q = Normal(mean_of(x0), ((1 - ab_prev) / (1 - ab) * beta).sqrt())
    p = Normal(mean_of(x0_hat), learned_log_variance(v, SCHED, t).mul(0.5).exp())
    want = kl_divergence(q, p).flatten(1).mean(1) / math.log(2)
    torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-5)


def test_decoder_term_is_the_mass_of_the_bin():
    x = torch.tensor([-1.0, -0.2, 0.5, 1.0])
    mean, log_scale = torch.tensor([-0.9, -0.21, 0.4, 0.95]), torch.full((4,), math.log(0.05))
    got = discretized_gaussian_log_likelihood(x, mean, log_scale).exp()
    normal = Normal(mean, log_scale.exp())
    want = torch.stack([normal.cdf(x[0] + 1 / 255)[0], *(normal.cdf(x + 1 / 255) - normal.cdf(x - 1 / 255))[1:3],
                        1 - normal.cdf(x[3] - 1 / 255)[3]])
    torch.testing.assert_close(got, want, rtol=2e-2, atol=1e-3)  # IDDPM's tanh approximation of Phi


def test_hybrid_loss_trains_the_variance_through_the_vlb_only():
    x0 = torch.randn(4, 2, 4, 4, generator=torch.Generator().manual_seed(1))
    out = torch.zeros(4, 4, 4, 4, requires_grad=True)
    loss = diffusion_loss(lambda x_t, t: out * 1.0, x0, SCHED, learn_sigma=True, gen=torch.Generator().manual_seed(2))
    loss.backward()
    assert out.grad[:, 2:].abs().sum() > 0 and out.grad[:, :2].abs().sum() > 0
    mean_only = torch.zeros(4, 2, 4, 4, requires_grad=True)
    simple = diffusion_loss(lambda x_t, t: mean_only * 1.0, x0, SCHED, gen=torch.Generator().manual_seed(2))
    simple.backward()
    torch.testing.assert_close(out.grad[:, :2], mean_only.grad)  # the mean learns from L_simple alone
    assert loss.item() > simple.item()  # + L_vlb >= 0
    with pytest.raises(ValueError, match="eps prediction"):
        diffusion_loss(lambda x_t, t: out, x0, SCHED, prediction="v", learn_sigma=True)
