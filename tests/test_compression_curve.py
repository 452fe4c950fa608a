"""benchmarks.compression_curve's bookkeeping on made-up run folders: a continued run's steps and
minutes follow the run it started from, --every thins the checkpoints but keeps each run's end, a
scored point is not scored again, and the plot is written. The scoring itself is ldmkit
evaluate's (tested with it), stubbed here."""

import json

import pytest

from benchmarks import compression_curve
from benchmarks.compression_curve import series_points


def fake_run(folder, steps, images_per_s=64.0, every=1000, finished=True):
    """A run folder as the trainer leaves it: log.jsonl, checkpoints/step-N, and model/ when done."""
    folder.mkdir(parents=True)
    (folder / "log.jsonl").write_text("".join(
        json.dumps({"step": s, "loss": 0.1, "images_per_s": images_per_s}) + "\n" for s in range(500, steps + 1, 500)))
    for step in range(every, steps + 1, every):
        checkpoint = folder / "checkpoints" / f"step-{step:08d}"
        checkpoint.mkdir(parents=True)
        (checkpoint / "config.json").write_text(json.dumps({"train": {"batch_size": 64}}))
    if finished:
        (folder / "model").mkdir()
        (folder / "model" / "config.json").write_text(json.dumps({"training": {"steps": steps}}))


def test_a_continued_run_follows_the_one_it_started_from(tmp_path, monkeypatch):
    fake_run(tmp_path / "a", 3000)  # 64 images/s at batch 64: a step a second
    fake_run(tmp_path / "b", 2000, images_per_s=32.0, finished=False)  # still training: no model/ yet
    monkeypatch.setitem(compression_curve.SERIES, "test", ["a", "b"])
    points = series_points("test", tmp_path, every=2000)
    assert [(p["run"], p["step"]) for p in points] == [("a", 2000), ("a", 3000), ("b", 4000)]
    assert [p["folder"].split(str(tmp_path))[1] for p in points] == [
        "/a/checkpoints/step-00002000", "/a/model", "/b/checkpoints/step-00001000"]
    assert points[1]["train_minutes"] == pytest.approx(3000 / 60)
    assert points[2]["train_minutes"] == pytest.approx((3000 + 2 * 1000) / 60)


def test_the_command_scores_each_point_once_and_plots(tmp_path, monkeypatch):
    fake_run(tmp_path / "runs" / "ldm-f8", 2000)
    monkeypatch.setattr(compression_curve, "SERIES", {"f = 8": ["ldm-f8"]})
    monkeypatch.setattr(compression_curve, "EARLIER", {})
    monkeypatch.setattr(compression_curve, "load_for_evaluation", lambda folder: folder)
    scored = []

    def fake_evaluate(folder, size, **settings):
        scored.append(folder)
        return {"frechet_distance": 10.0 / len(scored), "frechet_floor": 0.3, "seconds_per_image_batched": 0.05,
                "class_agreement": 0.9}

    monkeypatch.setattr(compression_curve, "evaluate", fake_evaluate)
    argv = ["--runs", str(tmp_path / "runs"), "--every", "1000", "--out", str(tmp_path / "curve.json"),
            "--plot", str(tmp_path / "curve.png"), "--series", "f = 8"]
    assert compression_curve.main(argv) == 0
    assert len(scored) == 2 and (tmp_path / "curve.png").stat().st_size > 0
    results = json.loads((tmp_path / "curve.json").read_text())
    assert [(p["step"], p["frechet_distance"]) for p in results["points"]] == [(1000, 10.0), (2000, 5.0)]
    assert results["floor"] == 0.3 and results["settings"]["images"] == 1000
    assert compression_curve.main(argv) == 0 and len(scored) == 2  # nothing left to score
