"""Train the Fashion-MNIST metric network (ldmkit/metrics/fmnist_classifier.py).

Light augmentation (flips, shifts of up to 2 pixels) so that the features judge what a garment
looks like, not where exactly it sits; AdamW with a one-cycle cosine; test accuracy reported.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..data import load_fashion_mnist
from ..metrics.fmnist_classifier import FashionClassifier, classify
from ..storage import save_checkpoint
from .steps import learning_rate


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random horizontal flips and integer shifts in [-2, 2] (background -1 fills the gap)."""
    flip = torch.rand(len(x), generator=gen) < 0.5
    x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
    padded = F.pad(x, (2, 2, 2, 2), value=-1.0)
    dy, dx = torch.randint(0, 5, (2,), generator=gen).tolist()  # one shift per batch: cheap, enough
    return padded[:, :, dy : dy + x.shape[2], dx : dx + x.shape[3]]


def train_fmnist_classifier(
    out: str | Path, epochs: int = 6, batch_size: int = 128, lr: float = 2e-3, seed: int = 0,
    limit: int | None = None, progress: bool = True,
) -> dict[str, float]:
    """Train, evaluate on the 10,000 test images, save to `out` (an ldmkit model folder)."""
    images, labels = load_fashion_mnist("train", limit=limit)
    test_images, test_labels = load_fashion_mnist("test", limit=None if limit is None else limit // 4)
    torch.manual_seed(seed)
    model = FashionClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    gen = torch.Generator().manual_seed(seed)
    steps_per_epoch = len(images) // batch_size
    total = epochs * steps_per_epoch
    bar = tqdm(total=total, desc="classifier", disable=not progress)
    t0 = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(images), generator=gen)
        for i in range(steps_per_epoch):
            step = epoch * steps_per_epoch + i
            index = order[i * batch_size : (i + 1) * batch_size]
            for group in opt.param_groups:
                group["lr"] = learning_rate(lr, step, total // 20, total, "cosine")
            loss = F.cross_entropy(model(augment(images[index], gen)), labels[index], label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    minutes = (time.perf_counter() - t0) / 60
    model.eval()
    _, predicted = classify(model, test_images)
    metrics = {"test_accuracy": (predicted == test_labels).float().mean().item(), "epochs": epochs,
               "train_minutes": minutes, "images_per_s": total * batch_size / (minutes * 60)}
    save_checkpoint(out, {"classifier": model.state_dict()}, {"type": "fmnist-classifier", "metrics": metrics,
                    "train": {"epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed}})
    return metrics
