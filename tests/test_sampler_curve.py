"""benchmarks/sampler_curve.py at a tiny size: every cell, honest UNet call counts, resume."""

import importlib.util
import json
import math
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "sampler_curve.py"
spec = importlib.util.spec_from_file_location("sampler_curve", SCRIPT)
sampler_curve = importlib.util.module_from_spec(spec)
spec.loader.exec_module(sampler_curve)


def test_tiny_sampler_curve_and_resume(tmp_path, monkeypatch, one_thread):
    out, png = tmp_path / "curve.json", tmp_path / "curve.png"
    argv = ["--per-class", "2", "--samplers", "ddim", "dpmpp_2m", "--steps", "5", "10", "--reference-steps", "20",
            "--out", str(out), "--plot", str(png)]
    assert sampler_curve.main(argv) == 0
    results = json.loads(out.read_text())
    assert png.stat().st_size > 0
    cells = {(c["sampler"], c["steps"]): c for c in results["cells"]}
    assert set(cells) == {("ddim", 5), ("ddim", 10), ("dpmpp_2m", 5), ("dpmpp_2m", 10)}
    reference = results["reference"]
    assert (reference["sampler"], reference["steps"]) == ("ddpm", 20)
    for cell in [reference, *cells.values(), results["floor"]]:
        assert math.isfinite(cell["frechet_distance"]) and cell["frechet_distance"] > 0
    for cell in [reference, *cells.values()]:
        # one UNet call per step for all 20 images together, the unconditional and conditional
        # halves of guidance in the same call (2 x 20 rows); these samplers take one call a step
        assert cell["nfe"] == cell["steps"] and cell["unet_rows_per_call"] == 2 * 20
        assert cell["fd_over_reference"] == cell["frechet_distance"] / reference["frechet_distance"]
        assert 0 <= cell["class_agreement"] <= 1 and cell["seconds"] > 0
    assert results["floor"]["images"] == 20 and results["settings"]["guidance"] == 3.0

    with pytest.raises(SystemExit, match="exists"):  # hours of work are not overwritten without --resume
        sampler_curve.main(argv)

    # resume: a file missing one cell gets that cell only; a complete one gets none
    computed, run_cell = [], sampler_curve.run_cell

    def counted_run_cell(bench, sampler, steps, settings):
        computed.append((sampler, steps))
        return run_cell(bench, sampler, steps, settings)

    monkeypatch.setattr(sampler_curve, "run_cell", counted_run_cell)
    results["cells"] = [c for c in results["cells"] if (c["sampler"], c["steps"]) != ("ddim", 10)]
    out.write_text(json.dumps(results))
    assert sampler_curve.main([*argv, "--resume"]) == 0
    assert computed == [("ddim", 10)]
    resumed = {(c["sampler"], c["steps"]): c for c in json.loads(out.read_text())["cells"]}
    assert set(resumed) == set(cells)
    assert resumed[("ddim", 10)]["frechet_distance"] == cells[("ddim", 10)]["frechet_distance"]  # same seeds and images
    assert sampler_curve.main([*argv, "--resume"]) == 0
    assert computed == [("ddim", 10)]
