"""unCLIP (DALL-E 2, Ramesh et al. 2022) as one generator: a diffusion prior from a caption to a CLIP
image embedding (ldmkit.family.unclip_prior), then a latent diffusion decoder from that embedding to
an image (a model of conditioning "image-embedding": the unclip-decoder presets of `ldmkit train`).

- generate(prompt): the prior samples one embedding per image, normalised (the decoder was trained
  on the CLIP's unit embeddings), and the decoder turns each into an image; image k of all
  (prompt-major) takes its embedding from seed + k and its decoding noise from seed + k, so it is
  the same alone (with that seed) or in any batch.
- variations(image): the image's own CLIP embedding decoded `num_images` times (sec. 3.1).

An unCLIP folder holds config.json alone: {"kind": "unclip", "prior": a prior folder, "decoder": a
decoder folder, "sampling": the defaults (prior_steps, prior_guidance, steps, sampler,
decoder_guidance; missing ones: each part's own)}. A part's path is used as given, or, when
relative and not found there, inside the unCLIP folder or the repository (save_unclip writes one).

The decoder is a latent diffusion model, which only the pipelines, a layer above this one, open and
sample: from_folder takes `open_decoder` (folder, device, dtype) -> a Pipeline, and
Pipeline.from_pretrained, which opens unCLIP folders, gives its own.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from PIL import Image
from torch.nn import functional as F

from ..config import to_dict
from ..model.clip import SHIPPED
from ..model.folder import MODELS_DIR, model_config, resolve_repo_path
from ..storage import CheckpointError, atomic_write
from .base import FamilyGenerator, check_common
from .unclip_prior import UnclipPrior

SAMPLING = ("prior_steps", "prior_guidance", "steps", "sampler", "decoder_guidance")  # a folder's defaults
DECODER_SETTINGS = ("steps", "sampler", "decoder_guidance")  # those variations use


def part_folder(path: str | Path, unclip_folder: Path, part: str) -> Path:
    """A part's folder as an unCLIP config names it: as given, else inside the unCLIP folder, else
    inside the repository."""
    for candidate in (Path(path), unclip_folder / path, resolve_repo_path(path)):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"the unCLIP folder {unclip_folder} names the {part} {path}, which is not there "
                            f"(as given, inside {unclip_folder}, or in the repository)")


def clip_location(name: str) -> Path:
    """Where a CLIP named by a model config lives, to tell two names of one CLIP apart from two CLIPs."""
    if str(name) in SHIPPED and not Path(name).is_dir():
        return (MODELS_DIR / str(name)).resolve()
    return resolve_repo_path(name).resolve()


def check_parts(prior_width: int, prior_clip: str, decoder_config, decoder_name: str) -> None:
    """A decoder of CLIP image embeddings, of the CLIP and width the prior samples."""
    if decoder_config.conditioning != "image-embedding":
        raise ValueError(f"the decoder {decoder_name} is conditioned on {decoder_config.conditioning!r}; an unCLIP "
                         "decoder is conditioned on CLIP image embeddings (a preset like fashion-mnist-unclip-decoder)")
    if decoder_config.embedding_dim != prior_width:
        raise ValueError(f"the prior samples {prior_width}-d image embeddings but the decoder {decoder_name} reads "
                         f"{decoder_config.embedding_dim}-d ones")
    if clip_location(prior_clip) != clip_location(decoder_config.embedding_clip):
        raise ValueError(f"the prior samples {prior_clip}'s image embeddings but the decoder {decoder_name} reads "
                         f"{decoder_config.embedding_clip}'s: both must use the same CLIP")


def save_unclip(directory: str | Path, prior: str | Path, decoder: str | Path, sampling: dict | None = None,
                extra: dict | None = None) -> Path:
    """An unCLIP folder (config.json only) naming a prior folder (`ldmkit train-unclip-prior`) and a decoder
    folder (`ldmkit train --preset fashion-mnist-unclip-decoder`), their paths kept as given; `sampling`:
    defaults among SAMPLING. The parts are checked to fit each other first (their configs only).
    The parts' training records are summed into "training" unless `extra` gives one."""
    directory = Path(directory)
    unknown = sorted(set(sampling or {}) - set(SAMPLING))
    if unknown:
        raise ValueError(f"unknown sampling settings {unknown}; an unCLIP folder records {list(SAMPLING)}")
    prior_meta = read_config(part_folder(prior, directory, "prior"), "prior")
    decoder_folder = part_folder(decoder, directory, "decoder")
    decoder_meta = read_config(decoder_folder, "decoder")
    if prior_meta.get("kind") != "unclip-prior":
        raise CheckpointError(f"{prior} does not hold an unCLIP prior (kind {prior_meta.get('kind')!r})")
    if decoder_meta.get("type") != "latent-diffusion":
        raise CheckpointError(f"{decoder} does not hold an ldmkit latent diffusion model (type "
                              f"{decoder_meta.get('type')!r})")
    check_parts(prior_meta["prior"]["embedding_dim"], prior_meta["clip"], model_config(decoder_meta),
                decoder_folder.name)
    meta = {"dataset": decoder_meta.get("dataset"), **parts_training(prior=prior_meta, decoder=decoder_meta),
            **(extra or {}), "kind": "unclip", "prior": str(prior),
            "decoder": str(decoder),
            "sampling": {k: v for k, v in (sampling or {}).items() if v is not None}}
    text = json.dumps(meta, indent=2, sort_keys=True)
    atomic_write(directory / "config.json", lambda tmp: tmp.write_text(text))
    return directory


def parts_training(**metas: dict) -> dict:
    """{"training": each part's steps and the parts' minutes summed} from the parts' config.json
    records (what the family table's "train min" reads); {} when a part has no record."""
    records = {name: meta.get("training") or {} for name, meta in metas.items()}
    if not all("train_minutes" in record for record in records.values()):
        return {}
    return {"training": {"steps": {name: record.get("steps") for name, record in records.items()},
                         "train_minutes": round(sum(record["train_minutes"] for record in records.values()), 2)}}


def read_config(folder: Path, part: str) -> dict:
    try:
        return json.loads((folder / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise CheckpointError(f"the {part} folder {folder} has no readable config.json ({error})") from None


class UnclipGenerator(FamilyGenerator):
    """A prior (with its CLIP) and a decoder (a Pipeline of an image-embedding model), in eval mode."""

    kind = "unclip"
    opens_diffusion_models = True

    def __init__(self, prior: UnclipPrior, decoder, name: str = "unclip", meta: dict | None = None,
                 sampling: dict | None = None):
        super().__init__(name, meta)
        self.prior, self.decoder = prior, decoder
        self.sampling = {k: v for k, v in (sampling or {}).items() if v is not None}
        check_parts(prior.prior.config.embedding_dim, prior.meta.get("clip", prior.clip.name), decoder.config,
                    decoder.name)

    @classmethod
    def from_folder(cls, path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                    open_decoder: Callable | None = None) -> UnclipGenerator:
        """An unCLIP folder; its decoder opened by open_decoder(folder, device, dtype) (a Pipeline)."""
        path = resolve_repo_path(path)
        meta = read_config(path, "unCLIP")
        if meta.get("kind") != "unclip" or not {"prior", "decoder"} <= set(meta):
            raise CheckpointError(f"{path} is not an unCLIP folder (kind {meta.get('kind')!r}, naming a prior and "
                                  "a decoder)")
        if open_decoder is None:
            raise ValueError("an unCLIP decoder is a latent diffusion model, which ldmkit.family cannot open by "
                             "itself: load the folder with ldmkit.Pipeline.from_pretrained, or pass open_decoder="
                             "Pipeline.from_pretrained")
        prior = UnclipPrior.from_folder(part_folder(meta["prior"], path, "prior"), device)
        decoder = open_decoder(part_folder(meta["decoder"], path, "decoder"), device, dtype)
        return cls(prior, decoder, name=path.name, meta=meta, sampling=meta.get("sampling"))

    def modules(self) -> list[torch.nn.Module]:
        return [self.decoder.net, self.decoder.autoencoder, self.prior.prior, self.prior.clip]

    def networks(self) -> list[torch.nn.Module]:
        return [self.decoder.net, self.prior.prior]

    @property
    def autoencoder(self):
        """The decoder's first stage (the family table counts its decoder apart)."""
        return self.decoder.autoencoder

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> UnclipGenerator:
        """The decoder to `device` and `dtype`; the prior and its CLIP to `device`, in float32 (the
        prior's sampler runs in it)."""
        self.decoder.to(device, dtype)
        self.prior.prior.to(device)
        self.prior.clip.to(device)
        return self

    def config_entries(self) -> dict:
        return {"prior_config": to_dict(self.prior.prior.config), "decoder_config": to_dict(self.decoder.config)}

    def settings_used(self, settings: dict) -> dict:
        """The sampling settings a run takes: those given, else the folder's, else the parts' own
        (the prior's steps and guidance, the decoder model's defaults)."""
        own = {"prior_steps": self.prior.sampling["steps"], "prior_guidance": self.prior.sampling["guidance"],
               "steps": self.decoder.defaults.steps, "sampler": self.decoder.defaults.sampler,
               "decoder_guidance": self.decoder.defaults.guidance}
        return {**own, **self.sampling, **{k: v for k, v in settings.items() if v is not None}}

    @torch.no_grad()
    def generate(self, prompt: str | Sequence[str], num_images: int = 1, seed: int = 0, output: str = "pil",
                 prior_guidance: float | None = None, prior_steps: int | None = None,
                 decoder_guidance: float | None = None, steps: int | None = None, sampler: str | None = None,
                 batch_size: int = 64) -> list[Image.Image] | torch.Tensor:
        """`num_images` images of each prompt, prompt-major; image k of all from seed + k in both
        stages. prior_guidance, prior_steps: the prior's classifier-free guidance and DDIM steps;
        decoder_guidance, steps, sampler: the decoder's (None: settings_used). The prompt "" samples
        the prior's unconditional embeddings. output: "pil" or "tensor" ((N, C, H, W) in [-1, 1])."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise ValueError("prompt must be a string or a non-empty list of strings")
        check_common(num_images, output)
        used = self.settings_used({"prior_steps": prior_steps, "prior_guidance": prior_guidance, "steps": steps,
                                   "sampler": sampler, "decoder_guidance": decoder_guidance})
        embeddings = self.prior.image_embeddings(prompts, int(num_images), seed, used["prior_steps"],
                                                 used["prior_guidance"])               # (P * n, E), unnormalised
        return self.decode(F.normalize(embeddings, dim=1), 1, seed, output, used, batch_size)

    @torch.no_grad()
    def variations(self, image, num_images: int = 1, seed: int = 0, output: str = "pil",
                   decoder_guidance: float | None = None, steps: int | None = None, sampler: str | None = None,
                   batch_size: int = 64) -> list[Image.Image] | torch.Tensor:
        """`num_images` images decoded from the CLIP image embedding of each image (a path, a PIL
        image, a (C, H, W) or (N, C, H, W) tensor in [-1, 1], or a list of paths and PIL images),
        image-major; image k of all from seed + k."""
        check_common(num_images, output)
        used = self.settings_used({"steps": steps, "sampler": sampler, "decoder_guidance": decoder_guidance})
        return self.decode(self.embed_images(image), int(num_images), seed, output, used, batch_size)

    def embed_images(self, image) -> torch.Tensor:
        """The CLIP's normalised image embeddings (N, E) of what variations() takes."""
        clip = self.prior.clip
        if isinstance(image, torch.Tensor):
            pixels = image[None] if image.ndim == 3 else image
            if pixels.ndim != 4:
                raise ValueError(f"an image tensor is (C, H, W) or (N, C, H, W) in [-1, 1], got {tuple(image.shape)}")
            return clip.embed_pixels(pixels).float()
        images = list(image) if isinstance(image, list | tuple) else [image]
        if not images:
            raise ValueError("give at least one image")
        opened = []
        for item in images:
            if isinstance(item, str | Path):
                if not Path(item).is_file():
                    raise FileNotFoundError(f"no image file at {item}")
                with Image.open(item) as file:
                    opened.append(file.convert("RGB"))
            elif isinstance(item, Image.Image):
                opened.append(item)
            else:
                raise ValueError(f"an image is a path, a PIL image or a tensor, got {type(item).__name__}")
        return clip.encode_image(opened)

    def decode(self, embeddings: torch.Tensor, num_images: int, seed: int, output: str, used: dict,
               batch_size: int) -> list[Image.Image] | torch.Tensor:
        """num_images decoder images of each embedding (E,) of (N, E), embedding-major, image k from seed + k."""
        return self.decoder.generate(image_embeds=embeddings, num_images=num_images, seed=seed, steps=used["steps"],
                                     sampler=used["sampler"], guidance=used["decoder_guidance"], output=output,
                                     batch_size=batch_size)
