"""Consistency-model sampling (LCM, TCD) against mathematics: the boundary condition, the exact
flow map of Gaussian data (which an ideal consistency model is) giving the data distribution in
1 step and in 4, and the guidance embedding's closed form."""

import math

import pytest
import torch

from ldmkit.diffusion import get_sampler, make_schedule, sampler_timesteps
from ldmkit.diffusion.consistency import boundary_scalings, consistency_timesteps
from ldmkit.diffusion.sampling import SamplingConfig
from ldmkit.nets.embeddings import guidance_embedding

MU, S = 0.3, 0.6  # data: x0 ~ N(MU, S^2)


def flow_map_denoiser(sched):
    """The probability-flow ODE's map from x_t to its origin for Gaussian data: an affine map that
    keeps the standardised value, (x_t - m_t) / s_t = (x0 - MU) / S. Not the posterior mean."""

    def denoise(x_t, t):
        ab = sched.alpha_bar_at(t)
        return MU + S * (x_t - ab**0.5 * MU) / (ab * S**2 + 1 - ab) ** 0.5

    return denoise


def test_boundary_condition_f_of_x_at_0_is_x():
    assert boundary_scalings(0) == (1.0, 0.0)
    c_skip, c_out = boundary_scalings(999)
    assert c_skip < 1e-8 and abs(c_out - 1) < 1e-8  # far from 0: the network's x0 alone
    c_skip, c_out = boundary_scalings(0.05)  # k t = 0.5 = sigma_data: halfway
    assert math.isclose(c_skip, 0.5) and math.isclose(c_out, 0.5**0.5)


def test_timesteps_follow_the_distillation_grid():
    assert consistency_timesteps(1000, 4) == [999, 759, 499, 259]
    assert consistency_timesteps(1000, 1) == [999]
    assert consistency_timesteps(1000, 50) == list(range(999, 0, -20))
    assert consistency_timesteps(1000, 2, strength=0.5) == [499, 259]
    ts = sampler_timesteps(make_schedule(), "lcm", 4, SamplingConfig(original_inference_steps=50))
    assert ts.tolist() == [999, 759, 499, 259, -1]
    assert sampler_timesteps(make_schedule(), "tcd", 2).tolist() == [999, 499, 0]


@pytest.mark.parametrize("steps, strength, words", [(51, 1.0, "at most original_inference_steps = 50"),
                                                    (0, 1.0, "whole number >= 1"),
                                                    (30, 0.5, "fewer than the 30 steps")])
def test_bad_step_counts_say_why(steps, strength, words):
    with pytest.raises(ValueError, match=words):
        consistency_timesteps(1000, steps, strength=strength)


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_an_exact_consistency_function_gives_the_data_distribution(steps):
    sched = make_schedule()
    timesteps = sampler_timesteps(sched, "lcm", steps)
    gen = torch.Generator().manual_seed(0)
    ab = sched.alpha_bar_at(float(timesteps[0]))
    x = ab**0.5 * MU + (ab * S**2 + 1 - ab) ** 0.5 * torch.randn(4096, 1, 4, 4, generator=gen, dtype=torch.float64)
    out = get_sampler("lcm")(flow_map_denoiser(sched), x, sched, timesteps, gen=gen)
    assert abs(out.mean().item() - MU) < 0.01 and abs(out.std().item() / S - 1) < 0.015


def test_tcd_without_stochasticity_is_ddim():
    """gamma = 0: s' = s, no fresh noise: each step is the DDIM (eta = 0) jump t -> s."""
    sched = make_schedule()
    timesteps = sampler_timesteps(sched, "tcd", 4)
    x = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    denoise = flow_map_denoiser(sched)
    tcd = get_sampler("tcd")(denoise, x, sched, timesteps, gen=torch.Generator().manual_seed(2), gamma=0.0)
    ddim = get_sampler("ddim")(denoise, x, sched, timesteps, eta=0.0)
    torch.testing.assert_close(tcd, ddim, rtol=1e-12, atol=1e-12)


def test_guidance_embedding_closed_form():
    w = torch.tensor([1.0, 8.5])
    e = guidance_embedding(w, 6)
    assert e.shape == (2, 6) and torch.equal(e[0], torch.tensor([0.0, 0, 0, 1, 1, 1]))  # scale 1: w = 0
    frequencies = torch.tensor([1.0, 10000 ** -0.5, 1e-4])  # exp(-ln(1e4) k / (half - 1))
    torch.testing.assert_close(e[1, :3], torch.sin(7500 * frequencies))
    assert guidance_embedding(w, 7).shape == (2, 7)  # odd sizes padded with a zero
