"""Diffusion maths: schedules, the forward process, objectives, samplers and guidance."""

from .denoiser import as_denoiser, clip_x0
from .gaussian import (
    PREDICTIONS,
    eps_from_v,
    eps_from_x0,
    prediction_to_x0,
    q_posterior,
    q_sample,
    training_target,
    v_from_x0_eps,
    x0_from_eps,
    x0_from_v,
)
from .guidance import classifier_free_guidance
from .losses import diffusion_loss, min_snr_weight, snr
from .samplers import (
    SAMPLERS,
    get_sampler,
    noise_like,
    sample_ddim,
    sample_ddpm,
    sample_dpmpp_2m,
    sample_dpmpp_2m_sde,
    sample_euler,
    sample_euler_ancestral,
    sample_heun,
)
from .sampling import SamplingConfig, sample, sampler_timesteps, start_scale
from .schedule import (
    SCHEDULE_KINDS,
    SPACINGS,
    Schedule,
    ScheduleConfig,
    karras_timesteps,
    make_schedule,
    make_timesteps,
    rescale_zero_terminal_snr,
)

__all__ = [
    "as_denoiser", "clip_x0",
    "PREDICTIONS", "eps_from_v", "eps_from_x0", "prediction_to_x0", "q_posterior", "q_sample", "training_target",
    "v_from_x0_eps", "x0_from_eps", "x0_from_v",
    "classifier_free_guidance",
    "diffusion_loss", "min_snr_weight", "snr",
    "SAMPLERS", "get_sampler", "noise_like", "sample_ddim", "sample_ddpm", "sample_dpmpp_2m", "sample_dpmpp_2m_sde",
    "sample_euler", "sample_euler_ancestral", "sample_heun",
    "SamplingConfig", "sample", "sampler_timesteps", "start_scale",
    "SCHEDULE_KINDS", "SPACINGS", "Schedule", "ScheduleConfig", "karras_timesteps", "make_schedule", "make_timesteps",
    "rescale_zero_terminal_snr",
]
