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


def extrapolated_frechet_distance(features: torch.Tensor, reference: torch.Tensor, points: int = 10,
                                  smallest: float = 0.5, seed: int = 0) -> float:
    """FD_inf of Chong & Forsyth 2020 ("Effectively unbiased FID"): the squared Frechet distance
    of `features` (N, D) to `reference` with the finite-sample bias of `features` removed.

    The estimate from N samples is biased upwards, E[FD_N] = FD_inf + c / N + O(1 / N^2) (c grows
    with the spread of the features), so at a few hundred samples the bias can outweigh the
    differences between generators. FD is computed on random subsets of `points` sizes from
    smallest * N to N, and the straight line through (1 / n, FD_n) is read at 1 / n = 0.
    The paper's smallest = 0.1 assumes N of 20 times the feature width or more; nearer to it
    the 1 / N^2 term bends the line at small n, and 0.5 came out best in a Gaussian check with
    128-d features and N = 1,000 (7.00 +- 0.18 against 7.32; 0.25 gave 6.77).
    """
    n, width = features.shape
    sizes = torch.linspace(smallest * n, n, points).round().long().unique()
    if len(sizes) < 2 or sizes[0] <= width:
        raise ValueError(f"{n} samples are too few to extrapolate: the smallest subset ({int(sizes[0])}) must be "
                         f"larger than the feature width ({width}); give more samples or a larger `smallest`")
    mu_ref, cov_ref = gaussian_statistics(reference)
    gen = torch.Generator().manual_seed(seed)
    distances = []
    for size in sizes.tolist():
        subset = features[torch.randperm(n, generator=gen)[:size]]
        distances.append(frechet_distance(*gaussian_statistics(subset), mu_ref, cov_ref))
    design = torch.stack([torch.ones(len(sizes), dtype=torch.float64), 1 / sizes.double()], 1)
    distances = torch.tensor(distances, dtype=torch.float64).unsqueeze(1)
    intercept, _slope = torch.linalg.lstsq(design, distances).solution.squeeze(1)
    return float(intercept)
