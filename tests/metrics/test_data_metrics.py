"""Datasets and image-quality metrics."""

import gzip
import json

import numpy as np
import pytest
import torch
from PIL import Image

from ldmkit.data import ImageFolder, load_fashion_mnist, photo_crops
from ldmkit.data.fashion_mnist import read_idx
from ldmkit.metrics import psnr, ssim


def test_fashion_mnist_is_padded_scaled_and_labelled():
    x, y = load_fashion_mnist("test", limit=100)
    assert x.shape == (100, 1, 32, 32) and y.shape == (100,)
    assert x.min() == -1 and x.max() == 1
    assert (x[:, :, :2] == -1).all() and (x[:, :, -2:] == -1).all()  # the 2-pixel padding
    assert set(y.tolist()) <= set(range(10)) and len(set(y.tolist())) > 5


def test_fashion_mnist_missing_and_corrupt_files_are_reported(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist("train", root=tmp_path)
    bad = tmp_path / "x.gz"
    bad.write_bytes(b"not gzip")
    with pytest.raises(ValueError, match="not a readable gzip file"):
        read_idx(bad)
    with gzip.open(bad, "wb") as f:
        f.write(bytes([0, 0, 8, 1]) + (10).to_bytes(4, "big") + bytes(5))
    with pytest.raises(ValueError, match=r"truncated: header says \(10,\)"):
        read_idx(bad)


def test_photo_crops_are_real_rgb():
    crops = photo_crops(count=8, size=32)
    assert crops.shape == (8, 3, 32, 32) and crops.min() >= -1 and crops.max() <= 1
    assert crops.std() > 0.2  # real content, not a constant


def test_image_folder_converts_odd_modes_and_skips_broken_files(tmp_path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(tmp_path / "rgb.png")
    (tmp_path / "rgb.txt").write_text("a red thing\n")
    Image.fromarray(rng.integers(0, 255, (50, 50), dtype=np.uint8)).convert("P").save(tmp_path / "palette.png")
    Image.fromarray(rng.integers(0, 255, (30, 30, 4), dtype=np.uint8), "RGBA").save(tmp_path / "alpha.png")
    Image.fromarray(rng.integers(0, 65535, (30, 30), dtype=np.uint16)).save(tmp_path / "deep.png")
    Image.new("RGB", (4, 4)).save(tmp_path / "tiny.png")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    full = tmp_path / "full.png"
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(full)
    (tmp_path / "truncated.png").write_bytes(full.read_bytes()[:200])
    (tmp_path / "metadata.jsonl").write_text(
        json.dumps({"file_name": "alpha.png", "text": "see-through"}) + "\nnot json\n"
    )

    data = ImageFolder(tmp_path, size=16)
    names = {p.name: text for p, text in data.items}
    assert names == {
        "rgb.png": "a red thing", "palette.png": "", "alpha.png": "see-through", "deep.png": "", "full.png": ""
    }
    skipped = {s.split("/")[-1]: why for s, why in data.skipped}
    assert set(skipped) == {"tiny.png", "broken.jpg", "truncated.png", "metadata.jsonl:2"}
    assert "too small" in skipped["tiny.png"] and "unreadable" in skipped["broken.jpg"]
    assert data.missing_captions == 3
    assert "5 images" in data.summary() and "4 skipped" in data.summary()
    for i in range(len(data)):
        x, _ = data[i]
        assert x.shape == (3, 16, 16) and x.min() >= -1 and x.max() <= 1


def test_image_folder_bad_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ImageFolder(tmp_path / "nope")
    with pytest.raises(ValueError, match="no readable images"):
        ImageFolder(tmp_path)


def test_psnr_and_ssim_against_closed_forms_and_scikit_image():
    from skimage.metrics import structural_similarity

    x = torch.rand(3, 3, 24, 24, generator=torch.Generator().manual_seed(0)) * 2 - 1
    noisy = x + 0.1
    assert psnr(x, noisy).tolist() == pytest.approx([10 * np.log10(4 / 0.01)] * 3, rel=1e-5)
    assert ssim(x, x).tolist() == pytest.approx([1.0] * 3, abs=1e-6)
    y = (x + 0.3 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))).clamp(-1, 1)
    reference = [
        structural_similarity(x[i].numpy(), y[i].numpy(), channel_axis=0, gaussian_weights=True,
                              sigma=1.5, use_sample_covariance=False, data_range=2.0)
        for i in range(3)
    ]
    assert ssim(x, y).tolist() == pytest.approx(reference, abs=1e-5)


def test_gradient_energy_ratio_sees_blur():
    from ldmkit.metrics import gradient_energy_ratio

    x = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(2)) * 2 - 1
    blurred = torch.nn.functional.avg_pool2d(x, 3, stride=1, padding=1)
    assert gradient_energy_ratio(x, x).tolist() == pytest.approx([1.0, 1.0])
    assert (gradient_energy_ratio(blurred, x) < 0.3).all()
    assert gradient_energy_ratio(2 * x, x).tolist() == pytest.approx([4.0, 4.0], rel=1e-5)
