"""A trained class-conditional GAN, loaded for sampling: one generator pass per image, no steps.

A GAN folder (`ldmkit train-gan`'s run_dir/model) holds config.json {"kind": "gan", "gan":
GANConfig, "class_names": [...], for shapes "attribute_names": [["colour", [...]], ...], "dataset",
"train", "training", ...} and model.safetensors with the
generator's EMA weights under "generator." (BatchNorm statistics recomputed for them); a run's
checkpoint loads too (its "ema_generator.", statistics recomputed as the run does).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image

from ..config import from_dict, to_dict
from ..model.folder import resolve_repo_path
from ..storage import CheckpointError, load_checkpoint
from ..utils.images import to_pil
from .attributes import trained_labels
from .base import ClassPromptGenerator, check_common
from .gan_networks import GANConfig, Generator


class GANGenerator(ClassPromptGenerator):
    """The generator in eval mode: BatchNorm uses its stored statistics, so an image depends on
    its own z and class alone, never on the others of its batch."""

    kind = "gan"

    def __init__(self, net: Generator, class_names: Sequence[str], name: str = "gan", meta: dict | None = None,
                 attribute_names: Sequence[tuple[str, Sequence[str]]] | None = None):
        super().__init__(name, meta, class_names, attribute_names)
        self.net = net.eval().requires_grad_(False)
        self.set_conditional(self.config.conditioning == "class", self.config.num_classes, self.config.attributes)

    @classmethod
    def from_folder(cls, path: str | Path, device: str | torch.device = "cpu",
                    dtype: torch.dtype = torch.float32) -> GANGenerator:
        """A GAN folder, or one of a GAN run's checkpoints."""
        path = resolve_repo_path(path)
        states, meta, _ = load_checkpoint(path)
        if meta.get("kind") != "gan":
            raise CheckpointError(f"{path} does not hold a GAN (kind {meta.get('kind')!r})")
        net = Generator(from_dict(GANConfig, meta["gan"]))
        if "ema_generator" in states:  # a run's checkpoint: its EMA weights, as the run samples them
            net.load_state_dict(states["ema_generator"])
            net.refresh_batch_statistics(trained_labels(meta.get("train") or {}))
        elif "generator" in states:
            net.load_state_dict(states["generator"])
        else:
            raise CheckpointError(f"{path} has no generator weights ('generator.' tensors)")
        return cls(net, meta.get("class_names") or [], name=path.name, meta=meta,
                   attribute_names=meta.get("attribute_names")).to(device, dtype)

    @property
    def config(self) -> GANConfig:
        return self.net.config

    def modules(self) -> list[torch.nn.Module]:
        return [self.net]

    def config_entries(self) -> dict:
        conditional = self.config.conditioning == "class"
        entries = {"gan": to_dict(self.config), "class_names": self.class_names if conditional else None}
        return entries | ({"attribute_names": self.attribute_names} if conditional and self.attribute_names else {})

    @torch.no_grad()
    def generate(self, prompt: str | Sequence[str] = "", num_images: int = 1, seed: int = 0, output: str = "pil",
                 class_labels: Sequence[int] | None = None, truncation: float = math.inf,
                 batch_size: int = 256) -> list[Image.Image] | torch.Tensor:
        """`num_images` images of each prompt (a class name or "a photo of a {name}"; for shapes,
        a caption naming a colour, a shape and a quadrant), or of each of `class_labels`,
        prompt-major. Image i of the result draws z (and, for the prompt "", its class: the
        unconditional model, the mixture of the classes) from a generator seeded seed + i, so it
        is the same image alone or in any batch. truncation: BigGAN's trick, entries of z with
        |z| > truncation are redrawn until within it (fidelity for variety); inf, the default,
        leaves z ~ N(0, I) as in training. output: "pil" (a list of images) or "tensor" ((N, C,
        H, W) in [-1, 1], float32)."""
        labels = self.labels(prompt, class_labels)
        check_common(num_images, output)
        if not truncation > 0:
            raise ValueError(f"truncation must be > 0 (inf: off), got {truncation}")
        labels = [k for k in labels for _ in range(int(num_images))]
        z, classes = [], []
        for i, label in enumerate(labels):
            gen = torch.Generator().manual_seed(seed + i)
            if self.config.conditioning == "class":  # drawn always and first: z is the seed's, whatever the class
                drawn = int(torch.randint(self.config.num_classes, (1,), generator=gen))
                classes.append(drawn if label is None else label)
            z.append(truncated_normal(self.config.z_dim, truncation, gen))
        z = torch.stack(z)  # (N, z_dim)
        y = torch.tensor(classes, dtype=torch.long) if classes else None
        images = []
        for start in range(0, len(z), batch_size):
            chunk_y = None if y is None else y[start : start + batch_size].to(self.device)
            images.append(self.net(z[start : start + batch_size].to(self.device, self.dtype), chunk_y).float())
        images = torch.cat(images)  # (N, C, H, W) in [-1, 1]
        return images if output == "tensor" else [to_pil(x) for x in images]


def truncated_normal(size: int, truncation: float, gen: torch.Generator) -> torch.Tensor:
    """N(0, I) of `size` entries, those with |z| > truncation redrawn from `gen` until within it
    (BigGAN, Brock et al. 2019, sec. 3.1): below the bound, the entries are those of the plain draw."""
    z = torch.randn(size, generator=gen)
    outside = z.abs() > truncation
    while outside.any():
        z[outside] = torch.randn(int(outside.sum()), generator=gen)
        outside = z.abs() > truncation
    return z
