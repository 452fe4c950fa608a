"""Class labels as a caller gives them (ints, numpy integers, one-element tensors), checked
against a model's classes: one clear error for every class-conditional model, diffusion or not."""

from __future__ import annotations

import operator
from collections.abc import Sequence


def checked_class_labels(class_labels: Sequence, class_names: Sequence[str], model_name: str) -> list[int]:
    """The labels as ints, each in 0..len(class_names) - 1; a ValueError naming the bad ones."""
    labels, count = [_whole(k) for k in class_labels], len(class_names)
    bad = [k for k, whole in zip(class_labels, labels) if whole is None or not 0 <= whole < count]
    if not labels or bad:
        raise ValueError(f"class_labels must be whole numbers in 0..{count - 1} ({model_name} has {count} "
                         f"classes: {list(class_names)}), got {bad or labels}")
    return labels


def _whole(value) -> int | None:
    """An int, numpy integer or one-element integer tensor as an int; None for anything else."""
    try:
        return None if isinstance(value, bool | float) else operator.index(value)
    except TypeError:
        return None
