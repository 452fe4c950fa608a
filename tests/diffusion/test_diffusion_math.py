"""The forward process, posterior, parametrisations, schedules and loss, against the maths."""

import math

import pytest
import torch

from ldmkit.diffusion import (
    ScheduleConfig,
    diffusion_loss,
    eps_from_v,
    eps_from_x0,
    make_schedule,
    make_timesteps,
    min_snr_weight,
    prediction_to_x0,
    q_posterior,
    q_sample,
    training_target,
    v_from_x0_eps,
    x0_from_eps,
    x0_from_v,
)

SCHEDULES = [
    ScheduleConfig(kind="linear", beta_start=1e-4, beta_end=0.02),
    ScheduleConfig(kind="scaled_linear"),
    ScheduleConfig(kind="cosine"),
]


@pytest.mark.parametrize("config", SCHEDULES, ids=lambda c: c.kind)
def test_closed_form_equals_composed_one_step_transitions(config):
    """q(x_t|x_0) = N(sqrt(a_bar_t) x0, 1 - a_bar_t): compose x_t = sqrt(alpha_t) x_{t-1} +
    sqrt(beta_t) eps one step at a time, tracking the mean coefficient and the variance."""
    sched = make_schedule(config)
    mean_coef, var = torch.tensor(1.0, dtype=torch.float64), torch.tensor(0.0, dtype=torch.float64)
    for t in range(sched.num_timesteps):
        beta = sched.betas[t]
        mean_coef = mean_coef * (1 - beta).sqrt()
        var = (1 - beta) * var + beta
        if t in (0, 1, 10, 500, sched.num_timesteps - 1):
            assert mean_coef.item() == pytest.approx(sched.alpha_bar[t].sqrt().item(), rel=1e-9)
            assert var.item() == pytest.approx(1 - sched.alpha_bar[t].item(), rel=1e-9)


def test_q_sample_monte_carlo():
    sched = make_schedule()
    gen = torch.Generator().manual_seed(0)
    x0 = torch.full((200_000,), 0.8)
    for t in (10, 300, 900):
        ab = float(sched.alpha_bar[t])
        x_t = q_sample(x0, ab, torch.randn(x0.shape, generator=gen))
        assert x_t.mean().item() == pytest.approx(math.sqrt(ab) * 0.8, abs=0.01)
        assert x_t.var().item() == pytest.approx(1 - ab, rel=0.02)


def test_posterior_is_the_product_of_gaussians():
    """q(x_{t-1}|x_t,x0) ∝ q(x_t|x_{t-1}) q(x_{t-1}|x0): precisions add, means weight by them."""
    sched = make_schedule()
    gen = torch.Generator().manual_seed(1)
    x0, x_t = torch.randn(16, generator=gen, dtype=torch.float64), torch.randn(16, generator=gen, dtype=torch.float64)
    for t in (1, 50, 999):
        a_t, a_s = sched.alpha_bar[t], sched.alpha_bar[t - 1]
        alpha, beta = 1 - sched.betas[t], sched.betas[t]
        # as a function of y = x_{t-1}: N(x_t; sqrt(alpha) y, beta) and N(y; sqrt(a_s) x0, 1 - a_s)
        precision = alpha / beta + 1 / (1 - a_s)
        expected_mean = (alpha.sqrt() * x_t / beta + a_s.sqrt() * x0 / (1 - a_s)) / precision
        mean, var = q_posterior(x0, x_t, a_t, a_s)
        torch.testing.assert_close(mean, expected_mean, rtol=1e-10, atol=1e-12)
        assert float(var) == pytest.approx(float(1 / precision), rel=1e-10)


def test_posterior_at_the_first_step_is_x0():
    mean, var = q_posterior(torch.ones(3), torch.zeros(3), 0.9, 1.0)
    torch.testing.assert_close(mean, torch.ones(3))
    assert var == pytest.approx(0.0)


def test_eps_x0_v_round_trips():
    gen = torch.Generator().manual_seed(2)
    x0 = torch.randn(4, 3, 8, 8, generator=gen, dtype=torch.float64)
    eps = torch.randn(4, 3, 8, 8, generator=gen, dtype=torch.float64)
    ab = torch.tensor([0.999, 0.7, 0.2, 0.004], dtype=torch.float64).view(4, 1, 1, 1)
    x_t = q_sample(x0, ab, eps)
    v = v_from_x0_eps(x0, eps, ab)
    torch.testing.assert_close(x0_from_eps(x_t, eps, ab), x0)
    torch.testing.assert_close(eps_from_x0(x_t, x0, ab), eps)
    torch.testing.assert_close(x0_from_v(x_t, v, ab), x0)
    torch.testing.assert_close(eps_from_v(x_t, v, ab), eps)
    for prediction in ("eps", "x0", "v"):
        target = training_target(x0, eps, ab, prediction)
        torch.testing.assert_close(prediction_to_x0(target, x_t, ab, prediction), x0)
    # v is the rotation of (x0, eps) by phi with alpha = cos phi: |v|^2 + |x_t|^2 = |x0|^2 + |eps|^2
    torch.testing.assert_close(v**2 + x_t**2, x0**2 + eps**2)


def test_v_at_zero_terminal_snr_gives_x0():
    sched = make_schedule(zero_terminal_snr=True)
    assert sched.alpha_bar[-1].item() == 0.0
    x_t, v = torch.randn(5), torch.randn(5)
    torch.testing.assert_close(prediction_to_x0(v, x_t, 0.0, "v"), -v)


def test_zero_terminal_snr_keeps_the_first_alpha_bar():
    plain, rescaled = make_schedule(), make_schedule(zero_terminal_snr=True)
    assert rescaled.alpha_bar[0].item() == pytest.approx(plain.alpha_bar[0].item(), rel=1e-12)
    assert (rescaled.alpha_bar[1:] < rescaled.alpha_bar[:-1]).all()


def test_cosine_schedule_follows_its_formula():
    sched = make_schedule(kind="cosine")
    f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    for t in (0, 100, 500, 900):
        assert sched.alpha_bar[t].item() == pytest.approx(f((t + 1) / 1000) / f(0), rel=1e-9)


def test_timestep_spacings():
    sched = make_schedule()
    assert make_timesteps(sched, 4, "leading", offset=1).tolist() == [751, 501, 251, 1, -1]
    assert make_timesteps(sched, 4, "trailing").tolist() == [999, 749, 499, 249, -1]
    assert make_timesteps(sched, 4, "linspace").tolist() == [999, 666, 333, 0, -1]
    assert make_timesteps(sched, 2, "leading", final=0).tolist() == [500, 0, 0]


def test_karras_sigmas_follow_eq5_and_interpolation_inverts():
    sched = make_schedule()
    ts = make_timesteps(sched, 6, "karras")
    sigmas = torch.tensor([sched.sigma_at(float(t)) for t in ts[:-1]], dtype=torch.float64)
    smax, smin = sched.sigmas[-1].item(), sched.sigmas[0].item()
    ramp = torch.linspace(0, 1, 6, dtype=torch.float64)
    expected = (smax ** (1 / 7) + ramp * (smin ** (1 / 7) - smax ** (1 / 7))) ** 7
    torch.testing.assert_close(sigmas, expected, rtol=1e-9, atol=0)
    for t in (0.0, 3.25, 417.5, 998.9):
        assert sched.t_at_sigma(sched.sigma_at(t)) == pytest.approx(t, abs=1e-9)


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_bad_steps_are_refused(bad):
    with pytest.raises(ValueError, match="steps must be an integer >= 1"):
        make_timesteps(make_schedule(), bad)


def test_bad_schedule_and_spacing_names_are_refused():
    with pytest.raises(ValueError, match="unknown schedule kind 'quadratic'.*linear"):
        ScheduleConfig(kind="quadratic")
    with pytest.raises(ValueError, match="unknown timestep spacing 'even'.*leading"):
        make_timesteps(make_schedule(), 10, "even")
    with pytest.raises(ValueError, match="offset=5 puts timesteps outside 0..999"):
        make_timesteps(make_schedule(), 1000, "leading", offset=5)


def test_min_snr_weights_make_every_parametrisation_the_same_loss():
    """eps-loss * SNR = x0-loss and v-loss * (SNR + 1) = x0-loss, so the three weighted losses
    must all equal min(SNR, gamma) * ||x0_hat - x0||^2 for the same x0 error."""
    ab = torch.tensor([0.999, 0.9, 0.5, 0.01], dtype=torch.float64)
    snr = ab / (1 - ab)
    gamma = 5.0
    x0_err = torch.tensor([0.3, -0.2, 0.1, 0.05], dtype=torch.float64)  # x0_hat - x0
    eps_err = -x0_err * (ab / (1 - ab)).sqrt()  # from eps = (x_t - sqrt(ab) x0) / sqrt(1 - ab)
    v_err = -x0_err / (1 - ab).sqrt()  # x0 = sqrt(ab) x_t - sqrt(1 - ab) v
    expected = snr.clamp(max=gamma) * x0_err**2
    torch.testing.assert_close(min_snr_weight(ab, gamma, "x0") * x0_err**2, expected)
    torch.testing.assert_close(min_snr_weight(ab, gamma, "eps") * eps_err**2, expected)
    torch.testing.assert_close(min_snr_weight(ab, gamma, "v") * v_err**2, expected)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_loss_is_zero_for_the_exact_target_and_positive_otherwise(prediction):
    """A 'network' that knows x0 returns the exact target for each parametrisation."""
    sched = make_schedule()
    x0 = torch.randn(8, 2, 4, 4, generator=torch.Generator().manual_seed(3))

    def oracle(x_t, t):
        ab = sched.alpha_bar[t].float().view(-1, 1, 1, 1)
        eps = eps_from_x0(x_t, x0, ab)
        return training_target(x0, eps, ab, prediction)

    gen = torch.Generator().manual_seed(4)
    assert diffusion_loss(oracle, x0, sched, prediction, gen=gen).item() < 1e-8
    assert diffusion_loss(oracle, x0, sched, prediction, min_snr_gamma=5.0, gen=gen).item() < 1e-8
    zero = lambda x_t, t: torch.zeros_like(x_t)  # noqa: E731
    assert diffusion_loss(zero, x0, sched, prediction, gen=gen).item() > 1e-3


def test_offset_noise_adds_a_per_channel_constant():
    """With x0 = 0, x_t = sqrt(1 - a_bar) eps: the spread of its per-channel spatial means is
    about 1/8 * sqrt(1 - a_bar) for plain noise on 8x8, and ~0.5 * sqrt(1 - a_bar) with offset 0.5."""
    sched = make_schedule()

    def channel_mean_spread(offset):
        seen = []
        capture = lambda x_t, t: seen.append(x_t) or torch.zeros_like(x_t)  # noqa: E731
        x0 = torch.zeros(512, 3, 8, 8)
        diffusion_loss(capture, x0, sched, "eps", offset_noise=offset, gen=torch.Generator().manual_seed(5))
        return seen[0].mean(dim=(2, 3)).std().item()

    assert channel_mean_spread(0.0) < 0.15
    assert channel_mean_spread(0.5) > 0.3


def test_unknown_prediction_is_refused():
    with pytest.raises(ValueError, match="unknown prediction type 'score'.*eps"):
        diffusion_loss(lambda x, t: x, torch.zeros(1, 1, 2, 2), make_schedule(), "score")
