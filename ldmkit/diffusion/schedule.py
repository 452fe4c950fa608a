"""Noise schedules and sampling timesteps.

Legend: T number of training timesteps, t in {0..T-1}, beta_t the per-step variance,
alpha_t = 1 - beta_t, alpha_bar_t = prod_{s<=t} alpha_s (DDPM eq. 4), and the VE noise level
sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t), so that x_t / sqrt(alpha_bar_t) = x_0 + sigma_t eps.
The timestep t = -1 stands for clean data: alpha_bar = 1, sigma = 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

SCHEDULE_KINDS = ("linear", "scaled_linear", "cosine")
SPACINGS = ("leading", "trailing", "linspace", "karras")

# Where alpha_bar is exactly 0 (zero terminal SNR), sigma is infinite; solvers that work in
# sigma space clamp alpha_bar here instead (sigma ~ 4096), as diffusers does.
MIN_SOLVER_ALPHA_BAR = 2.0**-24


@dataclass(frozen=True)
class ScheduleConfig:
    kind: str = "scaled_linear"
    num_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    zero_terminal_snr: bool = False

    def __post_init__(self):
        if self.kind not in SCHEDULE_KINDS:
            raise ValueError(f"unknown schedule kind {self.kind!r}; choose one of {SCHEDULE_KINDS}")
        if self.num_timesteps < 2:
            raise ValueError(f"num_timesteps must be >= 2, got {self.num_timesteps}")
        if not 0 < self.beta_start < self.beta_end < 1:
            raise ValueError(
                f"need 0 < beta_start < beta_end < 1, got {self.beta_start}, {self.beta_end}"
            )


@dataclass(frozen=True, eq=False)
class Schedule:
    """The whole forward process is fixed by alpha_bar (T,), float64, decreasing."""

    alpha_bar: torch.Tensor

    @property
    def num_timesteps(self) -> int:
        return self.alpha_bar.shape[0]

    @property
    def betas(self) -> torch.Tensor:
        prev = torch.cat([self.alpha_bar.new_ones(1), self.alpha_bar[:-1]])
        return 1 - self.alpha_bar / prev

    @property
    def sigmas(self) -> torch.Tensor:
        return ((1 - self.alpha_bar) / self.alpha_bar).sqrt()

    @property
    def log_sigmas(self) -> torch.Tensor:
        """log(sigma), finite even at zero terminal SNR (alpha_bar clamped as solvers do)."""
        alpha_bar = self.alpha_bar.clamp(min=MIN_SOLVER_ALPHA_BAR)
        return ((1 - alpha_bar) / alpha_bar).log() / 2

    def alpha_bar_at(self, t: float) -> float:
        """alpha_bar at a timestep; fractional t interpolates log(sigma) linearly (as Karras
        timesteps are made), t < 0 is clean data."""
        if t < 0:
            return 1.0
        if t > self.num_timesteps - 1:
            raise ValueError(f"timestep {t} is past the schedule's last, {self.num_timesteps - 1}")
        lo = int(math.floor(t))
        if t == lo:
            return float(self.alpha_bar[lo])
        log_sigma = torch.lerp(self.log_sigmas[lo], self.log_sigmas[lo + 1], t - lo)
        return float(1 / (1 + (2 * log_sigma).exp()))

    def sigma_at(self, t: float, clamp: bool = False) -> float:
        """VE noise level at t; clamp=True bounds it where alpha_bar is 0 (zero terminal SNR)."""
        alpha_bar = self.alpha_bar_at(t)
        if clamp:
            alpha_bar = max(alpha_bar, MIN_SOLVER_ALPHA_BAR)
        return math.sqrt((1 - alpha_bar) / alpha_bar) if alpha_bar > 0 else math.inf

    def t_at_sigma(self, sigma: float) -> float:
        """Fractional timestep whose interpolated sigma is `sigma` (inverse of sigma_at)."""
        log_sigmas = self.log_sigmas
        log_sigma = math.log(max(sigma, 1e-10))
        hi = int(torch.searchsorted(log_sigmas, torch.tensor(log_sigma, dtype=torch.float64)))
        hi = min(max(hi, 1), self.num_timesteps - 1)
        lo_v, hi_v = float(log_sigmas[hi - 1]), float(log_sigmas[hi])
        w = min(max((log_sigma - lo_v) / (hi_v - lo_v), 0.0), 1.0)
        return hi - 1 + w


def make_schedule(config: ScheduleConfig | None = None, **overrides) -> Schedule:
    """Build a schedule from a config (or keyword overrides of the default, SD's)."""
    if config is None:
        config = ScheduleConfig(**overrides)
    T = config.num_timesteps
    if config.kind == "linear":  # DDPM sec. 4
        betas = torch.linspace(config.beta_start, config.beta_end, T, dtype=torch.float64)
    elif config.kind == "scaled_linear":  # LDM / Stable Diffusion: linear in sqrt(beta)
        betas = torch.linspace(config.beta_start**0.5, config.beta_end**0.5, T, dtype=torch.float64) ** 2
    else:
        betas = cosine_betas(T)
    if config.zero_terminal_snr:
        betas = rescale_zero_terminal_snr(betas)
    return Schedule(alpha_bar=torch.cumprod(1 - betas, dim=0))


def cosine_betas(T: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Nichol & Dhariwal 2021, eq. 17: alpha_bar(t) = cos^2((t/T + s) / (1 + s) * pi/2)."""

    def alpha_bar(u: float) -> float:
        return math.cos((u + s) / (1 + s) * math.pi / 2) ** 2

    betas = [min(1 - alpha_bar((i + 1) / T) / alpha_bar(i / T), max_beta) for i in range(T)]
    return torch.tensor(betas, dtype=torch.float64)


def rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Lin et al. 2024, Algorithm 1: shift and scale sqrt(alpha_bar) so that it ends at exactly 0
    (zero terminal SNR) while its first value is kept."""
    sqrt_ab = torch.cumprod(1 - betas, dim=0).sqrt()
    first, last = sqrt_ab[0].clone(), sqrt_ab[-1].clone()
    sqrt_ab = (sqrt_ab - last) * first / (first - last)
    alpha_bar = sqrt_ab**2
    alphas = torch.cat([alpha_bar[:1], alpha_bar[1:] / alpha_bar[:-1]])
    return 1 - alphas


def make_timesteps(
    sched: Schedule,
    steps: int,
    spacing: str = "leading",
    offset: int = 0,
    final: int = -1,
    rho: float = 7.0,
    sigma_min: float | None = None,
    sigma_max: float | None = None,
) -> torch.Tensor:
    """Timesteps for a sampler: `steps` model timesteps, descending, then `final` (the timestep
    the last step lands on: -1 for clean data). Returns (steps + 1,) float64.

    Spacings (Lin et al. 2024, Table 2): leading (DDIM/SD, plus `offset`), trailing (starts at
    T-1), linspace (both ends), and karras (Karras et al. 2022 eq. 5, sigma spaced by rho).
    """
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    T = sched.num_timesteps
    if spacing in ("leading", "trailing") and steps > T:
        raise ValueError(f"steps={steps} is more than the schedule's {T} timesteps")
    if spacing == "leading":
        ts = torch.arange(steps, dtype=torch.float64).mul(T // steps).flip(0) + offset
    elif spacing == "trailing":
        ts = torch.arange(T, 0, -T / steps, dtype=torch.float64).round() - 1
    elif spacing == "linspace":
        ts = torch.linspace(0, T - 1, steps, dtype=torch.float64).round().flip(0)
    elif spacing == "karras":
        ts = karras_timesteps(sched, steps, rho, sigma_min, sigma_max)
    else:
        raise ValueError(f"unknown timestep spacing {spacing!r}; choose one of {SPACINGS}")
    if ts.max() > T - 1 or ts.min() < 0:
        raise ValueError(f"offset={offset} puts timesteps outside 0..{T - 1}")
    return torch.cat([ts, ts.new_tensor([float(final)])])


def karras_timesteps(
    sched: Schedule,
    steps: int,
    rho: float = 7.0,
    sigma_min: float | None = None,
    sigma_max: float | None = None,
) -> torch.Tensor:
    """Karras et al. 2022, eq. 5: sigma_i = (smax^(1/rho) + i/(n-1) (smin^(1/rho) - smax^(1/rho)))^rho,
    mapped back to fractional timesteps. The default range is the whole schedule's."""
    sigma_min = sched.sigma_at(0) if sigma_min is None else sigma_min
    sigma_max = sched.sigma_at(sched.num_timesteps - 1, clamp=True) if sigma_max is None else sigma_max
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64) if steps > 1 else torch.zeros(1, dtype=torch.float64)
    inv_max, inv_min = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    sigmas = (inv_max + ramp * (inv_min - inv_max)) ** rho
    return torch.tensor([sched.t_at_sigma(float(s)) for s in sigmas], dtype=torch.float64)
