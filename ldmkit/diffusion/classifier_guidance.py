"""Guidance by a gradient: classifier guidance (Dhariwal & Nichol 2021) and CLIP guidance, as
wrappers around the denoiser `denoise(x_t, t) -> x0_hat`, so every sampler gets them free.

Legend: a_t = alpha_bar_t; s the guidance scale; f(x_t) a differentiable score of each sample:
log p(y | x_t) of a classifier trained on noisy samples, or the similarity of the decoded x0
estimate with a prompt (CLIP guidance).

The score's gradient shifts the noise prediction (Dhariwal & Nichol 2021, Algorithm 2 and
sec. 4.2, eps_hat):
    eps' = eps - sqrt(1 - a_t) s grad_x_t f(x_t)
and since x0 = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t) (DDIM eq. 9), the x0 estimate the samplers
read moves by
    x0' = x0 + s (1 - a_t) / sqrt(a_t) grad_x_t f(x_t).
The sampler runs without gradients; they are switched on inside the wrapper only, for x_t alone
(no network's parameters collect any), and the result is detached.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .denoiser import Denoiser
from .schedule import Schedule

Score = Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]  # (x_t, x0_hat, t) -> (B,)


def shift_x0(x0: torch.Tensor, grad: torch.Tensor, alpha_bar: float, scale: float) -> torch.Tensor:
    """x0' = x0 + s (1 - a_t) / sqrt(a_t) grad: eps' = eps - sqrt(1 - a_t) s grad, written on x0.
    Where a_t = 0 (zero terminal SNR) eps is undefined and x0 is the network's alone: no shift."""
    if alpha_bar <= 0:
        return x0
    return x0 + scale * (1 - alpha_bar) / alpha_bar**0.5 * grad


def gradient_guidance(denoise: Denoiser, score: Score, sched: Schedule, scale: float,
                      through_denoiser: bool = False) -> Denoiser:
    """The denoiser with its x0 estimate shifted by s grad_x_t score(x_t, x0_hat, t).

    score returns one value per sample, (B,); samples must not interact (GroupNorm, not
    BatchNorm), so the gradient of the sum is each sample's own. through_denoiser: x0_hat is
    computed with gradients, so the gradient also runs back through the denoiser (a score of
    the x0 estimate, as CLIP guidance's); else x0_hat is a constant to the score (a classifier of x_t).
    """
    if scale < 0:
        raise ValueError(f"guidance scale must be >= 0, got {scale}")
    if scale == 0:
        return denoise

    def guided(x_t: torch.Tensor, t: float) -> torch.Tensor:
        x0 = None if through_denoiser else denoise(x_t, t)
        with torch.enable_grad():
            x = x_t.detach().requires_grad_(True)
            if through_denoiser:
                x0 = denoise(x, t)
            values = score(x, x0 if through_denoiser else x0.detach(), t)
            if values.shape != (x.shape[0],):
                raise ValueError(f"a guidance score must give one value per sample, shape ({x.shape[0]},), "
                                 f"got {tuple(values.shape)}")
            (grad,) = torch.autograd.grad(values.sum(), x)                      # (B, C, H, W)
        return shift_x0(x0.detach(), grad, sched.alpha_bar_at(t), scale)

    return guided


def classifier_guidance(denoise: Denoiser, classifier: Callable[[torch.Tensor, float], torch.Tensor],
                        labels: torch.Tensor, sched: Schedule, scale: float) -> Denoiser:
    """Classifier guidance: classifier(x_t, t) -> logits (B, K) of a classifier trained on noisy
    samples at every t; labels (B,) the class each sample is steered towards. scale 0 is the
    denoiser itself. Works on the output of classifier-free guidance too (then both steer)."""
    labels = torch.as_tensor(labels).long().reshape(-1)

    def log_p(x_t: torch.Tensor, x0: torch.Tensor, t: float) -> torch.Tensor:
        if len(labels) != len(x_t):
            raise ValueError(f"classifier guidance has {len(labels)} labels for a batch of {len(x_t)} samples")
        logits = classifier(x_t, t)                                              # (B, K)
        return logits.log_softmax(-1).gather(1, labels.to(logits.device)[:, None]).squeeze(1)  # log p(y|x_t), (B,)

    return gradient_guidance(denoise, log_p, sched, scale)


def clip_guidance(denoise: Denoiser, similarity: Callable[[torch.Tensor], torch.Tensor], sched: Schedule,
                  scale: float) -> Denoiser:
    """CLIP guidance: similarity(x0_hat) -> (B,), e.g. the cosine of CLIP's embedding of the decoded
    x0 estimate with the prompt's; its gradient reaches x_t through the denoiser (and the decoder)."""
    return gradient_guidance(denoise, lambda x_t, x0, t: similarity(x0), sched, scale, through_denoiser=True)
