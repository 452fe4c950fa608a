"""Agreement with an independent implementation: diffusers' schedulers (a test-only dependency).

Both sides get the same model function of (x_t, t), the same timesteps and the same random
generator; trajectories must agree within 1e-5 at every step. Both sides compute in float64
(diffusers' tables are cast to it) so that the comparison measures the algorithms, not
round-off: in float32, diffusers' own error reaches ~1.1e-5 against float64 on a 20-step Euler
run where ldmkit's float32 stays within 4e-7. Where diffusers computes in float32 whatever the
input (Euler ancestral, SDE-DPM-Solver++), the test says so and allows float32 round-off.
"""

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from ldmkit.diffusion import Schedule, as_denoiser, get_sampler, make_schedule, make_timesteps, samplers  # noqa: E402

SD = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
TOL = 1e-5


_ALPHA_BAR = make_schedule().alpha_bar


def eps_model(x, t):
    """A smooth stand-in network depending on x and t, whose implied x0 is bounded like a real
    denoiser's (so that long chains stay O(1) instead of amplifying round-off)."""
    t = float(t)
    lo = int(t)
    ab = float(torch.lerp(_ALPHA_BAR[lo], _ALPHA_BAR[min(lo + 1, 999)], t - lo))
    x0_hat = 0.8 * torch.tanh(1.5 * x + 0.3 * torch.sin(torch.tensor(t / 137.0)))
    return (x - ab**0.5 * x0_hat) / (1 - ab) ** 0.5


def start(shape=(2, 4, 8, 8), seed=0, dtype=torch.float64):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def table(scheduler):
    """ldmkit's schedule from the reference's own alpha_bar table: diffusers builds it in
    float32 (1e-7..1e-6 off the float64 values; test_schedules_and_spacings_match checks them),
    and the samplers are compared here, not the tables."""
    return Schedule(alpha_bar=scheduler.alphas_cumprod.double())


def in_float64(scheduler):
    """Cast a diffusers scheduler's tables to float64 (set_timesteps makes sigmas afresh, so
    call this after it)."""
    for name in ("alphas_cumprod", "alphas", "betas", "sigmas", "final_alpha_cumprod", "one"):
        value = getattr(scheduler, name, None)
        if isinstance(value, torch.Tensor):
            setattr(scheduler, name, value.double())
    return scheduler


def run_diffusers(scheduler, x_vp, steps, seed=1, scale_input=False):
    """Diffusers' own loop. Sigma-space schedulers keep x / sqrt(alpha_bar); we record every
    state in the variance-preserving scale to compare with ldmkit's trajectory."""
    scheduler.set_timesteps(steps)
    if x_vp.dtype == torch.float64:
        in_float64(scheduler)
    sigmas = getattr(scheduler, "sigmas", None)
    x = x_vp * (1 + sigmas[0] ** 2) ** 0.5 if scale_input else x_vp.clone()
    gen = torch.Generator().manual_seed(seed)
    trajectory = []
    for i, t in enumerate(scheduler.timesteps):
        model_input = scheduler.scale_model_input(x, t)
        x = scheduler.step(eps_model(model_input, t), t, x, generator=gen).prev_sample
        trajectory.append(x / (1 + sigmas[i + 1] ** 2) ** 0.5 if scale_input else x)
    return trajectory


def run_ldmkit(name, x_vp, timesteps, sched, seed=1, **options):
    trajectory = []
    record = lambda i, x, x0: trajectory.append(x)  # noqa: E731
    gen = torch.Generator().manual_seed(seed)
    get_sampler(name)(as_denoiser(eps_model, sched, "eps"), x_vp, sched, timesteps, gen=gen, callback=record, **options)
    return trajectory


def assert_same_trajectory(ours, theirs, tol=TOL):
    assert len(ours) == len(theirs)
    for i, (a, b) in enumerate(zip(ours, theirs)):
        err = (a - b).abs().max().item() / max(1.0, b.abs().max().item())
        assert err < tol, f"step {i}: relative difference {err:.2e}"


def with_final(timesteps, final=-1.0):
    return torch.cat([timesteps.double(), torch.tensor([final], dtype=torch.float64)])


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_schedules_and_spacings_match(spacing):
    for kind, extra in [
        ("scaled_linear", {}), ("linear", dict(beta_start=1e-4, beta_end=0.02)), ("squaredcos_cap_v2", {})
    ]:
        for zero_snr in (False, True):
            cfg = dict(SD, beta_schedule=kind, rescale_betas_zero_snr=zero_snr, **extra)
            ref = diffusers.DDIMScheduler(**cfg, timestep_spacing=spacing,
                                          steps_offset=1 if spacing == "leading" else 0)
            ours = make_schedule(
                kind={"squaredcos_cap_v2": "cosine"}.get(kind, kind),
                beta_start=cfg["beta_start"], beta_end=cfg["beta_end"], zero_terminal_snr=zero_snr,
            )
            torch.testing.assert_close(ours.alpha_bar.float(), ref.alphas_cumprod, rtol=1e-5, atol=1e-7)
            for steps in (1, 7, 20, 50):
                ref.set_timesteps(steps)
                mine = make_timesteps(ours, steps, spacing, offset=1 if spacing == "leading" else 0)
                assert mine[:-1].long().tolist() == ref.timesteps.tolist()


@pytest.mark.parametrize("steps", [10, 25])
@pytest.mark.parametrize("final_alpha_one", [True, False])
@pytest.mark.parametrize("eta", [0.0, 0.7])
def test_ddim(steps, final_alpha_one, eta):
    ref = diffusers.DDIMScheduler(**SD, clip_sample=False, set_alpha_to_one=final_alpha_one, steps_offset=1)
    sched = table(ref)
    ref.set_timesteps(steps)
    in_float64(ref)
    ts = with_final(ref.timesteps, -1 if final_alpha_one else 0)  # where diffusers' last step lands
    x = start()
    gen = torch.Generator().manual_seed(1)
    theirs, xd = [], x.clone()
    for t in ref.timesteps:
        xd = ref.step(eps_model(xd, t), t, xd, eta=eta, generator=gen).prev_sample
        theirs.append(xd)
    assert_same_trajectory(run_ldmkit("ddim", x, ts, sched, eta=eta), theirs)


@pytest.mark.parametrize("variance", ["small", "large"])
def test_ddpm(variance):
    ref = diffusers.DDPMScheduler(**SD, clip_sample=False, variance_type=f"fixed_{variance}")
    sched = table(ref)
    ref.set_timesteps(50)  # leading, offset 0: ends at t = 0 so neither side adds noise at the end
    assert_same_trajectory(
        run_ldmkit("ddpm", start(), with_final(ref.timesteps), sched, variance=variance),
        run_diffusers(ref, start(), 50),
    )


def test_ddpm_all_1000_steps():
    ref = diffusers.DDPMScheduler(**SD, clip_sample=False)
    ref.set_timesteps(1000)
    assert_same_trajectory(
        run_ldmkit("ddpm", start((1, 2, 4, 4)), with_final(ref.timesteps), table(ref)),
        run_diffusers(ref, start((1, 2, 4, 4)), 1000),
    )


SIGMA_SAMPLERS = [
    ("euler", diffusers.EulerDiscreteScheduler),
    ("euler_a", diffusers.EulerAncestralDiscreteScheduler),
]


@pytest.mark.parametrize("name,cls", SIGMA_SAMPLERS)
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_euler_family(name, cls, spacing, monkeypatch):
    ref = cls(**SD, timestep_spacing=spacing, steps_offset=1 if spacing == "leading" else 0)
    ref.set_timesteps(20)
    ts = with_final(ref.timesteps)
    if name == "euler":
        assert_same_trajectory(run_ldmkit(name, start(), ts, table(ref)),
                               run_diffusers(ref, start(), 20, scale_input=True))
        return
    # diffusers' Euler ancestral casts the sample to float32 in every step: compare in float32,
    # allowing float32 round-off, and check that ldmkit is the closer of the two to float64
    x = start(dtype=torch.float32)
    ours, theirs = run_ldmkit(name, x, ts, table(ref)), run_diffusers(ref, x, 20, scale_input=True)
    float32_noise = lambda x, gen: torch.randn(x.shape, generator=gen).to(x.dtype)  # noqa: E731
    monkeypatch.setattr(samplers, "noise_like", float32_noise)  # the same draws, for a float64 run
    exact = run_ldmkit(name, x.double(), ts, table(ref))
    assert_same_trajectory(ours, theirs, tol=3e-5)
    ours_err = max((a - b).abs().max().item() for a, b in zip(ours, exact))
    theirs_err = max((a - b).abs().max().item() for a, b in zip(theirs, exact))
    assert ours_err < theirs_err


def test_euler_karras_sigmas():
    ref = diffusers.EulerDiscreteScheduler(**SD, use_karras_sigmas=True, timestep_spacing="leading", steps_offset=1)
    ref.set_timesteps(15)
    sched = table(ref)
    # diffusers takes the Karras range from its own spaced sigmas, not the whole schedule's
    ts = make_timesteps(sched, 15, "karras", sigma_min=float(ref.sigmas[-2]), sigma_max=float(ref.sigmas[0]))
    torch.testing.assert_close(ts[:-1].float(), ref.timesteps, rtol=0, atol=1e-3)
    torch.testing.assert_close(torch.tensor([sched.sigma_at(float(t)) for t in ts]).float(), ref.sigmas,
                               rtol=1e-5, atol=1e-6)
    assert_same_trajectory(run_ldmkit("euler", start(), ts, sched), run_diffusers(ref, start(), 15, scale_input=True))


def test_heun():
    ref = diffusers.HeunDiscreteScheduler(**SD, timestep_spacing="leading", steps_offset=1)
    ref.set_timesteps(12)
    in_float64(ref)
    ts = with_final(ref.timesteps[::2])  # diffusers repeats each timestep after the first for the correction
    x = start()
    theirs, xd = [], x * (1 + ref.sigmas[0] ** 2) ** 0.5
    for i, t in enumerate(ref.timesteps):
        xd = ref.step(eps_model(ref.scale_model_input(xd, t), t), t, xd).prev_sample
        if ref.state_in_first_order or i == len(ref.timesteps) - 1:  # a whole Heun step is done
            theirs.append(xd / (1 + ref.sigmas[ref.step_index] ** 2) ** 0.5)
    assert_same_trajectory(run_ldmkit("heun", x, ts, table(ref)), theirs)


@pytest.mark.parametrize("name,algorithm", [("dpmpp_2m", "dpmsolver++"), ("dpmpp_2m_sde", "sde-dpmsolver++")])
@pytest.mark.parametrize("steps", [8, 20])
def test_dpm_solver_pp(name, algorithm, steps):
    ref = diffusers.DPMSolverMultistepScheduler(
        **SD, algorithm_type=algorithm, solver_order=2, timestep_spacing="leading", steps_offset=1,
        final_sigmas_type="zero",
    )
    ref.set_timesteps(steps)
    x = start(dtype=torch.float32)  # diffusers computes this one in float32 and draws float32 noise
    assert_same_trajectory(run_ldmkit(name, x, with_final(ref.timesteps), table(ref)), run_diffusers(ref, x, steps))


def test_dpm_solver_pp_karras_sigmas():
    """diffusers' DPMSolverMultistepScheduler rounds the model's timesteps under Karras sigmas
    while stepping with the unrounded sigmas; ldmkit keeps t and sigma consistent. So here the
    model ignores t, and the solvers are compared on the same Karras sigmas."""
    ref = diffusers.DPMSolverMultistepScheduler(**SD, use_karras_sigmas=True, final_sigmas_type="zero")
    ref.set_timesteps(12)
    sched = table(ref)
    ts = make_timesteps(sched, 12, "karras", sigma_min=float(ref.sigmas[-2]), sigma_max=float(ref.sigmas[0]))
    model = lambda x, t: torch.tanh(0.8 * x) * 0.9  # noqa: E731
    x = start()
    theirs, xd = [], x.clone()
    for t in ref.timesteps:
        xd = ref.step(model(xd, t), t, xd).prev_sample
        theirs.append(xd)
    ours = []
    get_sampler("dpmpp_2m")(as_denoiser(model, sched, "eps"), x, sched, ts, callback=lambda i, x, x0: ours.append(x))
    assert_same_trajectory(ours, theirs)


@pytest.mark.parametrize("prediction", ["v_prediction", "sample"])
def test_v_and_x0_models_through_ddim(prediction):
    ref = diffusers.DDIMScheduler(**SD, clip_sample=False, prediction_type=prediction, steps_offset=1)
    sched = table(ref)
    ref.set_timesteps(10)
    in_float64(ref)
    x = start()
    theirs, xd = [], x.clone()
    for t in ref.timesteps:
        xd = ref.step(eps_model(xd, t), t, xd).prev_sample
        theirs.append(xd)
    ours = []
    denoise = as_denoiser(eps_model, sched, {"v_prediction": "v", "sample": "x0"}[prediction])
    get_sampler("ddim")(denoise, x, sched, with_final(ref.timesteps), callback=lambda i, x, x0: ours.append(x))
    assert_same_trajectory(ours, theirs)


@pytest.mark.parametrize("steps", [1, 2, 4, 8])
def test_lcm(steps):
    ref = diffusers.LCMScheduler(**SD)
    sched = table(ref)
    ref.set_timesteps(steps)
    in_float64(ref)
    ts = with_final(ref.timesteps, -1)
    x = start()
    gen = torch.Generator().manual_seed(1)
    theirs, xd = [], x.clone()
    for t in ref.timesteps:
        xd, denoised = ref.step(eps_model(xd, t), t, xd, generator=gen, return_dict=False)
        theirs.append(xd)
    assert torch.equal(xd, denoised)  # the last step's answer is its consistency output
    assert_same_trajectory(run_ldmkit("lcm", x, ts, sched), theirs)


@pytest.mark.parametrize("steps", [1, 4])
@pytest.mark.parametrize("gamma", [0.0, 0.3, 1.0])
def test_tcd(steps, gamma):
    ref = diffusers.TCDScheduler(**SD)
    sched = table(ref)
    ref.set_timesteps(steps)
    in_float64(ref)
    ts = with_final(ref.timesteps, 0)
    x = start()
    gen = torch.Generator().manual_seed(1)
    theirs, xd = [], x.clone()
    for t in ref.timesteps:
        xd = ref.step(eps_model(xd, t), t, xd, eta=gamma, generator=gen).prev_sample
        theirs.append(xd)
    assert_same_trajectory(run_ldmkit("tcd", x, ts, sched, gamma=gamma), theirs)


@pytest.mark.parametrize("steps, original, strength", [(4, 50, 1.0), (1, 50, 1.0), (6, 25, 1.0), (3, 50, 0.6),
                                                        (8, 100, 0.5)])
def test_consistency_timesteps_rule(steps, original, strength):
    from ldmkit.diffusion.consistency import consistency_timesteps

    for cls in (diffusers.LCMScheduler, diffusers.TCDScheduler):
        ref = cls(**SD, original_inference_steps=original)
        ref.set_timesteps(steps, strength=strength)
        assert consistency_timesteps(1000, steps, original, strength) == ref.timesteps.tolist()
