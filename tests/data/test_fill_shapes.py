"""The hint data of ControlNet training: fill-shapes (outline -> filled shape, prompts without the
place) and Sobel edge maps; and the network-free obedience scores."""

import pytest
import torch
from scipy import ndimage

from ldmkit.data.edge_hints import fashion_mnist_edges, silhouette_iou, sobel_edges
from ldmkit.data.fill_shapes import (
    FillShapesDataset,
    fill_obedience,
    held_combinations,
    outline,
    shape_mask,
)
from ldmkit.data.shapes import COLOURS, DEFAULT_HOLDOUT, QUADRANTS, SHAPES, ShapesDataset


def test_the_hint_is_the_filled_shapes_outline():
    data = FillShapesDataset(length=60, seed=1)
    for i in range(len(data)):
        hint, image, _, _ = data[i]
        assert hint.shape == (3, 32, 32) and set(hint.unique().tolist()) == {0.0, 1.0}
        assert torch.equal(hint[0], hint[1]) and torch.equal(hint[0], hint[2])  # white on black
        line, mask = hint[0].bool(), shape_mask(image)
        assert line.any() and not (line & ~mask).any()  # inside the filled region ...
        assert line.sum() < mask.sum()  # ... and thin: it has an inside
        # filling the outline's inside gives back the filled region exactly (an independent fill)
        assert torch.equal(torch.from_numpy(ndimage.binary_fill_holes(line.numpy())), mask)


def test_a_shape_at_the_border_is_outlined_there():
    mask = torch.zeros(8, 8, dtype=torch.bool)
    mask[:4, :4] = True  # touches the top and left borders
    expected = mask.clone()
    expected[1:3, 1:3] = False
    assert torch.equal(outline(mask), expected)


def test_items_are_deterministic_by_seed_and_are_the_shapes_images():
    a, b, other = FillShapesDataset(length=50, seed=3), FillShapesDataset(length=50, seed=3), FillShapesDataset(
        length=50, seed=4)
    for i in (0, 7, 49):
        for x, y in zip(a[i], b[i]):
            assert torch.equal(x, y) if torch.is_tensor(x) else x == y
    assert any(not torch.equal(a[i][1], other[i][1]) for i in range(10))
    shapes = ShapesDataset(length=50, seed=3)  # the same drawing: item i's image is the shapes data's
    assert all(torch.equal(a[i][1], shapes[i][0]) for i in range(50))


def test_the_caption_names_colour_and_shape_but_no_place():
    data = FillShapesDataset(length=200, holdout=DEFAULT_HOLDOUT)
    places = ("top", "bottom", "left", "right", "quadrant", " in ")
    seen = set()
    for i in range(len(data)):
        _, _, caption, (c, s, q) = data[i]
        assert caption.endswith(f"{list(COLOURS)[c]} {SHAPES[s]}") and not any(p in caption for p in places)
        seen.add((list(COLOURS)[c], SHAPES[s], QUADRANTS[q]))
    assert not seen & set(DEFAULT_HOLDOUT) and len(seen) > 30
    assert {caption for _, _, caption, _ in (data[i] for i in range(200))} == {
        f"a {c} {s}" for c in COLOURS for s in SHAPES}


def test_held_combinations_cover_every_quadrant_evenly():
    combos = held_combinations(16)
    assert [sum(q == quadrant for _, _, q in combos) for quadrant in QUADRANTS] == [4, 4, 4, 4]
    assert len({c for c, _, _ in combos}) == 4 and len({s for _, s, _ in combos}) == 3


def test_obedience_of_the_targets_themselves_and_of_misplaced_shapes():
    data = FillShapesDataset(length=24, seed=2)
    items = [data[i] for i in range(24)]
    targets = torch.stack([x for _, x, _, _ in items])
    combos = [(list(COLOURS)[c], SHAPES[s], QUADRANTS[q]) for *_, (c, s, q) in items]
    assert fill_obedience(targets, targets, combos) == {"quadrant": 1.0, "iou": 1.0, "colour": 1.0, "shape": 1.0,
                                                        "all": 1.0}
    mirrored = fill_obedience(targets.flip(-1), targets, combos)  # left <-> right: every quadrant wrong
    assert mirrored["quadrant"] == 0.0 and mirrored["iou"] < 0.05 and mirrored["colour"] == 1.0
    empty = fill_obedience(torch.full_like(targets, -1.0), targets, combos)
    assert empty == {"quadrant": 0.0, "iou": 0.0, "colour": 0.0, "shape": 0.0, "all": 0.0}


def test_sobel_edges_agree_with_scipy():
    g = torch.Generator().manual_seed(0)
    images = torch.rand(3, 1, 16, 20, generator=g) * 2 - 1
    x = ((images[:, 0] + 1) / 2).double().numpy()
    for k in range(3):
        reference = torch.from_numpy((ndimage.sobel(x[k], axis=-1, mode="nearest") ** 2
                                      + ndimage.sobel(x[k], axis=-2, mode="nearest") ** 2) ** 0.5)
        torch.testing.assert_close(sobel_edges(images)[k, 0].double(), reference / reference.max(), atol=1e-5,
                                   rtol=0)


def test_sobel_edges_of_a_step_and_of_a_flat_image():
    step = torch.full((1, 3, 8, 8), -1.0)
    step[..., 4:] = 1.0  # a vertical edge between columns 3 and 4
    edges = sobel_edges(step)[0, 0]
    assert edges.shape == (8, 8) and edges.max() == 1.0
    assert edges[:, 3:5].min() == 1.0 and edges[:, :3].max() == 0.0 and edges[:, 5:].max() == 0.0
    assert torch.count_nonzero(sobel_edges(torch.zeros(2, 1, 8, 8))) == 0


def test_fashion_mnist_edge_items():
    try:
        hints, images, captions = fashion_mnist_edges("test", limit=6)
    except FileNotFoundError:
        pytest.skip("the dataset-fashion-mnist package is not installed")
    assert hints.shape == images.shape == (6, 1, 32, 32) and 0 <= hints.min() and hints.max() == 1.0
    assert all(c.startswith("a photo of a ") for c in captions)
    assert torch.count_nonzero(hints[:, :, 0]) == 0  # the padding (rows 0, 1) has no edges beside it
    assert silhouette_iou(images, images) == 1.0 and silhouette_iou(images.flip(-1), images) < 1.0
