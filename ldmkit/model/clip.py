"""CLIP for use: images and captions to L2-normalised embeddings in one space, behind one
interface whether the weights are ldmkit's small CLIP (nets/clip.py, `ldmkit train-clip`) or a
transformers CLIPModel folder (real CLIP weights a user has):

    clip = CLIP.from_pretrained("clip-small")         # the shipped one, or a folder of either kind
    clip.encode_image([image, ...])  -> (N, E)        # PIL images; L2-normalised rows
    clip.encode_text(["a photo of a bag", ...]) -> (N, E)
    clip.embed_pixels(x)             -> (N, E)        # x (N, C, H, W) in [-1, 1]; differentiable
    clip.score(x, captions)          -> CLIP score    # torchmetrics' definition (metrics/clip_score.py)

Images are prepared the same way for both: grey repeated to RGB, the short side resized to the
model's size, centre-cropped, normalised with the model's mean and std (transformers' CLIP:
OpenAI's; the small CLIP reads [-1, 1], i.e. mean = std = 0.5). An ldmkit CLIP folder holds
config.json {"type": "clip", "clip": CLIPConfig, ...} and model.safetensors ("clip." tensors).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from ..conditioning import TextEncoder, minilm_path
from ..config import from_dict, to_dict
from ..metrics.clip_score import clip_score, clip_scores
from ..nets.clip import CLIPConfig, SmallCLIP
from ..storage import CheckpointError, load_checkpoint, save_checkpoint
from ..utils.images import from_pil
from .folder import MODELS_DIR

SHIPPED = ("clip-small",)  # names of the CLIPs shipped in models/
OPENAI_MEAN, OPENAI_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
TextInputs = Callable[[Sequence[str]], tuple[torch.Tensor, torch.Tensor]]  # captions -> (tokens, mask)


@dataclass(frozen=True)
class ImagePreparation:
    """How a CLIP wants its pixels: the short side resized to `resize`, a centre crop of `crop`,
    values in [0, 1] normalised by mean and std."""

    resize: int
    crop: int
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W) in [-1, 1], C = 1 or 3 -> (B, 3, crop, crop); differentiable."""
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"CLIP takes images (B, C, H, W) with C = 1 or 3, in [-1, 1]; got {tuple(x.shape)}")
        x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x                      # (B, 3, H, W)
        height, width = x.shape[-2:]
        if min(height, width) != self.resize:
            scale = self.resize / min(height, width)
            size = (max(self.resize, round(height * scale)), max(self.resize, round(width * scale)))
            x = F.interpolate(x, size=size, mode="bicubic", antialias=scale < 1, align_corners=False)
        top, left = (x.shape[-2] - self.crop) // 2, (x.shape[-1] - self.crop) // 2
        x = x[..., top : top + self.crop, left : left + self.crop]                 # (B, 3, crop, crop)
        mean, std = x.new_tensor(self.mean).view(1, 3, 1, 1), x.new_tensor(self.std).view(1, 3, 1, 1)
        return ((x + 1) / 2 - mean) / std


class TransformersCLIP(nn.Module):
    """A transformers CLIPModel with the small CLIP's two calls (normalised embeddings)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model.eval().requires_grad_(False)

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return F.normalize(_pooled(self.model.get_image_features(pixel_values=pixels)), dim=-1)

    def encode_text(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return F.normalize(_pooled(self.model.get_text_features(input_ids=ids, attention_mask=mask.long())), dim=-1)


def _pooled(output) -> torch.Tensor:
    """The projected embedding: transformers < 5 returns it, >= 5 an output whose pooler_output it is."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class CLIP(nn.Module):
    """A contrastive image-text model: `model` (encode_image(pixels), encode_text(tokens, mask),
    both normalised), how it wants its images, and its captions' inputs."""

    def __init__(self, model: nn.Module, prepare: ImagePreparation, text_inputs: TextInputs,
                 text_encoder: nn.Module | None = None, name: str = "clip", meta: dict | None = None):
        super().__init__()
        self.model = model.eval()
        self.prepare, self.text_inputs = prepare, text_inputs
        self.text_encoder = text_encoder  # a frozen MiniLM ("minilm" text tower), moved with the model
        self.name, self.meta = name, dict(meta or {})

    # ---- loading and saving ------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, device: str | torch.device = "cpu") -> CLIP:
        """A shipped CLIP by name ("clip-small"), an ldmkit CLIP folder, or a transformers CLIPModel
        folder (config.json, weights, tokenizer files, optionally preprocessor_config.json)."""
        path = Path(name_or_path)
        if not path.is_dir() and str(name_or_path) in SHIPPED:
            path = MODELS_DIR / str(name_or_path)
            if not path.is_dir():
                raise FileNotFoundError(
                    f"{name_or_path} is not in {MODELS_DIR} yet: train it with `ldmkit train-clip --preset "
                    f"{name_or_path} --out runs/{name_or_path}` and copy runs/{name_or_path}/model there")
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"no CLIP at {name_or_path}: give one of {list(SHIPPED)}, an ldmkit CLIP folder "
                                    "or a transformers CLIPModel folder")
        meta = json.loads((path / "config.json").read_text())
        if meta.get("type") == "clip":
            clip = cls.from_small_clip(_read_small_clip(path), name=meta.get("name", path.name), meta=meta)
        elif meta.get("model_type") == "clip" or "CLIPModel" in meta.get("architectures", []):
            clip = _transformers_clip(path)
        else:
            raise CheckpointError(f"{path} holds no CLIP (type {meta.get('type', meta.get('model_type'))!r}): "
                                  "an ldmkit CLIP folder or a transformers CLIPModel folder is needed")
        return clip.to(device)

    @classmethod
    def from_small_clip(cls, model: SmallCLIP, name: str = "clip-small", meta: dict | None = None) -> CLIP:
        """ldmkit's small CLIP (trained or fresh) with its tokenizer or frozen MiniLM."""
        c = model.config
        prepare = ImagePreparation(c.image_size, c.image_size)
        if c.text == "minilm":
            encoder = TextEncoder.minilm(c.text_length)
            return cls(model, prepare, lambda texts: encoder(list(texts)), encoder, name, meta)
        tokenizer = minilm_tokenizer()

        def tokens(texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
            out = tokenizer(list(texts), padding="max_length", truncation=True, max_length=c.text_length,
                            return_tensors="pt")
            return out.input_ids, out.attention_mask.bool()                       # (B, L), (B, L)

        return cls(model, prepare, tokens, None, name, meta)

    def save_pretrained(self, directory: str | Path, extra: dict | None = None) -> Path:
        """An ldmkit CLIP folder (the small CLIP only; a transformers CLIP stays in its own folder)."""
        if not isinstance(self.model, SmallCLIP):
            raise ValueError("only ldmkit's small CLIP is saved as an ldmkit folder; a transformers CLIP keeps its own")
        meta = {**self.meta, **(extra or {}), "type": "clip", "name": self.name, "clip": to_dict(self.model.config)}
        return save_checkpoint(directory, {"clip": self.model.state_dict()}, meta)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # ---- embeddings --------------------------------------------------------------------------
    def embed_pixels(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) in [-1, 1] -> normalised (B, E), with gradients (CLIP guidance)."""
        dtype = next(self.model.parameters()).dtype
        return self.model.encode_image(self.prepare(x.to(self.device, dtype))).float()

    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """Captions -> normalised (B, E), with gradients where the text tower has them."""
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise ValueError("captions must be a list of strings")
        tokens, mask = self.text_inputs(texts)
        return self.model.encode_text(tokens.to(self.device), mask.to(self.device)).float()

    @torch.no_grad()
    def encode_image(self, images: Sequence, batch_size: int = 256) -> torch.Tensor:
        """PIL images (any size and mode) -> L2-normalised rows (N, E)."""
        if not images:
            raise ValueError("encode_image needs at least one image")
        pixels = [self.prepare(from_pil(image, 3)[None]) for image in images]      # each (1, 3, S, S)
        prepared = torch.cat(pixels)
        return torch.cat([self.model.encode_image(chunk.to(self.device, next(self.model.parameters()).dtype))
                          .float() for chunk in prepared.split(batch_size)])

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """Captions -> L2-normalised rows (N, E); each distinct caption is encoded once."""
        if isinstance(texts, str) or not texts:
            raise ValueError("encode_text takes a non-empty list of strings")
        distinct = list(dict.fromkeys(texts))
        rows = torch.cat([self.embed_texts(distinct[i : i + batch_size]) for i in range(0, len(distinct), batch_size)])
        return rows[torch.tensor([distinct.index(t) for t in texts])]

    @torch.no_grad()
    def scores(self, images: torch.Tensor, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """100 cos of each image (B, C, H, W) in [-1, 1] with its caption -> (B,): what reranking sorts by."""
        if len(images) != len(texts):
            raise ValueError(f"need one caption per image, got {len(images)} images and {len(texts)} captions")
        features = torch.cat([self.embed_pixels(chunk) for chunk in images.split(batch_size)])
        return clip_scores(features, self.encode_text(list(texts)))

    def score(self, images: torch.Tensor, texts: Sequence[str]) -> float:
        """The CLIP score of images (B, C, H, W) in [-1, 1] and their captions (torchmetrics' CLIPScore)."""
        features = torch.cat([self.embed_pixels(chunk).detach() for chunk in images.split(256)])
        with torch.no_grad():
            return clip_score(features, self.encode_text(list(texts)))


def best_of(decode: Callable[[torch.Tensor], torch.Tensor], clip: CLIP, candidates: torch.Tensor,
            prompts: Sequence[str], n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """DALL-E's reranking: of each n consecutive candidates (one image's; any representation that
    `decode` turns into images in [-1, 1], prompts one per candidate), the one CLIP scores highest
    with its prompt: (candidates (N, ...), scores (N,))."""
    if not all(prompts):
        raise ValueError("reranking scores images against their prompts: give a non-empty prompt")
    scores = clip.scores(decode(candidates), list(prompts)).view(-1, n)           # (N, n): 100 cos
    best = scores.argmax(dim=1)                                                    # (N,)
    picked = torch.arange(len(best)) * n + best.cpu()
    return candidates[picked.to(candidates.device)], scores.max(dim=1).values


def minilm_tokenizer():
    """MiniLM's WordPiece tokenizer, from the packaged folder (nothing is downloaded)."""
    from transformers import AutoTokenizer

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return AutoTokenizer.from_pretrained(minilm_path(), local_files_only=True)


def _read_small_clip(path: Path) -> SmallCLIP:
    states, meta, _ = load_checkpoint(path)
    if "clip" not in states:
        raise CheckpointError(f"{path} is a CLIP folder without its weights ('clip.' tensors)")
    model = SmallCLIP(from_dict(CLIPConfig, meta["clip"]))
    model.load_state_dict(states["clip"])
    return model


def _transformers_clip(path: Path) -> CLIP:
    """A transformers CLIPModel folder: the model, its tokenizer, its image preparation."""
    from transformers import CLIPModel

    from ..conditioning import load_clip_tokenizer

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tokenizer = load_clip_tokenizer(path)
    model = CLIPModel.from_pretrained(str(path), local_files_only=True)
    length = model.config.text_config.max_position_embeddings

    def tokens(texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        out = tokenizer(list(texts), padding=True, truncation=True, max_length=length, return_tensors="pt")
        return out.input_ids, out.attention_mask.bool()

    size = model.config.vision_config.image_size
    resize, crop, mean, std = size, size, OPENAI_MEAN, OPENAI_STD
    processor = path / "preprocessor_config.json"
    if processor.is_file():  # CLIPImageProcessor's settings: {"size": {"shortest_edge": 224}, "crop_size": ...}
        settings = json.loads(processor.read_text())
        side = lambda value: value if isinstance(value, int) else value.get("shortest_edge", value.get("height"))
        resize, crop = side(settings.get("size", resize)), side(settings.get("crop_size", crop))
        mean, std = tuple(settings.get("image_mean", mean)), tuple(settings.get("image_std", std))
    return CLIP(TransformersCLIP(model), ImagePreparation(resize, crop, mean, std), tokens, name=path.name,
                meta={"type": "transformers-clip", "source": str(path)})
