"""A VAE as a generator: z ~ N(0, T^2 I) through a decoder, one pass per image.

Two kinds of folder load as one (config.json "kind": "vae"):
- a VAE trained to generate (`ldmkit train-vae`'s run_dir/model): {"vae": VAEConfig,
  "class_names", for shapes "attribute_names", ...} and model.safetensors with its decoder under "decoder." (BatchNorm
  statistics recomputed for samples of the prior, as the GAN's are) and the prior's class means
  under "prior.means";
- a pointer to a KL first stage, {"autoencoder": "models/autoencoders/fmnist-kl-f4"}: its decoder
  fed z ~ N(0, I), the prior its (tiny-weighted) KL term pulls the posterior toward. LDM weights
  that term by 1e-6, so the latents it decodes well are far from that prior: the row that shows
  why LDM puts a diffusion model over the latents instead (docs/family.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image

from ..autoencoders import Autoencoder
from ..config import from_dict
from ..model.folder import load_autoencoder, resolve_repo_path
from ..storage import CheckpointError, load_checkpoint, save_checkpoint
from ..utils.images import to_pil
from .attributes import trained_labels
from .base import ClassPromptGenerator, check_common
from .gan_networks import Generator, class_rows
from .vae_networks import VAEConfig


class VAEGenerator(ClassPromptGenerator):
    """A decoder in eval mode and the prior N(0, T^2 I): a class-conditional VAE's (prompts name
    classes) or a KL first stage's (unconditional, z of its latent shape)."""

    kind = "vae"

    def __init__(self, decoder: Generator | Autoencoder, class_names: Sequence[str] = (), name: str = "vae",
                 meta: dict | None = None, prior_means: torch.Tensor | None = None,
                 attribute_names: Sequence[tuple[str, Sequence[str]]] | None = None):
        """prior_means (classes or 1, z_dim; attribute values for a class of attributes): the m_y of
        p(z | y) = N(m_y, I), their sum for attributes; None: zeros."""
        super().__init__(name, meta, class_names, attribute_names)
        self.decoder = decoder.eval().requires_grad_(False)
        self.first_stage = isinstance(decoder, Autoencoder)
        self.prior_means = prior_means
        self.attributes = () if self.first_stage else decoder.config.attributes
        self.set_conditional(not self.first_stage and decoder.config.conditioning == "class",
                             getattr(decoder.config, "num_classes", 0), self.attributes)

    @classmethod
    def from_folder(cls, path: str | Path, device: str | torch.device = "cpu",
                    dtype: torch.dtype = torch.float32) -> VAEGenerator:
        """A trained VAE's folder or checkpoint, or a folder pointing at a KL first stage."""
        path = resolve_repo_path(path)
        states, meta, _ = load_checkpoint(path)
        if meta.get("kind") != "vae":
            raise CheckpointError(f"{path} does not hold a VAE (kind {meta.get('kind')!r})")
        if "autoencoder" in meta:
            autoencoder = load_autoencoder(resolve_repo_path(meta["autoencoder"]))
            if autoencoder.config.kind != "kl":
                raise CheckpointError(f"{path} points at {meta['autoencoder']}, a {autoencoder.config.kind!r} "
                                      "autoencoder: sampling its prior needs a KL one")
            return cls(autoencoder, name=path.name, meta=meta).to(device, dtype)
        config = from_dict(VAEConfig, meta["vae"])
        decoder = Generator(config.decoder_config())
        if "decoder" in states:  # a finished model: statistics of the prior's samples already
            decoder.load_state_dict(states["decoder"])
            means = (states.get("prior") or {}).get("means")
        elif "vae" in states:  # a run's checkpoint: its statistics are the posterior's, recompute them
            decoder.load_state_dict({k.removeprefix("decoder."): v for k, v in states["vae"].items()
                                     if k.startswith("decoder.")})
            means = states["vae"].get("prior_means")
            decoder.refresh_batch_statistics(trained_labels(meta.get("train") or {}), z_means=means)
        else:
            raise CheckpointError(f"{path} has no decoder weights ('decoder.' or 'vae.' tensors)")
        return cls(decoder, meta.get("class_names") or [], name=path.name, meta=meta, prior_means=means,
                   attribute_names=meta.get("attribute_names")).to(device, dtype)

    def modules(self) -> list[torch.nn.Module]:
        return [self.decoder]

    def config_entries(self) -> dict:
        if self.first_stage:
            return {"autoencoder": self.meta.get("autoencoder"), "latent_shape": list(self.latent_shape)}
        entries = {"vae": self.meta.get("vae"), "class_names": self.class_names if self.conditional else None}
        named = self.conditional and self.attribute_names
        return entries | ({"attribute_names": self.attribute_names} if named else {})

    @property
    def autoencoder(self) -> Autoencoder | None:
        """The KL first stage whose decoder samples, where that is what this is (the family table
        counts its decoder apart)."""
        return self.decoder if self.first_stage else None

    @property
    def latent_shape(self) -> tuple[int, ...]:
        """What one z is: (z_dim,) for a trained VAE, (c, h, w) for a first stage at its image size."""
        if not self.first_stage:
            return (self.decoder.config.z_dim,)
        c = self.decoder.config
        side = int(self.meta.get("image_size", 32)) // c.downsampling_factor
        return (c.z_channels, side, side)

    @torch.no_grad()
    def generate(self, prompt: str | Sequence[str] = "", num_images: int = 1, seed: int = 0, output: str = "pil",
                 class_labels: Sequence[int] | None = None, temperature: float = 1.0,
                 batch_size: int = 256) -> list[Image.Image] | torch.Tensor:
        """`num_images` images of each prompt (a class name or "a photo of a {name}"; for shapes, a
        caption naming a colour, a shape and a quadrant; "" for an unconditional one), or of each
        of `class_labels`, prompt-major. Image i draws its class (for "") and then z from a
        generator seeded seed + i: the same image alone or in any batch. temperature T scales the
        prior's spread, z ~ N(m_y, T^2 I): below 1, fidelity for variety (Kingma & Dhariwal 2018,
        sec. 5); 1, the default, is the prior trained against. output: "pil" or "tensor" ((N, C,
        H, W) in [-1, 1], float32)."""
        labels = self.labels(prompt, class_labels)
        check_common(num_images, output)
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        labels = [k for k in labels for _ in range(int(num_images))]
        z, classes = [], []
        for i, label in enumerate(labels):
            gen = torch.Generator().manual_seed(seed + i)
            if self.conditional:  # drawn always and first: z is the seed's, whatever the class
                drawn = int(torch.randint(len(self.class_names), (1,), generator=gen))
                classes.append(drawn if label is None else label)
            mean = 0.0
            if self.prior_means is not None:  # m_y; an unconditional VAE's one row
                label = torch.tensor([classes[-1] if classes else 0])
                mean = class_rows(self.prior_means.cpu(), label, self.attributes if classes else ())[0]
            z.append(mean + temperature * torch.randn(self.latent_shape, generator=gen))
        z = torch.stack(z)
        y = torch.tensor(classes, dtype=torch.long) if classes else None
        images = []
        for start in range(0, len(z), batch_size):
            chunk = z[start : start + batch_size].to(self.device, self.dtype)
            if self.first_stage:
                images.append(self.decoder.decode(chunk).clamp(-1, 1).float())
            else:
                images.append(self.decoder(chunk, None if y is None else y[start : start + batch_size].to(
                    self.device)).float())
        images = torch.cat(images)  # (N, C, H, W) in [-1, 1]
        return images if output == "tensor" else [to_pil(x) for x in images]


def save_vae_pointer(folder: str | Path, autoencoder: str, dataset: str, image_size: int = 32) -> Path:
    """A folder that samples the prior of the KL first stage at `autoencoder` (no weights of its own)."""
    meta = {"kind": "vae", "autoencoder": autoencoder, "dataset": dataset, "image_size": image_size}
    save_checkpoint(Path(folder), {}, meta)
    return Path(folder)

