"""Frechet distance between two Gaussians fitted to feature sets (the FID formula).

d^2 = |mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2)   (Dowson & Landau 1982)

tr((S1 S2)^1/2) is computed as tr((S1^1/2 S2 S1^1/2)^1/2), a symmetric PSD matrix whose square
root comes from an eigendecomposition: exact in float64, no complex parts to discard.
"""

from __future__ import annotations

import torch


def gaussian_statistics(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean (D,), unbiased covariance (D, D)) in float64 of features (N, D)."""
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"features must be (N, D) with N >= 2, got {tuple(features.shape)}")
    x = features.double()
    return x.mean(0), torch.cov(x.T)


def _psd_sqrt(matrix: torch.Tensor) -> torch.Tensor:
    values, vectors = torch.linalg.eigh(matrix)
    return (vectors * values.clamp(min=0).sqrt()) @ vectors.T


def frechet_distance(mu1, cov1, mu2, cov2) -> float:
    """The squared Frechet distance between N(mu1, cov1) and N(mu2, cov2)."""
    root1 = _psd_sqrt(cov1.double())
    middle = root1 @ cov2.double() @ root1
    trace_sqrt = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0).sqrt().sum()
    diff = mu1.double() - mu2.double()
    return float(diff @ diff + torch.trace(cov1.double()) + torch.trace(cov2.double()) - 2 * trace_sqrt)


def feature_frechet_distance(features_a: torch.Tensor, features_b: torch.Tensor) -> float:
    return frechet_distance(*gaussian_statistics(features_a), *gaussian_statistics(features_b))
