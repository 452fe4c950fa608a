"""benchmarks.guidance_study: the three series on a few images with a briefly trained classifier,
resumed cell by cell, and the interpolated scale at 85% agreement."""

import json
from dataclasses import replace

import pytest

import benchmarks.guidance_study as guidance_study
from ldmkit.train.noisy_classifier import train_noisy_classifier
from ldmkit.train.noisy_classifier_config import NOISY_CLASSIFIER_PRESETS

pytestmark = pytest.mark.usefixtures("one_thread")


def cell(scale, agreement, series="classifier"):
    return {"series": series, "guidance": 0.0, "classifier_scale": scale, "class_agreement": agreement}


def test_the_scale_at_85_percent_is_interpolated_between_the_cells_around_it():
    cells = [cell(0, 0.1), cell(2, 0.6), cell(4, 0.8), cell(8, 0.9), cell(1, 0.99, series="cfg")]
    assert guidance_study.scale_at_agreement(cells) == pytest.approx(6.0)
    assert guidance_study.scale_at_agreement(cells[:3]) is None
    assert guidance_study.scale_at_agreement([cell(0, 0.9)]) == 0


def test_the_study_scores_every_series_and_resumes_from_its_file(tmp_path):
    train_noisy_classifier(replace(NOISY_CLASSIFIER_PRESETS["tiny"], steps=2), tmp_path / "run", progress=False)
    out, picture = tmp_path / "study.json", tmp_path / "study.png"
    argv = ["--classifier", str(tmp_path / "run" / "model"), "--per-class", "2", "--steps", "2",
            "--classifier-scales", "0", "2", "--cfg-scales", "1", "--out", str(out), "--plot", str(picture)]
    assert guidance_study.main(argv) == 0
    results = json.loads(out.read_text())
    keys = [guidance_study.cell_key(c) for c in results["cells"]]
    assert keys == [("classifier", 0.0, 0.0), ("classifier", 0.0, 2.0), ("cfg", 1.0, 0.0),
                    ("cfg+classifier", 1.5, 2.0)]
    assert all(c["images"] == 20 and 0 <= c["class_agreement"] <= 1 and c["frechet_distance"] > 0
               for c in results["cells"])
    assert results["settings"]["identity"]["steps"] == 2 and picture.stat().st_size > 0

    results["cells"] = results["cells"][:3]  # as if stopped before the last cell
    out.write_text(json.dumps(results))
    assert guidance_study.main(argv + ["--cfg-scales", "1", "2"]) == 0
    keys = [guidance_study.cell_key(c) for c in json.loads(out.read_text())["cells"]]
    assert keys[-2:] == [("cfg", 2.0, 0.0), ("cfg+classifier", 1.5, 2.0)] and len(keys) == 5
