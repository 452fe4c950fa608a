"""Improved precision and recall on feature vectors (Kynkaanniemi et al. 2019, "Improved Precision
and Recall Metric for Assessing Generative Models").

Each set's manifold is the union of hyperspheres around its points, each as wide as the distance
to that point's k-th nearest neighbour in the same set. A feature phi is on the manifold of Phi
when |phi - phi'| <= |phi' - NN_k(phi', Phi)| for at least one phi' in Phi (the paper's eq. 1):

    precision = share of fake features on the real manifold   (fidelity)
    recall    = share of real features on the fake manifold   (diversity)
"""

from __future__ import annotations

import torch


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = 3, batch: int = 1024) -> dict:
    """{"precision", "recall", "k"} of fake features (M, D) against real features (N, D).

    Distances are float64 and computed `batch` rows at a time, so 10,000 x 10,000 needs about
    80 MB a block rather than 800 MB for the whole matrix.
    """
    _check_inputs(real, fake, k)
    real, fake = real.double(), fake.to(real.device).double()
    real_radii = nearest_neighbour_radii(real, k, batch)
    fake_radii = nearest_neighbour_radii(fake, k, batch)
    return {
        "precision": share_on_manifold(fake, real, real_radii, batch),
        "recall": share_on_manifold(real, fake, fake_radii, batch),
        "k": k,
    }


def nearest_neighbour_radii(features: torch.Tensor, k: int, batch: int = 1024) -> torch.Tensor:
    """The distance (N,) from each feature to its k-th nearest neighbour among the others."""
    radii = []
    for block in features.split(batch):
        # the (k+1)-th smallest distance: the smallest is the point's zero distance to itself
        radii.append(torch.cdist(block, features).kthvalue(k + 1, dim=1).values)
    return torch.cat(radii)


def share_on_manifold(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, batch: int = 1024) -> float:
    """The share of points within radii[i] of at least one centres[i] (the paper's f(phi, Phi))."""
    inside = [(torch.cdist(block, centres) <= radii).any(dim=1) for block in points.split(batch)]
    return torch.cat(inside).double().mean().item()


def _check_inputs(real: torch.Tensor, fake: torch.Tensor, k: int) -> None:
    if k < 1:
        raise ValueError(f"k must be at least 1 (the k-th nearest neighbour sets each radius), got {k}")
    for name, features in (("real", real), ("fake", fake)):
        if features.ndim != 2:
            raise ValueError(f"{name} features must be 2-D (N, D), got shape {tuple(features.shape)}")
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"real and fake feature widths differ: {real.shape[1]} and {fake.shape[1]}")
    for name, features in (("real", real), ("fake", fake)):
        if features.shape[0] < k + 1:
            raise ValueError(f"{name} has {features.shape[0]} rows: fewer than k + 1 = {k + 1}, "
                             f"so its points have no k-th nearest neighbour")
