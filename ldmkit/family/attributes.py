"""Prompts that name a class made of attributes, one value of each ("a red circle in the top
left": colour, shape, quadrant), for the GAN and VAE trained on shapes; and the labels a run of
theirs trained on. A class's label is the mixed-radix number of its attribute indices, the order
of itertools.product over the attributes' values (ldmkit.data.shapes.COMBINATIONS'), which is how
the networks split it again (ldmkit.family.gan_networks.class_rows)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from ..data import fashion_mnist, shapes


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9'-]+", text.lower())


class AttributePrompts:
    """attribute_names [(attribute, its values), ...] ([("colour", ["red", ...]), ...]), in the
    labels' order; class_names, the training captions, whose words outside the values ("a", "in",
    "the") a prompt may also use."""

    def __init__(self, attribute_names: Sequence[tuple[str, Sequence[str]]], class_names: Sequence[str]):
        self.names = {attribute: list(values) for attribute, values in attribute_names}
        self.value_words = {w for values in self.names.values() for value in values for w in words(value)}
        self.filler = {w for name in class_names for w in words(name)} - self.value_words

    def known(self) -> str:
        return "; ".join(f"{attribute}: {', '.join(values)}" for attribute, values in self.names.items())

    def label(self, prompt: str) -> int:
        """The class a prompt names. A word no training caption has (an unknown colour, say) is
        refused rather than skipped: the model would quietly draw something else."""
        found = words(prompt)
        unknown = [w for w in found if w not in self.value_words and w not in self.filler]
        if unknown:
            raise ValueError(f"unknown word {unknown[0]!r} in the prompt {prompt!r}; this model knows {self.known()}")
        label = 0
        for attribute, values in self.names.items():
            hits = [k for k, value in enumerate(values) if _has_phrase(found, words(value))]
            if len(hits) != 1:
                named = [values[k] for k in hits]
                raise ValueError(f"the prompt {prompt!r} must name one {attribute} of {values}, it names "
                                 f"{named or 'none'}")
            label = label * len(values) + hits[0]
        return label


def _has_phrase(found: list[str], phrase: list[str]) -> bool:
    return any(found[i : i + len(phrase)] == phrase for i in range(len(found) - len(phrase) + 1))


def dataset_names(dataset: str) -> tuple[list[str], list[tuple[str, list[str]]] | None]:
    """(class names, attribute names or None) of a GAN's or a VAE's dataset: shapes' classes are its
    48 combinations, named by their captions; its attributes as [(attribute, its values), ...]
    pairs, a list since config.json's objects are written with sorted keys and the order matters."""
    if dataset == "shapes":
        return [shapes.caption(*c) for c in shapes.COMBINATIONS], [(k, list(v)) for k, v in shapes.ATTRIBUTES.items()]
    return list(fashion_mnist.CLASS_NAMES), None


def trained_labels(train: Mapping) -> tuple[int, ...] | None:
    """The labels a run trained on, from its config as a dict (config.json's "train"): its
    `classes` (None: all), less a shapes run's held-out combinations."""
    classes = train.get("classes")
    if train.get("dataset") != "shapes":
        return None if classes is None else tuple(classes)
    held = {shapes.COMBINATIONS.index(tuple(c)) for c in train.get("shapes_holdout") or ()}
    return tuple(k for k in (range(len(shapes.COMBINATIONS)) if classes is None else classes) if k not in held)
