"""benchmarks.upsampler_consistency: its two errors on known cases, and a short run that writes a
row per sampler with one consistency error per output."""

import json
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from benchmarks import upsampler_consistency as bench

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py
UPSAMPLER = str(Path(__file__).resolve().parent.parent / "models" / "fashion-mnist-glide" / "upsampler")


def test_the_errors_of_the_original_and_of_any_image_with_its_area_averages():
    originals = torch.rand(3, 1, 8, 8) * 2 - 1
    assert bench.errors(originals, originals, 2) == ([0.0] * 3, [0.0] * 3)
    # nearest enlargement of the area averages: the same averages (consistent), other pixels
    blocky = F.interpolate(F.avg_pool2d(originals, 2), scale_factor=2, mode="nearest")
    consistency, reconstruction = bench.errors(blocky, originals, 2)
    assert consistency == pytest.approx([0.0] * 3, abs=1e-6) and min(reconstruction) > 0.01
    # a constant shift of 0.5 moves every average by 0.5
    consistency, _ = bench.errors(originals + 0.5, originals, 2)
    assert consistency == pytest.approx([0.25] * 3, abs=1e-5)
    assert bench.summary([0.001, 0.5, 0.01], 0.02) == {"median": 0.01, "max": 0.5, "consistent": 2 / 3}
    assert bench.summary([0.001, 0.5, 0.01]) == {"median": 0.01, "max": 0.5}


def test_a_short_run_scores_every_output_of_every_sampler(tmp_path):
    out = tmp_path / "consistency.json"
    assert bench.main(["--upsampler", UPSAMPLER, "--dataset", "fashion-mnist", "--images", "2", "--seeds", "2",
                       "--samplers", "euler_a", "ddim", "--steps", "2", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result["samplers"]) == {"euler_a", "ddim"}
    for row in result["samplers"].values():
        assert len(row["per_output_consistency"]) == 4
        assert row["consistency"]["max"] == max(row["per_output_consistency"])
    assert result["bilinear"]["reconstruction"]["median"] > 0


def test_a_dataset_with_other_channels_is_refused():
    with pytest.raises(SystemExit, match="upsamples 1-channel images, shapes has 3"):
        bench.main(["--upsampler", UPSAMPLER, "--dataset", "shapes", "--images", "1"])


def test_a_model_that_is_not_an_upscaler_is_refused():
    cascade = str(Path(UPSAMPLER).parent)
    with pytest.raises(SystemExit, match="is not an upscaler.*FOLDER/upsampler"):
        bench.main(["--upsampler", cascade, "--dataset", "fashion-mnist", "--images", "1"])
