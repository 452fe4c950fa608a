"""Image helpers, PNG metadata, and the command line."""

import pytest
import torch
from PIL import Image

from ldmkit.apps.cli import main
from ldmkit.utils.images import from_pil, image_grid, read_png_metadata, save_png, to_pil


def test_pil_round_trip_is_exact_on_the_uint8_grid():
    x = torch.randint(0, 256, (3, 5, 7)).float() / 127.5 - 1
    torch.testing.assert_close(from_pil(to_pil(x)), x, rtol=0, atol=1e-6)
    gray = x[:1]
    torch.testing.assert_close(from_pil(to_pil(gray), channels=1), gray, rtol=0, atol=1e-6)


def test_to_pil_refuses_other_shapes():
    with pytest.raises(ValueError, match=r"expected a \(C, H, W\) tensor with C = 1 or 3, got shape \(4, 8, 8\)"):
        to_pil(torch.zeros(4, 8, 8))


def test_grid_places_every_image():
    tiles = [Image.new("RGB", (10, 10), (i * 40, 0, 0)) for i in range(5)]
    grid = image_grid(tiles, columns=3, pad=2)
    assert grid.size == (3 * 12 + 2, 2 * 12 + 2)
    assert grid.getpixel((2 + 12 * 1 + 5, 2 + 5)) == (40, 0, 0)  # second tile, first row
    assert grid.getpixel((2 + 5, 2 + 12 + 5)) == (120, 0, 0)  # fourth tile, second row


def test_png_metadata_round_trip(tmp_path):
    meta = {"prompt": "a photo of a sneaker", "seed": 7, "settings": {"sampler": "ddim", "steps": 20}}
    path = save_png(Image.new("RGB", (4, 4)), tmp_path / "a" / "x.png", meta)
    read = read_png_metadata(path)
    assert read["prompt"] == "a photo of a sneaker"
    assert read["seed"] == "7"
    assert read["settings"] == '{"sampler": "ddim", "steps": 20}'


def test_forward_demo_writes_a_labelled_strip(tmp_path, capsys):
    out = tmp_path / "strip.png"
    assert main(["forward-demo", "--out", str(out), "--size", "32", "--photo", "coffee"]) == 0
    with Image.open(out) as image:
        assert image.width > 9 * 32 and image.height > 3 * 32
    assert '"photo": "coffee"' in read_png_metadata(out)["settings"]


def test_cli_reports_bad_input_without_a_traceback(tmp_path, capsys):
    assert main(["forward-demo", "--photo", "dog", "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert "unknown demo photo 'dog'" in err and "Traceback" not in err
