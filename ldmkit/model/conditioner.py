"""Prompts to the network's conditioning inputs, one conditioner per kind of model, each owning
its null condition (the unconditional input of classifier-free guidance and of label dropout):
- text: the text encoder's token states as cross-attention context (+ a padding mask), and for a
  network with pooled_dim (GLIDE) the last real token's state as `pooled`; null: "";
- class: a label from the class names; null: the extra last label;
- image-embedding (DALL-E 2's decoder): a CLIP image embedding per image as `pooled` (the UNet adds
  it to its time embedding and makes context tokens of it); null: the zero embedding, standing where
  a prompt would stand as "";
- none: nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

NULL_PROMPT = ""


def takes_pooled(config) -> bool:
    """Whether the model's network adds a pooled condition to its time embedding (GLIDE)."""
    return getattr(config.net, "pooled_dim", None) is not None


def last_token_states(states: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """GLIDE's pooled text: each prompt's last real token's state (MiniLM's [SEP]), (B, L, D) -> (B, D).
    Without a mask (CLIP attends to its padding too) the last position's."""
    if mask is None:
        return states[:, -1]
    positions = torch.arange(mask.shape[1], device=mask.device)                # (L,)
    last = (positions * mask).argmax(dim=1)                                    # (B,) the last True
    return states[torch.arange(len(states), device=states.device), last.to(states.device)]


class TextConditioner:
    def __init__(self, text_encoder, pooled: bool = False):
        self.text_encoder, self.pooled = text_encoder, pooled

    def __call__(self, prompts: Sequence[str], device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        return self.from_states(*self.text_encoder(list(prompts)), device, dtype, self.pooled)

    @staticmethod
    def from_states(states: torch.Tensor, mask: torch.Tensor | None, device: torch.device,
                    dtype: torch.dtype, pooled: bool = False) -> dict[str, torch.Tensor]:
        """A text encoder's (states (B, L, D), mask (B, L)) as the network's inputs; pooled: also
        the last real token's state (B, D), for a network with pooled_dim."""
        cond = {"context": states.to(device, dtype)}
        if mask is not None:  # CLIP (SD) attends to every position, padding included
            cond["context_mask"] = mask.to(device)
        if pooled:
            cond["pooled"] = last_token_states(states, mask).to(device, dtype)
        return cond


class ClassConditioner:
    """A class name may list synonyms after commas, as DiT's ImageNet labels do ("tench, Tinca
    tinca"): the whole name and each synonym name that class. A synonym of several classes
    ("crane", a bird and a machine) names the last of them, as diffusers' DiTPipeline does."""

    SHOWN = 12  # class names an error lists

    def __init__(self, class_names: Sequence[str], num_labels: int):
        self.class_names, self.null_label = list(class_names), num_labels - 1
        self.labels: dict[str, int] = {}  # every name and synonym -> its label
        for index, name in enumerate(self.class_names):
            for alias in (name, *(s.strip() for s in name.split(","))):
                if alias:
                    self.labels[alias] = index

    def __call__(self, prompts: Sequence[str], device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        return {"class_labels": torch.tensor([self.label(p) for p in prompts], device=device)}

    def label(self, prompt: str) -> int:
        """A class name or synonym (or "a photo of a {name}"); "" is the null class, the last label."""
        if prompt == NULL_PROMPT:
            return self.null_label
        for name in (prompt, prompt.removeprefix("a photo of a ")):
            if name in self.labels:
                return self.labels[name]
        shown = self.class_names[: self.SHOWN]
        more = f" and {len(self.class_names) - len(shown)} more" if len(self.class_names) > len(shown) else ""
        raise ValueError(f"this class-conditioned model knows only the prompts {shown}{more} (or ''), got {prompt!r}")


class ImageEmbeddingConditioner:
    """CLIP image embeddings (E,) in the prompts' places, "" for the null: the zero embedding, which
    classifier-free guidance subtracts and DALL-E 2's training drops embeddings to (sec. 2.1)."""

    def __init__(self, width: int):
        self.width = width

    def __call__(self, embeddings: Sequence[torch.Tensor | str] | torch.Tensor, device: torch.device,
                 dtype: torch.dtype) -> dict[str, torch.Tensor]:
        rows = [self.row(e).to(device=device, dtype=torch.float32) for e in embeddings]
        return {"pooled": torch.stack(rows).to(dtype)}                                  # (B, E)

    def row(self, embedding: torch.Tensor | str) -> torch.Tensor:
        """One image's embedding (E,); "" is the null."""
        if isinstance(embedding, str):
            if embedding == NULL_PROMPT:
                return torch.zeros(self.width)
            raise ValueError(f"this model is conditioned on {self.width}-d CLIP image embeddings, not on prompts: "
                             f"give image_embeds=, not {embedding!r}")
        if tuple(embedding.shape) != (self.width,):
            raise ValueError(f"an image embedding of this model is ({self.width},), got {tuple(embedding.shape)}")
        return embedding

    @staticmethod
    def dropped(embeddings: torch.Tensor, drop: torch.Tensor) -> dict[str, torch.Tensor]:
        """Training's inputs: embeddings (B, E) with the rows where drop (B,) is True set to the null
        (zero) embedding: DALL-E 2's embedding dropout, for guidance."""
        return {"pooled": torch.where(drop.to(embeddings.device)[:, None], 0.0, embeddings)}


class Unconditional:
    def __call__(self, prompts: Sequence[str], device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        return {}


def conditioner_for(config, text_encoder=None, class_names: Sequence[str] = ()):
    """The conditioner of a model of this LatentDiffusionConfig."""
    if config.conditioning == "text":
        return TextConditioner(text_encoder, pooled=takes_pooled(config))
    if config.conditioning == "class":
        return ClassConditioner(class_names, config.net.num_labels)
    if config.conditioning == "image-embedding":
        return ImageEmbeddingConditioner(config.embedding_dim)
    return Unconditional()
