"""What every model of the generative family shares as a loaded generator: its modules on one
device and dtype, its folder's config.json, and a description. Each model adds from_folder and
generate(prompt, num_images, seed, output, **its own sampling settings), image i of the result
from seed + i, as the diffusion Pipeline does."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..model.class_labels import checked_class_labels
from ..model.conditioner import NULL_PROMPT, ClassConditioner
from .attributes import AttributePrompts

OUTPUTS = ("pil", "tensor")


class FamilyGenerator:
    kind: str  # config.json's "kind": how ldmkit.family.loading tells the models apart
    # its folder names latent diffusion models, which from_folder opens with the open_decoder it is given
    # (unCLIP's decoder): ldmkit.family sits below the pipelines that open them
    opens_diffusion_models: bool = False

    def __init__(self, name: str, meta: dict | None):
        self.name, self.meta = name, dict(meta or {})

    def modules(self) -> list[nn.Module]:
        """The networks that run at sampling, the first one holding the parameters that set device
        and dtype."""
        raise NotImplementedError

    def config_entries(self) -> dict:
        """The model's own entries of describe(): its network config and what else defines it."""
        raise NotImplementedError

    def networks(self) -> list[nn.Module]:
        """The networks trained for this model that sample (not a frozen text encoder or CLIP, nor
        a first stage): what a table counts as its parameters."""
        return self.modules()[:1]

    @property
    def device(self) -> torch.device:
        return next(self.modules()[0].parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.modules()[0].parameters()).dtype

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None):
        for module in self.modules():
            module.to(device=device, dtype=dtype)
        return self

    def settings_used(self, settings: dict) -> dict:
        """The sampling settings a run with these `settings` takes (what its PNG text records): those
        given, for a model whose defaults are its generate()'s own."""
        return dict(settings)

    def describe(self) -> dict:
        """The model's config.json and what it is now: name, parameters, device, dtype."""
        return {**self.meta, "kind": self.kind, "name": self.name, **self.config_entries(),
                "parameters": sum(p.numel() for p in self.modules()[0].parameters()),
                "device": str(self.device), "dtype": str(self.dtype).removeprefix("torch.")}


class ClassPromptGenerator(FamilyGenerator):
    """A generator of classes (or of none): a prompt names a class ("bag", "a photo of a bag") or,
    for classes made of attributes, one value of each ("a red circle in the top left"); "" a class
    drawn per image; or the caller gives class_labels."""

    conditional: bool

    def __init__(self, name: str, meta: dict | None, class_names: Sequence[str],
                 attribute_names: Sequence[tuple[str, Sequence[str]]] | None = None):
        """attribute_names: for classes made of attributes, [(attribute, its values), ...] in the
        labels' order (config.json's "attribute_names"); None for plain classes."""
        super().__init__(name, meta)
        self.class_names = list(class_names)
        # "" (NULL_PROMPT) names the label len(class_names): here, a class drawn from each image's seed
        self.conditioner = ClassConditioner(self.class_names, len(self.class_names) + 1)
        self.attribute_names = [(a, list(values)) for a, values in attribute_names] if attribute_names else None
        self.attribute_prompts = AttributePrompts(self.attribute_names, class_names) if attribute_names else None

    def set_conditional(self, conditional: bool, num_classes: int, attributes: tuple[int, ...] = ()) -> None:
        """Whether prompts name classes; a conditional model needs a name for each of its classes, and
        one for each value of its attributes if its classes are made of them."""
        self.conditional = conditional
        if conditional and len(self.class_names) != num_classes:
            raise ValueError(f"a {self.kind.upper()} of {num_classes} classes needs as many class names, "
                             f"got {len(self.class_names)}")
        counts = tuple(len(values) for _, values in self.attribute_names or ())
        if conditional and counts != tuple(attributes):
            raise ValueError(f"a {self.kind.upper()} whose classes have attributes of {tuple(attributes)} values "
                             f"needs as many attribute names, got {self.attribute_names}")

    def label(self, prompt: str) -> int | None:
        """The class a prompt names ("bag" or "a photo of a bag"); None for "" (a random class)."""
        if self.attribute_prompts is not None and prompt != NULL_PROMPT:
            return self.attribute_prompts.label(prompt)  # an unknown word: ValueError listing the known
        label = self.conditioner.label(prompt)  # a prompt naming no class: ValueError listing them
        return None if label == self.conditioner.null_label else label

    def labels(self, prompt: str | Sequence[str], class_labels: Sequence[int] | None) -> list[int | None]:
        """One class (None: drawn per image) per prompt or label."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise ValueError("prompt must be a string or a non-empty list of strings")
        if not self.conditional:
            if class_labels is not None or any(p != NULL_PROMPT for p in prompts):
                raise ValueError(f"{self.name} is an unconditional {self.kind.upper()}: give no prompt and no "
                                 "class_labels")
            return [None] * len(prompts)
        if class_labels is None:
            return [self.label(p) for p in prompts]
        if prompts != [NULL_PROMPT]:
            raise ValueError("give class_labels or a prompt, not both")
        return checked_class_labels(class_labels, self.class_names, self.name)


def check_common(num_images, output: str, outputs: tuple[str, ...] = OUTPUTS) -> None:
    """Clear errors for the settings every family generator takes."""
    if isinstance(num_images, bool) or int(num_images) != num_images or num_images < 1:
        raise ValueError(f"num_images must be a whole number >= 1, got {num_images!r}")
    if output not in outputs:
        raise ValueError(f"output must be one of {outputs}, got {output!r}")
