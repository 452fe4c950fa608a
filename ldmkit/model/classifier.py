"""A noisy latent classifier as a saved model: the network (nets/noisy_classifier.py), its class
names, the noise schedule it was trained on, and the latent space it reads. That space is told by
a probe: a fixed smooth image and its latent under the autoencoder the classifier was trained
with; another model's autoencoder must give the same latent (within half-precision error), or
the classifier's gradients would point nowhere useful.

    config.json        {"type": "noisy-classifier", "classifier": NoisyClassifierConfig,
                        "class_names": [...], "schedule": ScheduleConfig, ...}
    model.safetensors  "classifier." weights; "probe.image" (1, C, S, S), "probe.latent" (1, c, h, w)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.nn import functional as F

from ..config import from_dict, to_dict
from ..diffusion import ScheduleConfig, make_schedule
from ..nets.noisy_classifier import NoisyClassifier, NoisyClassifierConfig
from ..storage import CheckpointError, load_checkpoint, save_checkpoint
from .folder import MODELS_DIR

CAPTION_PREFIX = "a photo of a "  # "a photo of a {class}" names the class too (the Fashion-MNIST captions)
PROBE_TOLERANCE = 0.05  # of the probe latent's largest magnitude: fp16 rounding passes, another encoder does not


def probe_image(channels: int, size: int) -> torch.Tensor:
    """A fixed smooth image (1, C, S, S) in [-1, 1]: 4x4 random levels, bilinearly enlarged."""
    coarse = torch.rand(1, channels, 4, 4, generator=torch.Generator().manual_seed(0)) * 2 - 1
    return F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)


@torch.no_grad()
def probe_latent(autoencoder, image: torch.Tensor) -> torch.Tensor:
    """The autoencoder's latent z0 = s * E(image), float32 on the CPU."""
    like = next(autoencoder.parameters())
    return autoencoder.to_latent(image.to(like.device, like.dtype)).float().cpu()


@dataclass
class LatentClassifier:
    net: NoisyClassifier
    class_names: list[str]
    schedule: ScheduleConfig
    probe_image: torch.Tensor  # (1, C, S, S)
    probe_latent: torch.Tensor  # (1, c, h, w)
    name: str = "noisy-classifier"
    meta: dict = field(default_factory=dict)

    def label(self, prompt: str) -> int:
        """The class a prompt names: a class name, or "a photo of a {name}"."""
        for name in (prompt, prompt.removeprefix(CAPTION_PREFIX)):
            if name in self.class_names:
                return self.class_names.index(name)
        raise ValueError(f"the classifier {self.name} knows the classes {self.class_names} (or 'a photo of a "
                         f"{{class}}'); {prompt!r} names none of them: give classifier_labels")

    def check_model(self, autoencoder, schedule) -> None:
        """Refuse a model whose latents or noise levels are not those the classifier learnt."""
        channels, latent = self.probe_image.shape[1], self.probe_latent.shape[1:]
        a = autoencoder.config
        if a.in_channels != channels or a.z_channels != latent[0]:
            raise ValueError(
                f"the classifier {self.name} is for another latent space: it reads {latent[0]}-channel latents of "
                f"{channels}-channel images, this model's autoencoder makes {a.z_channels}-channel latents of "
                f"{a.in_channels}-channel images")
        got = probe_latent(autoencoder, self.probe_image)
        if got.shape != self.probe_latent.shape or \
                (got - self.probe_latent).abs().max() > PROBE_TOLERANCE * self.probe_latent.abs().max():
            raise ValueError(
                f"the classifier {self.name} is for another latent space: this model's autoencoder encodes its probe "
                "image to another latent (another encoder or latent scale); train a classifier on this model's "
                "autoencoder (ldmkit train-noisy-classifier --set autoencoder=...)")
        mine = make_schedule(self.schedule).alpha_bar
        if mine.shape != schedule.alpha_bar.shape or not torch.allclose(mine, schedule.alpha_bar.to(mine), atol=1e-6):
            raise ValueError(f"the classifier {self.name} was trained on another noise schedule ({self.schedule}) "
                             "than this model's: its timesteps mean other noise levels")


def save_latent_classifier(directory: str | Path, net: NoisyClassifier, class_names: list[str],
                           schedule: ScheduleConfig, autoencoder, image_size: int, extra: dict | None = None,
                           train_state: dict | None = None) -> Path:
    """A classifier folder, its probe encoded by `autoencoder` (the one it was trained on); with
    `train_state`, a training checkpoint that is also a classifier folder."""
    image = probe_image(autoencoder.config.in_channels, image_size)
    meta = {**(extra or {}), "type": "noisy-classifier", "classifier": to_dict(net.config),
            "class_names": list(class_names), "schedule": to_dict(schedule)}
    probe = {"image": image, "latent": probe_latent(autoencoder, image)}
    return save_checkpoint(directory, {"classifier": net.state_dict(), "probe": probe}, meta, train_state)


def load_latent_classifier(directory: str | Path, device: str | torch.device = "cpu") -> LatentClassifier:
    """A classifier folder (`ldmkit train-noisy-classifier`'s run_dir/model, or one of its
    checkpoints), or a shipped classifier's name (models/classifiers/NAME, e.g. "fashion-mnist")."""
    path = Path(directory)
    shipped = MODELS_DIR / "classifiers" / str(directory)
    if not path.exists() and len(path.parts) == 1 and shipped.is_dir():  # a folder of that name wins
        directory = shipped
    elif not path.exists():
        names = sorted(p.name for p in (MODELS_DIR / "classifiers").glob("*") if p.is_dir())
        raise CheckpointError(f"no classifier at {directory}: give a classifier folder or a shipped classifier's "
                              f"name ({names or 'none shipped yet'})")
    states, meta, _ = load_checkpoint(directory)
    if meta.get("type") != "noisy-classifier" or "classifier" not in states:
        raise CheckpointError(f"{directory} does not hold a noisy latent classifier (type {meta.get('type')!r})")
    if "probe" not in states:
        raise CheckpointError(f"{directory} has no probe of its latent space ('probe.' tensors)")
    net = NoisyClassifier(from_dict(NoisyClassifierConfig, meta["classifier"]))
    net.load_state_dict(states["classifier"])
    return LatentClassifier(net.to(device).eval().requires_grad_(False), list(meta["class_names"]),
                            from_dict(ScheduleConfig, meta["schedule"]), states["probe"]["image"],
                            states["probe"]["latent"], name=Path(directory).name, meta=meta)
