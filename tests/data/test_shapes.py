"""The synthetic shapes dataset and its network-free attribute reader."""

import pytest
import torch

from ldmkit.data.shapes import (
    COMBINATIONS,
    DEFAULT_HOLDOUT,
    ShapesDataset,
    attribute_accuracy,
    read_attributes,
    render,
)


def test_every_combination_renders_and_reads_back_exactly():
    gen = torch.Generator().manual_seed(0)
    for combo in COMBINATIONS:
        for _ in range(5):  # several jitters of each
            image = render(*combo, gen=gen)
            assert image.shape == (3, 32, 32) and image.min() == -1
            assert read_attributes(image) == combo


def test_dataset_is_deterministic_and_respects_the_holdout():
    data = ShapesDataset(length=300, holdout=DEFAULT_HOLDOUT)
    image, text, labels = data[17]
    again, text2, _ = ShapesDataset(length=300, holdout=DEFAULT_HOLDOUT)[17]
    assert torch.equal(image, again) and text == text2
    seen = {data[i][1] for i in range(300)}
    held = {f"a {c} {s} in the {q}" for c, s, q in DEFAULT_HOLDOUT}
    assert not seen & held and len(seen) > 30
    only = ShapesDataset(length=40, holdout=DEFAULT_HOLDOUT, only_holdout=True)
    assert {only[i][1] for i in range(40)} == held


def test_reader_refuses_to_guess():
    assert read_attributes(torch.full((3, 32, 32), -1.0)) == (None, None, None)
    grey = torch.full((3, 32, 32), -1.0)
    grey[:, 4:12, 4:12] = 0.6  # a grey square: no such colour
    assert read_attributes(grey)[0] is None


def test_attribute_accuracy_counts_each_part():
    images = torch.stack([render("red", "circle", "top left"), render("blue", "square", "bottom right")])
    acc = attribute_accuracy(images, [("red", "circle", "top left"), ("blue", "triangle", "bottom right")])
    assert acc == {"colour": 1.0, "shape": 0.5, "quadrant": 1.0, "all": 0.5}


def test_unknown_holdout_is_refused():
    with pytest.raises(ValueError, match="unknown shapes combination"):
        ShapesDataset(holdout=(("purple", "circle", "top left"),))
