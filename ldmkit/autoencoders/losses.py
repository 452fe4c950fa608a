"""The pixel and adversarial terms of the first-stage loss (Esser et al. 2021, VQGAN sec. 3.2;
LDM appendix G). The perceptual term lives in perceptual.py.

Legend: x the image, x~ the reconstruction, D the patch discriminator, d_real = D(x) and
d_fake = D(x~) its logits. From the discriminator's start step on, a training step adds
lambda * gan_weight * g_loss to the generator's loss, lambda = adaptive_gan_weight(...) (VQGAN
eq. 7), and trains D on the detached reconstruction with a d_loss. Losses are means over all
elements, so their scale does not depend on the image size (LDM sums pixels instead, which
multiplies weights like the KL's).
"""

from collections.abc import Callable

import torch
from torch.nn import functional as F


def reconstruction_loss(x: torch.Tensor, x_rec: torch.Tensor, l1: float = 1.0,
                        l2: float = 0.0) -> torch.Tensor:
    """l1 * mean|x - x~| + l2 * mean (x - x~)^2; LDM and VQGAN use L1 alone."""
    if l1 < 0 or l2 < 0 or l1 + l2 == 0:
        raise ValueError(f"reconstruction weights must be >= 0 and not both 0, "
                         f"got l1={l1}, l2={l2}")
    diff = x_rec - x
    loss = diff.new_zeros(())
    if l1:
        loss = loss + l1 * diff.abs().mean()
    if l2:
        loss = loss + l2 * diff.pow(2).mean()
    return loss


def hinge_d_loss(d_real: torch.Tensor, d_fake: torch.Tensor) -> torch.Tensor:
    """0.5 * (E[relu(1 - D(x))] + E[relu(1 + D(x~))]) (Lim & Ye 2017; taming's default)."""
    return 0.5 * (F.relu(1.0 - d_real).mean() + F.relu(1.0 + d_fake).mean())


def hinge_g_loss(d_fake: torch.Tensor) -> torch.Tensor:
    """-E[D(x~)]: the generator raises the fake logits."""
    return -d_fake.mean()


def nonsaturating_d_loss(d_real: torch.Tensor, d_fake: torch.Tensor) -> torch.Tensor:
    """The original GAN loss (Goodfellow et al. 2014) on logits, halved as taming's "vanilla":
    0.5 * (E[-log sigmoid(D(x))] + E[-log(1 - sigmoid(D(x~)))]) = 0.5 * E[softplus(-d_real)] +
    0.5 * E[softplus(d_fake)]."""
    return 0.5 * (F.softplus(-d_real).mean() + F.softplus(d_fake).mean())


def nonsaturating_g_loss(d_fake: torch.Tensor) -> torch.Tensor:
    """E[-log sigmoid(D(x~))] = E[softplus(-D(x~))], the non-saturating generator loss."""
    return F.softplus(-d_fake).mean()


GAN_LOSSES = {"hinge": (hinge_d_loss, hinge_g_loss),
              "nonsaturating": (nonsaturating_d_loss, nonsaturating_g_loss)}


def adaptive_gan_weight(rec_loss: torch.Tensor, gan_loss: torch.Tensor,
                        last_layer_weight: torch.Tensor, max_weight: float = 1e4,
                        average: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """lambda = ||grad_L rec_loss|| / (||grad_L gan_loss|| + 1e-4), L the decoder's last layer
    (VQGAN eq. 7): the GAN term gets the gradient scale of the reconstruction term. Clamped to
    [0, max_weight] and detached. Both graphs are kept (retain_graph) for the real backward.
    `average` maps a gradient to its mean over data-parallel processes: the norms are then
    those of the global batch's gradients, as one process would compute them."""
    g_rec, = torch.autograd.grad(rec_loss, last_layer_weight, retain_graph=True)
    g_gan, = torch.autograd.grad(gan_loss, last_layer_weight, retain_graph=True)
    if average is not None:
        g_rec, g_gan = average(torch.stack([g_rec, g_gan])).unbind()
    weight = g_rec.norm() / (g_gan.norm() + 1e-4)                              # eq. 7
    return weight.clamp(0.0, max_weight).detach()
