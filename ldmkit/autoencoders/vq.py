"""Vector quantisation with a learned codebook (van den Oord et al. 2017, "Neural Discrete
Representation Learning"; the VQ-reg. first stage of LDM).

Legend: z = z_e(x) the encoder output (B, D, H, W), read as N = B*H*W vectors of width D;
e_k the K codes (rows of `codebook`); k(n) = argmin_k ||z_n - e_k||^2; z_q = e_k(n); sg = stop
gradient. Loss (eq. 3, without the reconstruction term): ||sg[z] - z_q||^2 + beta ||z - sg[z_q]||^2,
each a mean over elements. The straight-through estimator passes dL/dz_q unchanged to z.
With `ema`, codes are moving averages of their assigned vectors (appendix A.1) instead of being
learned by gradient, and only the commitment term remains.
With `restart_dead_codes`, codes whose moving-average count N_i falls below a threshold are
re-seeded with random encoder vectors of the batch (as in Jukebox, Dhariwal et al. 2020).
Note: taming/LDM's "legacy" VQ puts beta on the codebook term by mistake; this follows the paper.
Under data-parallel training (torch.distributed initialised) a training step's counts and sums
are summed over the processes and restarts pick from all of their vectors, as SyncBatchNorm
does for its statistics: every process then makes the update one process would make on the
global batch, and the codebooks stay equal.
"""

from dataclasses import dataclass

import torch
from einops import rearrange
from torch import distributed as dist
from torch import nn
from torch.nn import functional as F

from ldmkit.autoencoders.config import AutoencoderConfig

NEVER = 1 << 40  # steps_unused of a code that has never been picked


@dataclass
class VQOutput:
    z_q: torch.Tensor              # (B, D, H, W): value e_k(n), gradient straight through to z
    codes: torch.Tensor            # (B, H, W) long: k(n)
    codebook_loss: torch.Tensor    # ||sg[z] - z_q||^2 (0 with ema)
    commitment_loss: torch.Tensor  # ||z - sg[z_q]||^2, not yet times beta
    loss: torch.Tensor             # codebook_loss + beta * commitment_loss
    perplexity: torch.Tensor       # exp(entropy of the batch's code histogram), 1..K
    usage: torch.Tensor            # share of the K codes picked at least once in this batch
    restarted: int = 0             # dead codes re-seeded this step


def code_stats(counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Perplexity exp(-sum p log p) of the histogram counts (K,) and the share of codes used."""
    p = counts.float() / counts.sum()
    entropy = -(p * p.clamp_min(1e-12).log()).sum()                            # 0 log 0 = 0
    return entropy.exp(), (counts > 0).float().mean()


class VectorQuantizer(nn.Module):
    def __init__(self, codebook_size: int, dim: int, beta: float = 0.25, ema: bool = False,
                 ema_decay: float = 0.99, restart_dead_codes: bool = False,
                 dead_code_threshold: float = 1.0, eps: float = 1e-5):
        super().__init__()
        K = codebook_size
        self.beta, self.ema, self.decay, self.eps = beta, ema, ema_decay, eps
        self.restart_dead_codes, self.dead_code_threshold = restart_dead_codes, dead_code_threshold
        self.codebook = nn.Embedding(K, dim)
        nn.init.uniform_(self.codebook.weight, -1.0 / K, 1.0 / K)             # as taming's VQGAN
        # N_i of appendix A.1: moving average of the count of vectors assigned to code i. It
        # starts at 1 (each code as if picked once, by itself) and also tells dead codes apart.
        self.register_buffer("cluster_size", torch.ones(K))
        if ema:
            self.codebook.weight.requires_grad_(False)
            self.register_buffer("embed_sum", self.codebook.weight.detach().clone())  # m_i
        self.register_buffer("steps_unused", torch.full((K,), NEVER, dtype=torch.long))

    @classmethod
    def from_config(cls, cfg: AutoencoderConfig) -> "VectorQuantizer":
        return cls(cfg.codebook_size, cfg.codebook_dim, cfg.beta, cfg.ema, cfg.ema_decay,
                   cfg.restart_dead_codes, cfg.dead_code_threshold)

    @property
    def codebook_size(self) -> int:
        return self.codebook.num_embeddings

    @torch.no_grad()
    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """k(n) = argmin_k ||z_n - e_k||^2, expanded as ||z||^2 - 2 z.e + ||e||^2."""
        B, _, H, W = z.shape
        flat = rearrange(z, "b d h w -> (b h w) d").float()                    # (N, D)
        e = self.codebook.weight.float()                                       # (K, D)
        dist = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ e.T + e.pow(2).sum(1)  # (N, K)
        return dist.argmin(1).view(B, H, W)

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (B, H, W) -> their vectors (B, D, H, W)."""
        return rearrange(self.codebook(codes), "b h w d -> b d h w")

    def quantize(self, z: torch.Tensor) -> torch.Tensor:
        """z_q with the straight-through gradient, and no losses or updates (decoding)."""
        e = self.lookup(self.nearest(z)).to(z.dtype)
        return e.detach() + (z - z.detach())

    def forward(self, z: torch.Tensor) -> VQOutput:
        codes = self.nearest(z)                                                # (B, H, W)
        e = self.lookup(codes).to(z.dtype)                                     # (B, D, H, W)
        commitment_loss = F.mse_loss(z, e.detach())                            # eq. 3, 3rd term
        if self.ema:
            codebook_loss = z.new_zeros(())                                    # codes move by A.1
        else:
            codebook_loss = F.mse_loss(e, z.detach())                          # eq. 3, 2nd term
        z_q = e.detach() + (z - z.detach())     # straight-through: z + sg[e - z], exact value e
        counts = torch.bincount(codes.flatten(), minlength=self.codebook_size)  # (K,)
        if self.training:
            counts = _summed_over_processes(counts)                            # the global batch's
        perplexity, usage = code_stats(counts)
        restarted = self._update(z, codes, counts) if self.training else 0
        return VQOutput(z_q, codes, codebook_loss, commitment_loss,
                        codebook_loss + self.beta * commitment_loss, perplexity, usage, restarted)

    @torch.no_grad()
    def _update(self, z: torch.Tensor, codes: torch.Tensor, counts: torch.Tensor) -> int:
        """One training step's bookkeeping: usage, the EMA codebook, dead-code restarts."""
        gamma = self.decay
        flat = rearrange(z, "b d h w -> (b h w) d").float()                    # (N, D)
        self.steps_unused.add_(1).clamp_(max=NEVER).masked_fill_(counts > 0, 0)
        self.cluster_size.mul_(gamma).add_(counts.float(), alpha=1 - gamma)    # A.1: N_i
        if self.ema:
            sums = torch.zeros_like(self.embed_sum).index_add_(0, codes.flatten(),
                                                               flat.to(self.embed_sum.dtype))
            sums = _summed_over_processes(sums)
            self.embed_sum.mul_(gamma).add_(sums, alpha=1 - gamma)            # A.1: m_i
            n, K = self.cluster_size.sum(), self.codebook_size
            smoothed = (self.cluster_size + self.eps) / (n + K * self.eps) * n  # Laplace smoothing
            self.codebook.weight.copy_(self.embed_sum / smoothed[:, None])    # A.1: e_i = m_i / N_i
        if not self.restart_dead_codes:
            return 0
        dead = self.cluster_size < self.dead_code_threshold                   # (K,) bool
        num_dead = int(dead.sum())
        if num_dead:
            flat = _gathered_from_processes(flat)  # the same picks on every process (same RNG)
            picks = flat[torch.randint(len(flat), (num_dead,), device=flat.device)]  # (dead, D)
            self.codebook.weight[dead] = picks.to(self.codebook.weight.dtype)
            # A fresh code gets the threshold count: it survives while it wins that many per batch.
            self.cluster_size[dead] = self.dead_code_threshold
            if self.ema:
                self.embed_sum[dead] = (picks * self.dead_code_threshold).to(self.embed_sum.dtype)
        return num_dead

    def used_share(self, window: int = 100) -> float:
        """Share of the codebook picked at least once in the last `window` training steps."""
        return (self.steps_unused < window).float().mean().item()


def _data_parallel() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _summed_over_processes(t: torch.Tensor) -> torch.Tensor:
    if _data_parallel():
        t = t.clone()
        dist.all_reduce(t)
    return t


def _gathered_from_processes(flat: torch.Tensor) -> torch.Tensor:
    """The rows of every process's (N, D) in rank order: the global batch's, as rows are
    split contiguously."""
    if not _data_parallel():
        return flat
    parts = [torch.empty_like(flat) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, flat.contiguous())
    return torch.cat(parts)
