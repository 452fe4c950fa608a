"""CLIP score (Hessel et al. 2021), as torchmetrics' CLIPScore computes it.

Each pair's score is 100 cos(E_I, E_C), the cosine of the image's and the caption's CLIP
embeddings times 100; the metric is the mean over the pairs, clamped at 0:
    CLIPScore = max(mean_i 100 cos(E_I_i, E_C_i), 0)
(torchmetrics' docstring writes max(100 cos, 0) per pair; its code clamps the mean, as here).
"""

from __future__ import annotations

import torch


def clip_scores(image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
    """100 cos of each pair: rows (N, E) of image and caption embeddings, any norm -> (N,)."""
    if image_features.shape != text_features.shape or image_features.ndim != 2:
        raise ValueError(f"need one caption embedding per image embedding, (N, E) each; got "
                         f"{tuple(image_features.shape)} and {tuple(text_features.shape)}")
    image = image_features / image_features.norm(dim=-1, keepdim=True)
    text = text_features / text_features.norm(dim=-1, keepdim=True)
    return 100 * (image * text).sum(dim=-1)


def clip_score(image_features: torch.Tensor, text_features: torch.Tensor) -> float:
    """torchmetrics' CLIPScore of N image-caption pairs: max(mean 100 cos, 0)."""
    return max(clip_scores(image_features, text_features).float().mean().item(), 0.0)
