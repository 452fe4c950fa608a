"""A small class-conditional VAE (Kingma & Welling 2014; conditional: Sohn et al. 2015) whose
decoder is the GAN's generator, layer for layer, so that the two differ only in how they are
trained: the ELBO here, the hinge loss there.

Encoder: image -> (Conv 4x4 stride 2, LeakyReLU) per halving down to 4x4 -> flatten, with the
class embedding appended -> linear -> (mu, log sigma^2) of q(z | x, y), a diagonal Gaussian over
z_dim numbers. Prior: p(z | y) = N(m_y, I), a learned mean per class (the prior network of Sohn et
al. 2015 in its simplest form; m = 0 for an unconditional VAE): with the standard prior N(0, I) for
every class, the encoder, which sees the image, put the class into z as well, the decoder learned
to read it from there, and the prior's samples came out of a random class whatever the label
(docs/family.md). A class made of attributes (shapes) sums one embedding and one prior mean
per attribute, as the GAN's ClassEmbedding, so a combination never trained on has both.
Decoder: the DCGAN generator of ldmkit.family.gan_networks (class through conditional
BatchNorm), with p(x | z, y) = N(G(z, y), sigma_x^2 I) and sigma_x at its maximum-likelihood
value, the root mean squared error of the batch: the calibrated decoder of Rybkin et al. 2021
("optimal sigma-VAE"), so that the reconstruction term is a true log-likelihood and kl_weight = 1
is the ELBO itself rather than a hand-picked balance of MSE against KL.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .gan_networks import CONDITIONINGS, ClassEmbedding, GANConfig, Generator, class_rows


@dataclass(frozen=True)
class VAEConfig:
    z_dim: int = 32
    base_channels: int = 32  # the decoder's width at half size (as GANConfig's); the encoder mirrors it
    image_size: int = 32  # 4 * 2^n pixels
    channels: int = 1
    num_classes: int = 10
    attributes: tuple[int, ...] = ()  # a class made of attributes (GANConfig's): embeddings and prior means summed
    conditioning: str = "class"  # class | none

    def __post_init__(self):
        object.__setattr__(self, "attributes", tuple(self.attributes))
        if self.conditioning not in CONDITIONINGS:
            raise ValueError(f"conditioning must be one of {CONDITIONINGS}, got {self.conditioning!r}")
        self.decoder_config()  # the generator's own checks (sizes, widths), now

    def decoder_config(self) -> GANConfig:
        """The GAN generator that decodes: the same z width, widths and class input as the presets' GAN."""
        return GANConfig(z_dim=self.z_dim, base_channels=self.base_channels, image_size=self.image_size,
                         channels=self.channels, num_classes=self.num_classes, attributes=self.attributes,
                         conditioning=self.conditioning, class_input="batchnorm")


class VAEEncoder(nn.Module):
    """(images (B, C, S, S) in [-1, 1], class labels (B,)) -> (mu, logvar), each (B, z_dim)."""

    def __init__(self, config: VAEConfig):
        super().__init__()
        c = config
        layers, channels, width = [], c.channels, c.base_channels
        for _ in range(c.decoder_config().upsamplings):  # S -> 4: the decoder's doublings, undone
            layers += [nn.Conv2d(channels, width, 4, 2, 1), nn.LeakyReLU(0.2, True)]
            channels, width = width, width * 2
        self.features = nn.Sequential(*layers, nn.Flatten())
        conditional = c.conditioning == "class"
        self.class_embedding = ClassEmbedding(c.num_classes, c.z_dim, c.attributes) if conditional else None
        inputs = channels * 4 * 4 + (c.z_dim if self.class_embedding is not None else 0)
        self.to_moments = nn.Linear(inputs, 2 * c.z_dim)

    def forward(self, x: torch.Tensor, class_labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.features(x)  # (B, width * 16)
        if self.class_embedding is not None:
            if class_labels is None:
                raise ValueError("this encoder is class-conditional: give class_labels")
            h = torch.cat([h, self.class_embedding(class_labels).to(h.dtype)], dim=1)
        mu, logvar = self.to_moments(h).chunk(2, dim=1)
        return mu, logvar.clamp(-30.0, 20.0)  # as the KL first stage's posterior: exp() stays finite


class VAE(nn.Module):
    """The encoder, the prior's class means and the decoder (a GAN Generator)."""

    min_sigma = 1e-3  # of p(x | z): a floor, so a perfect fit does not divide by zero

    def __init__(self, config: VAEConfig):
        super().__init__()
        self.config = config
        self.encoder = VAEEncoder(config)
        self.decoder = Generator(config.decoder_config())
        # m_y of p(z | y) = N(m_y, I): zeros at the start, the standard prior for every class; a row
        # per attribute value for a class of attributes, m_y their sum (class_rows)
        rows = (sum(config.attributes) or config.num_classes) if config.conditioning == "class" else 1
        self.prior_means = nn.Parameter(torch.zeros(rows, config.z_dim))

    def prior_mean(self, class_labels: torch.Tensor | None, count: int) -> torch.Tensor:
        """m_y for each label (count, z_dim); the one mean of an unconditional VAE."""
        if class_labels is None:
            return self.prior_means.expand(count, -1)
        return class_rows(self.prior_means, class_labels, self.config.attributes)

    def losses(self, x: torch.Tensor, class_labels: torch.Tensor | None, gen: torch.Generator) -> dict:
        """Per-image means of the negative ELBO's two terms (nats), z drawn by reparameterisation
        from `gen`: nll = -log N(x; G(z, y), sigma_x^2 I) summed over pixels, sigma_x^2 the batch's
        mean squared error (its maximum-likelihood value; held fixed in the gradient, which at the
        optimum is the same: Rybkin et al. 2021, sec. 3), and kl = KL(q(z|x,y) || N(m_y, I)) in closed
        form, 0.5 sum((mu - m_y)^2 + sigma^2 - 1 - log sigma^2) (Kingma &
        Welling 2014, app. B, with the prior's mean moved to m_y)."""
        mu, logvar = self.encoder(x, class_labels)
        eps = torch.randn(mu.shape, generator=gen).to(mu.device, mu.dtype)
        z = mu + (0.5 * logvar).exp() * eps
        reconstruction = self.decoder(z, class_labels)
        pixels = x[0].numel()
        squared = (x - reconstruction).pow(2).flatten(1).sum(dim=1)  # (B,)
        sigma = (squared.mean().detach() / pixels).sqrt().clamp_min(self.min_sigma)
        nll = squared / (2 * sigma**2) + pixels * (sigma.log() + 0.5 * math.log(2 * math.pi))
        offset = mu - self.prior_mean(class_labels, len(mu)).to(mu.dtype)
        kl = 0.5 * (offset.pow(2) + logvar.exp() - 1 - logvar).sum(dim=1)
        return {"nll": nll.mean(), "kl": kl.mean(), "mse": squared.mean() / pixels, "sigma": sigma,
                "reconstruction": reconstruction}
