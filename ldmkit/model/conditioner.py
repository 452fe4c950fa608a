"""Prompts to the network's conditioning inputs, one conditioner per kind of model, each owning
its null condition (the unconditional input of classifier-free guidance and of label dropout):
- text: the text encoder's token states as cross-attention context (+ a padding mask); null: "";
- class: a label from the class names; null: the extra last label;
- none: nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

NULL_PROMPT = ""


class TextConditioner:
    def __init__(self, text_encoder):
        self.text_encoder = text_encoder

    def __call__(self, prompts: Sequence[str], device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        return self.from_states(*self.text_encoder(list(prompts)), device, dtype)

    @staticmethod
    def from_states(states: torch.Tensor, mask: torch.Tensor | None, device: torch.device,
                    dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """A text encoder's (states (B, L, D), mask (B, L)) as the network's inputs."""
        cond = {"context": states.to(device, dtype)}
        if mask is not None:  # CLIP (SD) attends to every position, padding included
            cond["context_mask"] = mask.to(device)
        return cond


class ClassConditioner:
    def __init__(self, class_names: Sequence[str], num_labels: int):
        self.class_names, self.null_label = list(class_names), num_labels - 1

    def __call__(self, prompts: Sequence[str], device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        return {"class_labels": torch.tensor([self.label(p) for p in prompts], device=device)}

    def label(self, prompt: str) -> int:
        """A class name (or "a photo of a {name}"); "" is the null class, the last label."""
        if prompt == NULL_PROMPT:
            return self.null_label
        for index, name in enumerate(self.class_names):
            if prompt in (name, f"a photo of a {name}"):
                return index
        raise ValueError(f"this class-conditioned model knows only the prompts {self.class_names} (or ''), "
                         f"got {prompt!r}")


class Unconditional:
    def __call__(self, prompts: Sequence[str], device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        return {}


def conditioner_for(config, text_encoder=None, class_names: Sequence[str] = ()):
    """The conditioner of a model of this LatentDiffusionConfig."""
    if config.conditioning == "text":
        return TextConditioner(text_encoder)
    if config.conditioning == "class":
        return ClassConditioner(class_names, config.net.num_labels)
    return Unconditional()
