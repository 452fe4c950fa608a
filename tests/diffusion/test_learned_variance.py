"""IDDPM's learned variance against closed forms and torch.distributions: the interpolation's
ends are beta_tilde and beta, the KL term is the Gaussian KL, the decoder term is the mass of a
bin under the Gaussian, and the hybrid loss trains the variance channels only through L_vlb.
Sampling with it: ancestral DDPM agrees step by step with diffusers' "learned_range" (all T and
respaced), its ends are the fixed small and large variances, guidance leaves v the conditional
branch's, and a learn_sigma DiT pipeline uses v under "ddpm" only."""

import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from ldmkit.diffusion import (
    Schedule,
    ScheduleConfig,
    as_denoiser,
    classifier_free_guidance,
    diffusion_loss,
    make_schedule,
    make_timesteps,
    sample,
    sample_ddpm,
)
from ldmkit.diffusion.learned_variance import (
    discretized_gaussian_log_likelihood,
    learned_log_variance,
    posterior_log_variance,
    step_log_variance,
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


# ---- sampling with the learned variance ---------------------------------------------------------

DIT_BETAS = dict(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02)  # DiT's


def eps_v_model(x, t):
    """A stand-in DiT: eps whose implied x0 stays bounded, and variance channels v in (-1, 1),
    both smooth deterministic functions of x and t; (B, 2C, H, W)."""
    t = float(t)
    ab = float(_DIT_ALPHA_BAR[int(t)])
    x0_hat = 0.8 * torch.tanh(1.5 * x + 0.3 * math.sin(t / 137))
    eps = (x - ab**0.5 * x0_hat) / (1 - ab) ** 0.5
    v = torch.tanh(2 * x + math.cos(t / 61))
    return torch.cat([eps, v], dim=1)


_DIT_ALPHA_BAR = make_schedule(kind="linear", beta_start=1e-4, beta_end=0.02).alpha_bar


def noise(seed=0, shape=(2, 3, 4, 4)):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def ldmkit_trajectory(x, sched, timesteps, seed=1, **options):
    trajectory = []
    sample(eps_v_model, x, sched, sampler="ddpm", timesteps=timesteps, gen=torch.Generator().manual_seed(seed),
           callback=lambda i, x_i, x0: trajectory.append(x_i), **options)
    return trajectory


@pytest.mark.parametrize("steps", [1000, 50])
def test_ddpm_with_the_learned_variance_matches_diffusers_learned_range(steps):
    """Step by step, the same noise: diffusers' DDPMScheduler(variance_type="learned_range"), whose
    prev_t makes a 50-step run a respaced chain (beta and beta_tilde of each strided step)."""
    diffusers = pytest.importorskip("diffusers")
    ref = diffusers.DDPMScheduler(**DIT_BETAS, variance_type="learned_range", clip_sample=False)
    ref.set_timesteps(steps)  # leading: ends at t = 0, where neither side adds noise
    for name in ("alphas_cumprod", "alphas", "betas", "one"):
        setattr(ref, name, getattr(ref, name).double())  # compare the algorithms, not float32 round-off
    sched = Schedule(alpha_bar=ref.alphas_cumprod)
    x = noise()
    gen, theirs, xd = torch.Generator().manual_seed(1), [], x.clone()
    for t in ref.timesteps:
        xd = ref.step(eps_v_model(xd, t), t, xd, generator=gen).prev_sample
        theirs.append(xd)
    timesteps = torch.cat([ref.timesteps.double(), torch.tensor([-1.0], dtype=torch.float64)])
    ours = ldmkit_trajectory(x, sched, timesteps, learn_sigma=True)
    assert len(ours) == len(theirs) == steps
    for i, (a, b) in enumerate(zip(ours, theirs)):
        assert (a - b).abs().max() < 1e-5 * max(1.0, b.abs().max().item()), f"step {i}"
    # the variance was used: the fixed ones give other samples from the same noise
    for fixed in ("small", "large"):
        other = ldmkit_trajectory(x, sched, timesteps, learn_sigma=True, variance=fixed)[-1]
        assert (other - ours[-1]).abs().max() > 1e-3


@pytest.mark.parametrize("steps", [1000, 20])
def test_v_plus_one_is_the_large_variance_and_minus_one_the_small(steps):
    sched = Schedule(alpha_bar=_DIT_ALPHA_BAR)
    timesteps = make_timesteps(sched, steps, "trailing")
    denoise = as_denoiser(lambda x, t: eps_v_model(x, t)[:, :3], sched)
    for v, fixed in ((1.0, "large"), (-1.0, "small")):
        learned = sample_ddpm(denoise, noise(), sched, timesteps, gen=torch.Generator().manual_seed(1),
                              variance=lambda x, t, v=v: torch.full_like(x, v))
        want = sample_ddpm(denoise, noise(), sched, timesteps, gen=torch.Generator().manual_seed(1), variance=fixed)
        torch.testing.assert_close(learned, want, rtol=1e-9, atol=1e-9)


def test_a_one_step_variance_is_the_per_timestep_one():
    """With s = t - 1, the strided step's log-variance is learned_log_variance's (training's)."""
    v = torch.linspace(-1, 1, 5).view(5, 1)
    for t in (1, 2, 300, 999):
        ab = SCHED.alpha_bar
        got = step_log_variance(v, float(ab[t]), float(ab[t - 1]))
        want = learned_log_variance(v, SCHED, torch.full((5,), t))
        torch.testing.assert_close(got.float(), want, rtol=1e-5, atol=1e-5)


def test_guidance_combines_the_prediction_and_keeps_the_conditional_variance():
    def model(x, t, y):  # (eps, v) different under each label
        return torch.cat([x * y.view(-1, 1, 1, 1), torch.tanh(x + y.view(-1, 1, 1, 1))], dim=1)

    x = noise(shape=(2, 3, 4, 4)).float()
    cond, uncond = {"y": torch.tensor([1.0, 2.0])}, {"y": torch.tensor([5.0, 5.0])}
    out = classifier_free_guidance(model, cond, uncond, 3.0, guided_channels=3)(x, 10.0)
    c, u = model(x, 10.0, **cond), model(x, 10.0, **uncond)
    torch.testing.assert_close(out[:, :3], u[:, :3] + 3.0 * (c[:, :3] - u[:, :3]))
    torch.testing.assert_close(out[:, 3:], c[:, 3:])


def test_only_ddpm_uses_the_variance_channels():
    """With learn_sigma, every other sampler is the sampler of the prediction channels; DDPM
    evaluates the network once a step for both."""
    sched = Schedule(alpha_bar=_DIT_ALPHA_BAR)
    timesteps = make_timesteps(sched, 10, "trailing")
    calls = []

    def counted(x, t):
        calls.append(t)
        return eps_v_model(x, t)

    for name in ("ddim", "euler", "dpmpp_2m"):
        got = sample(counted, noise(), sched, sampler=name, timesteps=timesteps, learn_sigma=True)
        want = sample(lambda x, t: eps_v_model(x, t)[:, :3], noise(), sched, sampler=name, timesteps=timesteps)
        assert torch.equal(got, want)
    calls.clear()
    sample(counted, noise(), sched, sampler="ddpm", timesteps=timesteps, learn_sigma=True, gen=torch.Generator())
    assert len(calls) == 10


def tiny_dit_pipeline(variance_bias: float, learn_sigma: bool = True):
    """A class-conditioned tiny learn_sigma DiT whose variance channels are exactly `variance_bias`
    (their rows of the final linear zeroed), on a tiny autoencoder; the same weights for the
    prediction whatever the bias. learn_sigma=False: the same prediction network without v."""
    from dataclasses import replace

    from ldmkit.autoencoders import AE_PRESETS, Autoencoder
    from ldmkit.model import LatentDiffusionConfig, ModelParts
    from ldmkit.nets.dit import DiT
    from ldmkit.nets.dit_config import DIT_PRESETS
    from ldmkit.pipelines import Pipeline

    config = replace(DIT_PRESETS["tiny"], learn_sigma=True)
    torch.manual_seed(0)
    net = DiT(config)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.05)  # not the all-zero output of initialisation
        linear = net.final_layer.linear  # rows: (p, q, channel), channel fastest (unpatchify)
        is_variance = torch.arange(linear.out_features) % config.output_channels >= config.out_channels
        linear.weight[is_variance] = 0
        linear.bias[is_variance] = variance_bias
    if not learn_sigma:
        mean_net = DiT(replace(config, learn_sigma=False))
        state = net.state_dict()
        state["final_layer.linear.weight"] = linear.weight[~is_variance]
        state["final_layer.linear.bias"] = linear.bias[~is_variance]
        mean_net.load_state_dict(state)
        net, config = mean_net, mean_net.config
    torch.manual_seed(1)
    autoencoder = Autoencoder(AE_PRESETS["tiny"])  # f = 2: 16 px images, 8 x 8 latents
    model = LatentDiffusionConfig(net=config, conditioning="class", image_size=16,
                                  schedule=ScheduleConfig(kind="linear", beta_start=1e-4, beta_end=0.02))
    names = [f"class {k}" for k in range(10)]
    return Pipeline(ModelParts(net, autoencoder, model, None, names, name="dit-tiny"))


def test_a_learn_sigma_dit_pipeline_samples_ddpm_with_its_variance(one_thread):
    small, large = tiny_dit_pipeline(-1.0), tiny_dit_pipeline(1.0)
    run = dict(prompt=["class 3", "class 7"], steps=4, seed=1, guidance=4.0, output="latent")
    a, b = small.generate(sampler="ddpm", **run), large.generate(sampler="ddpm", **run)
    assert torch.isfinite(a).all() and (a - b).abs().max() > 1e-3  # the variance channels are used
    assert torch.equal(small.generate(sampler="ddim", **run), large.generate(sampler="ddim", **run))
    # v = -1 is beta_tilde: the DDPM of the same prediction network without variance channels
    torch.testing.assert_close(a, tiny_dit_pipeline(0.0, learn_sigma=False).generate(sampler="ddpm", **run),
                               rtol=1e-4, atol=1e-4)
