"""Typed configs of a CLIP training run (ldmkit/train/clip.py), and named presets."""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..data.shapes import COMBINATIONS
from ..nets.clip import CLIPConfig

CLIP_DATASETS = ("shapes", "fashion-mnist", "folder")


@dataclass(frozen=True)
class CLIPDataConfig:
    datasets: tuple[str, ...] = ("shapes", "fashion-mnist")  # any of shapes | fashion-mnist | folder, pooled
    path: str | None = None  # the folder of captioned images, for "folder"
    shapes_limit: int = 20_000  # shapes renders drawn (all 48 combinations unless held out)
    shapes_holdout: tuple[tuple[str, str, str], ...] = ()  # combinations never trained on (retrieval still ranks them)
    fashion_limit: int | None = None  # Fashion-MNIST training images (None: all 60,000)
    folder_limit: int | None = None

    def __post_init__(self):
        object.__setattr__(self, "datasets", tuple(self.datasets))
        object.__setattr__(self, "shapes_holdout", tuple(tuple(c) for c in self.shapes_holdout))
        unknown = [d for d in self.datasets if d not in CLIP_DATASETS]
        if not self.datasets or unknown or len(set(self.datasets)) != len(self.datasets):
            raise ValueError(f"data.datasets must name distinct datasets of {CLIP_DATASETS}, got {self.datasets}")
        if "folder" in self.datasets and not self.path:
            raise ValueError("the folder dataset needs data.path: a folder of images with .txt captions or a "
                             "metadata.jsonl")
        bad = [c for c in self.shapes_holdout if c not in COMBINATIONS]
        if bad:
            raise ValueError(f"unknown shapes combinations in data.shapes_holdout: {bad}")


@dataclass(frozen=True)
class CLIPTrainConfig:
    clip: CLIPConfig = CLIPConfig()
    data: CLIPDataConfig = CLIPDataConfig()
    steps: int = 8000
    batch_size: int = 64  # pairs per step, each caption at most once (fewer where the data have fewer captions)
    candidates: int = 4  # images drawn per pair, of which the first of each caption are kept
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup_steps: int = 300
    lr_schedule: str = "cosine"  # constant | cosine (decay to 0 over the run), after warm-up
    grad_clip: float | None = 1.0
    seed: int = 0
    log_every: int = 25
    eval_every: int = 500  # shapes caption retrieval and Fashion-MNIST zero-shot accuracy
    eval_renders: int = 4  # fresh shapes renders per combination (never trained on: another seed)
    eval_images: int = 2000  # Fashion-MNIST test images of those measures (the last one: all 10,000)
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    max_nonfinite_steps: int = 20

    def __post_init__(self):
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"lr_schedule must be 'constant' or 'cosine', got {self.lr_schedule!r}")
        if self.steps < 1 or self.batch_size < 2 or self.candidates < 1:
            raise ValueError(f"need steps >= 1, batch_size >= 2 (a contrastive loss needs negatives), candidates "
                             f">= 1; got {self.steps}, {self.batch_size}, {self.candidates}")
        if self.clip.image_channels != 3:
            raise ValueError("the CLIP's images are RGB (grey ones are repeated): clip.image_channels must be 3")
        for name in ("log_every", "eval_every", "eval_renders", "eval_images", "checkpoint_every",
                     "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


TINY_CLIP = CLIPConfig(patch_size=8, image_width=32, image_layers=1, image_heads=2, text_width=32, text_layers=1,
                       text_heads=2, text_length=16, embed_dim=16)
CLIP_PRESETS: dict[str, CLIPTrainConfig] = {
    # the shipped clip-small: shapes captions and Fashion-MNIST captions, 32x32 images
    "clip-small": CLIPTrainConfig(),
    # the other text tower: MiniLM frozen, a trained MLP on its mean-pooled states
    "clip-small-minilm": CLIPTrainConfig(clip=replace(CLIPConfig(), text="minilm", text_width=256)),
    "tiny": CLIPTrainConfig(
        clip=TINY_CLIP, data=CLIPDataConfig(shapes_limit=64, fashion_limit=64), steps=4, batch_size=8,
        warmup_steps=1, log_every=1, eval_every=2, eval_renders=1, eval_images=16, checkpoint_every=2,
    ),
}
