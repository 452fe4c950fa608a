"""The Fashion-MNIST metric network: a small CNN trained here, shipped with its weights.

It plays Inception's part in FID (Heusel et al. 2017) for 32x32 Fashion-MNIST: its 128-d
penultimate features give the Frechet distance, its logits the class agreement of generated
images with their prompts. Trained by `ldmkit train-classifier` (ldmkit/train/classifier.py).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..storage import CheckpointError, load_checkpoint

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights" / "fmnist-classifier"


def _block(c_in: int, c_out: int) -> nn.Sequential:
    # one conv per resolution: ~15M multiply-adds an image, trained in minutes on 2 cores
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(), nn.MaxPool2d(2))


class FashionClassifier(nn.Module):
    """(B, 1, 32, 32) in [-1, 1] -> 10 logits; features() gives the 128-d penultimate layer."""

    feature_dim = 128

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.body = nn.Sequential(_block(1, 32), _block(32, 64), _block(64, 128), _block(128, 256),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Sequential(nn.Linear(256, self.feature_dim), nn.ReLU())
        self.dropout = nn.Dropout(0.2)
        self.classify = nn.Linear(self.feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or tuple(x.shape[1:]) != (1, 32, 32):
            raise ValueError("the Fashion-MNIST classifier takes (B, 1, 32, 32) images in [-1, 1], "
                             f"got {tuple(x.shape)}")
        return self.head(self.body(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.dropout(self.features(x)))


def load_fmnist_classifier(directory: str | Path = WEIGHTS_DIR,
                           device: str | torch.device = "cpu") -> FashionClassifier:
    states, meta, _ = load_checkpoint(directory)
    if meta.get("type") != "fmnist-classifier":
        raise CheckpointError(f"{directory} does not hold the Fashion-MNIST classifier (type {meta.get('type')!r})")
    model = FashionClassifier()
    model.load_state_dict(states["classifier"])
    return model.to(device).eval()


@torch.no_grad()
def classify(model: FashionClassifier, images: torch.Tensor,
             batch_size: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    """(features (N, 128) float64, predicted labels (N,)) of images in [-1, 1]."""
    device = next(model.parameters()).device
    feats, preds = [], []
    for chunk in images.split(batch_size):
        f = model.features(chunk.to(device, torch.float32))
        feats.append(f.double().cpu())
        preds.append(model.classify(f).argmax(1).cpu())
    return torch.cat(feats), torch.cat(preds)
