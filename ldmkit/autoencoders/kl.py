"""The KL-VAE's posterior q(z|x) = N(mu, diag(sigma^2)) (Kingma & Welling 2014; LDM sec. 3.1).

Legend: mu = mean, logvar = log sigma^2, std = sigma. The encoder emits mean and logvar stacked
along channels; logvar is clamped to [-30, 20] as in LDM so that exp() stays finite.
KL and NLL are summed over every non-batch dimension and returned per sample, shape (B,).
"""

import math

import torch


class DiagonalGaussian:
    def __init__(self, mean: torch.Tensor, logvar: torch.Tensor):
        self.mean = mean                                                       # (B, c, h, w)
        self.logvar = logvar.clamp(-30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)
        self.var = torch.exp(self.logvar)

    @classmethod
    def from_moments(cls, moments: torch.Tensor) -> "DiagonalGaussian":
        """moments (B, 2c, h, w): the first c channels are the mean, the last c the logvar."""
        mean, logvar = moments.chunk(2, dim=1)                                 # 2 x (B, c, h, w)
        return cls(mean, logvar)

    def sample(self, gen: torch.Generator | None = None, eps: torch.Tensor | None = None) -> torch.Tensor:
        """z = mu + sigma * eps, eps ~ N(0, I): differentiable in mu and sigma (reparameterised).
        eps may be given (data-parallel training draws it for the global batch)."""
        if eps is None:
            device = gen.device if gen is not None else self.mean.device
            eps = torch.randn(self.mean.shape, generator=gen, device=device, dtype=self.mean.dtype)
        return self.mean + self.std * eps.to(self.mean.device)

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self) -> torch.Tensor:
        """KL(q || N(0, I)) = 0.5 * sum(mu^2 + sigma^2 - 1 - log sigma^2), per sample."""
        return 0.5 * (self.mean.pow(2) + self.var - 1.0 - self.logvar).flatten(1).sum(1)  # (B,)

    def nll(self, z: torch.Tensor) -> torch.Tensor:
        """-log q(z) = 0.5 * sum(log 2 pi + logvar + (z - mu)^2 / sigma^2), per sample."""
        terms = math.log(2 * math.pi) + self.logvar + (z - self.mean).pow(2) / self.var
        return 0.5 * terms.flatten(1).sum(1)                                   # (B,)
